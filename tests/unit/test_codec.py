"""schemas.codec: Avro single-object encoding of the ledger's records, fingerprints, frozen
versions and named decoding errors."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from aidcore.intake import BudgetAllocation, Reversal, TreasuryRelease
from schemas import codec
from schemas.codec import ALERT, DISBURSEMENT, RECORD_NAMES, STATE_DELTA, CodecError
from builders import (
    NOW_US,
    allocation,
    release,
    decide,
    reversal,
    disbursement,
    disbursement_record,
    duplicate_alerts,
    modified_alert,
    state_delta_record,
)


def current_schema(name: str) -> dict:
    return json.loads(resources.files("schemas").joinpath(f"{name}.avsc").read_text(encoding="utf-8"))


def sample_record(name: str) -> dict:
    """A realistic record of each kind, made by the core through the builders."""
    if name == DISBURSEMENT:
        return disbursement_record(disbursement())
    if name == ALERT:
        return codec.alert_record(duplicate_alerts(3))
    if name == STATE_DELTA:
        return state_delta_record()
    if name == codec.REVERSAL:
        return {f: getattr(reversal(), f) for f in Reversal.__dataclass_fields__}
    if name == codec.RULEBOOK:
        return {"version": "2026-11-01", "digest": "0" * 64, "text": 'version = "2026-11-01"\n',
                "activated_at_us": NOW_US, "activated_by": "pmo"}
    if name == codec.ALLOCATION:
        return {f: getattr(allocation(), f) for f in BudgetAllocation.__dataclass_fields__}
    if name == codec.RELEASE:
        return {f: getattr(release(), f) for f in TreasuryRelease.__dataclass_fields__}
    if name == codec.POSTINGS:
        result = decide([disbursement(), disbursement(source_ref="R-2")])
        return codec.codec(codec.POSTINGS).decode(codec.encode_postings("builtin-1", result.postings))
    if name == codec.REGISTRY:
        return {"event_id": "5b1e0c1a-8f3e-5d7a-9a51-3c1f6f2d9e10", "registry": "P3KE", "extract_date": "2026-10-01",
                "person_token": "a" * 32, "kk_token": None, "regency_code": "1807", "village_code": "1807012003",
                "decile": 1, "source_row_ref": "p3ke.csv:2", "recorded_at_us": NOW_US}
    if name == codec.SUBMISSION:
        return {"record": '{"source_system":"SIKS-NG","source_ref":"R-1"}', "key_id": "3c867ecdd9f0ebf5",
                "ephemeral_key": b"e" * 32, "nonce": b"n" * 12, "sealed_identity": b"c" * 40}
    raise AssertionError(f"no sample for {name}; add one when a record is added to RECORD_NAMES")


FROZEN = [(name, version) for name in RECORD_NAMES for version in codec.frozen_versions(name)]


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d",
    [
        disbursement(),
        disbursement(kk=""),
        disbursement(nik="", provisional_id="DESA-1871011001-0042", amount_idr=500_000_000),
        disbursement(source_ref="ref with spaces and ünïcode", disbursed_at="2026-04-03T03:00:00-05:30"),
    ],
    ids=["default", "no_kk", "provisional_max_amount", "unicode_negative_offset"],
)
def test_disbursement_round_trip(d):
    assert codec.decode_disbursement(codec.encode_disbursement(d)) == d


def test_disbursement_values_are_the_fields_in_order():
    d = disbursement(kk="")
    assert codec.decode_disbursement_values(codec.encode_disbursement(d)) == tuple(
        getattr(d, f) for f in d.__dataclass_fields__
    )
    with pytest.raises(CodecError) as caught:
        codec.decode_disbursement_values(b"not avro")
    assert caught.value.code == "avro_marker_invalid"


@pytest.mark.parametrize(
    "alert",
    [duplicate_alerts(2), duplicate_alerts(3), modified_alert(amount_idr=600_000)],
    ids=["duplicate_rev2", "duplicate_rev3", "modified"],
)
def test_alert_round_trip(alert):
    back = codec.decode_alert(codec.encode_alert(alert))
    assert back == alert
    assert isinstance(back.lines, tuple)


def test_postings_round_trip_exactly_payments_and_reversals():
    result = decide([disbursement(), disbursement(source_ref="R-2", kk=""),
                     reversal(original_source_ref="R-2", source_ref="REV-2", amount_idr=100_000)])
    assert len(result.postings) == 3 and result.postings[2].original_event_id
    version, text, postings = codec.decode_postings(codec.encode_postings("v9", result.postings, "text"))
    assert (version, text, postings) == ("v9", "text", result.postings)


def test_packed_postings_of_a_wrong_length_are_a_named_error():
    record = codec.codec(codec.POSTINGS).decode(codec.encode_postings("v", decide([disbursement()]).postings))
    record["postings"] = record["postings"][:-1]
    with pytest.raises(CodecError) as err:
        codec.decode_postings(codec.codec(codec.POSTINGS).encode(record))
    assert err.value.code == "avro_body_malformed"


def test_state_delta_round_trip():
    record = state_delta_record()
    c = codec.codec(STATE_DELTA)
    assert c.decode(c.encode(record)) == record
    record["applied"] = [bytes(range(16)), bytes(16)]
    assert c.decode(c.encode(record)) == record


@pytest.mark.parametrize("build", [allocation, release], ids=["allocation", "release"])
def test_budget_records_round_trip_and_are_told_apart_on_the_ledger(build):
    record = build()
    data = codec.encode_budget(record)
    assert codec.kind_of(data) == (codec.ALLOCATION if isinstance(record, BudgetAllocation) else codec.RELEASE)
    [decoded] = codec.decode_ledger_values([data])
    assert decoded == record


def test_the_ledger_decoder_reads_every_kind_in_one_batch():
    kinds = [disbursement(), reversal(), allocation(), release()]
    values = [codec.encode_disbursement(kinds[0]), codec.encode_reversal(kinds[1]), codec.encode_budget(kinds[2]),
              codec.encode_budget(kinds[3]), b"garbage"]
    decoded = codec.decode_ledger_values(values)
    assert decoded[:4] == kinds
    assert isinstance(decoded[4], CodecError)


# --- header and fingerprints ---------------------------------------------------------------------


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_header_is_marker_and_8_byte_fingerprint(name):
    c = codec.codec(name)
    data = c.encode(sample_record(name))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == c.fingerprint
    assert len(c.fingerprint) == 8
    assert codec.HEADER_LEN == 10


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_fingerprint_equals_fastavros_crc_64_avro(name):
    schema = current_schema(name)
    expected = fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    assert codec.codec(name).fingerprint.hex() == expected
    assert codec.fingerprint(schema).hex() == expected


def test_fingerprints_of_the_records_differ():
    assert len({codec.codec(n).fingerprint for n in RECORD_NAMES}) == len(RECORD_NAMES)


def test_crc64_avro_of_nothing_is_the_specs_empty_value():
    assert codec.crc64_avro(b"") == 0xC15D213AA4D7A795


def test_crc64_avro_of_the_null_schema():
    # The Avro reference implementations give fingerprint64('"null"') = 0x63dd24e7cc258f8a.
    assert codec.crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


@given(st.text(max_size=200))
@settings(database=None, max_examples=200)
def test_crc64_avro_agrees_with_fastavro_on_any_text(text):
    ours = codec.crc64_avro(text.encode("utf-8")).to_bytes(8, "little").hex()
    assert ours == fastavro_fingerprint(text, "CRC-64-AVRO")


def test_fingerprint_ignores_docs_and_order_of_attributes():
    schema = current_schema(DISBURSEMENT)
    stripped = json.loads(json.dumps(schema))
    stripped.pop("doc", None)
    for f in stripped["fields"]:
        f.pop("doc", None)
    assert codec.fingerprint(stripped) == codec.fingerprint(schema)


# --- frozen versions -----------------------------------------------------------------------------


def test_every_record_has_at_least_one_frozen_version():
    for name in RECORD_NAMES:
        assert codec.frozen_versions(name), name


@pytest.mark.parametrize(("name", "version"), FROZEN, ids=[f"{n}-v{v}" for n, v in FROZEN])
def test_a_record_written_with_a_frozen_version_decodes_with_the_current_reader(name, version):
    frozen = codec.frozen_versions(name)[version]
    c = codec.codec(name)
    written_fields = [f["name"] for f in frozen["fields"]]
    record = {k: v for k, v in sample_record(name).items() if k in written_fields}
    data = c.encode_with(frozen, record)
    assert data[2:10] == codec.fingerprint(frozen)
    decoded = c.decode(data)
    current_fields = {f["name"] for f in c.schema["fields"]}
    for field in frozen["fields"]:
        k = field["name"]
        if k in current_fields:
            assert _written_part(decoded[k], field) == _written_part(record[k], field), k
    assert set(decoded) == current_fields


def _written_part(value, field):
    """The part of a value an older schema's field holds: a nested record read with a newer
    schema also has the newer fields (at their defaults)."""
    kind = field["type"]
    if isinstance(kind, dict) and kind.get("type") == "array" and isinstance(kind["items"], dict):
        names = [f["name"] for f in kind["items"]["fields"]]
        return [{k: item[k] for k in names} for item in value]
    return value


@pytest.mark.parametrize(("name", "version"), FROZEN, ids=[f"{n}-v{v}" for n, v in FROZEN])
def test_frozen_files_are_named_for_their_record(name, version):
    frozen = codec.frozen_versions(name)[version]
    assert f"{frozen['namespace']}.{frozen['name']}" == name


# --- errors --------------------------------------------------------------------------------------


def _good() -> bytes:
    return codec.encode_disbursement(disbursement())


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "value_missing"),
        (b"", "avro_marker_invalid"),
        (b"{}", "avro_marker_invalid"),
        (b'{"event_id": "x"}', "avro_marker_invalid"),
        (b"\xc3\x02" + _good()[2:], "avro_marker_invalid"),
        (b"\x00\x01" + _good()[2:], "avro_marker_invalid"),
        (_good()[:9], "avro_marker_invalid"),  # shorter than a header
        (b"\xc3\x01" + b"\x00" * 8 + _good()[10:], "schema_fingerprint_unknown"),
        (codec.codec(ALERT).header + _good()[10:], "schema_fingerprint_unknown"),  # an alert is not a disbursement
        (_good()[:-1], "avro_body_malformed"),
        (_good()[:10], "avro_body_malformed"),
        (_good() + b"\x00", "avro_body_malformed"),
        (_good() + b"garbage", "avro_body_malformed"),
        (_good()[:10] + b"\xff" * 16, "avro_body_malformed"),
    ],
    ids=[
        "none",
        "empty",
        "json_object",
        "json_record",
        "wrong_marker_version",
        "wrong_marker",
        "short_header",
        "zero_fingerprint",
        "other_records_fingerprint",
        "truncated_by_one",
        "header_only",
        "trailing_zero",
        "trailing_garbage",
        "garbled_body",
    ],
)
def test_decode_errors_are_named(data, code):
    with pytest.raises(CodecError) as caught:
        codec.decode_disbursement(data)
    assert caught.value.code == code
    assert str(caught.value)


def test_every_truncation_of_the_body_is_malformed():
    data = _good()
    for end in range(codec.HEADER_LEN, len(data)):
        with pytest.raises(CodecError) as caught:
            codec.decode_disbursement(data[:end])
        assert caught.value.code == "avro_body_malformed", end


def test_codec_error_codes_are_wire_codes():
    from aidcore.outcomes import WIRE_CODES

    assert set(WIRE_CODES) == {"value_missing", "avro_marker_invalid", "schema_fingerprint_unknown", "avro_body_malformed",
                               "text_encoding_invalid"}


def test_decode_disbursements_keeps_going_past_bad_values():
    a, b = disbursement(source_ref="A"), disbursement(source_ref="B")
    values = [codec.encode_disbursement(a), None, b"", _good()[:-3], codec.encode_disbursement(b), _good() + b"x"]
    out = codec.decode_disbursements(values)
    assert out[0] == a and out[4] == b
    assert [e.code for e in out if isinstance(e, CodecError)] == [
        "value_missing",
        "avro_marker_invalid",
        "avro_body_malformed",
        "avro_body_malformed",
    ]
    assert isinstance(out[1], CodecError) and isinstance(out[5], CodecError)


def test_decode_disbursements_of_nothing_is_nothing():
    assert codec.decode_disbursements([]) == []


@pytest.mark.parametrize(("field", "bad"), [("field_digests", b"\x00" * 5), ("person_token", "not-a-token"),
                                            ("event_id", "x" * 36), ("kk_token", "ZZ")])
def test_a_ledger_value_with_a_malformed_id_or_digest_is_a_named_error(field, bad):
    """Valid Avro written past intake can still break what the stream relies on: refused at decode."""
    from dataclasses import replace

    value = codec.encode_disbursement(replace(disbursement(), **{field: bad}))
    (item,) = codec.decode_ledger_values([value])
    assert isinstance(item, CodecError) and item.code == "avro_body_malformed"


def test_an_alert_line_is_projected_as_exactly_its_eight_named_fields():
    """The projector writes `ledger.alerts.lines` with orjson straight from the AlertLine
    dataclasses; the JSON keys are the dataclass's fields, so a field added there would change
    every stored case. This pins them."""
    import orjson

    from aidcore.ledger import AlertLine

    line = AlertLine("e1", "SIKS-NG", "REF-1", 300_000, 1_767_225_600_000_000, "PKH", "ab" * 16, "GOVERNMENT")
    assert orjson.loads(orjson.dumps((line,))) == [{
        "event_id": "e1", "source_system": "SIKS-NG", "source_ref": "REF-1", "amount_idr": 300_000,
        "disbursed_at_us": 1_767_225_600_000_000, "programme_code": "PKH", "person_token": "ab" * 16,
        "source_type": "GOVERNMENT"}]
