"""The detection rules as pure functions over one subject's payments in one period.

A subject is a person (the person stage) or a household (the household stage, keyed by KK
token; a payment without KK forms a household of one, its person). Each rule looks at the
subject's *live* entries of a period (net of reversals, fully reversed ones left out) and returns
the cases it finds. A case's identity is (rule, subject, period, fingerprint), so however many
events or redeliveries touch it, it stays one case; its content is a function of the entry set
alone, which is what makes the result independent of delivery order.

Every rule here is monotone: adding a payment never removes a case. Only a reversal can, and
then the shell reports the case as void (it only existed because of the reversed payment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

from aidcore import rulebook as rb
from aidcore.reference import Reference


class Entry(NamedTuple):
    """One live payment of a subject in a period, as the rules see it."""

    event_id: bytes  # 16 bytes
    person: bytes  # the person token's 16 bytes (which member of a household)
    programme_code: str
    amount_idr: int  # net of reversals, > 0
    source_type: str
    disbursed_at_us: int


@dataclass(frozen=True, slots=True)
class Case:
    rule_id: str
    fingerprint: str  # what tells two cases of one rule, subject and period apart
    programme_code: str  # the programme the case is about; "" when it is about several
    entries: tuple[Entry, ...]  # oldest first
    amount_idr_at_stake: int  # paid beyond what the rule allows
    amount_idr_total: int


def _order(entries) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.disbursed_at_us, e.event_id))


def _case(rule_id: str, fingerprint: str, programme: str, entries, at_stake: int) -> Case:
    ordered = tuple(_order(entries))
    return Case(rule_id, fingerprint, programme, ordered, at_stake, sum(e.amount_idr for e in ordered))


def _by_programme(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in entries:
        out.setdefault(e.programme_code, []).append(e)
    return out


def duplicate_person(entries: Sequence[Entry]) -> list[Case]:
    """Same programme paid more than once: everything after the first payment is at stake."""
    cases = []
    for programme, group in _by_programme(entries).items():
        if len(group) >= 2:
            first = _order(group)[0]
            at_stake = sum(e.amount_idr for e in group) - first.amount_idr
            cases.append(_case(rb.DUPLICATE_PERSON, programme, programme, group, at_stake))
    return cases


def stacking(rule_id: str, entries: Sequence[Entry], max_programmes: int) -> list[Case]:
    """More than `max_programmes` programmes: the programmes first paid after the allowed number
    are at stake (by time of their first payment)."""
    groups = _by_programme(entries)
    if len(groups) <= max_programmes:
        return []
    firsts = sorted(groups, key=lambda p: (_order(groups[p])[0][5], _order(groups[p])[0][0]))
    excess = set(firsts[max_programmes:])
    at_stake = sum(e.amount_idr for e in entries if e.programme_code in excess)
    return [_case(rule_id, "", "", entries, at_stake)]


def duplicate_household(entries: Sequence[Entry], programmes: frozenset[str]) -> list[Case]:
    """A per-household programme paid to two or more members: the first member paid keeps it,
    the others' payments are at stake."""
    cases = []
    for programme, group in _by_programme(entries).items():
        if programme not in programmes or len({e.person for e in group}) < 2:
            continue
        first_person = _order(group)[0].person
        at_stake = sum(e.amount_idr for e in group if e.person != first_person)
        cases.append(_case(rb.DUPLICATE_HOUSEHOLD, programme, programme, group, at_stake))
    return cases


def exclusive(entries: Sequence[Entry], exclusions) -> list[Case]:
    """A programme paid together with one it excludes: the excluded-against programme's payments
    (BLT_DD when PKH or BPNT is there) are at stake."""
    groups = _by_programme(entries)
    cases = []
    for programme, excludes in exclusions:
        if programme in groups and any(x in groups for x in excludes):
            involved = [e for e in entries if e.programme_code == programme or e.programme_code in excludes]
            at_stake = sum(e.amount_idr for e in groups[programme])
            cases.append(_case(rb.EXCLUSIVE_HOUSEHOLD, programme, programme, involved, at_stake))
    return cases


def cap(entries: Sequence[Entry], cap_idr: int) -> list[Case]:
    """Total above the cap; exactly the cap is allowed."""
    total = sum(e.amount_idr for e in entries)
    if total <= cap_idr:
        return []
    return [_case(rb.HOUSEHOLD_CAP, "", "", entries, total - cap_idr)]


def non_government_same_kind(entries: Sequence[Entry], sources: frozenset[str], reference: Reference) -> list[Case]:
    """Aid from a non-government source of the same kind (reference kind_group) as government aid
    in the period: the non-government payments are at stake (they duplicate, they do not add)."""
    def kind(e: Entry) -> str:
        p = reference.programmes.get(e.programme_code)
        return p.kind_group if p is not None else e.programme_code

    government = {kind(e) for e in entries if e.source_type not in sources}
    cases = []
    for group in sorted({kind(e) for e in entries if e.source_type in sources} & government):
        involved = [e for e in entries if kind(e) == group]
        at_stake = sum(e.amount_idr for e in involved if e.source_type in sources)
        cases.append(_case(rb.NON_GOVERNMENT_SAME_KIND, group, "", involved, at_stake))
    return cases


def person_cases(entries: Sequence[Entry], book: rb.Rulebook) -> list[Case]:
    if len(entries) < 2:
        return []
    cases = []
    if book.on(rb.DUPLICATE_PERSON):
        cases += duplicate_person(entries)
    if book.on(rb.STACKING_PERSON):
        cases += stacking(rb.STACKING_PERSON, entries, book.person_max_programmes)
    return cases


def household_cases(entries: Sequence[Entry], book: rb.Rulebook, reference: Reference) -> list[Case]:
    cases = []
    if book.on(rb.HOUSEHOLD_CAP):
        cases += cap(entries, book.household_cap_idr)
    if len(entries) < 2:
        return cases
    if book.on(rb.DUPLICATE_HOUSEHOLD):
        cases += duplicate_household(entries, book.household_programmes)
    if book.on(rb.EXCLUSIVE_HOUSEHOLD):
        cases += exclusive(entries, book.exclusions)
    if book.on(rb.STACKING_HOUSEHOLD):
        cases += stacking(rb.STACKING_HOUSEHOLD, entries, book.household_max_programmes)
    if book.on(rb.NON_GOVERNMENT_SAME_KIND):
        cases += non_government_same_kind(entries, book.non_government_sources, reference)
    return cases
