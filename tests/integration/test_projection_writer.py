"""projections.writer.write_batch on the real PostgreSQL: what a batch leaves in the archive, the
totals and the tracking records, and that replaying it changes nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from uuid import UUID

import psycopg
import pytest

from aidcore import outcomes
from aidcore.intake import Disbursement, content_digest, field_digests, make_event_id
from infra.embedded import free_port, start_postgres
from projections.migrate import migrate
from projections.writer import Record, prepare, tracked_offsets, write_batch
from schemas import codec

pytestmark = pytest.mark.integration

TOPICS = {"ledger": "aid.ledger.v1", "alerts": "aid.alerts.v1", "deadletter": "aid.deadletter.v1"}
BASE_US = 1_775_016_000_123_457  # 2026-04-01 04:00:00.123457 UTC: odd microseconds on purpose
PERSON = "3a7373690c17fe8688dc556279528c6a"
OTHER_PERSON = "9b0c1d2e3f405162738495a6b7c8d9e0"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def event(ref: str = "R-1", *, person: str = PERSON, amount_idr: int = 300_000, period: str = "2026-04",
          kk_token: str | None = "095e6f1be6a7dd74c9caaa0d4f6e9530", digests: bool = True, **changes) -> Disbursement:
    """An event as intake makes it: event id and field digests from its content."""
    d = Disbursement(
        event_id="", source_system="SIKS-NG", source_ref=ref, source_type="APBN", agency_code="KEMENSOS",
        programme_code="PKH", person_token=person, identity_kind="NIK", kk_token=kk_token, amount_idr=amount_idr,
        kind="CASH", period=period, disbursed_at_us=BASE_US, disbursed_at_offset_min=420, channel="BANK_TRANSFER",
        region_code="1871011001", funding_account="APBN-2026-PKH", recorded_at_us=BASE_US + 5_000_000,
    )
    d = replace(d, **changes)
    values = d.content_values()
    return replace(d, event_id=make_event_id(d.source_system, d.source_ref, content_digest(values)),
                   field_digests=field_digests(values) if digests else b"")


class Log:
    """A ledger partition: appends records at increasing offsets."""

    def __init__(self, partition: int = 0):
        self.partition = partition
        self.next_offset = 0

    def records(self, *items: Disbursement | bytes | None) -> list[Record]:
        out = []
        for item in items:
            value = codec.encode_disbursement(item) if isinstance(item, Disbursement) else item
            out.append(Record(TOPICS["ledger"], self.partition, self.next_offset, b"k", value))
            self.next_offset += 1
        return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = start_postgres(tmp_path_factory.mktemp("pg"), free_port())
    migrate(pg.endpoint)
    yield pg
    pg.stop()


@pytest.fixture
def conn(server):
    with psycopg.connect(server.endpoint, autocommit=True) as c:
        # the archive and its chain are append-only: emptying them between tests takes the
        # superuser's way past the trigger
        c.execute("SET session_replication_role = replica")
        c.execute("TRUNCATE ledger.events, ledger.chain, ledger.person_totals, ledger.tracking")
        c.execute("RESET session_replication_role")
        prepare(c)
        yield c


def write(conn, records: list[Record]):
    ends = {(r.topic, r.partition): r.offset + 1 for r in records}
    return write_batch(conn, "test", TOPICS, records, ends)


def archive(conn) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT event_id::text, accepted, outcome, amount_idr, \"offset\" FROM ledger.events"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def totals(conn) -> dict[tuple[str, str, str], tuple[int, int]]:
    rows = conn.execute(
        "SELECT person_token, programme_code, period, amount_idr_total, payments FROM ledger.person_totals"
    ).fetchall()
    return {(t, p, pe): (a, n) for t, p, pe, a, n in rows}


def totals_from_archive(conn) -> dict[tuple[str, str, str], tuple[int, int]]:
    rows = conn.execute(
        "SELECT person_token, programme_code, period, sum(amount_idr)::bigint, count(*)::int FROM ledger.events"
        " WHERE accepted GROUP BY 1, 2, 3"
    ).fetchall()
    return {(t, p, pe): (a, n) for t, p, pe, a, n in rows}


def test_every_column_holds_the_event_exactly(conn):
    log = Log(partition=3)
    with_kk, without_kk = event("R-1"), event("R-2", kk_token=None, disbursed_at_us=BASE_US + 1)
    records = log.records(with_kk, without_kk)
    stats = write(conn, records)
    assert (stats.events_new, stats.events_accepted, stats.events_conflicting) == (2, 2, 0)
    rows = conn.execute(
        "SELECT event_id, source_system, source_ref, source_type, agency_code, programme_code, person_token,"
        " identity_kind, kk_token, amount_idr, kind, period, disbursed_at, disbursed_at_offset_min, channel,"
        " region_code, funding_account, recorded_at, topic, partition, \"offset\", accepted, outcome, value"
        " FROM ledger.events ORDER BY \"offset\""
    ).fetchall()
    for row, d, r in zip(rows, (with_kk, without_kk), records):
        expected = (
            UUID(d.event_id), d.source_system, d.source_ref, d.source_type, d.agency_code, d.programme_code,
            d.person_token, d.identity_kind, d.kk_token, d.amount_idr, d.kind, d.period,
            EPOCH + timedelta(microseconds=d.disbursed_at_us),
            d.disbursed_at_offset_min, d.channel, d.region_code, d.funding_account,
            EPOCH + timedelta(microseconds=d.recorded_at_us),
            TOPICS["ledger"], 3, r.offset, True, outcomes.ACCEPTED, r.value,
        )
        assert row == expected
    assert tracked_offsets(conn, "test") == {(TOPICS["ledger"], 3): 2}


def test_timestamps_are_exact_to_the_microsecond_before_2000_and_after(conn):
    moments = [0, 946_684_799_999_999, 946_684_800_000_000, 946_684_800_000_001, BASE_US, 4_102_444_800_000_001]
    write(conn, Log().records(*[event(f"R-{i}", disbursed_at_us=us) for i, us in enumerate(moments)]))
    stored = conn.execute(
        "SELECT (extract(epoch FROM disbursed_at) * 1000000)::bigint FROM ledger.events ORDER BY \"offset\""
    ).fetchall()
    assert [s for (s,) in stored] == moments


def test_replaying_a_batch_changes_nothing(conn):
    log = Log()
    records = log.records(event("R-1"), event("R-2", person=OTHER_PERSON), event("R-1", amount_idr=400_000))
    first = write(conn, records)
    before = (archive(conn), totals(conn))
    again = write(conn, records)
    assert (first.events_new, again.events_new, again.events_accepted, again.events_conflicting) == (3, 0, 0, 0)
    assert (archive(conn), totals(conn)) == before


def test_a_replay_mixed_with_new_events_writes_only_the_new(conn):
    log = Log()
    earlier = log.records(event("R-1"), event("R-2"))
    write(conn, earlier)
    later = log.records(event("R-3", period="2026-05"))
    stats = write(conn, earlier + later)
    assert stats.events_new == 1
    assert totals(conn) == {(PERSON, "PKH", "2026-04"): (600_000, 2), (PERSON, "PKH", "2026-05"): (300_000, 1)}


def test_a_later_version_of_a_reference_is_archived_as_not_accepted(conn):
    log = Log()
    original, changed = event("R-1"), event("R-1", amount_idr=450_000)
    write(conn, log.records(original))
    stats = write(conn, log.records(changed))
    assert (stats.events_new, stats.events_accepted, stats.events_conflicting) == (1, 0, 1)
    assert archive(conn)[changed.event_id][:2] == (False, "exists_with_different_amount_idr")
    assert totals(conn) == {(PERSON, "PKH", "2026-04"): (300_000, 1)}


def test_within_one_batch_the_first_version_of_a_reference_wins(conn):
    first, second = event("R-1", channel="POS"), event("R-1")
    stats = write(conn, Log().records(first, second, first))
    assert (stats.events_new, stats.events_accepted, stats.events_conflicting) == (2, 1, 1)
    assert archive(conn)[first.event_id][:2] == (True, outcomes.ACCEPTED)
    assert archive(conn)[second.event_id][:2] == (False, "exists_with_different_channel")


def test_events_without_carried_digests_still_name_the_changed_field(conn):
    """Events written before DisbursementRecorded v2 carry no field digests."""
    log = Log()
    write(conn, log.records(event("R-1", digests=False), event("R-2", digests=False)))
    stats = write(conn, log.records(event("R-1", period="2026-05", digests=False),
                                    event("R-2", kind="IN_KIND")))
    assert stats.events_conflicting == 2
    outcomes_by_ref = dict(conn.execute("SELECT source_ref, outcome FROM ledger.events WHERE NOT accepted").fetchall())
    assert outcomes_by_ref == {"R-1": "exists_with_different_period", "R-2": "exists_with_different_kind"}


def test_undecodable_records_are_counted_and_skipped(conn):
    log = Log()
    stats = write(conn, log.records(b"not avro", None, event("R-1")))
    assert (stats.events_undecodable, stats.events_new) == (2, 1)
    assert tracked_offsets(conn, "test") == {(TOPICS["ledger"], 0): 3}


def test_totals_equal_the_accepted_events_over_many_batches(conn):
    """Several batches over the same people, with resubmissions and replays between them."""
    log = Log()
    people = [f"{i:032x}" for i in range(40)]
    batches = []
    for b in range(6):
        items = []
        for i in range(300):
            n = b * 300 + i
            items.append(event(f"R-{n}", person=people[n % 40], period=f"2026-0{1 + n % 3}", amount_idr=1000 + n))
            if n % 17 == 0 and n >= 300:  # a changed copy of an event from an earlier batch
                items.append(event(f"R-{n - 300}", person=people[(n - 300) % 40], amount_idr=7))
        batches.append(log.records(*items))
    for i, batch in enumerate(batches):
        write(conn, batch)
        if i % 2:
            write(conn, batches[i - 1])  # a replay of the batch before
    assert totals(conn) == totals_from_archive(conn)
    assert sum(n for _, n in totals(conn).values()) == 6 * 300



def test_the_key_lookup_probes_the_index_instead_of_reading_the_archive(conn):
    """It once joined the whole archive, sorting every row: a cost that grew with the table.
    (The event id lookup is a plain `= ANY` on the primary key, which the planner costs well.)"""
    from projections.writer import ORIGINALS_SQL

    events = [event(f"R-{i}", person=f"{i % 500:032x}", amount_idr=1000 + i) for i in range(5000)]
    write(conn, Log().records(*events))
    conn.execute("ANALYZE ledger.events")
    probe = events[::5] + [event(f"NEW-{i}") for i in range(1000)]
    plan = conn.execute(
        "EXPLAIN " + ORIGINALS_SQL, ([d.source_system for d in probe], [d.source_ref for d in probe])
    ).fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "Seq Scan on events" not in text, text
    assert "Index Scan using events_idempotency_key" in text, text
