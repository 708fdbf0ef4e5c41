"""Avro single-object encoding: C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's parsing canonical form, then the Avro body. Any consumer can find the writer
schema in schemas/ (current or frozen) from the fingerprint, without a registry server.

Decoding failures are values with a named code (`CodecError.code`), so a shell can dead-letter a
bad record and go on: value_missing, avro_marker_invalid, schema_fingerprint_unknown,
avro_body_malformed.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import fastavro
from fastavro.schema import parse_schema, to_parsing_canonical_form

from aidcore.intake import Disbursement
from aidcore.ledger import Alert, AlertLine

MARKER = b"\xc3\x01"
HEADER_LEN = 10

DISBURSEMENT = "aidledger.ledger.DisbursementRecorded"
ALERT = "aidledger.alerts.AlertRaised"
STATE_DELTA = "aidledger.state.AcceptedEvents"
RECORD_NAMES = (DISBURSEMENT, ALERT, STATE_DELTA)


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
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)  # a view would copy no less: BytesIO shares the bytes until written
        try:
            if writer is None:
                record = fastavro.schemaless_reader(body, self.parsed, None)
            else:
                record = fastavro.schemaless_reader(body, writer, self.parsed)
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


def encode_disbursement(d: Disbursement) -> bytes:
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
