"""The ledger decision: idempotency, duplicates and running totals per person.

State is per person token: a mapping from idempotency key (a 64-bit hash of source_system and
source_ref, see `idem_key`) to a `Payment` (what was accepted under that key). Every field is
fixed-size, so a shell can pack a person's payments into one bytes record. Totals per
programme and period are derived from it, so one value carries both the totals and the seen
keys: a re-read event after a crash finds its key and changes nothing. Keys are kept for as long as the ledger lives, not for a window.

`decide_batch` is the hot path: a batch of events in, all resulting changes out (changed person
states, one outcome per event, alerts coalesced by identity), so shells can write them in one
produce call and one transaction. It never mutates its inputs.
"""

from __future__ import annotations

import hashlib
from sys import intern
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

from aidcore import explain, outcomes
from aidcore import rulebook as rb
from aidcore.intake import BudgetAllocation, Disbursement, Reversal, TreasuryRelease, record_type_of
from aidcore.reference import Reference
from aidcore.rules import Case, Entry, person_cases
from aidcore.rupiah import rupiah

from aidcore.rulebook import DUPLICATE_PERSON as RULE_DUPLICATE_PERSON  # noqa: F401 - the names callers use
from aidcore.rulebook import MODIFIED_RESUBMISSION as RULE_MODIFIED_RESUBMISSION  # noqa: F401
from aidcore.rulebook import Rulebook  # noqa: F401


class Payment(NamedTuple):
    """One accepted payment in a person's state. Only what decisions need: the sending system and
    reference are not kept (a key hash stands for them), so alert lines name earlier payments by
    event id and the projection looks their references up in the archive."""

    event_id: bytes  # the 16 bytes of the event id (a UUID)
    programme_code: str
    period: str
    amount_idr: int
    digests: bytes  # `aidcore.intake.field_digests` of the content
    disbursed_at_us: int
    source_type: str
    household: bytes = b""  # the 16 bytes of the KK token the payment named, empty when none
    original_key: int = 0  # for a reversal: the idempotency key of the payment it reverses; else 0

    @property
    def is_reversal(self) -> bool:
        return self.original_key != 0


PersonState = Mapping[int, Payment]


def idem_key(source_system: str, source_ref: str) -> int:
    """The idempotency key as a 64-bit hash: a collision needs about 2^32 keys for one person."""
    raw = hashlib.blake2b(f"{source_system}\x1f{source_ref}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def event_id_bytes(event_id: str) -> bytes:
    return bytes.fromhex(event_id.replace("-", ""))


def event_id_text(raw: bytes) -> str:
    """The canonical UUID text of 16 bytes (what str(uuid.UUID(bytes=raw)) gives, at a fraction
    of the cost: alerts name every line this way)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class AlertLine:
    event_id: str
    source_system: str  # empty when the stream knows the event by id only (the projection fills it)
    source_ref: str
    amount_idr: int  # net of reversals known when the alert was raised
    disbursed_at_us: int
    programme_code: str = ""
    person_token: str = ""  # which member, for a household case
    source_type: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    """A case. Its identity is (rule, subject, period, fingerprint); `revision` grows as later
    events join the case, so a re-emitted alert updates the same case instead of opening one."""

    alert_id: str
    revision: int
    rule_id: str
    rulebook_version: str
    outcome_code: str
    subject_kind: str  # "PERSON" | "HOUSEHOLD"
    subject_token: str
    programme_code: str
    period: str
    region_code: str
    lines: tuple[AlertLine, ...]
    amount_idr_at_stake: int
    amount_idr_total: int
    message: str
    raised_at_us: int
    trigger_event_id: str
    trigger_recorded_at_us: int
    status: str = "open"  # "open" | "void_reversed" (held only because of a payment since reversed)
    threshold: int = 0  # the rulebook's limit the case broke (cap in rupiah, max programmes), if any


@dataclass(slots=True)
class BatchResult:
    changed: dict[str, dict[str, Payment]] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)  # one per input event, same order
    alerts: dict[str, Alert] = field(default_factory=dict)  # by alert_id, latest revision wins
    postings: list["Posting"] = field(default_factory=list)  # for the household stage, in decision order
    # pending reversals the batch settled against their original without applying them:
    # (person token, the reversal's key, outcome); they are gone from `changed`
    dropped: list[tuple[str, int, str]] = field(default_factory=list)
    # event ids (16 bytes) of the reversals that took effect in this batch, in decision order: on
    # arrival, or when the original they waited for arrived. What the projection posts.
    applied: list[bytes] = field(default_factory=list)
    # (person token, period) of each payment accepted but not evaluated: its person already holds
    # more than `Reference.period_payments_max` payments of the period (a placeholder identity)
    unevaluated: list[tuple[str, str]] = field(default_factory=list)


def alert_id(rule_id: str, subject_token: str, period: str, fingerprint: str) -> str:
    raw = "\x1f".join((rule_id, subject_token, period, fingerprint)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def first_difference(old: bytes, new: bytes, fields: Sequence[str] = outcomes.CONTENT_FIELDS) -> str:
    """The first content field whose 2-byte digest differs, as exists_with_different_<field>;
    `exists` when none does. Only meaningful once the event ids are known to differ."""
    if old == new:
        return outcomes.EXISTS
    for i, name in enumerate(fields):
        a = old[i * 2 : i * 2 + 2]
        b = new[i * 2 : i * 2 + 2]
        if a != b:
            return outcomes.exists_with_different(name)
    return "exists_with_different_content"


def resubmission_outcome(original_event_id: str | bytes, original_digests: bytes, event: Disbursement | Reversal,
                         digests: bytes | None = None, original_is_reversal: bool = False) -> str:
    """The outcome for an idempotency key seen before. The event id is a SHA-256 digest of the
    whole content, so equal ids mean a true redelivery; the short per-field digests only name
    the field that differs (and can collide, hence `exists_with_different_content`)."""
    if isinstance(original_event_id, bytes):
        original_event_id = event_id_text(original_event_id)
    if original_event_id == event.event_id:
        return outcomes.EXISTS
    is_reversal = isinstance(event, Reversal)
    if is_reversal != original_is_reversal:
        return "exists_with_different_record_type"
    fields = outcomes.REVERSAL_CONTENT_FIELDS if is_reversal else outcomes.CONTENT_FIELDS
    outcome = first_difference(original_digests, digests if digests is not None else event.digests(), fields)
    return "exists_with_different_content" if outcome == outcomes.EXISTS else outcome


_CONTENT_FIELDS_BY_TYPE = {
    "disbursement": outcomes.CONTENT_FIELDS,
    "reversal": outcomes.REVERSAL_CONTENT_FIELDS,
    "allocation": outcomes.ALLOCATION_CONTENT_FIELDS,
    "release": outcomes.RELEASE_CONTENT_FIELDS,
}


def key_outcome(original_type: str, original_event_id: str, original_digests: bytes,
                event: Disbursement | Reversal | BudgetAllocation | TreasuryRelease) -> str:
    """`resubmission_outcome` for a key seen before under any record type (intake's check, and
    the projection's for the budget side, which no stream decides): `exists` for the same
    content, `exists_with_different_record_type` for another kind of record, else the first
    content field that differs."""
    if original_event_id == event.event_id:
        return outcomes.EXISTS
    record_type = record_type_of(event)
    if record_type != original_type:
        return "exists_with_different_record_type"
    outcome = first_difference(original_digests, event.digests(), _CONTENT_FIELDS_BY_TYPE[record_type])
    return "exists_with_different_content" if outcome == outcomes.EXISTS else outcome


def payment_of(event: Disbursement, digests: bytes) -> Payment:
    # Codes, periods and regions repeat across millions of payments: interned, each distinct value
    # is stored once, and the duplicate check compares them by identity.
    return Payment(
        event_id_bytes(event.event_id),
        intern(event.programme_code),
        intern(event.period),
        event.amount_idr,
        digests,
        event.disbursed_at_us,
        intern(event.source_type),
        bytes.fromhex(event.kk_token) if event.kk_token else b"",
    )


def reversal_entry(event: Reversal, digests: bytes, original: Payment | None) -> Payment:
    """A reversal as an entry of the person state. It takes the programme and period of its
    original when that is known; a pending one has none (it is matched by key, not by period)."""
    return Payment(
        event_id_bytes(event.event_id),
        original.programme_code if original is not None else "",
        original.period if original is not None else "",
        event.amount_idr,
        digests,
        event.reversed_at_us,
        original.source_type if original is not None else "",
        b"",
        idem_key(event.original_source_system, event.original_source_ref),
    )


def reversed_amounts(state: PersonState) -> dict[int, int]:
    """Original key -> rupiah reversed so far. A reversal never takes more than what is left of
    its original. Those accepted after their original were checked when they came (they have the
    original's programme) and count first; those that waited for it count in order of reversal
    time, and one that no longer fits counts for nothing, as if it had come after its original
    (reversal_exceeds_original): a reversal of more than is left changes nothing, whether it came
    before or after its original."""
    found = [p for p in state.values() if p.original_key]
    if not found:
        return {}
    out: dict[int, int] = {}
    for p in sorted(found, key=lambda p: (not p.programme_code, p.disbursed_at_us, p.event_id)):
        done = out.get(p.original_key, 0)
        original = state.get(p.original_key)
        if original is not None and done + p.amount_idr > original.amount_idr:
            continue
        out[p.original_key] = done + p.amount_idr
    return out


def totals(state: PersonState) -> dict[tuple[str, str], tuple[int, int]]:
    """(programme, period) -> (amount_idr_total net of reversals, payments)."""
    reversed_by = reversed_amounts(state)
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for key, p in state.items():
        if p.original_key:
            continue
        k = (p.programme_code, p.period)
        amount, count = out.get(k, (0, 0))
        out[k] = (amount + max(0, p.amount_idr - reversed_by.get(key, 0)), count + 1)
    return out


def pending_reversals(state: PersonState) -> dict[int, Payment]:
    """Reversal entries (by their own key) whose original is not in the state."""
    return {k: p for k, p in state.items() if p.original_key and p.original_key not in state}


class Posting(NamedTuple):
    """What the person stage tells the household stage: one payment (net of reversals known so
    far) or one reversal (a negative amount naming its original), for the household's partition."""

    household: str  # KK token, or the person token when the payment named no KK
    event_id: bytes
    person: bytes
    programme_code: str
    period: str
    amount_idr: int
    source_type: str
    disbursed_at_us: int
    region_code: str
    original_event_id: bytes  # b"" for a payment
    recorded_at_us: int


def _household_of(payment: Payment, person_token: str) -> str:
    return payment.household.hex() if payment.household else person_token


def live_entries(state: PersonState, period: str, reversed_by: dict[int, int] | None = None) -> list[Entry]:
    """The rules' view of a person's period: payments net of reversals, fully reversed ones left out."""
    if reversed_by is None:
        reversed_by = reversed_amounts(state)
    out = []
    for key, p in state.items():
        if p[2] is period and not p.original_key:  # interned: identity, the hot loop of the worker
            net = p.amount_idr - reversed_by.get(key, 0) if reversed_by else p.amount_idr
            if net > 0:
                out.append(Entry(p.event_id, b"", p.programme_code, net, p.source_type, p.disbursed_at_us))
    return out


def reversals_in(state: PersonState, period: str) -> int:
    """How many reversals apply to payments of the period (pending ones included once their
    original is there), whatever the order they came in."""
    n = 0
    for p in state.values():
        if p.original_key:
            original = state.get(p.original_key)
            if original is not None and original.period == period:
                n += 1
    return n


def revision(case: Case, reversals: int) -> int:
    """A case's revision: its lines plus twice the reversals of its period. A payment joining
    adds one; a reversal adds two and removes at most one line; so it only grows, and the same
    events give the same revision in any order."""
    return len(case.entries) + 2 * reversals


def decide_batch(
    states: Mapping[str, PersonState],
    events: Sequence[Disbursement | Reversal],
    *,
    rulebook: Rulebook,
    reference: Reference,
    now_us: int,
) -> BatchResult:
    result = BatchResult()
    changed = result.changed
    for event in events:
        token = event.person_token
        state = changed.get(token)
        if state is None:
            state = dict(states.get(token, ()))
        key = idem_key(event.source_system, event.source_ref)
        digests = event.digests()
        seen = state.get(key)
        if seen is not None:
            outcome = resubmission_outcome(seen.event_id, seen.digests, event, digests, seen.is_reversal)
            result.outcomes.append(outcome)
            if outcome != outcomes.EXISTS and rulebook.on(RULE_MODIFIED_RESUBMISSION):
                alert = modified_resubmission_alert(event, seen, token, outcome, rulebook, reference, now_us)
                result.alerts[alert.alert_id] = alert
            continue
        if isinstance(event, Reversal):
            _decide_reversal(event, key, digests, state, token, result, rulebook, reference, now_us)
            continue
        payment = payment_of(event, digests)
        state[key] = payment
        changed[token] = state
        result.outcomes.append(outcomes.ACCEPTED)
        # reversals are rare: one look for any, and the reversal paths only when there are some
        has_reversals = len(state) > 1 and any(p[8] for p in state.values())
        if has_reversals:
            _apply_waiting(state, key, payment.amount_idr, token, result)
        reversed_by = reversed_amounts(state) if has_reversals else None
        net = event.amount_idr - (reversed_by or {}).get(key, 0)
        result.postings.append(Posting(
            _household_of(payment, token), payment.event_id, bytes.fromhex(token), payment.programme_code,
            payment.period, max(0, net), payment.source_type, payment.disbursed_at_us, event.region_code, b"",
            event.recorded_at_us))
        if len(state) > reference.period_payments_max and placeholder(state.values(), payment.period, reference):
            result.unevaluated.append((token, payment.period))
            continue
        if len(state) > 1:
            entries = live_entries(state, payment.period, reversed_by or {})
            reversals = reversals_in(state, payment.period) if reversed_by else 0
            for case in person_cases(entries, rulebook):
                if any(e.event_id == payment.event_id for e in case.entries):
                    alert = case_alert(case, "PERSON", token, payment.period, event.region_code, rulebook, reference,
                                       event.event_id, event.recorded_at_us, now_us, revision(case, reversals),
                                       {payment.event_id: (event.source_system, event.source_ref)})
                    result.alerts[alert.alert_id] = alert
    return result


def placeholder(payments, period: str, reference: Reference) -> bool:
    """Whether a subject's payments of `period` (anything with a `period`) are more than a real
    recipient can have: past that, each decision would cost time in proportion to them, and the
    cases would list thousands of lines that say nothing but "this identity is shared"."""
    return sum(1 for p in payments if p.period == period) > reference.period_payments_max


def _apply_waiting(state: dict, key: int, amount: int, token: str, result: BatchResult) -> None:
    """The original under `key` just arrived: reversals that waited for it apply in order of
    reversal time while they fit; one that no longer fits is dropped (reversal_exceeds_original),
    exactly as if it had come after its original."""
    waiting = sorted(((k, p) for k, p in state.items() if p.original_key == key),
                     key=lambda kp: (kp[1].disbursed_at_us, kp[1].event_id))
    left = amount
    for k, p in waiting:
        if p.amount_idr <= left:
            left -= p.amount_idr
            result.applied.append(p.event_id)
        else:
            del state[k]
            result.dropped.append((token, k, "reversal_exceeds_original"))


def _drop_reversals_of(state: dict, key: int, token: str, result: BatchResult) -> None:
    """A reversal was just recorded under `key`: reversals that waited for an original under that
    key name a reversal, so they are dropped (reversal_of_a_reversal)."""
    for k, p in list(state.items()):
        if p.original_key == key and k != key:
            del state[k]
            result.dropped.append((token, k, "reversal_of_a_reversal"))


def _decide_reversal(event: Reversal, key: int, digests: bytes, state: dict, token: str, result: BatchResult,
                     rulebook: Rulebook, reference: Reference, now_us: int) -> None:
    original_key = idem_key(event.original_source_system, event.original_source_ref)
    original = state.get(original_key)
    if original is None:
        _drop_reversals_of(state, key, token, result)
        state[key] = reversal_entry(event, digests, None)
        result.changed[token] = state
        result.outcomes.append(outcomes.REVERSAL_PENDING)
        return
    if original.is_reversal:
        result.outcomes.append("reversal_of_a_reversal")
        return
    reversed_by = reversed_amounts(state)
    if event.amount_idr > original.amount_idr - reversed_by.get(original_key, 0):
        result.outcomes.append("reversal_exceeds_original")
        return
    before = {(c.rule_id, c.fingerprint): c for c in person_cases(live_entries(state, original.period, reversed_by),
                                                                     rulebook)}
    _drop_reversals_of(state, key, token, result)
    state[key] = reversal_entry(event, digests, original)
    result.changed[token] = state
    result.outcomes.append(outcomes.ACCEPTED)
    result.applied.append(state[key].event_id)
    result.postings.append(Posting(
        _household_of(original, token), event_id_bytes(event.event_id), bytes.fromhex(token), original.programme_code,
        original.period, -event.amount_idr, original.source_type, event.reversed_at_us, "", original.event_id,
        event.recorded_at_us))
    after = {(c.rule_id, c.fingerprint): c for c in person_cases(live_entries(state, original.period), rulebook)}
    reversals = reversals_in(state, original.period)
    for alert in case_changes(before, after, "PERSON", token, original.period, "", rulebook, reference,
                              event.event_id, event.recorded_at_us, now_us, reversals):
        earlier = result.alerts.get(alert.alert_id)
        if earlier is not None and earlier.region_code:
            # the person state keeps no village; a revision raised earlier in this batch knew it
            alert = case_alert_with_region(alert, earlier.region_code, reference)
        result.alerts[alert.alert_id] = alert


def case_changes(before: dict, after: dict, subject_kind: str, subject: str, period: str, region_code: str,
                 rulebook: Rulebook, reference: Reference, trigger_event_id: str, trigger_recorded_at_us: int,
                 now_us: int, reversals: int) -> list[Alert]:
    """Alerts for what a reversal did to a subject's cases: changed ones updated, vanished ones
    voided (they held only because of the reversed payment)."""
    out = []
    for ident, case in after.items():
        if before.get(ident) != case:
            out.append(case_alert(case, subject_kind, subject, period, region_code, rulebook, reference,
                                  trigger_event_id, trigger_recorded_at_us, now_us, revision(case, reversals), {}))
    for ident, case in before.items():
        if ident not in after:
            out.append(case_alert(case, subject_kind, subject, period, region_code, rulebook, reference,
                                  trigger_event_id, trigger_recorded_at_us, now_us, revision(case, reversals), {},
                                  status="void_reversed"))
    return out


def _threshold(rule_id: str, rulebook: Rulebook) -> int:
    if rule_id == rb.STACKING_PERSON:
        return rulebook.person_max_programmes
    if rule_id == rb.STACKING_HOUSEHOLD:
        return rulebook.household_max_programmes
    if rule_id == rb.HOUSEHOLD_CAP:
        return rulebook.household_cap_idr
    return 0


def case_alert(case: Case, subject_kind: str, subject: str, period: str, region_code: str, rulebook: Rulebook,
               reference: Reference, trigger_event_id: str, trigger_recorded_at_us: int, now_us: int,
               case_revision: int, refs: Mapping[bytes, tuple[str, str]], status: str = "open") -> Alert:
    """A rule's case as an alert. Lines name events by id, with the source reference where the
    caller knows it (`refs`); the projection fills in the rest from the archive."""
    lines = tuple(
        AlertLine(event_id_text(e.event_id), *refs.get(e.event_id, ("", "")), e.amount_idr, e.disbursed_at_us,
                  e.programme_code, e.person.hex() if e.person else "", e.source_type)
        for e in case.entries
    )
    threshold = _threshold(case.rule_id, rulebook)
    return Alert(
        alert_id=alert_id(case.rule_id, subject, period, case.fingerprint),
        revision=case_revision,
        rule_id=case.rule_id,
        rulebook_version=rulebook.version,
        outcome_code="void_reversed" if status != "open" else "duplicate" if "duplicate" in case.rule_id else case.rule_id,
        subject_kind=subject_kind,
        subject_token=subject,
        programme_code=case.programme_code,
        period=period,
        region_code=region_code,
        lines=lines,
        amount_idr_at_stake=case.amount_idr_at_stake,
        amount_idr_total=case.amount_idr_total,
        message=explain.message(case.rule_id, subject_kind, region_code, case.programme_code, period, lines,
                                case.amount_idr_at_stake, threshold, status, reference),
        raised_at_us=now_us,
        trigger_event_id=trigger_event_id,
        trigger_recorded_at_us=trigger_recorded_at_us,
        status=status,
        threshold=threshold,
    )


def case_alert_with_region(alert: Alert, region_code: str, reference: Reference) -> Alert:
    """The same alert placed in a village, its words rendered again."""
    from dataclasses import replace

    return replace(alert, region_code=region_code, message=explain.message(
        alert.rule_id, alert.subject_kind, region_code, alert.programme_code, alert.period, alert.lines,
        alert.amount_idr_at_stake, alert.threshold, alert.status, reference))


def describe_line(line: AlertLine) -> str:
    return explain.describe_line(line)


def duplicate_message(event_region: str, programme_code: str, period: str, lines: Sequence[AlertLine],
                      reference: Reference) -> str:
    at_stake = sum(line.amount_idr for line in lines) - lines[0].amount_idr
    return explain.message(RULE_DUPLICATE_PERSON, "PERSON", event_region, programme_code, period, lines, at_stake, 0,
                           "open", reference)


def modified_resubmission_alert(
    event: Disbursement | Reversal, seen: Payment, seen_person_token: str, outcome: str, rulebook: Rulebook,
    reference: Reference, now_us: int,
) -> Alert:
    """The case of a key sent again with other content. Its subject is the person the original
    payment was recorded for (the new version may name someone else)."""
    field_name = outcome.removeprefix("exists_with_different_")
    is_reversal = isinstance(event, Reversal)
    new_programme = getattr(event, "programme_code", "reversal")
    new_period = getattr(event, "period", "")
    new_at = event.reversed_at_us if is_reversal else event.disbursed_at_us
    original = AlertLine(event_id_text(seen.event_id), event.source_system, event.source_ref, seen.amount_idr,
                         seen.disbursed_at_us, seen.programme_code)
    attempt = AlertLine(event.event_id, event.source_system, event.source_ref, event.amount_idr, new_at, new_programme)
    message = (
        f"{event.source_system} sent reference {event.source_ref} again with a different {field_name}: "
        f"the ledger keeps the original ({rupiah(seen.amount_idr)}, {seen.programme_code or 'reversal'} {seen.period}) "
        f"and rejected the new version ({rupiah(event.amount_idr)}, {new_programme} {new_period}). "
        f"Either the sending system has a bug or the record was altered."
    )
    region = getattr(event, "region_code", "")
    return Alert(
        alert_id=alert_id(RULE_MODIFIED_RESUBMISSION, seen_person_token, seen.period,
                          f"{event.source_system}\x1f{event.source_ref}"),
        revision=1,
        rule_id=RULE_MODIFIED_RESUBMISSION,
        rulebook_version=rulebook.version,
        outcome_code=outcome,
        subject_kind="PERSON",
        subject_token=seen_person_token,
        programme_code=seen.programme_code,
        period=seen.period,
        region_code=region,
        lines=(original, attempt),
        amount_idr_at_stake=abs(event.amount_idr - seen.amount_idr),
        amount_idr_total=seen.amount_idr,
        message=message,
        raised_at_us=now_us,
        trigger_event_id=event.event_id,
        trigger_recorded_at_us=event.recorded_at_us,
    )
