"""Avro single-object encoding: C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's parsing canonical form, then the Avro body. Any consumer can find the writer
schema in schemas/ (current or frozen) from the fingerprint, without a registry server.

Decoding failures are values with a named code (`CodecError.code`), so a shell can dead-letter a
bad record and go on: value_missing, avro_marker_invalid, schema_fingerprint_unknown,
avro_body_malformed, text_encoding_invalid.
"""

from __future__ import annotations

import io
import json
import re
import struct
from sys import intern
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import fastavro
from fastavro.schema import parse_schema, to_parsing_canonical_form

from aidcore.intake import BudgetAllocation, Disbursement, Reversal, TreasuryRelease
from aidcore.ledger import Alert, AlertLine, Posting
from aidcore.registries import RegistryRecord
from schemas import flat

MARKER = b"\xc3\x01"
HEADER_LEN = 10

DISBURSEMENT = "aidledger.ledger.DisbursementRecorded"
ALERT = "aidledger.alerts.AlertRaised"
STATE_DELTA = "aidledger.state.AcceptedEvents"
REVERSAL = "aidledger.ledger.ReversalRecorded"
RULEBOOK = "aidledger.ledger.RulebookActivated"
POSTINGS = "aidledger.household.HouseholdPostings"
ALLOCATION = "aidledger.ledger.BudgetAllocated"
RELEASE = "aidledger.ledger.TreasuryReleased"
REGISTRY = "aidledger.registry.RegistryRecorded"
SUBMISSION = "aidledger.submissions.SealedSubmission"  # what the submissions topic carries (schemas.submission)
RECORD_NAMES = (DISBURSEMENT, ALERT, STATE_DELTA, REVERSAL, RULEBOOK, POSTINGS, ALLOCATION, RELEASE, REGISTRY,
                SUBMISSION)
LEDGER_RECORDS = (DISBURSEMENT, REVERSAL, RULEBOOK, ALLOCATION, RELEASE)  # what the ledger topic carries
BUDGET_RECORDS = (ALLOCATION, RELEASE)  # the budget side: keyed by funding account, decided by no stream


class CodecError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


_EMPTY = 0xC15D213AA4D7A795


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint the Avro specification calls CRC-64-AVRO."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: dict) -> bytes:
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    return crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")


def _read_json(relative: str) -> dict:
    return json.loads(resources.files("schemas").joinpath(relative).read_text(encoding="utf-8"))


def frozen_versions(name: str) -> dict[int, dict]:
    folder = resources.files("schemas").joinpath("frozen", name)
    out = {}
    for entry in folder.iterdir():
        if entry.name.startswith("v") and entry.name.endswith(".avsc"):
            out[int(entry.name[1:-5])] = json.loads(entry.read_text(encoding="utf-8"))
    return dict(sorted(out.items()))


class RecordCodec:
    """Encode with the current schema; decode anything written with the current or a frozen one."""

    def __init__(self, name: str):
        self.name = name
        self.schema = _read_json(f"{name}.avsc")
        self.parsed = parse_schema(self.schema)
        self.fingerprint = fingerprint(self.schema)
        self.header = MARKER + self.fingerprint
        self._writers: dict[bytes, Any] = {self.fingerprint: None}  # None: writer is the reader
        for schema in frozen_versions(name).values():
            fp = fingerprint(schema)
            if fp != self.fingerprint:
                self._writers[fp] = parse_schema(schema)
        try:  # the current writer's flat records are read by generated code first (schemas.flat)
            self._flat = flat.reader(self.schema)
        except flat.NotFlat:
            self._flat = None

    def encode(self, record: dict) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()

    def encode_with(self, schema: dict, record: dict) -> bytes:
        """Encode with another (e.g. frozen) writer schema; for tests of old versions."""
        out = io.BytesIO()
        out.write(MARKER + fingerprint(schema))
        fastavro.schemaless_writer(out, parse_schema(schema), record)
        return out.getvalue()

    def decode(self, data: bytes | None) -> dict:
        if data is None:
            raise CodecError("value_missing", "the record has no value")
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise CodecError("avro_marker_invalid", "not Avro single-object encoding (marker C3 01 missing)")
        fp = data[2:HEADER_LEN]
        try:
            writer = self._writers[fp]
        except KeyError:
            raise CodecError("schema_fingerprint_unknown", f"no {self.name} schema has fingerprint {fp.hex()}") from None
        if writer is None and self._flat is not None and type(data) is bytes:
            try:
                return self._flat(data, HEADER_LEN)
            except Exception:  # noqa: S110 - not plainly valid: fastavro below decides, and names the error
                pass
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)  # a view would copy no less: BytesIO shares the bytes until written
        try:
            if writer is None:
                record = fastavro.schemaless_reader(body, self.parsed, None)
            else:
                record = fastavro.schemaless_reader(body, writer, self.parsed)
        except UnicodeDecodeError:
            raise CodecError("text_encoding_invalid", "a string field is not valid UTF-8") from None
        except Exception as exc:  # fastavro raises several types for truncated or garbled bodies
            raise CodecError("avro_body_malformed", f"cannot read the Avro body: {type(exc).__name__}") from None
        if body.tell() != len(data):
            raise CodecError("avro_body_malformed", "trailing bytes after the Avro body")
        return record


@lru_cache(maxsize=None)
def codec(name: str) -> RecordCodec:
    return RecordCodec(name)


# --- domain mapping -------------------------------------------------------------------------

_DISBURSEMENT_FIELDS = tuple(Disbursement.__dataclass_fields__)


@lru_cache(maxsize=1)
def _disbursement_writer():
    """Generated code for the current DisbursementRecorded (schemas.flat), None if it is not flat."""
    c = codec(DISBURSEMENT)
    try:
        return flat.writer(c.schema, c.header)
    except flat.NotFlat:
        return None


def encode_disbursement(d: Disbursement) -> bytes:
    write = _disbursement_writer()
    if write is not None:
        try:
            return write(d)
        except Exception:  # noqa: S110 - a value of an unexpected type: fastavro encodes it or names the problem
            pass
    return codec(DISBURSEMENT).encode({f: getattr(d, f) for f in _DISBURSEMENT_FIELDS})


# The reader schema lists the fields in the dataclass's order, so decoded records are passed
# positionally (measurably cheaper than keywords on the hot path).
assert tuple(f["name"] for f in codec(DISBURSEMENT).schema["fields"]) == _DISBURSEMENT_FIELDS


def decode_disbursement(data: bytes | None) -> Disbursement:
    return Disbursement(*codec(DISBURSEMENT).decode(data).values())


def decode_disbursement_values(data: bytes | None) -> tuple:
    """The field values in `Disbursement` order, without building the dataclass: the projector
    only copies them into columns, and a frozen dataclass's per-field set costs ~2 µs per event
    there. `Disbursement(*values)` makes one when a decision needs it."""
    return tuple(codec(DISBURSEMENT).decode(data).values())


def decode_disbursements(values: Iterable[bytes | None]) -> list[Disbursement | CodecError]:
    """Batch decode; a bad value becomes its CodecError in place, the rest go on."""
    decode = codec(DISBURSEMENT).decode
    out: list[Disbursement | CodecError] = []
    append = out.append
    for value in values:
        try:
            append(Disbursement(*decode(value).values()))
        except CodecError as err:
            append(err)
    return out


_ALERT_FIELDS = tuple(Alert.__dataclass_fields__)
_LINE_FIELDS = tuple(AlertLine.__dataclass_fields__)


def alert_record(a: Alert) -> dict:
    # not dataclasses.asdict: it deep-copies field by field and showed up in the worker's profile
    record = {f: getattr(a, f) for f in _ALERT_FIELDS}
    record["lines"] = [{f: getattr(line, f) for f in _LINE_FIELDS} for line in a.lines]
    return record


def encode_alert(a: Alert) -> bytes:
    return codec(ALERT).encode(alert_record(a))


def decode_alert(data: bytes | None) -> Alert:
    record = codec(ALERT).decode(data)
    record["lines"] = tuple(AlertLine(**line) for line in record["lines"])
    return Alert(**record)


_REVERSAL_FIELDS = tuple(Reversal.__dataclass_fields__)
assert tuple(f["name"] for f in codec(REVERSAL).schema["fields"]) == _REVERSAL_FIELDS


def encode_reversal(r: Reversal) -> bytes:
    return codec(REVERSAL).encode({f: getattr(r, f) for f in _REVERSAL_FIELDS})


def decode_reversal(data: bytes | None) -> Reversal:
    return _makers()[1](codec(REVERSAL).decode(data))


@dataclass(frozen=True, slots=True)
class RulebookActivation:
    version: str
    digest: str
    text: str
    activated_at_us: int
    activated_by: str


def encode_rulebook(a: RulebookActivation) -> bytes:
    return codec(RULEBOOK).encode({"version": a.version, "digest": a.digest, "text": a.text,
                                   "activated_at_us": a.activated_at_us, "activated_by": a.activated_by})


_ALLOCATION_FIELDS = tuple(BudgetAllocation.__dataclass_fields__)
_RELEASE_FIELDS = tuple(TreasuryRelease.__dataclass_fields__)
assert tuple(f["name"] for f in codec(ALLOCATION).schema["fields"]) == _ALLOCATION_FIELDS
assert tuple(f["name"] for f in codec(RELEASE).schema["fields"]) == _RELEASE_FIELDS


def encode_budget(record: BudgetAllocation | TreasuryRelease) -> bytes:
    """An allocation or a release, each in its own record."""
    if isinstance(record, BudgetAllocation):
        return codec(ALLOCATION).encode({f: getattr(record, f) for f in _ALLOCATION_FIELDS})
    return codec(RELEASE).encode({f: getattr(record, f) for f in _RELEASE_FIELDS})


LedgerRecord = Disbursement | Reversal | RulebookActivation | BudgetAllocation | TreasuryRelease


@lru_cache(maxsize=1)
def _makers():
    return _record_maker(Disbursement, DISBURSEMENT), _record_maker(Reversal, REVERSAL)


@lru_cache(maxsize=1)
def _direct_disbursement():
    """A flat reader (schemas.flat) of a current-schema DisbursementRecorded body straight into a
    Disbursement, built as `_record_maker` builds it; None where the schema is not flat."""
    body, scope = _setting_body(Disbursement, DISBURSEMENT, lambda i, name: f"v{i}")
    try:
        return flat.reader(codec(DISBURSEMENT).schema, body, scope)
    except flat.NotFlat:
        return None


@lru_cache(maxsize=1)
def _ledger_kinds() -> dict[bytes, str]:
    out = {}
    for name in LEDGER_RECORDS:
        for fp in codec(name)._writers:
            out[fp] = name
    return out


def kind_of(data: bytes | None) -> str | None:
    """Which ledger record a value is, by its schema fingerprint (None if none)."""
    if data is None or len(data) < HEADER_LEN:
        return None
    return _ledger_kinds().get(data[2:HEADER_LEN])


_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _setting_body(cls, schema_name: str, value_of) -> tuple[str, dict]:
    """Source lines that build a frozen slots record `cls` field by field, at half the cost of the
    generated __init__ (which pays an object.__setattr__ lookup and call per field): the decode of
    the ledger topic is the largest single cost of the stream. `value_of(i, name)` is the source
    of field i's value. With the names the lines use. Raises if the schema's fields are not the
    record's, in order, or if the record has a __post_init__ this would skip (checked by raising,
    so `python -O` keeps the check)."""
    names = tuple(cls.__dataclass_fields__)
    if tuple(f["name"] for f in codec(schema_name).schema["fields"]) != names:
        raise TypeError(f"{schema_name}: schema fields differ from {cls.__name__}'s")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ the record maker would skip")
    body = "".join(f"    set_{n}(o, {value_of(i, n)})\n" for i, n in enumerate(names))
    scope = {"new": object.__new__, "cls": cls, **{f"set_{n}": getattr(cls, n).__set__ for n in names}}
    return f"    o = new(cls)\n{body}    return o\n", scope


def _record_maker(cls, schema_name: str):
    """A constructor for a frozen slots record from its decoded dict (`_setting_body`); the
    first decode fails if the schema and the record ever disagree."""
    body, scope = _setting_body(cls, schema_name, lambda i, name: f"d[{name!r}]")
    exec(f"def make(d):\n{body}", scope)  # noqa: S102 - names from the schema
    return scope["make"]


def _checked(d):
    """The shapes the stream relies on, for a record a producer wrote past intake (valid Avro can
    still hold a malformed id): refused here with a named code, so the record is dead-lettered
    instead of failing the worker at every read of its partition."""
    if len(d.field_digests) not in (0, 24):
        raise CodecError("avro_body_malformed", "field_digests must be 24 bytes")
    if _HEX32(d.person_token) is None:
        raise CodecError("avro_body_malformed", "person_token must be 32 lowercase hex digits")
    if _UUID(d.event_id) is None:
        raise CodecError("avro_body_malformed", "event_id must be a UUID")
    kk = getattr(d, "kk_token", None)
    if kk and _HEX32(kk) is None:
        raise CodecError("avro_body_malformed", "kk_token must be 32 lowercase hex digits")
    return d


def decode_ledger_values(values: Iterable[bytes | None]) -> list[LedgerRecord | CodecError]:
    """Batch decode of the ledger topic's record kinds; a bad value becomes its CodecError."""
    kinds = _ledger_kinds()
    disbursement = codec(DISBURSEMENT).decode
    make_disbursement, make_reversal = _makers()
    direct, current = _direct_disbursement(), codec(DISBURSEMENT).fingerprint
    out: list[LedgerRecord | CodecError] = []
    append = out.append
    for value in values:
        try:
            fp = value[2:HEADER_LEN] if value is not None and value[:2] == MARKER else None
            if fp == current and direct is not None and type(value) is bytes:
                try:
                    record = direct(value, HEADER_LEN)
                except Exception:  # not plainly valid: the full decode below decides, and names the error
                    record = make_disbursement(disbursement(value))
                append(_checked(record))
                continue
            kind = kinds.get(fp)
            if kind is None or kind == DISBURSEMENT:
                append(_checked(make_disbursement(disbursement(value))))
            elif kind == REVERSAL:
                append(_checked(make_reversal(codec(REVERSAL).decode(value))))
            elif kind == RULEBOOK:
                append(RulebookActivation(**codec(RULEBOOK).decode(value)))
            elif kind == ALLOCATION:
                append(BudgetAllocation(*codec(ALLOCATION).decode(value).values()))
            else:
                append(TreasuryRelease(*codec(RELEASE).decode(value).values()))
        except CodecError as err:
            append(err)
    return out


_POSTING = struct.Struct(">16s16s16sHHHHqqq16s")
_NO_ORIGINAL = bytes(16)


def encode_postings(rulebook_version: str, postings: Iterable[Posting], rulebook_text: str = "") -> bytes:
    """Postings as packed records plus a string table (see the schema's doc)."""
    strings: dict[str, int] = {}

    def index(value: str) -> int:
        i = strings.get(value)
        if i is None:
            i = strings[value] = len(strings)
        return i

    packed = bytearray()
    for p in postings:
        packed += _POSTING.pack(bytes.fromhex(p.household), p.event_id, p.person, index(p.programme_code),
                                index(p.period), index(p.source_type), index(p.region_code), p.amount_idr,
                                p.disbursed_at_us, p.recorded_at_us, p.original_event_id or _NO_ORIGINAL)
    return codec(POSTINGS).encode({"rulebook_version": rulebook_version, "rulebook_text": rulebook_text,
                                   "strings": list(strings), "postings": bytes(packed)})


def decode_postings(data: bytes | None) -> tuple[str, str, list[Posting]]:
    record = codec(POSTINGS).decode(data)
    table = [intern(s) for s in record["strings"]]
    blob = record["postings"]
    if len(blob) % _POSTING.size:
        raise CodecError("avro_body_malformed", "packed postings are not a whole number of records")
    out = []
    for household, event_id, person, programme, period, source, region, amount, at, recorded, original in \
            _POSTING.iter_unpack(blob):
        out.append(Posting(household.hex(), event_id, person, table[programme], table[period], amount, table[source],
                           at, table[region], b"" if original == _NO_ORIGINAL else original, recorded))
    return record["rulebook_version"], record["rulebook_text"], out


# --- registry extracts --------------------------------------------------------------------------

_REGISTRY_FIELDS = tuple(RegistryRecord.__dataclass_fields__)
assert tuple(f["name"] for f in codec(REGISTRY).schema["fields"]) == _REGISTRY_FIELDS


def encode_registry(r: RegistryRecord) -> bytes:
    return codec(REGISTRY).encode({f: getattr(r, f) for f in _REGISTRY_FIELDS})


def decode_registry(data: bytes | None) -> RegistryRecord:
    return RegistryRecord(*codec(REGISTRY).decode(data).values())
