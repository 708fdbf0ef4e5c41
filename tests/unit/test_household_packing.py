"""The household stage's packed state: a slot's postings survive pack/unpack exactly, and the state
a worker keeps by deciding is the state it rebuilds from the household changelog."""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import decide_households_stream, decide_stream, reference, settled_streams, shipped_rulebook
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from aidcore.household import HouseholdEntry, decide_household_batch, slot_of
from schemas import codec
from streams import household as hh
from streams.state import BUCKET_LOAD

IDS = hs.binary(min_size=16, max_size=16)
INT64 = hs.integers(min_value=-(2**63), max_value=2**63 - 1)


def entries(original=hs.one_of(hs.just(b""), IDS.filter(any))) -> hs.SearchStrategy[HouseholdEntry]:
    """Any entry: payments and reversals, any amount and time a posting can carry."""
    return hs.builds(
        HouseholdEntry,
        person=IDS,
        programme_code=hs.sampled_from(["PKH", "BPNT", "BLT_DD"]),
        period=hs.sampled_from(["2026-01", "2026-12"]),
        amount_idr=hs.one_of(hs.integers(min_value=-2_000_000, max_value=2_000_000), INT64),
        source_type=hs.sampled_from(["APBN", "APBDES", "CSR"]),
        disbursed_at_us=INT64,
        region_code=hs.sampled_from(["", "1871010001", "1807020003"]),
        original_event_id=original,
    )


@settings(max_examples=300, deadline=None)
@given(hs.dictionaries(IDS, entries(), max_size=30))
def test_pack_unpack_round_trips_any_slot(slot):
    unpacked = hh.unpack(hh.pack(slot))
    assert unpacked == slot
    assert list(unpacked) == list(slot)  # the order postings were seen in, as the plain dict kept it


@settings(max_examples=50, deadline=None)
@given(hs.dictionaries(IDS, entries(original=hs.just(b"")), min_size=1, max_size=10), entries(original=IDS.filter(any)),
       IDS)
def test_a_posting_takes_52_bytes_and_68_in_a_slot_with_a_reversal(payments, reversal, reversal_id):
    assert len(hh.pack(payments)) == 1 + 52 * len(payments)
    with_reversal = {**payments, reversal_id: reversal}
    assert len(hh.pack(with_reversal)) == 1 + 68 * len(with_reversal)


ENTRY = HouseholdEntry(b"p" * 16, "PKH", "2026-01", 1, "APBN", 0, "1871010001", b"")


@pytest.mark.parametrize("event_id, entry", [
    (b"short", ENTRY), (b"e" * 16, ENTRY._replace(person=b"p" * 17)),
    (b"e" * 16, ENTRY._replace(original_event_id=b"o" * 8)), (b"e" * 16, ENTRY._replace(original_event_id=bytes(16))),
])
def test_a_field_of_the_wrong_width_is_refused_rather_than_padded(event_id, entry):
    with pytest.raises(ValueError):
        hh.pack({event_id: entry})


def a_state(load: int = 2, ref=None) -> hh.HouseholdState:
    """The shell's state with one partition, 0, as after its (empty) rebuild: no broker used. A
    small bucket load by default, so that few slots already split buckets."""
    state = hh.HouseholdState("unused:9092", "households-state", ref or reference(), shipped_rulebook())
    state.partitions[0] = hh.PartitionState(load=load)
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settled_streams(), hs.data())
def test_the_state_rebuilt_from_the_changelog_is_the_state_kept_while_deciding(streams, data):
    """The worker's way: per batch, unpack the slots it touches, decide, store what changed and
    append the batch's postings to the changelog when any was new. Replaying those records into an
    empty partition gives the same packed records, and both equal the plain core's states."""
    _, reordered = streams
    # the shipped limit, or one so small that placeholder households (full ones) come up
    ref = replace(reference(), period_payments_max=data.draw(hs.sampled_from([250, 1, 2, 3])))
    _, _, _, postings = decide_stream(reordered, rulebook=shipped_rulebook())
    postings = postings + postings[: data.draw(hs.integers(0, len(postings)))]  # redelivered after a crash
    cuts = sorted(data.draw(hs.lists(hs.integers(0, len(postings)), max_size=4)))
    live, changelog = a_state(ref=ref), []
    for a, b in zip([0, *cuts], [*cuts, len(postings)]):
        batch = postings[a:b]
        view = live.view(0, {slot_of(p) for p in batch})
        result = decide_household_batch(view, batch, rulebook=shipped_rulebook(), reference=ref, now_us=0)
        if result.accepted:
            changelog.append(codec.encode_postings(shipped_rulebook().version, batch))
            live.update(0, result.changed)
    rebuilt = a_state(ref=ref)
    for value in changelog:
        rebuilt.apply(rebuilt.partitions[0], value)
    assert dict(rebuilt.partitions[0].items()) == dict(live.partitions[0].items())
    if ref.period_payments_max < 250:
        return  # the plain core below decides with the shipped limit
    plain, _ = decide_households_stream(postings, cuts)
    assert live.view(0, plain) == plain
    assert live.households() == rebuilt.households() == len(plain)


def test_the_size_of_the_state_grows_by_the_packed_postings():
    state = a_state(load=BUCKET_LOAD)
    empty = state.nbytes()
    for i in range(1000):
        slot = f"{i:032x}/2026-01"
        state.update(0, {slot: {i.to_bytes(16, "big"): ENTRY}})
    assert state.households() == 1000
    # per household-period: a layout byte, one 52-byte posting, its key and length in the bucket
    assert 1000 * (1 + 52 + 20) <= state.nbytes() - empty < 1000 * (1 + 52 + 20 + 10)


def test_replay_appends_new_payments_and_merges_a_redelivered_one():
    """The rebuild appends a record's new payments to a slot's bytes as they are, also when an
    event id's bytes stand elsewhere in the slot (here as a person token); a record with a posting
    the slot holds already (a redelivery) is merged instead, never appended twice."""
    from aidcore.ledger import Posting

    def posting(event_id: bytes, person: bytes, amount_idr: int = 200_000) -> Posting:
        return Posting("ab" * 16, event_id, person, "PKH", "2026-01", amount_idr, "APBN", 1_767_225_600_000_000,
                       "1871010001", b"", 0)

    first, second = posting(b"a" * 16, b"b" * 16), posting(b"b" * 16, b"c" * 16)
    state = a_state()
    for batch in ([first], [second], [first, posting(b"d" * 16, b"e" * 16)]):
        state.apply(state.partitions[0], codec.encode_postings("v1", batch))
    (blob,) = [record for _, record in state.partitions[0].items()]
    assert len(blob) == 1 + 3 * 52
    assert list(hh.unpack(blob)) == [b"a" * 16, b"b" * 16, b"d" * 16]
