"""The worker's packed person state: payments survive pack/unpack exactly, a partition's buckets
behave as a plain mapping of token to record, and a packed person is what decisions see."""

from __future__ import annotations

import pytest
from builders import decide, disbursement
from hypothesis import given, settings
from hypothesis import strategies as hs

from aidcore.ledger import Payment, decide_batch
from streams import state as st

KEYS = hs.integers(min_value=0, max_value=2**64 - 1)
# A few households so that persons share them, plus any 16 bytes (hypothesis likes all zeros).
HOUSEHOLDS = hs.one_of(hs.just(b""), hs.sampled_from([b"\x01" * 16, b"\x02" * 16, bytes(16)]),
                       hs.binary(min_size=16, max_size=16))
WHOLE_SECONDS = hs.integers(min_value=0, max_value=2**32 - 1).map(lambda s: s * 1_000_000)


def payments(households=HOUSEHOLDS) -> hs.SearchStrategy[Payment]:
    """Any payment: narrow and wide amounts and times, reversals or not, with or without a KK."""
    return hs.builds(
        Payment,
        event_id=hs.binary(min_size=16, max_size=16),
        programme_code=hs.sampled_from(["PKH", "BPNT", "BLT_DD", "PIP"]),
        period=hs.sampled_from(["2026-01", "2026-02", "2026-12"]),
        amount_idr=hs.one_of(hs.integers(min_value=1, max_value=500_000_000),
                             hs.integers(min_value=-(2**63), max_value=2**63 - 1)),
        digests=hs.binary(min_size=24, max_size=24),
        disbursed_at_us=hs.one_of(WHOLE_SECONDS, hs.integers(min_value=-(2**63), max_value=2**63 - 1)),
        source_type=hs.sampled_from(["APBN", "APBD_KAB", "CSR"]),
        household=households,
        original_key=hs.one_of(hs.just(0), KEYS),
    )


def persons(households=HOUSEHOLDS, max_size: int = 40) -> hs.SearchStrategy[dict[int, Payment]]:
    return hs.dictionaries(KEYS, payments(households), max_size=max_size)


def plain(p: Payment) -> Payment:
    """A payment that fits the common layout: one household, whole seconds, no reversal."""
    return p._replace(amount_idr=abs(p.amount_idr) % 500_000_000,
                      disbursed_at_us=abs(p.disbursed_at_us) // 1_000_000 % 2**32 * 1_000_000, original_key=0)


@settings(max_examples=300, deadline=None)
@given(persons())
def test_pack_unpack_round_trips_any_person(person):
    unpacked = st.unpack(st.pack(person))
    assert unpacked == person
    assert list(unpacked) == list(person)  # insertion order too: alert lines are built from it


@settings(max_examples=100, deadline=None)
@given(persons(households=hs.just(b"\x07" * 16)))
def test_a_common_person_takes_58_bytes_a_payment_and_its_household_once(person):
    person = {k: plain(p) for k, p in person.items()}
    assert len(st.pack(person)) == 2 + (16 if person else 0) + 58 * len(person)
    assert st.unpack(st.pack(person)) == person


def test_a_person_with_more_households_than_an_index_byte_names_round_trips():
    template = plain(Payment(b"e" * 16, "PKH", "2026-01", 1, b"d" * 24, 0, "APBN"))
    person = {k: template._replace(household=k.to_bytes(16, "big") if k % 7 else b"") for k in range(300)}
    assert st.unpack(st.pack(person)) == person


def test_a_reversal_keeps_the_key_it_reverses():
    paid = plain(Payment(b"e" * 16, "PKH", "2026-01", 300_000, b"d" * 24, 1_767_225_600_000_000, "APBN", b"k" * 16))
    person = {1: paid, 2: paid._replace(event_id=b"r" * 16, amount_idr=-300_000, original_key=1)}
    assert st.unpack(st.pack(person)) == person
    assert st.unpack(st.pack(person))[2].is_reversal


@pytest.mark.parametrize("field, value", [("event_id", b"short"), ("digests", b"x" * 25), ("household", b"kk")])
def test_a_field_of_the_wrong_width_is_refused_rather_than_padded(field, value):
    bad = Payment(b"e" * 16, "PKH", "2026-01", 1, b"d" * 24, 0, "APBN")._replace(**{field: value})
    with pytest.raises(ValueError):
        st.pack({1: bad})


# Tokens made of a few 8-byte halves: in one bucket, one token's bytes often run across the
# boundary of two others (e.g. A+B stored next to C+D contains B+C), which a lookup must skip.
HALVES = [bytes([c]) * 8 for c in (0, 1, 0xAA)] + [b"\x00\x01" * 4]
TOKENS = hs.tuples(hs.sampled_from(HALVES), hs.sampled_from(HALVES)).map(b"".join) | hs.binary(min_size=16, max_size=16)
RECORDS = hs.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(TOKENS, RECORDS), max_size=120), hs.lists(TOKENS, max_size=20),
       hs.sampled_from([1, 2, 3, 16, 1000]))
def test_buckets_behave_as_a_mapping_of_token_to_record(puts, probes, load):
    state, model = st.PartitionState(load=load), {}
    for token, record in puts:
        state.put(token, record)
        model[token] = record
    assert len(state) == len(model)
    assert dict(state.items()) == model
    assert sorted(t for t, _ in state.items()) == sorted(model)  # each person once
    for token in [t for t, _ in puts] + probes:
        assert state.get(token) == model.get(token)


def test_many_persons_share_a_bucket_and_splitting_keeps_every_record():
    one_bucket = st.PartitionState(load=10_000)
    split_often = st.PartitionState(load=2)
    model = {i.to_bytes(16, "big"): bytes([i % 251]) * (i % 97) for i in range(3000)}
    for state in (one_bucket, split_often):
        for token, record in model.items():
            state.put(token, b"first")
            state.put(token, record)
        assert dict(state.items()) == model and len(state) == 3000
        assert all(state.get(t) == r for t, r in model.items())
    assert len(one_bucket._buckets) == 1
    assert len(split_often._buckets) >= 3000 // 4


@settings(max_examples=100, deadline=None)
@given(hs.dictionaries(hs.binary(min_size=16, max_size=16).map(bytes.hex), persons(max_size=6), max_size=30),
       hs.dictionaries(hs.binary(min_size=16, max_size=16).map(bytes.hex), persons(max_size=6), max_size=30))
def test_store_then_view_returns_what_was_stored(first, second):
    state = st.PartitionState(load=4)
    st.store(state, first)
    st.store(state, second)
    expected = {**first, **second}
    assert st.view(state, list(expected) + ["00" * 16]) == {t: p for t, p in expected.items()}
    assert len(state) == len(expected)


def test_the_size_of_a_partition_counts_its_buckets():
    state = st.PartitionState()
    empty = state.nbytes()
    for i in range(1000):
        state.put(i.to_bytes(16, "big"), bytes(100))
    assert state.nbytes() - empty >= 1000 * (16 + 100)
    assert state.nbytes() - empty < 1000 * (16 + 100 + 40)


@settings(max_examples=200, deadline=None)
@given(persons(max_size=8).filter(bool), persons(max_size=8).filter(bool), hs.booleans())
def test_replaying_payments_onto_a_record_equals_packing_the_merged_person(before, after, common):
    if common:  # the rebuild's usual case: one household, whole seconds, new keys only
        before = {k: plain(p)._replace(household=b"\x07" * 16) for k, p in before.items()}
        after = {k: plain(p)._replace(household=b"\x07" * 16) for k, p in after.items() if k not in before}
    if not after:
        return
    extended = st._extended(st.pack(before), after)
    assert extended == st.pack({**before, **after})
    assert st.unpack(extended) == {**before, **after}


def test_pack_unpack_round_trips_every_field():
    events = [disbursement(), disbursement(source_ref="R-2", period="2026-05", amount_idr=200_000, programme_code="BPNT")]
    result = decide(events)
    (person,) = result.changed.values()
    assert st.unpack(st.pack(person)) == person
    assert len(st.pack(person)) == 2 + 16 + 58 * len(person)  # intake's times are whole seconds


def test_decisions_over_a_packed_state_equal_decisions_over_the_plain_one():
    first = [disbursement(), disbursement(source_ref="R-2", period="2026-05")]
    plain_states = decide(first).changed
    packed = st.PartitionState()
    st.store(packed, plain_states)
    later = [disbursement(), disbursement(source_ref="R-3"), disbursement(amount_idr=1)]
    a = decide(later, plain_states)
    b = decide_batch(st.view(packed, {e.person_token for e in later}), later,
                     rulebook=a_rulebook(), reference=a_reference(), now_us=0)
    assert a.outcomes == b.outcomes == ["exists", "accepted", "exists_with_different_amount_idr"]
    assert a.changed == b.changed
    assert [x.alert_id for x in a.alerts.values()] == [x.alert_id for x in b.alerts.values()]


def test_apply_delta_rebuilds_the_packed_state():
    from schemas import codec

    events = [disbursement(), disbursement(source_ref="R-2", period="2026-05"),
              disbursement(nik="1807020101900002", source_ref="R-3")]
    rebuilt = st.PartitionState()
    st.apply_delta(rebuilt, {"source_partition": 0, "source_offset_end": 2,
                             "events": [codec.encode_disbursement(e) for e in events[:2]]})
    st.apply_delta(rebuilt, {"source_partition": 0, "source_offset_end": 3,
                             "events": [codec.encode_disbursement(e) for e in events[2:]]})
    expected = st.PartitionState()
    st.store(expected, decide(events).changed)
    assert dict(rebuilt.items()) == dict(expected.items())
    assert len(rebuilt) == 2


def a_rulebook():
    from aidcore.ledger import Rulebook

    return Rulebook()


def a_reference():
    from aidcore.reference import default_reference

    return default_reference()


def test_a_split_delta_carries_removed_and_applied_entries_in_its_last_record():
    values = [bytes([i]) * (st.DELTA_MAX_BYTES // 3) for i in range(5)]
    applied = [bytes(range(16))]
    records = st.delta_records(2, 99, values, list(range(5)), [b"r" * 24], applied)
    assert len(records) > 1
    assert [v for r in records for v in r["events"]] == values
    assert all(r["applied"] == [] and r["removed"] == [] for r in records[:-1])
    assert (records[-1]["applied"], records[-1]["removed"]) == (applied, [b"r" * 24])


def test_a_delta_of_only_applied_reversals_is_still_written():
    (record,) = st.delta_records(0, 5, [], [], (), [bytes(16)])
    assert (record["events"], record["applied"]) == ([], [bytes(16)])


def test_an_empty_record_is_a_person_with_no_payments():
    """A table default (the per-event baseline keeps "" for people not seen yet)."""
    assert st.unpack(b"") == {}


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 300), hs.binary(max_size=200)), max_size=600), hs.sampled_from([1, 2, 16]))
def test_the_size_kept_as_buckets_change_is_the_size_a_walk_finds(puts, load):
    """`nbytes` is kept up to date by every store and split; it must equal a walk of the buckets."""
    import sys

    state = st.PartitionState(load=load)
    for token, record in puts:
        state.put(token.to_bytes(16, "big"), record)
    walked = (sys.getsizeof(state) + sys.getsizeof(state._buckets)
              + sum(sys.getsizeof(b) + sys.getsizeof(bucket) for b, bucket in state._buckets.items()))
    assert state.nbytes() == walked
