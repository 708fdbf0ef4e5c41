"""The household stage: the rules that need a household's members together.

The ledger topic is keyed by person, which keeps each person's events in order and lets the
person stage decide idempotency, duplicates and reversals alone. A household's members may sit
on different partitions, so the person stage re-keys what it accepted by household (KK token; a
payment without KK is its person's household of one) as `Posting`s, and this stage keeps, per
household, the set of postings it has seen, keyed by event id.

Nothing here depends on the order postings arrive in: the state is a set (a redelivered posting
changes nothing), a reversal posting counts against its original whether it comes before or after
it, and cases are computed from the set. Hence the person's order needs no guarantee past the
person stage, and postings from many ledger partitions can interleave freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from sys import intern
from typing import Mapping, NamedTuple, Sequence

from aidcore.ledger import Alert, Posting, case_alert, case_changes, event_id_text, revision
from aidcore.reference import Reference
from aidcore.rulebook import HOUSEHOLD_CAP, Rulebook
from aidcore.rules import Entry, household_cases


class HouseholdEntry(NamedTuple):
    person: bytes
    programme_code: str
    period: str
    amount_idr: int  # negative for a reversal
    source_type: str
    disbursed_at_us: int
    region_code: str
    original_event_id: bytes  # b"" for a payment


HouseholdState = Mapping[bytes, HouseholdEntry]  # event id -> entry, of one household and period


def slot_of(posting: Posting) -> str:
    """The state's key: household and period. Every rule looks at one period of one household,
    so keying by both keeps each look at only the entries it needs."""
    return f"{posting.household}/{posting.period}"


@dataclass(slots=True)
class HouseholdResult:
    changed: dict[str, dict[bytes, HouseholdEntry]] = field(default_factory=dict)  # by `slot_of`
    accepted: list[int] = field(default_factory=list)  # indexes of the postings that were new
    alerts: dict[str, Alert] = field(default_factory=dict)
    # (household token, period) of each posting neither kept nor evaluated: its household-period
    # already held `Reference.period_payments_max` postings (a placeholder KK)
    unevaluated: list[tuple[str, str]] = field(default_factory=list)


def full(state: HouseholdState, reference: Reference) -> bool:
    """Whether a household-period holds as many postings as a real household can: past that it is
    a placeholder KK typed for many people. Further postings are neither kept nor evaluated, so the
    household's state, and the time each decision takes, stay bounded."""
    return len(state) >= reference.period_payments_max


def entry_of(p: Posting) -> HouseholdEntry:
    return HouseholdEntry(p.person, intern(p.programme_code), intern(p.period), p.amount_idr, intern(p.source_type),
                          p.disbursed_at_us, intern(p.region_code), p.original_event_id)


def live_entries(state: HouseholdState, period: str) -> list[Entry]:
    """Payments of the period net of their reversals; fully reversed ones left out."""
    reversed_by: dict[bytes, int] = {}
    for e in state.values():
        if e.original_event_id:
            reversed_by[e.original_event_id] = reversed_by.get(e.original_event_id, 0) - e.amount_idr
    out = []
    for event_id, e in state.items():
        if e.period == period and not e.original_event_id:
            net = e.amount_idr - reversed_by.get(event_id, 0)
            if net > 0:
                out.append(Entry(event_id, e.person, e.programme_code, net, e.source_type, e.disbursed_at_us))
    return out


def reversals_in(state: HouseholdState, period: str) -> int:
    return sum(1 for e in state.values() if e.original_event_id and e.period == period)


def region_of(state: HouseholdState, period: str) -> str:
    """Where the household lives, as its latest payment of the period says."""
    best = (-1, "")
    for e in state.values():
        if e.period == period and e.region_code and e.disbursed_at_us > best[0]:
            best = (e.disbursed_at_us, e.region_code)
    return best[1]


def decide_household_batch(
    states: Mapping[str, HouseholdState],  # by `slot_of`: household and period
    postings: Sequence[Posting],
    *,
    rulebook: Rulebook,
    reference: Reference,
    now_us: int,
) -> HouseholdResult:
    result = HouseholdResult()
    cap = rulebook.household_cap_idr if rulebook.on(HOUSEHOLD_CAP) else None
    for i, posting in enumerate(postings):
        token = posting.household
        slot = slot_of(posting)
        state = result.changed.get(slot)
        if state is None:
            state = dict(states.get(slot, ()))
        if posting.event_id in state:
            continue  # a redelivered posting: the person stage re-sends after a crash
        period = posting.period
        if full(state, reference):
            result.unevaluated.append((token, period))
            continue
        if not state and not posting.original_event_id and (cap is None or posting.amount_idr <= cap):
            # the household's first payment of the period: no rule can fire on one payment under the cap
            state[posting.event_id] = entry_of(posting)
            result.changed[slot] = state
            result.accepted.append(i)
            continue
        before = None
        if posting.original_event_id:
            before = {(c.rule_id, c.fingerprint): c for c in household_cases(live_entries(state, period), rulebook,
                                                                              reference)}
        state[posting.event_id] = entry_of(posting)
        result.changed[slot] = state
        result.accepted.append(i)
        trigger = event_id_text(posting.event_id)
        region = region_of(state, period)
        reversals = reversals_in(state, period)
        after = household_cases(live_entries(state, period), rulebook, reference)
        if before is None:
            for case in after:
                if any(e.event_id == posting.event_id for e in case.entries):
                    alert = case_alert(case, "HOUSEHOLD", token, period, region, rulebook, reference, trigger,
                                       posting.recorded_at_us, now_us, revision(case, reversals), {})
                    result.alerts[alert.alert_id] = alert
        else:
            changes = case_changes(before, {(c.rule_id, c.fingerprint): c for c in after}, "HOUSEHOLD", token, period,
                                   region, rulebook, reference, trigger, posting.recorded_at_us, now_us, reversals)
            for alert in changes:
                result.alerts[alert.alert_id] = alert
    return result
