"""The household stage (aidcore.household.decide_household_batch) fed with the postings the person
stage (aidcore.ledger.decide_batch) produces: who forms a household, what a redelivered or a
reversal posting does, and the properties that make it independent of order."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidcore import explain, household
from aidcore import rulebook as rb
from aidcore.ledger import alert_id, event_id_bytes, totals
from builders import (
    NIK,
    OTHER_KK,
    OTHER_NIK,
    REGENCY_NAME,
    REGION_CODE,
    apply,
    decide,
    decide_households,
    decide_households_stream,
    decide_stream,
    disbursement,
    open_cases,
    reversal,
    settled_streams,
    shipped_rulebook,
)

BOOK = shipped_rulebook()


def member_payment(nik: str = NIK, ref: str = "PKH-A", **overrides):
    return disbursement(nik=nik, source_ref=ref, **overrides)


def postings_of(*events, states=None):
    """The postings the person stage makes of `events` (one batch) and the states after it."""
    result = decide(list(events), states, rulebook=BOOK)
    return result.postings, apply(states or {}, result)


def household_alerts(postings, states=None, rule_id=None):
    result = decide_households(postings, states)
    alerts = [a for a in result.alerts.values() if rule_id is None or a.rule_id == rule_id]
    return alerts, {**(states or {}), **result.changed}, result


# --- who forms a household -----------------------------------------------------------------------


def test_two_members_of_one_kk_paid_pkh_for_one_period_are_a_household_duplicate():
    first = member_payment(NIK, "PKH-A")
    second = member_payment(OTHER_NIK, "PKH-B", amount_idr=600_000, disbursed_at="2026-04-04T10:00:00+07:00")
    postings, _ = postings_of(first, second)
    assert first.person_token != second.person_token
    assert [p.household for p in postings] == [first.kk_token, first.kk_token]

    (alert,), _, _ = household_alerts(postings, rule_id=rb.DUPLICATE_HOUSEHOLD)
    assert (alert.subject_kind, alert.subject_token) == ("HOUSEHOLD", first.kk_token)
    assert alert.alert_id == alert_id(rb.DUPLICATE_HOUSEHOLD, first.kk_token, "2026-04", "PKH")
    assert (alert.programme_code, alert.period, alert.status) == ("PKH", "2026-04", "open")
    assert [(line.event_id, line.person_token) for line in alert.lines] == [
        (first.event_id, first.person_token), (second.event_id, second.person_token)]
    assert alert.amount_idr_at_stake == 600_000
    assert alert.rulebook_version == BOOK.version
    assert REGENCY_NAME in alert.message and f"village {REGION_CODE}" in alert.message


def test_no_person_stage_case_is_raised_for_two_members():
    result = decide([member_payment(NIK, "PKH-A"), member_payment(OTHER_NIK, "PKH-B")], rulebook=BOOK)
    assert result.alerts == {}


def test_members_of_different_kks_are_different_households():
    postings, _ = postings_of(member_payment(NIK, "PKH-A"), member_payment(OTHER_NIK, "PKH-B", kk=OTHER_KK))
    alerts, states, _ = household_alerts(postings)
    assert alerts == []
    assert len(states) == 2


def test_a_person_without_kk_is_a_household_of_one():
    pkh = disbursement(kk="", source_ref="PKH-A")
    blt = disbursement(kk="", source_ref="BLT-A", programme_code="BLT_DD", source_type="APBDES", amount_idr=300_000)
    postings, _ = postings_of(pkh, blt)
    assert [p.household for p in postings] == [pkh.person_token] * 2
    (alert,), states, _ = household_alerts(postings, rule_id=rb.EXCLUSIVE_HOUSEHOLD)
    assert (alert.subject_kind, alert.subject_token) == ("HOUSEHOLD", pkh.person_token)
    assert alert.amount_idr_at_stake == 300_000
    assert list(states) == [f"{pkh.person_token}/2026-04"]  # the state is keyed by household and period


def test_people_without_kk_are_never_one_household():
    postings, _ = postings_of(member_payment(NIK, "PKH-A", kk=""), member_payment(OTHER_NIK, "PKH-B", kk=""))
    alerts, states, _ = household_alerts(postings)
    assert alerts == []
    assert len(states) == 2


def test_a_provisional_identity_without_kk_is_a_household_of_one():
    who = {"nik": "", "provisional_id": "PRV-LPG-0042", "kk": ""}
    big = disbursement(source_ref="RTLH-A", programme_code="RTLH", source_type="APBD_KAB", amount_idr=2_500_000, **who)
    pkh = disbursement(source_ref="PKH-A", amount_idr=750_000, **who)
    assert big.identity_kind == "PROVISIONAL"
    postings, _ = postings_of(big, pkh)
    assert [p.household for p in postings] == [big.person_token] * 2
    (alert,), _, _ = household_alerts(postings, rule_id=rb.HOUSEHOLD_CAP)
    assert alert.subject_token == big.person_token
    assert alert.amount_idr_at_stake == 250_000


def test_a_provisional_identity_with_a_kk_joins_that_household():
    with_nik = member_payment(NIK, "PKH-A")
    provisional = disbursement(nik="", provisional_id="PRV-LPG-0042", source_ref="PKH-B", amount_idr=600_000)
    postings, _ = postings_of(with_nik, provisional)
    (alert,), _, _ = household_alerts(postings, rule_id=rb.DUPLICATE_HOUSEHOLD)
    assert alert.subject_token == with_nik.kk_token
    assert {line.person_token for line in alert.lines} == {with_nik.person_token, provisional.person_token}


def test_postings_name_the_member_paid():
    payment = member_payment(OTHER_NIK, "PKH-B")
    (posting,), _ = postings_of(payment)
    assert posting.person == bytes.fromhex(payment.person_token)
    assert posting.event_id == event_id_bytes(payment.event_id)
    assert (posting.amount_idr, posting.region_code, posting.recorded_at_us) == (
        750_000, REGION_CODE, payment.recorded_at_us)


# --- the cap through both stages -----------------------------------------------------------------


def cap_payments(second_amount: int):
    return (member_payment(NIK, "PKH-A", amount_idr=2_000_000),
            member_payment(OTHER_NIK, "BPNT-B", programme_code="BPNT", amount_idr=second_amount))


def test_a_household_exactly_at_the_cap_raises_no_cap_case():
    postings, _ = postings_of(*cap_payments(1_000_000))
    assert household_alerts(postings, rule_id=rb.HOUSEHOLD_CAP)[0] == []


def test_a_household_one_rupiah_over_the_cap_raises_a_cap_case_of_one_rupiah():
    postings, _ = postings_of(*cap_payments(1_000_001))
    (alert,), _, _ = household_alerts(postings, rule_id=rb.HOUSEHOLD_CAP)
    assert (alert.amount_idr_at_stake, alert.amount_idr_total, alert.threshold) == (1, 3_000_001, 3_000_000)
    assert alert.subject_token == member_payment().kk_token


# --- redelivery ----------------------------------------------------------------------------------


def test_a_redelivered_posting_changes_nothing():
    postings, _ = postings_of(member_payment(NIK, "PKH-A"), member_payment(OTHER_NIK, "PKH-B"))
    _, states, _ = household_alerts(postings)
    again = decide_households(postings, states)
    assert (again.changed, again.accepted, again.alerts) == ({}, [], {})


def test_a_posting_twice_in_one_batch_counts_once():
    postings, _ = postings_of(member_payment(NIK, "PKH-A"), member_payment(OTHER_NIK, "PKH-B"))
    result = decide_households([postings[0], postings[0], postings[1], postings[1]])
    assert result.accepted == [0, 2]
    (state,) = result.changed.values()
    assert len(state) == 2
    (alert,) = [a for a in result.alerts.values() if a.rule_id == rb.DUPLICATE_HOUSEHOLD]
    assert len(alert.lines) == 2


def test_the_household_stage_never_mutates_its_input_states():
    postings, _ = postings_of(member_payment(NIK, "PKH-A"))
    _, states, _ = household_alerts(postings)
    frozen = {token: dict(state) for token, state in states.items()}
    more, _ = postings_of(member_payment(OTHER_NIK, "PKH-B"))
    decide_households(more, states)
    assert states == frozen


# --- reversals -----------------------------------------------------------------------------------


def two_members_paid_pkh():
    first = member_payment(NIK, "PKH-A")
    second = member_payment(OTHER_NIK, "PKH-B", amount_idr=600_000, disbursed_at="2026-04-04T10:00:00+07:00")
    postings, person_states = postings_of(first, second)
    return first, second, postings, person_states


def test_a_reversal_posting_voids_a_household_case_that_held_only_because_of_the_reversed_payment():
    first, second, postings, person_states = two_members_paid_pkh()
    (raised,), household_states, _ = household_alerts(postings, rule_id=rb.DUPLICATE_HOUSEHOLD)

    back = reversal(nik=OTHER_NIK, original_source_ref="PKH-B", amount_idr=600_000)
    (taken,), _ = postings_of(back, states=person_states)
    assert (taken.household, taken.amount_idr) == (first.kk_token, -600_000)
    assert taken.original_event_id == event_id_bytes(second.event_id)

    (void,), _, _ = household_alerts([taken], household_states, rule_id=rb.DUPLICATE_HOUSEHOLD)
    assert void.alert_id == raised.alert_id
    assert void.status == "void_reversed"
    assert void.revision > raised.revision
    assert void.message.startswith("No longer holds")
    assert REGENCY_NAME in void.message  # the household's payments still say where it lives


def test_a_partial_reversal_posting_updates_the_household_case():
    _, _, postings, person_states = two_members_paid_pkh()
    (raised,), household_states, _ = household_alerts(postings, rule_id=rb.DUPLICATE_HOUSEHOLD)
    (taken,), _ = postings_of(reversal(nik=OTHER_NIK, original_source_ref="PKH-B", amount_idr=100_000),
                              states=person_states)
    (updated,), _, _ = household_alerts([taken], household_states, rule_id=rb.DUPLICATE_HOUSEHOLD)
    assert (updated.alert_id, updated.status) == (raised.alert_id, "open")
    assert updated.revision > raised.revision
    assert updated.amount_idr_at_stake == 500_000


def test_a_reversal_posting_before_its_payment_posting_counts_against_it():
    _, _, postings, person_states = two_members_paid_pkh()
    (taken,), _ = postings_of(reversal(nik=OTHER_NIK, original_source_ref="PKH-B", amount_idr=600_000),
                              states=person_states)
    alerts, _, result = household_alerts([taken, *postings])
    assert result.accepted == [0, 1, 2]
    assert alerts == []


def test_a_redelivered_reversal_posting_changes_nothing():
    _, _, postings, person_states = two_members_paid_pkh()
    (taken,), _ = postings_of(reversal(nik=OTHER_NIK, original_source_ref="PKH-B", amount_idr=100_000),
                              states=person_states)
    _, states, _ = household_alerts([*postings, taken])
    again = decide_households([taken], states)
    assert (again.changed, again.accepted, again.alerts) == ({}, [], {})


def test_a_reversal_that_waited_in_the_person_stage_reaches_the_household_as_a_net_payment():
    back = reversal(nik=OTHER_NIK, original_source_ref="PKH-B", amount_idr=600_000)
    second = member_payment(OTHER_NIK, "PKH-B", amount_idr=600_000)
    postings, _ = postings_of(back, member_payment(NIK, "PKH-A"), second)
    assert [p.amount_idr for p in postings] == [750_000, 0]
    assert household_alerts(postings)[0] == []


def test_the_region_is_the_one_of_the_households_latest_payment():
    first = member_payment(NIK, "PKH-A", disbursed_at="2026-04-02T10:00:00+07:00", region_code="1871011002")
    second = member_payment(OTHER_NIK, "PKH-B", disbursed_at="2026-04-05T10:00:00+07:00")
    postings, _ = postings_of(first, second)
    (alert,), _, _ = household_alerts(list(reversed(postings)), rule_id=rb.DUPLICATE_HOUSEHOLD)
    assert alert.region_code == REGION_CODE


# --- properties ----------------------------------------------------------------------------------

PROPERTY = settings(database=None, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def live_totals(states) -> dict[tuple[str, str], int]:
    """(household, period) -> rupiah the household holds, net of reversals. The states are keyed
    by household and period (`household.slot_of`)."""
    out: dict[tuple[str, str], int] = {}
    for slot, state in states.items():
        token = slot.split("/")[0]
        for period in {e.period for e in state.values()}:
            total = sum(e.amount_idr for e in household.live_entries(state, period))
            if total:
                out[(token, period)] = total
    return out


@st.composite
def postings_reordered(draw, postings):
    """The same postings in any order, some delivered twice, cut into batches anywhere."""
    reordered = list(draw(st.permutations(postings)))
    for _ in range(draw(st.integers(0, 4))):
        if reordered:
            reordered.insert(draw(st.integers(0, len(reordered))), draw(st.sampled_from(reordered)))
    cuts = draw(st.lists(st.integers(0, len(reordered)), max_size=4))
    return reordered, cuts


@PROPERTY
@given(st.data())
def test_any_order_and_any_redelivery_give_the_same_households_and_open_household_cases(data):
    """The events in any order (some twice) through the person stage, and its postings in any
    order (some twice) through the household stage, give the same households (live totals per
    period) and the same open cases by alert id, with the same lines and amounts at stake. Void
    alerts are left out: a case raised and then voided by a reversal exists only in orders where
    the reversal came after. Revisions are left out: they count the reversal postings a household
    has seen, and a reversal that waited in the person stage sends none (its original's posting is
    net of it)."""
    canonical, reordered = data.draw(settled_streams())
    _, _, _, canonical_postings = decide_stream(canonical, rulebook=BOOK)
    _, _, _, postings = decide_stream(reordered, data.draw(st.lists(st.integers(0, len(reordered)), max_size=3)),
                                      rulebook=BOOK)
    shuffled, cuts = data.draw(postings_reordered(postings))

    states_a, latest_a = decide_households_stream(canonical_postings)
    states_b, latest_b = decide_households_stream(shuffled, cuts)
    assert live_totals(states_b) == live_totals(states_a)
    assert open_cases(latest_b) == open_cases(latest_a)


@PROPERTY
@given(st.data())
def test_no_household_is_over_the_cap_without_an_open_cap_case_and_none_under_it_has_one(data):
    """For every household and period: live total above the cap <=> an open household_monthly_cap
    case whose amount at stake is the total less the cap. The households' live totals are also
    the sums of their members' person-stage totals."""
    _, events = data.draw(settled_streams(max_payments=12))
    person_states, _, _, postings = decide_stream(events, rulebook=BOOK)
    shuffled, cuts = data.draw(postings_reordered(postings))
    states, latest = decide_households_stream(shuffled, cuts)

    held = live_totals(states)
    cap = BOOK.household_cap_idr
    open_caps = {a.alert_id: a for a in latest.values() if a.rule_id == rb.HOUSEHOLD_CAP and a.status == "open"}
    expected = {alert_id(rb.HOUSEHOLD_CAP, token, period, ""): total - cap
                for (token, period), total in held.items() if total > cap}
    assert {i: a.amount_idr_at_stake for i, a in open_caps.items()} == expected
    for a in latest.values():
        assert (a.rulebook_version, a.subject_kind) == (BOOK.version, "HOUSEHOLD")
        assert a.rule_id in rb.HOUSEHOLD_RULES
        assert f"{REGENCY_NAME} (village {REGION_CODE})" in a.message
        assert all(explain.describe_line(line) in a.message for line in a.lines)
    for a in open_caps.values():
        assert a.amount_idr_total == held[(a.subject_token, a.period)]

    per_household: dict[tuple[str, str], int] = defaultdict(int)
    households = {p.person.hex(): p.household for p in postings}
    for token, state in person_states.items():
        for (_programme, period), (amount, _count) in totals(state).items():
            if amount:
                per_household[(households.get(token, token), period)] += amount
    assert held == dict(per_household)


def test_the_cap_property_sees_households_over_the_cap():
    """The streams of the properties above do reach over the cap, so the property is not empty."""
    events = [member_payment(NIK, "RTLH-A", programme_code="RTLH", source_type="APBD_KAB", amount_idr=2_000_000),
              member_payment(OTHER_NIK, "RTLH-B", programme_code="RTLH", source_type="APBD_KAB", amount_idr=2_000_000)]
    _, _, _, postings = decide_stream(events, rulebook=BOOK)
    states, latest = decide_households_stream(postings)
    assert live_totals(states) == {(events[0].kk_token, "2026-04"): 4_000_000}
    (cap_alert,) = [a for a in latest.values() if a.rule_id == rb.HOUSEHOLD_CAP]
    assert cap_alert.amount_idr_at_stake == 1_000_000


def test_a_rulebook_without_household_rules_raises_no_household_case():
    off = replace(BOOK, enabled=BOOK.enabled - set(rb.HOUSEHOLD_RULES))
    postings, _ = postings_of(member_payment(NIK, "PKH-A", amount_idr=2_000_000),
                              member_payment(OTHER_NIK, "PKH-B", amount_idr=2_000_000))
    assert decide_households(postings, rulebook=off).alerts == {}
    assert {a.rule_id for a in decide_households(postings).alerts.values()} == {rb.DUPLICATE_HOUSEHOLD,
                                                                                 rb.HOUSEHOLD_CAP}


def test_a_placeholder_kk_is_neither_kept_nor_evaluated_past_the_period_limit():
    """One KK typed for hundreds of people: once its household-period holds `period_payments_max`
    postings, further postings of the period are neither kept (its state stays bounded) nor
    evaluated (each decision stays cheap); the case stands as it was at the limit."""
    from builders import make_nik, reference

    limit = 4
    ref = replace(reference(), period_payments_max=limit)
    members = [member_payment(make_nik(serial=i + 1), f"PKH-{i}") for i in range(7)]
    postings, _ = postings_of(*members)
    assert len({p.household for p in postings}) == 1
    result = household.decide_household_batch({}, postings, rulebook=BOOK, reference=ref, now_us=0)
    assert result.accepted == list(range(limit))
    (slot,) = result.changed
    assert len(result.changed[slot]) == limit
    assert result.unevaluated == [(postings[0].household, postings[0].period)] * 3
    duplicate = [a for a in result.alerts.values() if a.rule_id == rb.DUPLICATE_HOUSEHOLD]
    assert len(duplicate) == 1 and len(duplicate[0].lines) == limit
    again = household.decide_household_batch(result.changed, postings[limit:], rulebook=BOOK, reference=ref, now_us=0)
    assert not again.accepted and not again.alerts and len(again.unevaluated) == 3
