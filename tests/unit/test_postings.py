"""aidcore.postings: the legs of every kind of event, and the properties that make the books
reconcile: whatever events come, in whatever order and batches, with reversals applied as the
person stage decides them, every event's legs sum to zero and the balances say what was
allocated, released, paid and taken back."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidcore import outcomes, postings as pst
from aidcore.intake import BudgetAllocation, Disbursement, Reversal, TreasuryRelease
from aidcore.ledger import event_id_bytes, totals
from aidcore.postings import Leg
from builders import (
    REVERSAL_AMOUNTS,
    STREAM_MEMBERS,
    STREAM_PERIODS,
    STREAM_PROGRAMMES,
    allocation,
    apply,
    decide,
    disbursement,
    member_of,
    release,
    reversal,
    stream_reversal,
)

PROPERTY = settings(database=None, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def book_sums(legs) -> Counter:
    sums: Counter = Counter()
    for account, amount in legs:
        sums["cash" if pst.account_kind(account) in pst.CASH_KINDS else "authority"] += amount
    return sums


# --- legs of each kind ---------------------------------------------------------------------------


def test_an_allocation_moves_authority_from_the_budget_line_to_the_programme():
    a = allocation(amount_idr=5_000_000)
    assert pst.legs_of(a) == (Leg("budget:APBN-2026-KEMENSOS-PKH", -5_000_000), Leg("programme:KEMENSOS:PKH", 5_000_000))


def test_a_release_moves_cash_from_the_treasury_to_the_agency():
    r = release(amount_idr=2_000_000, source_type="APBD_PROV", agency_code="DINSOS-LAMPUNG")
    assert pst.legs_of(r) == (Leg("treasury:APBD_PROV", -2_000_000), Leg("agency:DINSOS-LAMPUNG", 2_000_000))


def test_a_payment_moves_cash_to_the_recipient_and_uses_up_its_programmes_authority():
    d = disbursement(amount_idr=750_000)
    assert pst.legs_of(d) == (
        Leg("agency:KEMENSOS", -750_000), Leg(f"recipient:{d.person_token}", 750_000),
        Leg("programme:KEMENSOS:PKH", -750_000), Leg("budget:APBN-2026-KEMENSOS-PKH", 750_000))


def test_a_reversal_takes_back_what_it_reverses_along_the_originals_accounts():
    d = disbursement(amount_idr=750_000)
    r = reversal(amount_idr=250_000, agency_code="SOMEONE-ELSE")
    assert pst.legs_of(r, d) == tuple(Leg(a, -amount // 3) for a, amount in pst.legs_of(d))


def test_a_reversal_without_its_original_has_no_legs():
    try:
        pst.legs_of(reversal())
    except ValueError as err:
        assert "reverses" in str(err)
    else:
        raise AssertionError("a reversal's legs need its original")


def test_every_kind_sums_to_zero_in_each_book():
    d = disbursement()
    for legs in (pst.legs_of(allocation()), pst.legs_of(release()), pst.legs_of(d), pst.legs_of(reversal(), d)):
        assert sum(amount for _, amount in legs) == 0
        assert set(book_sums(legs).values()) == {0}


def test_a_programme_account_names_its_agency_even_with_a_colon_in_it():
    assert pst.programme_of(pst.programme_account("DINAS:SOSIAL", "BLT_DD")) == ("DINAS:SOSIAL", "BLT_DD")


# --- streams of every kind, decided by the person stage ------------------------------------------

AGENCIES = ("KEMENSOS", "DINSOS-LAMPUNG", "DPMD-LAMPUNG")
LINES = ("APBN-2026-BANSOS", "APBD-2026-SEMBAKO", "APBDES-2026-BLT")
BUDGET_AMOUNTS = (1_000_000, 2_500_000, 10_000_000)


@lru_cache(maxsize=None)
def money_payment(n: int, member: int, programme: int, period: str, amount: int, agency: str, line: str) -> Disbursement:
    code, source = STREAM_PROGRAMMES[programme]
    return disbursement(source_ref=f"M{n}", programme_code=code, source_type=source, period=period, amount_idr=amount,
                        agency_code=agency, funding_account=line, disbursed_at=f"2026-04-0{1 + n % 9}T09:00:00+07:00",
                        **STREAM_MEMBERS[member])


@lru_cache(maxsize=None)
def money_allocation(n: int, agency: str, programme: int, line: str, amount: int) -> BudgetAllocation:
    return allocation(source_ref=f"A{n}", agency_code=agency, programme_code=STREAM_PROGRAMMES[programme][0],
                      funding_account=line, amount_idr=amount)


@lru_cache(maxsize=None)
def money_release(n: int, treasury: str, agency: str, line: str, amount: int) -> TreasuryRelease:
    return release(source_ref=f"T{n}", source_type=treasury, agency_code=agency, funding_account=line, amount_idr=amount)


@st.composite
def money_streams(draw):
    """Budget records, and payments by several agencies under several budget lines with
    reversals of every sort (of earlier or later payments, of reversals, of payments that never
    come, of more than is left), in any order, some delivered twice."""
    payments = [
        money_payment(n, draw(st.sampled_from((0, 1, 2, 3))), draw(st.integers(0, len(STREAM_PROGRAMMES) - 1)),
                      draw(st.sampled_from(STREAM_PERIODS)), draw(st.sampled_from((200_000, 750_000, 1_500_000))),
                      draw(st.sampled_from(AGENCIES)), draw(st.sampled_from(LINES)))
        for n in range(draw(st.integers(0, 10)))
    ]
    reversals: list[Reversal] = []
    for n in range(draw(st.integers(0, 8))):
        target = draw(st.sampled_from(["payment", "payment", "reversal", "unknown"]))
        amount = draw(st.sampled_from(REVERSAL_AMOUNTS))
        if target == "payment" and payments:
            original = draw(st.sampled_from(payments))
            reversals.append(stream_reversal(n, member_of(original), original.source_ref, amount))
        elif target == "reversal" and reversals:
            original = draw(st.sampled_from(reversals))
            reversals.append(stream_reversal(n, member_of(original), original.source_ref, amount))
        else:
            reversals.append(stream_reversal(n, draw(st.integers(0, len(STREAM_MEMBERS) - 1)), f"M-NEVER-{n}", amount))
    budget = [money_allocation(n, draw(st.sampled_from(AGENCIES)), draw(st.integers(0, len(STREAM_PROGRAMMES) - 1)),
                               draw(st.sampled_from(LINES)), draw(st.sampled_from(BUDGET_AMOUNTS)))
              for n in range(draw(st.integers(0, 5)))]
    budget += [money_release(n, draw(st.sampled_from(("APBN", "APBD_PROV", "APBDES"))), draw(st.sampled_from(AGENCIES)),
                             draw(st.sampled_from(LINES)), draw(st.sampled_from(BUDGET_AMOUNTS)))
               for n in range(draw(st.integers(0, 5)))]
    events = draw(st.permutations(payments + reversals + budget))
    for _ in range(draw(st.integers(0, 4))):
        if events:
            events.insert(draw(st.integers(0, len(events))), draw(st.sampled_from(events)))
    return events


def ledger_run(events, cuts):
    """What the ledger makes of `events`: the person stage decides payments and reversals in
    batches cut at `cuts` (the budget records pass it by, as in the worker); the projection posts
    the accepted payments, the reversals the stage reports applied, and each budget record once.
    Returns (legs per event id, final person states, payments kept, reversals applied)."""
    person_events = [e for e in events if isinstance(e, (Disbursement, Reversal))]
    states: dict = {}
    kept: dict[tuple[str, str, str], Disbursement] = {}
    applied: list[Reversal] = []
    by_id = {event_id_bytes(e.event_id): e for e in person_events if isinstance(e, Reversal)}
    legs: dict[str, tuple[Leg, ...]] = {}
    bounds = sorted(set([0, *cuts, len(person_events)]))
    for a, b in zip(bounds, bounds[1:]):
        batch = person_events[a:b]
        result = decide(batch, states)
        states = apply(states, result)
        for event, outcome in zip(batch, result.outcomes):
            if isinstance(event, Disbursement) and outcome == outcomes.ACCEPTED:
                kept[(event.person_token, event.source_system, event.source_ref)] = event
                legs[event.event_id] = pst.legs_of(event)
        for raw_id in result.applied:
            r = by_id[raw_id]
            original = kept[(r.person_token, r.original_source_system, r.original_source_ref)]
            applied.append(r)
            legs[r.event_id] = pst.legs_of(r, original)
    for e in events:
        if isinstance(e, (BudgetAllocation, TreasuryRelease)):
            legs.setdefault(e.event_id, pst.legs_of(e))
    return legs, states, kept, applied


@PROPERTY
@given(st.data())
def test_every_events_legs_sum_to_zero_and_so_do_all_balances(data):
    events = data.draw(money_streams())
    legs, _, _, _ = ledger_run(events, data.draw(st.lists(st.integers(0, len(events)), max_size=3)))
    for event_legs in legs.values():
        assert sum(amount for _, amount in event_legs) == 0
        assert all(v == 0 for v in book_sums(event_legs).values())
    balances = pst.fold(leg for event_legs in legs.values() for leg in event_legs)
    assert sum(balances.values()) == 0


@PROPERTY
@given(st.data())
def test_balances_reconcile_with_what_was_allocated_released_paid_and_taken_back(data):
    """Counted from the events themselves, not from the legs: the treasuries' outflow is what the
    agencies received; each agency received what it paid net of reversals plus its balance; each
    programme was allocated what it paid net plus its balance; each budget line's balance is what
    was charged to it less what it allocated; each recipient's balance is the person stage's net
    totals for them."""
    events = data.draw(money_streams())
    legs, states, kept, applied = ledger_run(events, data.draw(st.lists(st.integers(0, len(events)), max_size=3)))
    balances = pst.fold(leg for event_legs in legs.values() for leg in event_legs)
    budget = {e.event_id: e for e in events if isinstance(e, (BudgetAllocation, TreasuryRelease))}.values()
    received, allocated, by_line = Counter(), Counter(), Counter()
    for e in budget:
        if isinstance(e, TreasuryRelease):
            received[e.agency_code] += e.amount_idr
        else:
            allocated[(e.agency_code, e.programme_code)] += e.amount_idr
            by_line[e.funding_account] += e.amount_idr
    paid, paid_programme, charged = Counter(), Counter(), Counter()
    for d in kept.values():
        paid[d.agency_code] += d.amount_idr
        paid_programme[(d.agency_code, d.programme_code)] += d.amount_idr
        charged[d.funding_account] += d.amount_idr
    for r in applied:
        d = kept[(r.person_token, r.original_source_system, r.original_source_ref)]
        paid[d.agency_code] -= r.amount_idr
        paid_programme[(d.agency_code, d.programme_code)] -= r.amount_idr
        charged[d.funding_account] -= r.amount_idr

    treasury_outflow = -sum(b for a, b in balances.items() if a.startswith("treasury:"))
    assert treasury_outflow == sum(received.values())
    for agency in set(received) | set(paid):
        assert received[agency] == paid[agency] + balances.get(pst.agency_account(agency), 0)
    for key in set(allocated) | set(paid_programme):
        assert allocated[key] == paid_programme[key] + balances.get(pst.programme_account(*key), 0)
    for line in set(by_line) | set(charged):
        assert balances.get(pst.budget_account(line), 0) == charged[line] - by_line[line]
    for token, state in states.items():
        net = sum(amount for amount, _ in totals(state).values())
        assert balances.get(pst.recipient_account(token), 0) == net
    assert all(b >= 0 for a, b in balances.items() if a.startswith("recipient:"))
    check = pst.reconcile(balances, allocated, received)
    assert check.holds, check
    for agency, (got, spent, _) in check.agencies.items():
        assert (got, spent) == (received[agency], paid[agency])


@PROPERTY
@given(st.data())
def test_the_balances_do_not_depend_on_order_batches_or_redelivery(data):
    """Reversals in a settled stream apply the same way in any order, so the books end equal."""
    events = data.draw(money_streams())
    reordered = data.draw(st.permutations(events))
    first, _, _, _ = ledger_run(events, [])
    second, _, _, _ = ledger_run(reordered, data.draw(st.lists(st.integers(0, len(events)), max_size=3)))
    fold = lambda legs: {a: b for a, b in pst.fold(leg for ls in legs.values() for leg in ls).items() if b}  # noqa: E731
    # a reversal that fits only in some orders (two waiting reversals that together exceed their
    # original) may apply in one order and not in another: compare only where none can
    if _order_free(events):
        assert fold(second) == fold(first)


def _order_free(events) -> bool:
    """No payment has reversals that could fit or not depending on order."""
    amounts = {(e.person_token, e.source_ref): e.amount_idr for e in events if isinstance(e, Disbursement)}
    asked: Counter = Counter()
    for e in {e.event_id: e for e in events if isinstance(e, Reversal)}.values():
        key = (e.person_token, e.original_source_ref)
        if e.amount_idr <= amounts.get(key, 0):  # one that can never fit applies in no order
            asked[key] += e.amount_idr
    return all(asked[k] <= amounts[k] for k in asked)


# --- what the balances say -----------------------------------------------------------------------


def test_overspending_lists_the_programme_the_agency_and_the_budget_line_paid_beyond_their_money():
    events = [
        allocation(source_ref="A1", amount_idr=1_000_000),  # KEMENSOS PKH from the PKH line
        allocation(source_ref="A2", programme_code="BPNT", funding_account="APBN-2026-KEMENSOS-BPNT", amount_idr=300_000),
        release(source_ref="T1", amount_idr=900_000),
        disbursement(source_ref="P1", amount_idr=750_000),
        disbursement(source_ref="P2", programme_code="BPNT", funding_account="APBN-2026-KEMENSOS-BPNT",
                     amount_idr=400_000),
    ]
    balances = pst.fold(leg for e in events for leg in pst.legs_of(e))
    allocated = {("KEMENSOS", "PKH"): 1_000_000, ("KEMENSOS", "BPNT"): 300_000}
    report = pst.overspending(balances, allocated, {"KEMENSOS": 900_000},
                              {"APBN-2026-KEMENSOS-PKH": 1_000_000, "APBN-2026-KEMENSOS-BPNT": 300_000})
    assert report["programmes"] == [{"agency_code": "KEMENSOS", "programme_code": "BPNT", "allocated_idr": 300_000,
                                     "disbursed_idr": 400_000, "over_idr": 100_000}]
    assert report["agencies_over_allocation"] == []  # 1,150,000 paid of 1,300,000 allocated
    assert report["agencies_over_releases"] == [{"agency_code": "KEMENSOS", "received_idr": 900_000,
                                                 "disbursed_idr": 1_150_000, "over_idr": 250_000,
                                                 "balance_idr": -250_000}]
    assert report["budget_lines"] == [{"funding_account": "APBN-2026-KEMENSOS-BPNT", "allocated_idr": 300_000,
                                       "disbursed_idr": 400_000, "over_idr": 100_000}]
    assert pst.reconcile(balances, allocated, {"KEMENSOS": 900_000}).holds


def test_payments_with_no_allocation_at_all_are_spent_beyond_it():
    d = disbursement(agency_code="CSR-PT-X", programme_code="CSR_PANGAN", funding_account="CSR-2026")
    report = pst.overspending(pst.fold(pst.legs_of(d)), {}, {}, {})
    assert [r["over_idr"] for r in report["programmes"]] == [d.amount_idr]
    assert [r["agency_code"] for r in report["agencies_over_allocation"]] == ["CSR-PT-X"]
    assert [r["agency_code"] for r in report["agencies_over_releases"]] == ["CSR-PT-X"]
    assert [r["funding_account"] for r in report["budget_lines"]] == ["CSR-2026"]


def test_a_reversal_brings_a_programme_back_within_its_allocation():
    d = disbursement(amount_idr=750_000)
    legs = [*pst.legs_of(allocation(amount_idr=500_000)), *pst.legs_of(d)]
    allocated = {("KEMENSOS", "PKH"): 500_000}
    assert pst.overspending(pst.fold(legs), allocated, {}, {})["programmes"]
    legs += pst.legs_of(reversal(amount_idr=250_000), d)
    assert not pst.overspending(pst.fold(legs), allocated, {}, {})["programmes"]
