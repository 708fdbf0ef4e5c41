"""aidledger.bench_scale's generator: every record is what intake and the codec would have made
of the same payment (byte for byte), keyed and partitioned as the relay's producer does it, and
the counts the replay is verified against are the log's own."""

from __future__ import annotations

from collections import Counter

import pytest
from aiokafka.partitioner import murmur2

from aidcore.intake import content_digest, field_digests, make_event_id
from aidledger import bench_scale
from schemas import codec


@pytest.fixture(scope="module")
def log():
    population = bench_scale.Population(2_000, 36, seed=5)
    stats = bench_scale.Generated()
    records = list(bench_scale.events(population, 12_000, seed=5, partitions=8, stats=stats))
    return population, stats, records


def test_records_are_what_intake_and_the_codec_make(log):
    _, _, records = log
    kinds = Counter()
    for partition, key, value in records:
        d = codec.decode_disbursement(value)
        assert codec.encode_disbursement(d) == value
        values = d.content_values()
        assert d.event_id == make_event_id(d.source_system, d.source_ref, content_digest(values))
        assert d.field_digests == field_digests(values)
        assert key == d.person_token.encode()
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 8
        kinds[d.identity_kind, d.kk_token is None] += 1
    # both kinds of household: with a KK, and undocumented (provisional ids, no KK)
    assert set(kinds) == {("NIK", False), ("PROVISIONAL", True)}


def test_the_counts_are_the_logs_own(log):
    population, stats, records = log
    assert len(records) == stats.records == 12_000
    decoded = [codec.decode_disbursement(v) for _, _, v in records]
    first: dict[tuple[str, str], object] = {}
    for d in decoded:
        first.setdefault(d.idempotency_key, d)
    assert len({d.event_id for d in decoded}) == stats.distinct_events
    assert len(first) == stats.accepted
    assert sum(d.amount_idr for d in first.values()) == stats.accepted_amount_idr
    assert stats.redeliveries == 12 and stats.resubmissions == 24
    assert stats.distinct_events == 12_000 - stats.redeliveries
    assert stats.accepted == stats.distinct_events - stats.resubmissions
    # everyone is paid, once per programme and period at most (apart from the resubmissions)
    assert len({d.person_token for d in decoded}) == stats.people_paid == population.people == 2_000
    per_slot = Counter((d.person_token, d.programme_code, d.period) for d in first.values())
    assert max(per_slot.values()) == 1
    assert {d.period for d in decoded} == set(population.periods) and len(population.periods) == 36
    # a resubmission comes after its original, on the same partition
    where = {}
    for (partition, _, _), d in zip(records, decoded):
        if d.idempotency_key in where:
            assert where[d.idempotency_key] == partition
        where.setdefault(d.idempotency_key, partition)


def test_the_same_seed_gives_the_same_log():
    a = list(bench_scale.events(bench_scale.Population(300, 12, seed=9), 1_000, seed=9))
    b = list(bench_scale.events(bench_scale.Population(300, 12, seed=9), 1_000, seed=9))
    assert a == b


def test_too_many_people_for_the_events_is_refused():
    with pytest.raises(ValueError, match="cannot each be paid"):
        list(bench_scale.events(bench_scale.Population(2_000, 36, seed=1), 1_000, seed=1))


def test_avro_long_matches_the_codec():
    for n in (0, 1, -1, 63, 64, -65, 420, 2**31, 1_775_016_000_123_457, -(2**62), 2**63 - 1):
        assert bench_scale._long(n) == codec.codec(codec.DISBURSEMENT).encode(
            dict(codec.codec(codec.DISBURSEMENT).decode(_sample()), amount_idr=n))[_amount_slice(n)]


def _sample() -> bytes:
    population = bench_scale.Population(10, 12, seed=3)
    return next(bench_scale.events(population, 100, seed=3))[2]


def _amount_slice(n: int) -> slice:
    """Where amount_idr's bytes sit in the sample: after the kk_token union."""
    d = codec.decode_disbursement(_sample())
    head = bench_scale._HEADER + b"".join(bench_scale._str(s) for s in (
        d.event_id, d.source_system, d.source_ref, d.source_type, d.agency_code, d.programme_code, d.person_token,
        d.identity_kind))
    head += bench_scale._SOME_ENC + bench_scale._str(d.kk_token) if d.kk_token else bench_scale._NONE_ENC
    return slice(len(head), len(head) + len(bench_scale._long(n)))


def test_a_run_that_would_not_fit_in_memory_stops_first(monkeypatch):
    monkeypatch.setattr(bench_scale, "_available_bytes", lambda: 2**30)
    with pytest.raises(SystemExit, match="GiB of memory"):
        bench_scale.run(10_000_000)


def test_verification_names_what_does_not_add_up():
    expected = bench_scale.Generated(distinct_events=10, accepted=9, accepted_amount_idr=900, people_paid=4)
    found = {"events": 10, "accepted": 9, "amount_idr": 900, "payments": 9, "people": 4, "tracked": {0: 6, 1: 5}}
    assert bench_scale.compare(found, expected, {0: 6, 1: 5})["ok"]
    short = bench_scale.compare(dict(found, amount_idr=899, tracked={0: 6, 1: 4}), expected, {0: 6, 1: 5})
    assert not short["ok"]
    assert short["failed"] == ["sum of person totals == sum of accepted amounts", "tracking offsets == high watermarks"]
