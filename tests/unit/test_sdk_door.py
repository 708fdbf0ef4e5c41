"""The producer SDK and the submissions topic's door, without Kafka: the SDK refuses exactly what
the gateway refuses (same codes) and sends nothing but sealed identities; the door opens them and
decides like the gateway (same codes, same event, the clear identity for the vault), and refuses
a record a direct producer sealed past the SDK with the code the gateway gives the same record,
by wire problem, field, seal and scope."""

from __future__ import annotations

from datetime import timedelta

import pytest
from builders import (NIK, NOW, NOW_US, TOKEN_KEY, raw_record, raw_reversal, reference,
                      reference_with_inactive_programme)

from aidcore import intake, outcomes
from aidcore.agencies import Agency
from aidcore.intake import Accepted, AcceptedReversal, Rejection
from connectors import door, sdk
from schemas import codec, sealing, submission

AGENCIES = {"KEMENSOS": Agency("KEMENSOS", frozenset({"PKH", "BPNT", "OLD_BANSOS"}), frozenset({"SIKS-NG"}))}
PRIVATE = sealing.new_private_key()
PUBLIC = sealing.public_key(PRIVATE)

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
    mine = sdk.prepare(raw, reference=reference(), public_key=PUBLIC, now_us=NOW_US)
    assert isinstance(mine, Rejection)
    if case == "budget_record":  # the gateway takes budget records; the SDK sends persons' records only
        assert mine.code in ("record_type_unknown", gateway.code)
    else:
        assert mine == gateway


@pytest.mark.parametrize("raw", [raw_record(), raw_record(kk="", nik="", provisional_id="DESA-0001"), raw_reversal()])
def test_the_door_makes_of_what_the_sdk_sends_what_the_gateway_makes_of_the_record(raw):
    gateway = intake.validate_any(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US + 5)
    key, value = sdk.prepare(raw, reference=reference(), public_key=PUBLIC, now_us=NOW_US)
    for clear in (NIK, "1871010101100001", "DESA-0001", "Siti"):
        assert clear.encode() not in value and clear.encode() not in key
    assert decide_one(value) == gateway  # the same event (id, tokens, intake time) and the same vault identity
    if isinstance(gateway, Accepted):
        assert gateway.identity.nik == (raw["nik"] or None) and gateway.identity.recipient_name == raw["recipient_name"]


class _Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value))
        return "future"


def test_the_producer_sends_good_records_and_returns_bad_ones_as_values():
    fake = _Producer()
    producer = sdk.AgencyProducer("unused:9092", public_key=PUBLIC.hex(), topic="t", producer=fake,
                                  now_us=lambda: NOW_US)
    sent = producer.send(raw_record())
    assert isinstance(sent, sdk.Sent) and sent.source_ref == "PKH-2026-04-000001"
    refused = producer.send(raw_record(amount_idr=0))
    assert refused == Rejection("amount_idr_must_be_positive", "amount_idr", "amount_idr must be greater than zero")
    producer.send(raw_record())
    assert [t for t, _, _ in fake.sent] == ["t", "t"]
    # a retried record is sealed anew, and the door still makes the same event of it: `exists` at the keys
    (_, _, first), (_, _, second) = fake.sent
    assert first != second and decide_one(first).disbursement == decide_one(second).disbursement


def test_the_sdk_takes_no_token_key():
    import inspect

    for function in (sdk.AgencyProducer.__init__, sdk.prepare):
        assert "token_key" not in inspect.signature(function).parameters


# --- the door ------------------------------------------------------------------------------------


def sealed(raw, public=PUBLIC) -> bytes:
    """What a direct producer that skipped the SDK's checks would send for `raw`."""
    return submission.seal_record(raw, public)[1]


def decide_one(value, ref=None, keys=(PRIVATE,)):
    [out] = door.decide([value], reference=ref or reference(), agencies=AGENCIES, opener=sealing.Opener(keys),
                        token_key=TOKEN_KEY, now_us=NOW_US + 5)
    return out


FIELD_CASES = {
    "amount_zero": {"amount_idr": 0},
    "amount_negative": {"amount_idr": -5},
    "amount_fraction": {"amount_idr": "1500.5"},
    "amount_huge": {"amount_idr": 10**15},
    "programme_unknown": {"programme_code": "NOPE"},
    "programme_inactive": {"programme_code": "OLD_BANSOS"},
    "future": {"disbursed_at": (NOW + timedelta(days=30)).isoformat()},
    "period": {"period": "2026-13"},
    "kind": {"kind": "GOLD"},
    "channel": {"channel": "PIGEON"},
    "region": {"region_code": "18710"},
    "source_type": {"source_type": "LOTTERY"},
    "funding_account": {"funding_account": ""},
    "nik_short": {"nik": "18710145048500"},
    "nik_impossible_date": {"nik": "1871017313850001"},
    "no_identity": {"nik": ""},
    "unknown_field": {"colour": "red"},
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_the_door_refuses_a_record_sealed_past_the_sdk_with_the_gateways_code(case):
    ref = reference_with_inactive_programme()
    raw = raw_record(**FIELD_CASES[case])
    gateway = intake.validate_any(raw, reference=ref, token_key=TOKEN_KEY, now_us=NOW_US)
    assert isinstance(gateway, Rejection)
    got = decide_one(sealed(raw), ref)
    assert isinstance(got, door.Refused) and got.code == gateway.code


def test_the_door_refuses_a_budget_record():
    assert decide_one(sealed({"record_type": "allocation"})).code in set(outcomes.ALL_CODES)
    assert isinstance(decide_one(sealed(raw_reversal())), AcceptedReversal)


def test_the_door_names_every_wire_problem():
    good = sealed(raw_record())
    alert_schema = codec.codec(codec.ALERT)
    legacy = codec.encode_disbursement(intake.validate_any(raw_record(), reference=reference(), token_key=TOKEN_KEY,
                                                           now_us=NOW_US).disbursement)
    cases = {
        None: "value_missing",
        b"garbage": "avro_marker_invalid",
        codec.MARKER + b"\x00" * 8 + good[10:]: "schema_fingerprint_unknown",
        good[:40]: "avro_body_malformed",
        good + b"\x00": "avro_body_malformed",
        alert_schema.header + b"\x00" * 20: "schema_mismatch",
        codec.encode_rulebook(codec.RulebookActivation("v", "d", "t", 1, "x")): "schema_mismatch",
        legacy: "schema_mismatch",  # a tokenized record: the topic carries sealed submissions only
        good + b"\x00" * (door.MAX_VALUE_BYTES + 1): "value_too_large",
    }
    for value, code in cases.items():
        assert decide_one(value).code == code, code
    # a string whose bytes are not UTF-8: its length prefix kept, one byte made invalid
    i = good.index(b"SIKS-NG")
    assert decide_one(good[:i] + b"\xff" + good[i + 1:]).code == "text_encoding_invalid"
    assert {c.code for c in map(decide_one, cases)} <= set(outcomes.ALL_CODES)


def test_the_door_refuses_a_seal_it_cannot_open():
    good = sealed(raw_record())
    assert isinstance(decide_one(good), Accepted)
    assert decide_one(good, keys=[sealing.new_private_key()]).code == "identity_seal_invalid"  # wrong key
    assert decide_one(sealed(raw_record(), sealing.public_key(sealing.new_private_key()))).code == "identity_seal_invalid"
    assert decide_one(good[:-3] + bytes(b ^ 1 for b in good[-3:])).code == "identity_seal_invalid"  # tampered tag
    fields = codec.codec(codec.SUBMISSION).decode(good)
    other = codec.codec(codec.SUBMISSION).decode(sealed(raw_record(source_ref="PKH-2026-04-000002")))
    moved = codec.codec(codec.SUBMISSION).encode({**fields, "record": other["record"]})
    assert decide_one(moved).code == "identity_seal_invalid"  # moved onto another record
    rotated = sealing.new_private_key()
    assert isinstance(decide_one(good, keys=[rotated, PRIVATE]), Accepted)  # the old key still opens during a rotation
    assert {"identity_seal_invalid", "identity_not_sealed"} <= set(outcomes.DOOR_CODES)


def test_the_door_refuses_a_record_out_of_scope():
    for changes in ({"agency_code": "DINSOS-X"}, {"programme_code": "PIP"}, {"source_system": "OTHER"}):
        got = decide_one(sealed(raw_record(**changes)))
        assert got.code == "agency_out_of_scope", changes


def test_one_bad_record_does_not_stop_the_batch():
    good = sealed(raw_record())
    got = door.decide([b"x", good, None, good], reference=reference(), agencies=AGENCIES,
                      opener=sealing.Opener([PRIVATE]), token_key=TOKEN_KEY, now_us=NOW_US)
    assert [type(g).__name__ for g in got] == ["Refused", "Accepted", "Refused", "Accepted"]
