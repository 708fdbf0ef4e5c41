"""Double-entry postings: what each ledger event does to the accounts the money passes through,
from the treasury to the recipient. Pure: an event in, its legs out; no clock, no storage. The
projection folds the legs into balances; it must not invent postings of its own.

The chart has two books, so that every balance means one thing:

- cash, the rupiah that move: `treasury:<source_type>` -> `agency:<agency_code>` ->
  `recipient:<person_token>`;
- authority, memo accounts of the rupiah a budget allows to be spent: `budget:<funding_account>`
  -> `programme:<agency_code>:<programme_code>`.

| event                         | cash legs                               | authority legs                        |
|-------------------------------|-----------------------------------------|---------------------------------------|
| BudgetAllocation (a)          |                                         | budget:F -a, programme:A:P +a         |
| TreasuryRelease (a)           | treasury:S -a, agency:A +a              |                                       |
| Disbursement (a)              | agency:A -a, recipient:R +a             | programme:A:P -a, budget:F +a         |
| Reversal of a disbursement (r)| the disbursement's legs for r, negated (r as the stream applied it)    |

The legs of every event sum to zero in each book. Folded over any sequence of events:
- all balances sum to zero;
- minus the treasuries' balances is what the agencies received (the releases);
- an agency received what it disbursed (net of reversals) plus its balance;
- a programme was allocated what it disbursed (net) plus its balance, so a negative programme
  balance is money paid beyond its allocation;
- a budget line's balance is minus what is left of its allocations: positive when the payments
  charged to it exceed what it allocated.

A rupiah paid out can be followed leg by leg: budget line -> programme (authority), treasury ->
agency -> recipient (cash), both books naming the same agency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from aidcore.intake import BudgetAllocation, Disbursement, Reversal, TreasuryRelease

TREASURY = "treasury"
BUDGET = "budget"
AGENCY = "agency"
PROGRAMME = "programme"
RECIPIENT = "recipient"
CASH_KINDS = (TREASURY, AGENCY, RECIPIENT)
AUTHORITY_KINDS = (BUDGET, PROGRAMME)


class Leg(NamedTuple):
    account: str
    amount_idr: int  # positive: into the account; negative: out of it


def treasury_account(source_type: str) -> str:
    return f"{TREASURY}:{source_type}"


def budget_account(funding_account: str) -> str:
    return f"{BUDGET}:{funding_account}"


def agency_account(agency_code: str) -> str:
    return f"{AGENCY}:{agency_code}"


def programme_account(agency_code: str, programme_code: str) -> str:
    return f"{PROGRAMME}:{agency_code}:{programme_code}"


def recipient_account(person_token: str) -> str:
    return f"{RECIPIENT}:{person_token}"


def account_kind(account: str) -> str:
    return account.partition(":")[0]


def programme_of(account: str) -> tuple[str, str]:
    """(agency code, programme code) of a programme account. Programme codes hold no ':' (the
    reference data refuses one), so the last ':' separates them even if an agency code has one."""
    agency, _, programme = account.removeprefix(f"{PROGRAMME}:").rpartition(":")
    return agency, programme


def allocation_legs(a: BudgetAllocation) -> tuple[Leg, Leg]:
    return (Leg(budget_account(a.funding_account), -a.amount_idr),
            Leg(programme_account(a.agency_code, a.programme_code), a.amount_idr))


def release_legs(r: TreasuryRelease) -> tuple[Leg, Leg]:
    return (Leg(treasury_account(r.source_type), -r.amount_idr), Leg(agency_account(r.agency_code), r.amount_idr))


def disbursement_legs(agency_code: str, programme_code: str, funding_account: str, person_token: str,
                      amount_idr: int) -> tuple[Leg, Leg, Leg, Leg]:
    """A payment's legs: cash from the agency to the recipient, authority used up from the
    programme and charged back to the budget line it names."""
    return (Leg(agency_account(agency_code), -amount_idr), Leg(recipient_account(person_token), amount_idr),
            Leg(programme_account(agency_code, programme_code), -amount_idr),
            Leg(budget_account(funding_account), amount_idr))


def reversal_legs(original: Disbursement, amount_idr: int) -> tuple[Leg, ...]:
    """Taking back `amount_idr` of `original`: its legs for that amount, negated. The accounts are
    the original's (the money goes back the way it came), whatever agency the reversal names."""
    return tuple(Leg(account, -amount) for account, amount in
                 disbursement_legs(original.agency_code, original.programme_code, original.funding_account,
                                   original.person_token, amount_idr))


def legs_of(event: Disbursement | Reversal | BudgetAllocation | TreasuryRelease,
            original: Disbursement | None = None) -> tuple[Leg, ...]:
    """The legs of one event. A reversal needs the payment it reverses, and posts only once the
    stream applied it (the caller decides that): its amount is what it takes back."""
    if isinstance(event, Disbursement):
        return disbursement_legs(event.agency_code, event.programme_code, event.funding_account, event.person_token,
                                 event.amount_idr)
    if isinstance(event, Reversal):
        if original is None:
            raise ValueError("a reversal's legs need the payment it reverses")
        return reversal_legs(original, event.amount_idr)
    if isinstance(event, BudgetAllocation):
        return allocation_legs(event)
    if isinstance(event, TreasuryRelease):
        return release_legs(event)
    raise TypeError(f"no postings for {type(event).__name__}")


def fold(legs: Iterable[Leg], into: dict[str, int] | None = None) -> dict[str, int]:
    """Balances: the legs summed per account."""
    out = {} if into is None else into
    for account, amount in legs:
        out[account] = out.get(account, 0) + amount
    return out


# --- what the balances say -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The checks the chart guarantees, computed from balances and the budget records alone."""

    sum_of_balances_idr: int  # 0
    treasury_outflow_idr: int  # minus the treasuries' balances
    agency_inflow_idr: int  # what the releases sent to agencies
    # per agency: (received, disbursed net of reversals read from its programme accounts, balance);
    # received == disbursed + balance ties the cash book to the authority book
    agencies: dict[str, tuple[int, int, int]]

    @property
    def holds(self) -> bool:
        return (self.sum_of_balances_idr == 0 and self.treasury_outflow_idr == self.agency_inflow_idr
                and all(received == disbursed + balance for received, disbursed, balance in self.agencies.values()))


def disbursed_by_programme(balances: Mapping[str, int],
                           allocated: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """(agency, programme) -> rupiah paid net of reversals: a programme account moves only by its
    allocations (in) and its payments (out)."""
    keys = {programme_of(a) for a in balances if account_kind(a) == PROGRAMME} | set(allocated)
    return {key: allocated.get(key, 0) - balances.get(programme_account(*key), 0) for key in keys}


def reconcile(balances: Mapping[str, int], allocated: Mapping[tuple[str, str], int],
              received: Mapping[str, int]) -> Reconciliation:
    """`allocated`: (agency, programme) -> rupiah allocated; `received`: agency -> rupiah released
    to it. Agencies are those with an agency or programme account, or a release."""
    paid: dict[str, int] = {}
    for (agency, _), amount in disbursed_by_programme(balances, allocated).items():
        paid[agency] = paid.get(agency, 0) + amount
    agencies = {}
    for agency in sorted(set(paid) | set(received) | {a.removeprefix(f"{AGENCY}:") for a in balances
                                                        if account_kind(a) == AGENCY}):
        agencies[agency] = (received.get(agency, 0), paid.get(agency, 0),
                            balances.get(agency_account(agency), 0))
    treasuries = sum(b for a, b in balances.items() if account_kind(a) == TREASURY)
    return Reconciliation(sum(balances.values()), -treasuries, sum(received.values()), agencies)


def overspending(balances: Mapping[str, int], allocated: Mapping[tuple[str, str], int], received: Mapping[str, int],
                 allocated_by_line: Mapping[str, int]) -> dict[str, list[dict]]:
    """What was paid beyond what allowed it, largest first:
    - programmes whose payments (net of reversals) exceed their allocations;
    - agencies whose payments exceed their allocations, over all their programmes;
    - agencies whose payments exceed the cash released to them;
    - budget lines charged with more payments than they allocated.
    A payment under a programme or budget line with no allocation at all is spent beyond it."""
    paid = disbursed_by_programme(balances, allocated)
    programmes = [
        {"agency_code": a, "programme_code": p, "allocated_idr": allocated.get((a, p), 0), "disbursed_idr": d,
         "over_idr": d - allocated.get((a, p), 0)}
        for (a, p), d in paid.items() if d > allocated.get((a, p), 0)
    ]
    by_agency: dict[str, list[int]] = {}
    for (a, p), d in paid.items():
        t = by_agency.setdefault(a, [0, 0])
        t[0] += allocated.get((a, p), 0)
        t[1] += d
    over_allocation = [{"agency_code": a, "allocated_idr": al, "disbursed_idr": d, "over_idr": d - al}
                       for a, (al, d) in by_agency.items() if d > al]
    over_releases = []
    for a, (_, d) in by_agency.items():
        got = received.get(a, 0)
        if d > got:
            over_releases.append({"agency_code": a, "received_idr": got, "disbursed_idr": d, "over_idr": d - got,
                                  "balance_idr": balances.get(agency_account(a), 0)})
    lines = []
    for account, balance in balances.items():
        if account_kind(account) == BUDGET and balance > 0:
            line = account.removeprefix(f"{BUDGET}:")
            given = allocated_by_line.get(line, 0)
            lines.append({"funding_account": line, "allocated_idr": given, "disbursed_idr": given + balance,
                          "over_idr": balance})

    def largest_first(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: (-r["over_idr"], *(str(v) for v in r.values())))

    return {"programmes": largest_first(programmes), "agencies_over_allocation": largest_first(over_allocation),
            "agencies_over_releases": largest_first(over_releases), "budget_lines": largest_first(lines)}
