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
import uuid
from sys import intern
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

from aidcore import outcomes
from aidcore.intake import Disbursement
from aidcore.reference import Reference
from aidcore.rupiah import local_time, rupiah

RULE_DUPLICATE_PERSON = "duplicate_person_programme_period"
RULE_MODIFIED_RESUBMISSION = "modified_resubmission"


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
    return str(uuid.UUID(bytes=raw))


@dataclass(frozen=True, slots=True)
class Rulebook:
    version: str = "builtin-1"
    enabled: frozenset[str] = frozenset({RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION})


@dataclass(frozen=True, slots=True)
class AlertLine:
    event_id: str
    source_system: str
    source_ref: str
    amount_idr: int
    disbursed_at_us: int


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


@dataclass(slots=True)
class BatchResult:
    changed: dict[str, dict[str, Payment]] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)  # one per input event, same order
    alerts: dict[str, Alert] = field(default_factory=dict)  # by alert_id, latest revision wins


def alert_id(rule_id: str, subject_token: str, period: str, fingerprint: str) -> str:
    raw = "\x1f".join((rule_id, subject_token, period, fingerprint)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def first_difference(old: bytes, new: bytes) -> str:
    """The first content field whose 2-byte digest differs, as exists_with_different_<field>;
    `exists` when none does. Only meaningful once the event ids are known to differ."""
    if old == new:
        return outcomes.EXISTS
    for i, name in enumerate(outcomes.CONTENT_FIELDS):
        a = old[i * 2 : i * 2 + 2]
        b = new[i * 2 : i * 2 + 2]
        if a != b:
            return outcomes.exists_with_different(name)
    return "exists_with_different_content"


def resubmission_outcome(original_event_id: str | bytes, original_digests: bytes, event: Disbursement,
                         digests: bytes | None = None) -> str:
    """The outcome for an idempotency key seen before. The event id is a SHA-256 digest of the
    whole content, so equal ids mean a true redelivery; the short per-field digests only name
    the field that differs (and can collide, hence `exists_with_different_content`)."""
    if isinstance(original_event_id, bytes):
        original_event_id = event_id_text(original_event_id)
    if original_event_id == event.event_id:
        return outcomes.EXISTS
    outcome = first_difference(original_digests, digests if digests is not None else event.digests())
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


def totals(state: PersonState) -> dict[tuple[str, str], tuple[int, int]]:
    """(programme, period) -> (amount_idr_total, payments)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for p in state.values():
        k = (p.programme_code, p.period)
        amount, count = out.get(k, (0, 0))
        out[k] = (amount + p.amount_idr, count + 1)
    return out


def decide_batch(
    states: Mapping[str, PersonState],
    events: Sequence[Disbursement],
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
            outcome = resubmission_outcome(seen.event_id, seen.digests, event, digests)
            result.outcomes.append(outcome)
            if outcome != outcomes.EXISTS and RULE_MODIFIED_RESUBMISSION in rulebook.enabled:
                alert = modified_resubmission_alert(event, seen, token, outcome, rulebook, reference, now_us)
                result.alerts[alert.alert_id] = alert
            continue
        state[key] = payment_of(event, digests)
        changed[token] = state
        result.outcomes.append(outcomes.ACCEPTED)
        if RULE_DUPLICATE_PERSON in rulebook.enabled:
            alert = _duplicate_alert(event, state, rulebook, reference, now_us)
            if alert is not None:
                result.alerts[alert.alert_id] = alert
    return result


def _lines(state: PersonState, programme: str, period: str, trigger: Disbursement) -> list[AlertLine]:
    """The case's payments, oldest first. Only the triggering event's own reference is known
    here; the others are named by event id (`source_system`/`source_ref` empty)."""
    lines = []
    for p in state.values():
        if p.programme_code == programme and p.period == period:
            event_id = event_id_text(p.event_id)
            if event_id == trigger.event_id:
                lines.append(AlertLine(event_id, trigger.source_system, trigger.source_ref, p.amount_idr, p.disbursed_at_us))
            else:
                lines.append(AlertLine(event_id, "", "", p.amount_idr, p.disbursed_at_us))
    lines.sort(key=lambda line: (line.disbursed_at_us, line.event_id))
    return lines


def describe_line(line: AlertLine) -> str:
    source = f"by {line.source_system} ref {line.source_ref}" if line.source_system else f"in event {line.event_id[:8]}"
    return f"{rupiah(line.amount_idr)} {source} on {local_time(line.disbursed_at_us)[:10]}"


def duplicate_message(event_region: str, programme_code: str, period: str, lines: Sequence[AlertLine],
                      reference: Reference) -> str:
    """The words of a duplicate case; the projection renders them again once every line's
    reference is known."""
    total = sum(line.amount_idr for line in lines)
    at_stake = total - lines[0].amount_idr
    name = reference.programmes[programme_code].name if programme_code in reference.programmes else programme_code
    return (
        f"One person in {reference.regency_name(event_region)} (village {event_region}) was paid "
        f"{programme_code} ({name}) for {period} {len(lines)} times: {'; '.join(describe_line(x) for x in lines)}. "
        f"{rupiah(at_stake)} paid beyond the first payment."
    )


def _duplicate_alert(
    event: Disbursement, state: PersonState, rulebook: Rulebook, reference: Reference, now_us: int
) -> Alert | None:
    programme, period = intern(event.programme_code), intern(event.period)
    same = 0
    for p in state.values():  # the hot loop of the worker: identity of interned strings, by index
        if p[2] is period and p[1] is programme:
            same += 1
    if same < 2:
        return None
    lines = _lines(state, programme, period, event)
    total = sum(line.amount_idr for line in lines)
    at_stake = total - lines[0].amount_idr
    message = duplicate_message(event.region_code, event.programme_code, event.period, lines, reference)
    return Alert(
        alert_id=alert_id(RULE_DUPLICATE_PERSON, event.person_token, event.period, event.programme_code),
        revision=len(lines),
        rule_id=RULE_DUPLICATE_PERSON,
        rulebook_version=rulebook.version,
        outcome_code="duplicate",
        subject_kind="PERSON",
        subject_token=event.person_token,
        programme_code=event.programme_code,
        period=event.period,
        region_code=event.region_code,
        lines=tuple(lines),
        amount_idr_at_stake=at_stake,
        amount_idr_total=total,
        message=message,
        raised_at_us=now_us,
        trigger_event_id=event.event_id,
        trigger_recorded_at_us=event.recorded_at_us,
    )


def modified_resubmission_alert(
    event: Disbursement, seen: Payment, seen_person_token: str, outcome: str, rulebook: Rulebook,
    reference: Reference, now_us: int,
) -> Alert:
    """The case of a key sent again with other content. Its subject is the person the original
    payment was recorded for (the new version may name someone else)."""
    field_name = outcome.removeprefix("exists_with_different_")
    original = AlertLine(event_id_text(seen.event_id), event.source_system, event.source_ref, seen.amount_idr,
                         seen.disbursed_at_us)
    attempt = AlertLine(event.event_id, event.source_system, event.source_ref, event.amount_idr, event.disbursed_at_us)
    message = (
        f"{event.source_system} sent reference {event.source_ref} again with a different {field_name}: "
        f"the ledger keeps the original ({rupiah(seen.amount_idr)}, {seen.programme_code} {seen.period}) and "
        f"rejected the new version ({rupiah(event.amount_idr)}, {event.programme_code} {event.period}). "
        f"Either the sending system has a bug or the record was altered."
    )
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
        region_code=event.region_code,
        lines=(original, attempt),
        amount_idr_at_stake=abs(event.amount_idr - seen.amount_idr),
        amount_idr_total=seen.amount_idr,
        message=message,
        raised_at_us=now_us,
        trigger_event_id=event.event_id,
        trigger_recorded_at_us=event.recorded_at_us,
    )
