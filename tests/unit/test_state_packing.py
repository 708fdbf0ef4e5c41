"""The worker's packed person state: payments survive pack/unpack exactly, and a packed person
is what decisions see."""

from __future__ import annotations

from builders import decide, disbursement

from aidcore.ledger import decide_batch
from streams import state as st


def test_pack_unpack_round_trips_every_field():
    events = [disbursement(), disbursement(source_ref="R-2", period="2026-05", amount_idr=200_000, programme_code="BPNT")]
    result = decide(events)
    (person,) = result.changed.values()
    assert st.unpack(st.pack(person)) == person
    assert len(st.pack(person)) == st._PAYMENT.size * len(person)


def test_decisions_over_a_packed_state_equal_decisions_over_the_plain_one():
    first = [disbursement(), disbursement(source_ref="R-2", period="2026-05")]
    plain = decide(first).changed
    packed: st.PartitionState = {}
    st.store(packed, plain)
    later = [disbursement(), disbursement(source_ref="R-3"), disbursement(amount_idr=1)]
    a = decide(later, plain)
    b = decide_batch(st.view(packed, {e.person_token for e in later}), later,
                     rulebook=a_rulebook(), reference=a_reference(), now_us=0)
    assert a.outcomes == b.outcomes == ["exists", "accepted", "exists_with_different_amount_idr"]
    assert a.changed == b.changed
    assert [x.alert_id for x in a.alerts.values()] == [x.alert_id for x in b.alerts.values()]


def test_apply_delta_rebuilds_the_packed_state():
    from schemas import codec

    events = [disbursement(), disbursement(source_ref="R-2", period="2026-05")]
    rebuilt: st.PartitionState = {}
    st.apply_delta(rebuilt, {"source_partition": 0, "source_offset_end": 2,
                             "events": [codec.encode_disbursement(e) for e in events]})
    expected: st.PartitionState = {}
    st.store(expected, decide(events).changed)
    assert rebuilt == expected


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
