"""The producer SDK and the submissions topic's door, without Kafka: the SDK decides exactly as the
gateway does (same codes, same bytes), and the door refuses a record a direct producer encoded
past the SDK with the code the gateway gives the same record, by wire problem, field and scope."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from builders import (NOW, NOW_US, TOKEN_KEY, raw_record, raw_reversal, reference, reference_with_inactive_programme,
                      reversal)

from aidcore import intake, outcomes
from aidcore.agencies import Agency
from aidcore.intake import Accepted, AcceptedReversal, Rejection, content_digest, field_digests, make_event_id
from connectors import door, sdk
from schemas import codec

AGENCIES = {"KEMENSOS": Agency("KEMENSOS", frozenset({"PKH", "BPNT", "OLD_BANSOS"}), frozenset({"SIKS-NG"}))}

BAD_RAW = {
    "nik_short": raw_record(nik="18710145048500"),
    "nik_arabic_digits": raw_record(nik="١٨٧١٠١٤٥٠٤٨٥٠٠٠١"),
    "nik_fullwidth_digits": raw_record(nik="１８７１０１４５０４８５０００１"),
    "nik_impossible_date": raw_record(nik="1871017313850001"),
    "nik_impossible_province": raw_record(nik="9971014504850001"),
    "amount_zero": raw_record(amount_idr=0),
    "amount_negative": raw_record(amount_idr=-5),
    "amount_fraction": raw_record(amount_idr="1500.5"),
    "amount_huge": raw_record(amount_idr=10**15),
    "future": raw_record(disbursed_at=(NOW + timedelta(days=30)).isoformat()),
    "period_out_of_range": raw_record(period="1999-12"),
    "programme_unknown": raw_record(programme_code="NOPE"),
    "unknown_field": raw_record(colour="red"),
    "not_an_object": None,
    "reversal_amount_zero": raw_reversal(amount_idr=0),
    "budget_record": {"record_type": "allocation"},
}


@pytest.mark.parametrize("case", sorted(BAD_RAW))
def test_the_sdk_refuses_what_the_gateway_refuses_with_the_same_code(case):
    raw = BAD_RAW[case]
    gateway = intake.validate_any(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    mine = sdk.prepare(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    assert isinstance(mine, Rejection)
    if case == "budget_record":  # the gateway takes budget records; the SDK sends persons' records only
        assert mine.code in ("record_type_unknown", gateway.code)
    else:
        assert mine == gateway


@pytest.mark.parametrize("raw", [raw_record(), raw_record(kk="", nik="", provisional_id="DESA-0001"), raw_reversal()])
def test_the_sdk_sends_the_bytes_the_gateway_writes_to_the_outbox(raw):
    gateway = intake.validate_any(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    event_id, key, value = sdk.prepare(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    if isinstance(gateway, Accepted):
        expected = gateway.disbursement
        assert value == codec.encode_disbursement(expected)
    else:
        expected = gateway.reversal
        assert value == codec.encode_reversal(expected)
    assert event_id == expected.event_id and key == expected.person_token.encode()
    assert b"1871014504850001" not in value and b"1871014504850001" not in key


class _Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value))
        return "future"


def test_the_producer_sends_good_records_and_returns_bad_ones_as_values():
    fake = _Producer()
    producer = sdk.AgencyProducer("unused:9092", token_key=TOKEN_KEY, topic="t", producer=fake, now_us=lambda: NOW_US)
    sent = producer.send(raw_record())
    assert isinstance(sent, sdk.Sent) and sent.source_ref == "PKH-2026-04-000001"
    refused = producer.send(raw_record(amount_idr=0))
    assert refused == Rejection("amount_idr_must_be_positive", "amount_idr", "amount_idr must be greater than zero")
    again = producer.send(raw_record())
    assert again.event_id == sent.event_id  # a retried record is the same event: the door answers `exists`
    assert [t for t, _, _ in fake.sent] == ["t", "t"]


# --- the door ------------------------------------------------------------------------------------

def _good():
    outcome = intake.validate_any(raw_record(), reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    return outcome.disbursement


def forged(event, **changes):
    """The event with fields changed and its id and digests made to match, as a direct producer
    that skipped the SDK's checks would encode it."""
    changed = dataclasses.replace(event, **changes)
    values = changed.content_values()
    prefix = ("reversal",) if isinstance(changed, intake.Reversal) else ()
    event_id = make_event_id(changed.source_system, changed.source_ref, content_digest((*prefix, *values)))
    return dataclasses.replace(changed, event_id=event_id, field_digests=field_digests(values))


def _encode(event) -> bytes:
    return codec.encode_reversal(event) if isinstance(event, intake.Reversal) else codec.encode_disbursement(event)


def decide_one(value, ref=None):
    [out] = door.decide([value], reference=ref or reference(), agencies=AGENCIES, now_us=NOW_US + 5)
    return out


# A bad raw record and the event a producer past the SDK would send for it: the same code.
FIELD_CASES = {
    "amount_zero": ({"amount_idr": 0}, {"amount_idr": 0}),
    "amount_negative": ({"amount_idr": -5}, {"amount_idr": -5}),
    "amount_huge": ({"amount_idr": 10**15}, {"amount_idr": 10**15}),
    "programme_unknown": ({"programme_code": "NOPE"}, {"programme_code": "NOPE"}),
    "programme_inactive": ({"programme_code": "OLD_BANSOS"}, {"programme_code": "OLD_BANSOS"}),
    "future": ({"disbursed_at": (NOW + timedelta(days=30)).isoformat()},
               {"disbursed_at_us": NOW_US + 30 * 86_400_000_000}),
    "period": ({"period": "2026-13"}, {"period": "2026-13"}),
    "kind": ({"kind": "GOLD"}, {"kind": "GOLD"}),
    "channel": ({"channel": "PIGEON"}, {"channel": "PIGEON"}),
    "region": ({"region_code": "18710"}, {"region_code": "18710"}),
    "source_type": ({"source_type": "LOTTERY"}, {"source_type": "LOTTERY"}),
    "funding_account": ({"funding_account": ""}, {"funding_account": ""}),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_the_door_refuses_a_forged_field_with_the_gateways_code(case):
    raw_changes, event_changes = FIELD_CASES[case]
    ref = reference_with_inactive_programme()
    gateway = intake.validate_any(raw_record(**raw_changes), reference=ref, token_key=TOKEN_KEY, now_us=NOW_US)
    assert isinstance(gateway, Rejection)
    got = decide_one(_encode(forged(_good(), **event_changes)), ref)
    assert isinstance(got, door.Refused) and got.code == gateway.code


def test_the_door_refuses_a_forged_reversal_with_the_gateways_code():
    gateway = intake.validate_any(raw_reversal(amount_idr=-1), reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    got = decide_one(_encode(forged(reversal(), amount_idr=-1)))
    assert got.code == gateway.code == "amount_idr_must_be_positive"


def test_the_door_accepts_what_the_sdk_sends_and_stamps_the_intake_time():
    _, _, value = sdk.prepare(raw_record(), reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US - 10)
    got = decide_one(value)
    assert isinstance(got, Accepted) and got.identity is None
    assert got.disbursement.event_id == _good().event_id and got.disbursement.recorded_at_us == NOW_US + 5
    rev = decide_one(codec.encode_reversal(reversal()))
    assert isinstance(rev, AcceptedReversal)


def test_the_door_names_every_wire_problem():
    good = codec.encode_disbursement(_good())
    alert_schema = codec.codec(codec.ALERT)
    cases = {
        None: "value_missing",
        b"garbage": "avro_marker_invalid",
        codec.MARKER + b"\x00" * 8 + good[10:]: "schema_fingerprint_unknown",
        good[:40]: "avro_body_malformed",
        good + b"\x00": "avro_body_malformed",
        alert_schema.header + b"\x00" * 20: "schema_mismatch",
        codec.encode_rulebook(codec.RulebookActivation("v", "d", "t", 1, "x")): "schema_mismatch",
        good + b"\x00" * (door.MAX_VALUE_BYTES + 1): "value_too_large",
    }
    for value, code in cases.items():
        assert decide_one(value).code == code, code
    # a string whose bytes are not UTF-8: its length prefix kept, one byte made invalid
    i = good.index(b"SIKS-NG")
    assert decide_one(good[:i] + b"\xff" + good[i + 1:]).code == "text_encoding_invalid"
    assert {c.code for c in map(decide_one, cases)} <= set(outcomes.ALL_CODES)


def test_the_door_refuses_a_changed_id_and_a_record_out_of_scope():
    d = _good()
    assert decide_one(codec.encode_disbursement(dataclasses.replace(d, amount_idr=1))).code == "event_id_mismatch"
    for changes in ({"agency_code": "DINSOS-X"}, {"programme_code": "PIP"}, {"source_system": "OTHER"}):
        got = decide_one(codec.encode_disbursement(forged(d, **changes)))
        assert got.code == "agency_out_of_scope", changes


def test_one_bad_record_does_not_stop_the_batch():
    good = codec.encode_disbursement(_good())
    got = door.decide([b"x", good, None, good], reference=reference(), agencies=AGENCIES, now_us=NOW_US)
    assert [type(g).__name__ for g in got] == ["Refused", "Accepted", "Refused", "Accepted"]
