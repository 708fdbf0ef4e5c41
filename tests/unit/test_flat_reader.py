"""The generated flat readers and writers (schemas.flat) against fastavro: the same values and
bytes wherever they answer, and a step aside (an exception) wherever they are not sure."""

from __future__ import annotations

import dataclasses
import io
from types import SimpleNamespace

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import disbursement
from schemas import codec, flat

SCHEMA = {
    "type": "record", "name": "Sample", "fields": [
        {"name": "text", "type": "string"},
        {"name": "big", "type": "long"},
        {"name": "small", "type": "int"},
        {"name": "maybe_text", "type": ["null", "string"], "default": None},
        {"name": "maybe_int", "type": ["null", "int"], "default": None},
        {"name": "flag", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "wrapped", "type": {"type": "long"}},
    ],
}
PARSED = fastavro.parse_schema(SCHEMA)
READ = flat.reader(SCHEMA)
WRITE = flat.writer(SCHEMA)

LONGS = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-300, 300),
                  st.sampled_from([0, -1, 63, 64, -64, -65, (1 << 63) - 1, -(1 << 63), 1767225600000000]))
INTS = st.one_of(st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from([(1 << 31) - 1, -(1 << 31), 0]))
RECORDS = st.fixed_dictionaries({
    "text": st.text(max_size=80),
    "big": LONGS,
    "small": INTS,
    "maybe_text": st.none() | st.text(max_size=70),
    "maybe_int": st.none() | INTS,
    "flag": st.booleans(),
    "raw": st.binary(max_size=80),
    "wrapped": LONGS,
})


def fastavro_bytes(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    return out.getvalue()


def fastavro_read(data: bytes):
    """fastavro's record and whether it read exactly the whole body (None when it raises)."""
    body = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(body, PARSED, None)
    except Exception:
        return None
    return record if body.tell() == len(data) else None


@settings(max_examples=400)
@given(RECORDS)
def test_reader_and_writer_agree_with_fastavro(record):
    data = fastavro_bytes(record)
    assert WRITE(SimpleNamespace(**record)) == data
    assert READ(data, 0) == record
    assert READ(b"\xc3\x01" + data, 2) == record  # from an offset, as after the single-object header


@settings(max_examples=300)
@given(RECORDS, st.data())
def test_a_damaged_body_is_read_as_fastavro_reads_it_or_not_at_all(record, data):
    """Truncated, extended or with bytes changed: where the flat reader answers, fastavro gives the
    same record from exactly the same bytes."""
    body = bytearray(fastavro_bytes(record))
    how = data.draw(st.sampled_from(["truncate", "extend", "flip"]))
    if how == "truncate":
        del body[data.draw(st.integers(0, max(0, len(body) - 1))):]
    elif how == "extend":
        body += data.draw(st.binary(min_size=1, max_size=4))
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    damaged = bytes(body)
    try:
        answer = READ(damaged, 0)
    except Exception:
        return  # stepped aside: the caller asks fastavro
    assert answer == fastavro_read(damaged)


@pytest.mark.parametrize("body, why", [
    (b"\x03", "a negative length"),
    (b"\x00" + b"\xff" * 10 + b"\x01", "a varint longer than 10 bytes"),
    (b"\x00" + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "a long beyond 64 bits"),
    (b"\x00\x00" + b"\x80\x80\x80\x80\x10", "an int beyond 32 bits"),
    (b"\x00\x00\x00\x04", "a union index of 2"),
    (b"\x02\xff", "invalid UTF-8"),
])
def test_what_the_reader_refuses(body, why):
    with pytest.raises(Exception):
        READ(body + b"\x00" * 8, 0)


def test_a_body_that_does_not_end_with_the_record_is_refused():
    data = fastavro_bytes({"text": "a", "big": 1, "small": 2, "maybe_text": None, "maybe_int": 3, "flag": True,
                           "raw": b"x", "wrapped": 4})
    assert READ(data, 0)["wrapped"] == 4
    with pytest.raises(ValueError):
        READ(data + b"\x00", 0)
    with pytest.raises(IndexError):
        READ(data[:-1], 0)


@pytest.mark.parametrize("field, value", [("big", True), ("big", 1.0), ("big", 1 << 63), ("small", 1 << 31),
                                          ("raw", "text"), ("raw", bytearray(b"x")), ("text", b"bytes"),
                                          ("flag", 1), ("maybe_int", "1")])
def test_the_writer_steps_aside_for_a_value_not_exactly_of_its_type(field, value):
    record = {"text": "a", "big": 1, "small": 2, "maybe_text": None, "maybe_int": 3, "flag": True, "raw": b"x",
              "wrapped": 4}
    record[field] = value
    with pytest.raises((TypeError, AttributeError)):
        WRITE(SimpleNamespace(**record))


def test_schemas_with_other_types_are_not_flat():
    for t in ({"type": "array", "items": "long"}, ["null", "string", "long"], ["string", "null"], "double",
              {"type": "map", "values": "string"}):
        schema = {"type": "record", "name": "X", "fields": [{"name": "a", "type": t}]}
        with pytest.raises(flat.NotFlat):
            flat.reader(schema)
        with pytest.raises(flat.NotFlat):
            flat.writer(schema)


# --- the codec that uses them ----------------------------------------------------------------

def sample_disbursement(**changes):
    return dataclasses.replace(disbursement(), **changes)


def full_decode(value: bytes):
    """The codec's answer with the flat reader out of the way: fastavro and the record maker."""
    c = codec.RecordCodec(codec.DISBURSEMENT)
    c._flat = None
    make, _ = codec._makers()
    try:
        return codec._checked(make(c.decode(value)))
    except codec.CodecError as err:
        return err.code


def through_ledger_decode(value: bytes):
    [item] = codec.decode_ledger_values([value])
    return item.code if isinstance(item, codec.CodecError) else item


def test_the_ledger_records_use_the_flat_path():
    assert codec.codec(codec.DISBURSEMENT)._flat is not None
    assert codec._direct_disbursement() is not None
    assert codec._disbursement_writer() is not None


@settings(max_examples=200)
@given(st.text(max_size=40), st.integers(-(1 << 63), (1 << 63) - 1),
       st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
       st.integers(-(1 << 31), (1 << 31) - 1))
def test_disbursements_round_trip_as_fastavro_does(text, amount, kk, offset):
    d = sample_disbursement(source_ref=text, amount_idr=amount, kk_token=kk, disbursed_at_offset_min=offset,
                            channel=text[::-1])
    value = codec.encode_disbursement(d)
    assert value == codec.codec(codec.DISBURSEMENT).encode({f: getattr(d, f) for f in codec._DISBURSEMENT_FIELDS})
    assert through_ledger_decode(value) == full_decode(value) == d
    reference = codec.RecordCodec(codec.DISBURSEMENT)
    reference._flat = None
    assert codec.codec(codec.DISBURSEMENT).decode(value) == reference.decode(value)


@settings(max_examples=300)
@given(st.data())
def test_damaged_ledger_values_get_the_codes_fastavro_gives(data):
    value = bytearray(codec.encode_disbursement(sample_disbursement()))
    for _ in range(data.draw(st.integers(1, 3))):
        value[data.draw(st.integers(codec.HEADER_LEN, len(value) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del value[data.draw(st.integers(codec.HEADER_LEN, len(value))):]
    value = bytes(value)
    assert through_ledger_decode(value) == full_decode(value)
    flat_dict = codec.codec(codec.DISBURSEMENT)
    reference = codec.RecordCodec(codec.DISBURSEMENT)
    reference._flat = None
    outcomes = []
    for c in (flat_dict, reference):
        try:
            outcomes.append(c.decode(value))
        except codec.CodecError as err:
            outcomes.append(err.code)
    assert outcomes[0] == outcomes[1]


def test_an_unexpected_value_type_is_encoded_by_fastavro():
    """A bool amount is not exactly a long: the flat writer steps aside and fastavro, which takes
    a bool as a long, encodes it as before."""
    d = sample_disbursement(amount_idr=True)
    assert codec.encode_disbursement(d) == codec.codec(codec.DISBURSEMENT).encode(
        {f: getattr(d, f) for f in codec._DISBURSEMENT_FIELDS})
