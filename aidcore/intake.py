"""Intake: a raw input record (one row of JSON Lines or CSV, one HTTP body) becomes either a
validated, tokenized `Disbursement` plus the `Identity` for the vault, or a `Rejection` with a
named code. Checks run in the order of `aidcore.outcomes.INTAKE_CODES`; the first failure wins.
`record_type` picks the other kinds: a `Reversal`, and the budget side of the ledger, a
`BudgetAllocation` (a budget line's money given to an agency for a programme) and a
`TreasuryRelease` (cash sent from a treasury to an agency), each with its own codes in
`aidcore.outcomes`.

Money: `amount_idr` is whole rupiah. An integer, or a decimal string or number whose fraction is
exactly zero ("200000", "200000.00"), is accepted; any other fraction is rejected, never rounded.
"""

from __future__ import annotations

import hashlib
import struct
from zlib import crc32
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any

from aidcore import nik as nikmod
from aidcore.reference import Reference

INPUT_FIELDS: tuple[str, ...] = (
    "source_system",
    "source_ref",
    "source_type",
    "agency_code",
    "programme_code",
    "nik",
    "provisional_id",
    "kk",
    "recipient_name",
    "amount_idr",
    "kind",
    "period",
    "disbursed_at",
    "channel",
    "region_code",
    "funding_account",
)
_INPUT_FIELD_SET = frozenset(INPUT_FIELDS) | {"record_type"}

# A reversal's input record (record_type = "reversal"): it names the original by its source
# reference (original_source_system defaults to source_system) and the person, so it reaches the
# original's partition even before the original does.
REVERSAL_FIELDS: tuple[str, ...] = (
    "record_type",
    "source_system",
    "source_ref",
    "original_source_system",
    "original_source_ref",
    "agency_code",
    "nik",
    "provisional_id",
    "amount_idr",
    "reason",
    "reversed_at",
)
_REVERSAL_FIELD_SET = frozenset(REVERSAL_FIELDS)

# The budget side (record_type "allocation" or "release"): records about a budget line (funding
# account) and an agency, concerning no person. Keyed by the funding account on the log.
ALLOCATION_FIELDS: tuple[str, ...] = (
    "record_type",
    "source_system",
    "source_ref",
    "source_type",
    "funding_account",
    "agency_code",
    "programme_code",
    "fiscal_year",
    "amount_idr",
    "allocated_at",
)
RELEASE_FIELDS: tuple[str, ...] = (
    "record_type",
    "source_system",
    "source_ref",
    "source_type",
    "funding_account",
    "agency_code",
    "amount_idr",
    "released_at",
)
_ALLOCATION_FIELD_SET = frozenset(ALLOCATION_FIELDS)
_RELEASE_FIELD_SET = frozenset(RELEASE_FIELDS)
RECORD_TYPES: tuple[str, ...] = ("disbursement", "reversal", "allocation", "release")
MAX_REASON_CHARS = 500
MAX_REF_CHARS = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Disbursement:
    """One accepted disbursement, as it travels on the log: tokens, never a clear NIK."""

    event_id: str
    source_system: str
    source_ref: str
    source_type: str
    agency_code: str
    programme_code: str
    person_token: str
    identity_kind: str  # "NIK" | "PROVISIONAL"
    kk_token: str | None
    amount_idr: int
    kind: str
    period: str
    disbursed_at_us: int  # UTC microseconds
    disbursed_at_offset_min: int  # the sender's UTC offset, kept so the original time can be shown
    channel: str
    region_code: str
    funding_account: str
    recorded_at_us: int  # when intake accepted it
    field_digests: bytes = b""  # `field_digests(content_values())`, carried so the stream need not recompute

    def digests(self) -> bytes:
        return self.field_digests or field_digests(self.content_values())

    @property
    def idempotency_key(self) -> tuple[str, str]:
        return (self.source_system, self.source_ref)

    def content_values(self) -> tuple[str, ...]:
        """The compared content, in `aidcore.outcomes.CONTENT_FIELDS` order, as canonical strings."""
        return disbursement_content(self.person_token, self.programme_code, self.period, self.amount_idr, self.kind,
                                    self.channel, self.disbursed_at_us, self.disbursed_at_offset_min, self.agency_code,
                                    self.source_type, self.funding_account, self.region_code, self.kk_token)


def disbursement_content(person_token: str, programme_code: str, period: str, amount_idr: int, kind: str, channel: str,
                         disbursed_at_us: int, disbursed_at_offset_min: int, agency_code: str, source_type: str,
                         funding_account: str, region_code: str, kk_token: str | None) -> tuple[str, ...]:
    """`Disbursement.content_values` from the fields, for intake to compute before the event exists."""
    return (person_token, programme_code, period, str(amount_idr), kind, channel,
            f"{disbursed_at_us}{disbursed_at_offset_min:+d}", agency_code, source_type, funding_account, region_code,
            kk_token or "")


@dataclass(frozen=True, slots=True)
class Reversal:
    """A correction: takes back `amount_idr` of the payment recorded under (original_source_system,
    original_source_ref). It names the person too, so it reaches the partition of the original
    even when the original has not arrived yet (it then waits for it, for a bounded time)."""

    event_id: str
    source_system: str
    source_ref: str
    original_source_system: str
    original_source_ref: str
    agency_code: str
    person_token: str
    identity_kind: str
    amount_idr: int
    reason: str
    reversed_at_us: int
    reversed_at_offset_min: int
    recorded_at_us: int
    field_digests: bytes = b""

    def digests(self) -> bytes:
        return self.field_digests or field_digests(self.content_values())

    def content_values(self) -> tuple[str, ...]:
        """In `aidcore.outcomes.REVERSAL_CONTENT_FIELDS` order."""
        return (
            self.person_token,
            self.original_source_system,
            self.original_source_ref,
            str(self.amount_idr),
            self.reason,
            f"{self.reversed_at_us}{self.reversed_at_offset_min:+d}",
            self.agency_code,
        )


@dataclass(frozen=True, slots=True)
class BudgetAllocation:
    """A budget line's money given to an agency for one programme and fiscal year: the top of
    the money's path, the authority the agency's payments under that programme draw on."""

    event_id: str
    source_system: str
    source_ref: str
    source_type: str  # whose budget the line is (APBN, APBD_PROV, ...)
    funding_account: str  # the budget line; the record key on the log
    agency_code: str
    programme_code: str
    fiscal_year: int
    amount_idr: int
    allocated_at_us: int
    allocated_at_offset_min: int
    recorded_at_us: int
    field_digests: bytes = b""

    def digests(self) -> bytes:
        return self.field_digests or field_digests(self.content_values())

    def content_values(self) -> tuple[str, ...]:
        """In `aidcore.outcomes.ALLOCATION_CONTENT_FIELDS` order."""
        return (
            self.source_type,
            self.funding_account,
            self.agency_code,
            self.programme_code,
            str(self.fiscal_year),
            str(self.amount_idr),
            f"{self.allocated_at_us}{self.allocated_at_offset_min:+d}",
        )


@dataclass(frozen=True, slots=True)
class TreasuryRelease:
    """Cash sent from a treasury (the budget of `source_type`) to an agency, against a budget line:
    what the agency then pays its recipients from."""

    event_id: str
    source_system: str
    source_ref: str
    source_type: str  # the treasury the cash leaves (APBN, APBD_PROV, ...)
    funding_account: str  # the budget line; the record key on the log
    agency_code: str
    amount_idr: int
    released_at_us: int
    released_at_offset_min: int
    recorded_at_us: int
    field_digests: bytes = b""

    def digests(self) -> bytes:
        return self.field_digests or field_digests(self.content_values())

    def content_values(self) -> tuple[str, ...]:
        """In `aidcore.outcomes.RELEASE_CONTENT_FIELDS` order."""
        return (
            self.source_type,
            self.funding_account,
            self.agency_code,
            str(self.amount_idr),
            f"{self.released_at_us}{self.released_at_offset_min:+d}",
        )


BudgetRecord = BudgetAllocation | TreasuryRelease


def record_type_of(event: "Disbursement | Reversal | BudgetAllocation | TreasuryRelease") -> str:
    """The input record's `record_type` of an event."""
    if isinstance(event, Disbursement):
        return "disbursement"
    if isinstance(event, Reversal):
        return "reversal"
    return "allocation" if isinstance(event, BudgetAllocation) else "release"


@dataclass(frozen=True, slots=True)
class Identity:
    """What only the identity vault may hold."""

    person_token: str
    identity_kind: str
    nik: str | None
    provisional_id: str | None
    kk: str | None
    recipient_name: str


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    disbursement: Disbursement
    identity: Identity


@dataclass(frozen=True, slots=True)
class AcceptedReversal:
    reversal: Reversal


@dataclass(frozen=True, slots=True)
class AcceptedBudget:
    record: BudgetAllocation | TreasuryRelease


def content_digest(values: tuple[str, ...]) -> bytes:
    h = hashlib.sha256()
    for v in values:
        h.update(v.encode("utf-8"))
        h.update(b"\x1f")
    return h.digest()


DIGESTS_BYTES = 24


def field_digests(values: tuple[str, ...]) -> bytes:
    """Two bytes per content field (the low half of its CRC-32), zero-padded to DIGESTS_BYTES:
    enough to name which field of a resubmission changed. Equality of content is decided by the
    event id, never by these."""
    packed = struct.pack(f">{len(values)}H", *[crc32(v.encode("utf-8")) & 0xFFFF for v in values])
    return packed.ljust(DIGESTS_BYTES, b"\0")


def make_event_id(source_system: str, source_ref: str, digest: bytes) -> str:
    """Deterministic: the same record submitted twice gets the same event id: the first 16 bytes
    of a SHA-256 with the version-5 and RFC 4122 variant bits set, as canonical UUID text (what
    str(uuid.UUID(bytes=..., version=5)) gives, which costs a fifth of an intake's time)."""
    h = hashlib.sha256(source_system.encode() + b"\x1f" + source_ref.encode() + b"\x1f" + digest).digest()
    x = (int.from_bytes(h[:16], "big") & _UUID_CLEAR) | _UUID_V5
    t = f"{x:032x}"
    return f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)  # version nibble, variant bits
_UUID_V5 = (0x5000 << 64) | (0x8000 << 48)


def to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    return value.strip()


def _reject(code: str, field: str | None, message: str) -> Rejection:
    return Rejection(code, field, message)


_MAX_AMOUNT_CHARS = 24


def parse_amount(value: Any) -> int | str:
    """Whole rupiah, or the code of the first problem. Text must be ASCII digits with at most a
    fraction of zeros ("200000", "200000.00"): no exponents, signs other than '-', separators or
    non-ASCII digits, and nothing long enough to be expensive to read."""
    if value is None or value == "":
        return "amount_idr_required"
    if isinstance(value, bool):
        return "amount_idr_must_be_integer"
    if isinstance(value, int):
        amount = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "amount_idr_must_be_integer"
        if not value.is_integer():
            return "amount_idr_must_be_whole_rupiah"
        amount = int(value)
    else:
        text = str(value).strip()
        if not text:
            return "amount_idr_required"
        if len(text) > _MAX_AMOUNT_CHARS:
            return "amount_idr_must_be_integer"
        negative = text.startswith("-")
        digits = text[1:] if negative else text
        whole, dot, fraction = digits.partition(".")
        if not whole or not all(c in nikmod.ASCII_DIGITS for c in whole) or (dot and not fraction):
            return "amount_idr_must_be_integer"
        if fraction and not all(c in nikmod.ASCII_DIGITS for c in fraction):
            return "amount_idr_must_be_integer"
        if len(fraction) > 2:
            # "200.000" is two hundred thousand in Indonesian notation: never guess a separator
            return "amount_idr_must_be_integer"
        if fraction.strip("0"):
            return "amount_idr_must_be_whole_rupiah"
        amount = -int(whole) if negative else int(whole)
    if amount <= 0:
        return "amount_idr_must_be_positive"
    return amount


def period_ok(period: str) -> bool:
    if len(period) != 7 or period[4] != "-":
        return False
    year, month = period[:4], period[5:]
    if not (nikmod.is_ascii_digits(year, 4) and nikmod.is_ascii_digits(month, 2)):
        return False
    return 2000 <= int(year) <= 2100 and 1 <= int(month) <= 12


def validate_any(raw: Any, *, reference: Reference, token_key: bytes,
                 now_us: int) -> Accepted | AcceptedReversal | AcceptedBudget | Rejection:
    """A disbursement, or the record_type the record names: a reversal, an allocation or a release."""
    if isinstance(raw, Mapping):
        record_type = _text(raw, "record_type") or "disbursement"
        if record_type == "reversal":
            return validate_reversal(raw, reference=reference, token_key=token_key, now_us=now_us)
        if record_type == "allocation":
            return validate_allocation(raw, reference=reference, now_us=now_us)
        if record_type == "release":
            return validate_release(raw, reference=reference, now_us=now_us)
        if record_type != "disbursement":
            return _reject("record_type_unknown", "record_type",
                           f"record_type must be one of {', '.join(RECORD_TYPES)}")
    return validate_record(raw, reference=reference, token_key=token_key, now_us=now_us)


def _identity(raw: Mapping[str, Any], token_key: bytes) -> tuple[str, str, str, str] | Rejection:
    """(token, identity kind, nik, provisional id) or the rejection."""
    nik = nikmod.normalize(_text(raw, "nik"))
    provisional_id = _text(raw, "provisional_id")
    if not nik and not provisional_id:
        return _reject("identity_required", "nik", "a NIK or a provisional_id is required")
    if nik:
        problem = nikmod.nik_problem(nik)
        if problem:
            return _reject(problem, "nik", _NIK_MESSAGES[problem])
        return nikmod.person_token(token_key, nik), "NIK", nik, ""
    problem = nikmod.provisional_problem(provisional_id)
    if problem:
        return _reject(problem, "provisional_id", "provisional_id must be 4-64 printable ASCII characters")
    return nikmod.provisional_token(token_key, provisional_id), "PROVISIONAL", "", provisional_id


def _moment(raw: Mapping[str, Any], name: str, now_us: int, reference: Reference) -> tuple[int, int] | Rejection:
    """(UTC microseconds, offset minutes) of an ISO 8601 field with offset, not in the future."""
    try:
        moment = datetime.fromisoformat(_text(raw, name))
    except ValueError:
        return _reject(f"{name}_invalid", name, f"{name} must be an ISO 8601 timestamp")
    offset = moment.utcoffset()
    if offset is None:
        return _reject(f"{name}_needs_offset", name, f"{name} must carry a UTC offset, e.g. +07:00")
    us = to_us(moment)
    if us > now_us + reference.future_tolerance_s * 1_000_000:
        return _reject(f"{name}_in_future", name, f"{name} lies in the future")
    return us, int(offset.total_seconds() // 60)


def validate_reversal(raw: Mapping[str, Any], *, reference: Reference, token_key: bytes,
                      now_us: int) -> AcceptedReversal | Rejection:
    """A reversal's intake decision; checks in `aidcore.outcomes.REVERSAL_INTAKE_CODES` order."""
    for name in raw:
        if name not in _REVERSAL_FIELD_SET:
            return _reject("field_unknown", str(name), f"unknown field {str(name)[:40]!r} for a reversal")
    source_system = _text(raw, "source_system")
    source_ref = _text(raw, "source_ref")
    if not source_system:
        return _reject("source_system_required", "source_system", "source_system is required")
    if not source_ref:
        return _reject("source_ref_required", "source_ref", "source_ref is required")
    if len(source_system) > MAX_REF_CHARS:
        return _reject("source_system_too_long", "source_system", f"at most {MAX_REF_CHARS} characters")
    if len(source_ref) > MAX_REF_CHARS:
        return _reject("source_ref_too_long", "source_ref", f"at most {MAX_REF_CHARS} characters")
    original_system = _text(raw, "original_source_system") or source_system
    original_ref = _text(raw, "original_source_ref")
    if not original_ref:
        return _reject("original_source_ref_required", "original_source_ref", "a reversal must name the original's source_ref")
    if len(original_system) > MAX_REF_CHARS or len(original_ref) > MAX_REF_CHARS:
        return _reject("original_source_ref_too_long", "original_source_ref", f"at most {MAX_REF_CHARS} characters")
    if (original_system, original_ref) == (source_system, source_ref):
        return _reject("reversal_names_itself", "original_source_ref", "a reversal cannot reverse itself")
    agency_code = _text(raw, "agency_code")
    if not agency_code:
        return _reject("agency_code_required", "agency_code", "agency_code is required")
    who = _identity(raw, token_key)
    if isinstance(who, Rejection):
        return who
    token, identity_kind, _, _ = who
    amount = parse_amount(raw.get("amount_idr"))
    if isinstance(amount, str):
        return _reject(amount, "amount_idr", _AMOUNT_MESSAGES[amount])
    if amount > reference.max_amount_idr:
        return _reject("amount_idr_too_large", "amount_idr", f"more than Rp {reference.max_amount_idr:,} in one reversal")
    reason = _text(raw, "reason")
    if not reason:
        return _reject("reason_required", "reason", "a reversal must say why")
    if len(reason) > MAX_REASON_CHARS:
        return _reject("reason_too_long", "reason", f"at most {MAX_REASON_CHARS} characters")
    when = _moment(raw, "reversed_at", now_us, reference)
    if isinstance(when, Rejection):
        return when
    reversed_at_us, offset_min = when
    partial = Reversal("", source_system, source_ref, original_system, original_ref, agency_code, token, identity_kind,
                       amount, reason, reversed_at_us, offset_min, now_us)
    values = partial.content_values()
    event_id = make_event_id(source_system, source_ref, content_digest(("reversal", *values)))
    return AcceptedReversal(Reversal(event_id, source_system, source_ref, original_system, original_ref, agency_code,
                                     token, identity_kind, amount, reason, reversed_at_us, offset_min, now_us,
                                     field_digests(values)))


def _budget_head(raw: Mapping[str, Any], allowed: frozenset[str], kind: str,
                 reference: Reference) -> tuple[str, str, str, str, str] | Rejection:
    """The checks a budget record starts with: unknown fields, the source key, the source type,
    the funding account and the agency, in that order."""
    for name in raw:
        if name not in allowed:
            return _reject("field_unknown", str(name), f"unknown field {str(name)[:40]!r} for {kind}")
    source_system = _text(raw, "source_system")
    source_ref = _text(raw, "source_ref")
    if not source_system:
        return _reject("source_system_required", "source_system", "source_system is required")
    if not source_ref:
        return _reject("source_ref_required", "source_ref", "source_ref is required")
    if len(source_system) > MAX_REF_CHARS:
        return _reject("source_system_too_long", "source_system", f"at most {MAX_REF_CHARS} characters")
    if len(source_ref) > MAX_REF_CHARS:
        return _reject("source_ref_too_long", "source_ref", f"at most {MAX_REF_CHARS} characters")
    source_type = _text(raw, "source_type")
    if source_type not in reference.source_types:
        return _reject("source_type_unknown", "source_type", f"source_type must be one of {sorted(reference.source_types)}")
    funding_account = _text(raw, "funding_account")
    if not funding_account:
        return _reject("funding_account_required", "funding_account", "funding_account (the budget line) is required")
    if len(funding_account) > MAX_REF_CHARS:
        return _reject("funding_account_too_long", "funding_account", f"at most {MAX_REF_CHARS} characters")
    agency_code = _text(raw, "agency_code")
    if not agency_code:
        return _reject("agency_code_required", "agency_code", "agency_code is required")
    return source_system, source_ref, source_type, funding_account, agency_code


def _budget_amount(raw: Mapping[str, Any], reference: Reference) -> int | Rejection:
    amount = parse_amount(raw.get("amount_idr"))
    if isinstance(amount, str):
        return _reject(amount, "amount_idr", _AMOUNT_MESSAGES[amount])
    if amount > reference.max_budget_amount_idr:
        return _reject("amount_idr_too_large", "amount_idr",
                       f"more than Rp {reference.max_budget_amount_idr:,} in one budget record")
    return amount


def _fiscal_year(value: Any) -> int | None:
    """A fiscal year 2000-2100, as an integer or four ASCII digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        year = value
    else:
        text = str(value if value is not None else "").strip()
        if not nikmod.is_ascii_digits(text, 4):
            return None
        year = int(text)
    return year if 2000 <= year <= 2100 else None


def validate_allocation(raw: Mapping[str, Any], *, reference: Reference, now_us: int) -> AcceptedBudget | Rejection:
    """A budget allocation's intake decision; checks in `aidcore.outcomes.ALLOCATION_INTAKE_CODES` order."""
    head = _budget_head(raw, _ALLOCATION_FIELD_SET, "an allocation", reference)
    if isinstance(head, Rejection):
        return head
    source_system, source_ref, source_type, funding_account, agency_code = head
    programme_code = _text(raw, "programme_code")
    if not programme_code:
        return _reject("programme_code_required", "programme_code", "programme_code is required")
    programme = reference.programmes.get(programme_code)
    if programme is None:
        return _reject("programme_code_unknown", "programme_code", f"unknown programme {programme_code[:40]!r}")
    if not programme.active:
        return _reject("programme_inactive", "programme_code", f"programme {programme_code} is not active")
    year = _fiscal_year(raw.get("fiscal_year"))
    if year is None:
        return _reject("fiscal_year_invalid", "fiscal_year", "fiscal_year must be a year from 2000 to 2100, e.g. 2026")
    amount = _budget_amount(raw, reference)
    if isinstance(amount, Rejection):
        return amount
    when = _moment(raw, "allocated_at", now_us, reference)
    if isinstance(when, Rejection):
        return when
    at_us, offset_min = when
    partial = BudgetAllocation("", source_system, source_ref, source_type, funding_account, agency_code,
                               programme_code, year, amount, at_us, offset_min, now_us)
    values = partial.content_values()
    event_id = make_event_id(source_system, source_ref, content_digest(("allocation", *values)))
    return AcceptedBudget(BudgetAllocation(event_id, source_system, source_ref, source_type, funding_account,
                                           agency_code, programme_code, year, amount, at_us, offset_min, now_us,
                                           field_digests(values)))


def validate_release(raw: Mapping[str, Any], *, reference: Reference, now_us: int) -> AcceptedBudget | Rejection:
    """A treasury release's intake decision; checks in `aidcore.outcomes.RELEASE_INTAKE_CODES` order."""
    head = _budget_head(raw, _RELEASE_FIELD_SET, "a release", reference)
    if isinstance(head, Rejection):
        return head
    source_system, source_ref, source_type, funding_account, agency_code = head
    amount = _budget_amount(raw, reference)
    if isinstance(amount, Rejection):
        return amount
    when = _moment(raw, "released_at", now_us, reference)
    if isinstance(when, Rejection):
        return when
    at_us, offset_min = when
    partial = TreasuryRelease("", source_system, source_ref, source_type, funding_account, agency_code, amount,
                              at_us, offset_min, now_us)
    values = partial.content_values()
    event_id = make_event_id(source_system, source_ref, content_digest(("release", *values)))
    return AcceptedBudget(TreasuryRelease(event_id, source_system, source_ref, source_type, funding_account,
                                          agency_code, amount, at_us, offset_min, now_us, field_digests(values)))


def validate_record(
    raw: Any, *, reference: Reference, token_key: bytes, now_us: int
) -> Accepted | Rejection:
    """The whole intake decision for one record. Pure: key, reference data and time come in."""
    if not isinstance(raw, Mapping):
        return _reject("record_must_be_an_object", None, "each record must be an object with the input-record fields")
    if _text(raw, "record_type") not in ("", "disbursement"):
        return validate_any(raw, reference=reference, token_key=token_key, now_us=now_us)  # type: ignore[return-value]
    for name in raw:
        if name not in _INPUT_FIELD_SET:
            return _reject("field_unknown", str(name), f"unknown field {str(name)[:40]!r}")

    source_system = _text(raw, "source_system")
    source_ref = _text(raw, "source_ref")
    if not source_system:
        return _reject("source_system_required", "source_system", "source_system is required")
    if not source_ref:
        return _reject("source_ref_required", "source_ref", "source_ref is required")
    if len(source_system) > MAX_REF_CHARS:
        return _reject("source_system_too_long", "source_system", f"at most {MAX_REF_CHARS} characters")
    if len(source_ref) > MAX_REF_CHARS:
        return _reject("source_ref_too_long", "source_ref", f"at most {MAX_REF_CHARS} characters")

    source_type = _text(raw, "source_type")
    if source_type not in reference.source_types:
        return _reject("source_type_unknown", "source_type", f"source_type must be one of {sorted(reference.source_types)}")
    agency_code = _text(raw, "agency_code")
    if not agency_code:
        return _reject("agency_code_required", "agency_code", "agency_code is required")
    programme_code = _text(raw, "programme_code")
    if not programme_code:
        return _reject("programme_code_required", "programme_code", "programme_code is required")
    programme = reference.programmes.get(programme_code)
    if programme is None:
        return _reject("programme_code_unknown", "programme_code", f"unknown programme {programme_code[:40]!r}")
    if not programme.active:
        return _reject("programme_inactive", "programme_code", f"programme {programme_code} is not active")

    nik = nikmod.normalize(_text(raw, "nik"))
    provisional_id = _text(raw, "provisional_id")
    if not nik and not provisional_id:
        return _reject("identity_required", "nik", "a NIK or a provisional_id is required")
    if nik:
        problem = nikmod.nik_problem(nik)
        if problem:
            return _reject(problem, "nik", _NIK_MESSAGES[problem])
        token = nikmod.person_token(token_key, nik)
        identity_kind = "NIK"
    else:
        problem = nikmod.provisional_problem(provisional_id)
        if problem:
            return _reject(problem, "provisional_id", "provisional_id must be 4-64 printable ASCII characters")
        token = nikmod.provisional_token(token_key, provisional_id)
        identity_kind = "PROVISIONAL"

    kk = nikmod.normalize(_text(raw, "kk"))
    if kk and not nikmod.is_ascii_digits(kk, 16):
        return _reject("kk_must_be_16_ascii_digits", "kk", "kk must be 16 ASCII digits")

    amount = parse_amount(raw.get("amount_idr"))
    if isinstance(amount, str):
        return _reject(amount, "amount_idr", _AMOUNT_MESSAGES[amount])
    if amount > reference.max_amount_idr:
        return _reject("amount_idr_too_large", "amount_idr", f"more than Rp {reference.max_amount_idr:,} in one disbursement")

    kind = _text(raw, "kind")
    if kind not in reference.kinds:
        return _reject("kind_unknown", "kind", f"kind must be one of {sorted(reference.kinds)}")
    period = _text(raw, "period")
    if not period_ok(period):
        return _reject("period_must_be_yyyy_mm", "period", "period must be YYYY-MM, e.g. 2026-11")

    disbursed_text = _text(raw, "disbursed_at")
    try:
        disbursed_at = datetime.fromisoformat(disbursed_text)
    except ValueError:
        return _reject("disbursed_at_invalid", "disbursed_at", "disbursed_at must be an ISO 8601 timestamp")
    offset = disbursed_at.utcoffset()
    if offset is None:
        return _reject("disbursed_at_needs_offset", "disbursed_at", "disbursed_at must carry a UTC offset, e.g. +07:00")
    disbursed_at_us = to_us(disbursed_at)
    if disbursed_at_us > now_us + reference.future_tolerance_s * 1_000_000:
        return _reject("disbursed_at_in_future", "disbursed_at", "disbursed_at lies in the future")
    # months from the period to the month of payment, in the sender's own calendar
    arrears = (disbursed_at.year * 12 + disbursed_at.month) - (int(period[:4]) * 12 + int(period[5:7]))
    if not -reference.period_advance_months_max <= arrears <= reference.period_arrears_months_max:
        return _reject("period_out_of_range", "period",
                       f"period {period} is more than {reference.period_arrears_months_max} months before or "
                       f"{reference.period_advance_months_max} months after the month it was paid in")

    channel = _text(raw, "channel")
    if channel not in reference.channels:
        return _reject("channel_unknown", "channel", f"channel must be one of {sorted(reference.channels)}")
    region_code = _text(raw, "region_code")
    if not nikmod.is_ascii_digits(region_code, 10):
        return _reject("region_code_must_be_10_ascii_digits", "region_code", "region_code must be a 10-digit village code")
    funding_account = _text(raw, "funding_account")
    if not funding_account:
        return _reject("funding_account_required", "funding_account", "funding_account is required")

    kk_tok = nikmod.kk_token(token_key, kk) if kk else None
    offset_min = int(offset.total_seconds() // 60)
    values = disbursement_content(token, programme_code, period, amount, kind, channel, disbursed_at_us, offset_min,
                                  agency_code, source_type, funding_account, region_code, kk_tok)
    event_id = make_event_id(source_system, source_ref, content_digest(values))
    disbursement = Disbursement(
        event_id, source_system, source_ref, source_type, agency_code, programme_code, token, identity_kind,
        kk_tok, amount, kind, period, disbursed_at_us, offset_min, channel, region_code,
        funding_account, now_us, field_digests(values),
    )
    identity = Identity(
        person_token=token,
        identity_kind=identity_kind,
        nik=nik or None,
        provisional_id=provisional_id or None if not nik else None,
        kk=kk or None,
        recipient_name=_text(raw, "recipient_name"),
    )
    return Accepted(disbursement, identity)


_NIK_MESSAGES = {
    "nik_must_be_16_ascii_digits": "NIK must be exactly 16 ASCII digits 0-9",
    "nik_province_invalid": "NIK starts with a province code that does not exist",
    "nik_birth_date_invalid": "NIK digits 7-12 are not a valid birth date (DDMMYY, day + 40 for women)",
    "nik_serial_invalid": "NIK serial (digits 13-16) cannot be 0000",
}
_AMOUNT_MESSAGES = {
    "amount_idr_required": "amount_idr is required",
    "amount_idr_must_be_integer": "amount_idr must be a whole number of rupiah",
    "amount_idr_must_be_whole_rupiah": "amount_idr has a fraction of a rupiah; fractions are rejected, never rounded",
    "amount_idr_must_be_positive": "amount_idr must be greater than zero",
}
