"""The archive's hash chain on the real PostgreSQL: the projector's batch write chains every newly
archived record once, the archive and the chain refuse changes, and `projections.audit.verify`
finds each kind of tampering (done here as a superuser would, past the append-only trigger) at
its exact first bad position; seals catch what the chain alone cannot."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import pytest

from aidcore import chain
from aidcore.intake import Disbursement, Reversal, content_digest, field_digests, make_event_id
from infra.embedded import free_port, start_postgres
from projections import audit
from projections.migrate import migrate, migrations
from projections.writer import Record, prepare, write_batch
from schemas import codec

pytestmark = pytest.mark.integration

TOPICS = {"ledger": "aid.ledger.v1", "alerts": "aid.alerts.v1", "deadletter": "aid.deadletter.v1"}
PARTITIONS = 4
BASE_US = 1_775_016_000_000_000
_names = itertools.count()


def event(n: int, *, amount_idr: int = 300_000) -> Disbursement:
    d = Disbursement(
        event_id="", source_system="SIKS-NG", source_ref=f"R-{n}", source_type="APBN", agency_code="KEMENSOS",
        programme_code="PKH", person_token=f"{n % 97:032x}", identity_kind="NIK", kk_token=None, amount_idr=amount_idr,
        kind="CASH", period="2026-04", disbursed_at_us=BASE_US + n, disbursed_at_offset_min=420,
        channel="BANK_TRANSFER", region_code="1871011001", funding_account="APBN-2026-PKH", recorded_at_us=BASE_US + n,
    )
    values = d.content_values()
    return replace(d, event_id=make_event_id(d.source_system, d.source_ref, content_digest(values)),
                   field_digests=field_digests(values))


def reversal(n: int, *, amount_idr: int = 100_000) -> Reversal:
    """A reversal of event(n - 1)."""
    r = Reversal(
        event_id="", source_system="SIKS-NG", source_ref=f"V-{n}", original_source_system="SIKS-NG",
        original_source_ref=f"R-{n - 1}", agency_code="KEMENSOS", person_token=f"{(n - 1) % 97:032x}",
        identity_kind="NIK", amount_idr=amount_idr, reason="paid twice", reversed_at_us=BASE_US + n,
        reversed_at_offset_min=420, recorded_at_us=BASE_US + n,
    )
    values = r.content_values()
    return replace(r, event_id=make_event_id(r.source_system, r.source_ref, content_digest(values)),
                   field_digests=field_digests(values))


def encode(e) -> bytes:
    return codec.encode_reversal(e) if isinstance(e, Reversal) else codec.encode_disbursement(e)


class Log:
    """The ledger topic: each partition appends at increasing offsets."""

    def __init__(self):
        self.next_offset = [0] * PARTITIONS

    def records(self, events, partition_of=lambda i: i % PARTITIONS) -> list[Record]:
        out = []
        for i, d in enumerate(events):
            p = partition_of(i)
            out.append(Record(TOPICS["ledger"], p, self.next_offset[p], b"k", encode(d)))
            self.next_offset[p] += 1
        return out


def write(conn, records):
    ends = {}
    for r in records:
        ends[(r.topic, r.partition)] = r.offset + 1
    return write_batch(conn, "test", TOPICS, records, ends)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = start_postgres(tmp_path_factory.mktemp("pg"), free_port())
    yield pg
    pg.stop()


def fresh_database(server, *, upto: str | None = None) -> str:
    name = f"chain{next(_names)}"
    admin = server.endpoint.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    url = server.endpoint.rsplit("/", 1)[0] + "/" + name
    if upto is None:
        migrate(url)
    else:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE TABLE public.aidledger_migrations (name text PRIMARY KEY,"
                      " applied_at timestamptz NOT NULL DEFAULT now())")
            for file_name, sql in migrations():
                if file_name < upto:
                    c.execute(sql)
                    c.execute("INSERT INTO public.aidledger_migrations (name) VALUES (%s)", (file_name,))
    return url


@pytest.fixture
def conn(server):
    with psycopg.connect(fresh_database(server), autocommit=True) as c:
        prepare(c)
        yield c


def archived(conn, n: int = 120, first: int = 0, log: Log | None = None) -> Log:
    """`n` events archived through the projector's write path in batches of 25."""
    log = log or Log()
    records = log.records([event(i) for i in range(first, first + n)])
    for i in range(0, len(records), 25):
        write(conn, records[i : i + 25])
    return log


def chain_rows(conn, partition: int) -> list[tuple]:
    return conn.execute(
        'SELECT position, "offset", event_id::text, value_sha256, prev_hash, hash FROM ledger.chain'
        " WHERE partition = %s ORDER BY position", (partition,)).fetchall()


def event_at(conn, partition: int, position: int) -> str:
    return conn.execute("SELECT event_id::text FROM ledger.chain WHERE partition = %s AND position = %s",
                        (partition, position)).fetchone()[0]


@contextmanager
def as_superuser(conn):
    """What the seals are for: someone who can get past the append-only trigger."""
    conn.execute("SET session_replication_role = replica")
    try:
        yield conn
    finally:
        conn.execute("RESET session_replication_role")


def check(conn, seals=()) -> audit.Report:
    return audit.verify(conn, partitions=range(PARTITIONS), seals=seals)


def make_seal(conn, key: bytes, closed_at: str) -> audit.Seal:
    report, doc = audit.seal(conn, private_key=key, ledger_topic=TOPICS["ledger"], partitions=range(PARTITIONS),
                             closed_at=closed_at)
    assert report.ok and doc is not None
    return audit.check_seal(doc["seal"], bytes.fromhex(doc["signature"]), f"seal {closed_at}")


def only_problem(report: audit.Report) -> chain.Finding:
    assert not report.ok
    [finding] = report.first_bad.values()
    return finding


# --- what the projector writes ----------------------------------------------------------------------

def test_every_archived_event_is_chained_once_in_the_order_archived(conn):
    archived(conn, 120)
    for p in range(PARTITIONS):
        rows = chain_rows(conn, p)
        assert [r[0] for r in rows] == list(range(1, 31))
        archive = conn.execute('SELECT event_id::text, "offset", value FROM ledger.events WHERE partition = %s'
                               ' ORDER BY "offset"', (p,)).fetchall()
        assert [(r[2], r[1]) for r in rows] == [(e, o) for e, o, _ in archive]
        prev = chain.genesis(p)
        for (position, offset, _, digest, stored_prev, h), (_, _, value) in zip(rows, archive):
            assert digest == chain.value_digest(value) and stored_prev == prev
            assert h == chain.link(prev, p, position, offset, digest)
            prev = h
    report = check(conn)
    assert report.ok and report.events == 120
    assert {p: s.length for p, s in report.partitions.items()} == {p: 30 for p in range(PARTITIONS)}


def test_a_replayed_batch_chains_nothing(conn):
    log = Log()
    records = log.records([event(i) for i in range(40)])
    write(conn, records)
    before = conn.execute("SELECT count(*), max(position) FROM ledger.chain").fetchone()
    write(conn, records)
    write(conn, records[:10] + log.records([event(i) for i in range(40, 44)]))
    assert before == (40, 10)
    assert conn.execute("SELECT count(*) FROM ledger.chain").fetchone()[0] == 44
    assert check(conn).ok


def test_after_the_broker_lost_its_log_only_new_events_are_chained(conn):
    """The relay publishes the outbox again from offset zero: the same events at new offsets
    (and in another partition order), then new ones. Positions go on from the old heads."""
    archived(conn, 60)
    heads = {p: rows[-1][0] for p in range(PARTITIONS) if (rows := chain_rows(conn, p))}
    again = Log()
    write(conn, again.records([event(i) for i in range(60)] + [event(i) for i in range(60, 70)]))
    assert conn.execute("SELECT count(*) FROM ledger.chain").fetchone()[0] == 70
    new = conn.execute("SELECT partition, position, \"offset\" FROM ledger.chain WHERE position > 15"
                       " ORDER BY partition, position").fetchall()
    assert len(new) == 10 and all(position > heads[p] for p, position, _ in new)
    assert check(conn).ok


def test_the_archive_and_the_chain_refuse_changes(conn):
    archived(conn, 8)
    for sql in ("UPDATE ledger.events SET amount_idr = 1", "DELETE FROM ledger.events", "TRUNCATE ledger.events",
                "UPDATE ledger.chain SET hash = ''", "DELETE FROM ledger.chain WHERE position = 2",
                "TRUNCATE ledger.chain", "DELETE FROM ledger.seals"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(sql)
    assert conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0] == 8
    assert check(conn).ok


def test_records_archived_before_the_chain_existed_are_chained_by_the_migration(server):
    url = fresh_database(server, upto="007")
    log = Log()
    batches = [log.records([event(i) for i in range(b * 10, b * 10 + 10)]) for b in range(3)]
    with psycopg.connect(url, autocommit=True) as c:
        for b, batch in enumerate(batches):
            with c.transaction():
                for r in batch:
                    insert_event(c, r, b)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as c:
        expected = list(chain.extend({}, [(r.partition, r.offset, codec.decode_disbursement(r.value).event_id, r.value)
                                          for r in sorted(itertools.chain(*batches), key=lambda r: r.partition)]))
        stored = c.execute('SELECT partition, position, "offset", event_id::text, value_sha256, prev_hash, hash'
                           " FROM ledger.chain ORDER BY partition, position").fetchall()
        assert stored == expected
        assert check(c).ok


def insert_event(c, r: Record, minutes: int = 0) -> None:
    """A payment archived as an older schema's projector did, `minutes` after now."""
    d = codec.decode_disbursement(r.value)
    c.execute(
        "INSERT INTO ledger.events (event_id, topic, partition, \"offset\", source_system, source_ref,"
        " source_type, agency_code, programme_code, person_token, identity_kind, amount_idr, kind,"
        " period, disbursed_at, disbursed_at_offset_min, channel, region_code, funding_account,"
        " recorded_at, accepted, outcome, value, projected_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
        " %s, %s, %s, %s, %s, %s, %s, now(), 420, %s, %s, %s, now(), true, 'accepted', %s,"
        " now() + %s * interval '1 minute')",
        (d.event_id, r.topic, r.partition, r.offset, d.source_system, d.source_ref, d.source_type,
         d.agency_code, d.programme_code, d.person_token, d.identity_kind, d.amount_idr, d.kind,
         d.period, d.channel, d.region_code, d.funding_account, r.value, minutes),
    )


# --- each kind of tampering, and where it is found ----------------------------------------------------

def test_a_changed_byte_in_one_event(conn):
    archived(conn)
    target = event_at(conn, 1, 7)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.events SET value = set_byte(value, 40, get_byte(value, 40) # 1)"
                     " WHERE event_id = %s", (target,))
    report = check(conn)
    finding = only_problem(report)
    assert (finding.partition, finding.position, finding.problem) == (1, 7, chain.VALUE_CHANGED)
    assert target in finding.detail
    assert report.partitions[1].length == 6 and report.partitions[0].first_bad is None


def test_a_deleted_row(conn):
    archived(conn)
    target = event_at(conn, 2, 12)
    with as_superuser(conn):
        conn.execute("DELETE FROM ledger.events WHERE event_id = %s", (target,))
        conn.execute("DELETE FROM ledger.chain WHERE event_id = %s", (target,))
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (2, 12, chain.MISSING)


def test_a_row_deleted_from_the_archive_alone(conn):
    archived(conn)
    target = event_at(conn, 2, 20)
    with as_superuser(conn):
        conn.execute("DELETE FROM ledger.events WHERE event_id = %s", (target,))
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (2, 20, chain.MISSING)
    assert target in finding.detail


def test_two_rows_swapped(conn):
    archived(conn)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.chain SET position = 1000 WHERE partition = 3 AND position = 5")
        conn.execute("UPDATE ledger.chain SET position = 5 WHERE partition = 3 AND position = 9")
        conn.execute("UPDATE ledger.chain SET position = 9 WHERE partition = 3 AND position = 1000")
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (3, 5, chain.OUT_OF_ORDER)
    assert "chained at position 9" in finding.detail


def test_a_truncated_tail(conn):
    archived(conn)
    key = audit.new_private_key()
    sealed = make_seal(conn, key, "2026-11-22T17:00:00+00:00")
    with as_superuser(conn):
        for table in ("ledger.events", "ledger.chain"):
            conn.execute(f"DELETE FROM {table} WHERE event_id IN (SELECT event_id FROM ledger.chain"
                         " WHERE partition = 0 AND position > 27)")
    assert check(conn).ok  # a shorter chain holds by itself
    finding = only_problem(check(conn, [sealed]))
    assert (finding.partition, finding.position, finding.problem) == (0, 28, chain.TRUNCATED)


def test_an_inserted_forged_row(conn):
    """A forged payment put in as position 10 of partition 1, with the hash that links it to
    position 9, the rows after it moved one up."""
    archived(conn)
    forged = event(9999, amount_idr=5_000_000)
    value = codec.encode_disbursement(forged)
    prev, offset = conn.execute('SELECT hash, "offset" FROM ledger.chain WHERE partition = 1 AND position = 9').fetchone()
    digest = chain.value_digest(value)
    with as_superuser(conn):
        for position in range(30, 9, -1):
            conn.execute("UPDATE ledger.chain SET position = position + 1 WHERE partition = 1 AND position = %s",
                         (position,))
        conn.execute(
            "INSERT INTO ledger.events (event_id, topic, partition, \"offset\", source_system, source_ref, source_type,"
            " agency_code, programme_code, person_token, identity_kind, amount_idr, kind, period, disbursed_at,"
            " disbursed_at_offset_min, channel, region_code, funding_account, recorded_at, accepted, outcome, value)"
            " SELECT %s, topic, partition, \"offset\", source_system, 'FORGED-1', source_type, agency_code,"
            " programme_code, person_token, identity_kind, 5000000, kind, period, disbursed_at, disbursed_at_offset_min,"
            " channel, region_code, funding_account, recorded_at, true, 'accepted', %s FROM ledger.events"
            " WHERE event_id = %s", (forged.event_id, value, event_at(conn, 1, 9)))
        conn.execute('INSERT INTO ledger.chain (partition, position, "offset", event_id, value_sha256, prev_hash, hash)'
                     " VALUES (1, 10, %s, %s, %s, %s, %s)",
                     (offset, forged.event_id, digest, prev, chain.link(bytes(prev), 1, 10, offset, digest)))
    report = check(conn)
    finding = only_problem(report)
    assert (finding.partition, finding.position, finding.problem) == (1, 10, chain.INSERTED)
    assert report.partitions[1].first_bad == 11  # the forged row links; the genuine one after it does not


def test_a_forged_row_added_to_the_archive_alone(conn):
    archived(conn)
    forged = event(8888)
    with as_superuser(conn):
        conn.execute(
            "INSERT INTO ledger.events (event_id, topic, partition, \"offset\", source_system, source_ref, source_type,"
            " agency_code, programme_code, person_token, identity_kind, amount_idr, kind, period, disbursed_at,"
            " disbursed_at_offset_min, channel, region_code, funding_account, recorded_at, accepted, outcome, value)"
            " SELECT %s, topic, partition, 777, source_system, 'FORGED-2', source_type, agency_code, programme_code,"
            " person_token, identity_kind, amount_idr, kind, period, disbursed_at, disbursed_at_offset_min, channel,"
            " region_code, funding_account, recorded_at, true, 'accepted', %s FROM ledger.events LIMIT 1",
            (forged.event_id, codec.encode_disbursement(forged)))
    report = check(conn)
    assert not report.ok and report.first_bad == {}
    [finding] = report.findings
    assert finding.problem == chain.UNCHAINED and forged.event_id in finding.detail and "777" in finding.detail


def rewrite_from(conn, partition: int, position: int) -> None:
    """Change the payment at `position` and recompute every hash after it, as a forger with the
    formula (it is public) would: the chain holds together again."""
    target = event_at(conn, partition, position)
    changed = replace(codec.decode_disbursement(bytes(conn.execute(
        "SELECT value FROM ledger.events WHERE event_id = %s", (target,)).fetchone()[0])), amount_idr=9_000_000)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.events SET value = %s, amount_idr = 9000000 WHERE event_id = %s",
                     (codec.encode_disbursement(changed), target))
        relink_from(conn, partition, position)


def relink_from(conn, partition: int, position: int) -> None:
    """Recompute every hash of a partition from `position` on, over the archive as it now is."""
    rows = conn.execute(
        'SELECT c.position, c."offset", a.value FROM ledger.chain c JOIN ledger.archived_records a USING (event_id)'
        " WHERE c.partition = %s AND c.position >= %s ORDER BY c.position", (partition, position)).fetchall()
    prev = bytes(conn.execute("SELECT hash FROM ledger.chain WHERE partition = %s AND position = %s",
                              (partition, position - 1)).fetchone()[0])
    for p_, offset, value in rows:
        digest = chain.value_digest(bytes(value))
        h = chain.link(prev, partition, p_, offset, digest)
        conn.execute("UPDATE ledger.chain SET value_sha256 = %s, prev_hash = %s, hash = %s"
                     " WHERE partition = %s AND position = %s", (digest, prev, h, partition, p_))
        prev = h


def test_a_whole_chain_rewritten_with_recomputed_hashes(conn):
    key = audit.new_private_key()
    log = archived(conn, 60)
    early = make_seal(conn, key, "2026-11-21T17:00:00+00:00")  # 15 positions per partition
    archived(conn, 60, first=60, log=log)
    late = make_seal(conn, key, "2026-11-22T17:00:00+00:00")  # 30
    rewrite_from(conn, 2, 21)
    assert check(conn).ok  # the chain holds by itself: only a seal tells
    finding = only_problem(check(conn, [late]))
    assert (finding.partition, finding.position, finding.problem) == (2, 1, chain.REWRITTEN)
    finding = only_problem(check(conn, [early, late]))
    assert (finding.partition, finding.position, finding.problem) == (2, 16, chain.REWRITTEN)
    assert "16..30" in finding.detail


# --- seals ------------------------------------------------------------------------------------------

def test_a_seal_round_trip(conn, tmp_path):
    key = audit.new_private_key()
    archived(conn, 40)
    report, doc = audit.seal(conn, private_key=key, ledger_topic=TOPICS["ledger"], partitions=range(PARTITIONS),
                             closed_at="2026-11-22T17:00:00+00:00")
    path = tmp_path / "seal.json"
    audit.write_seal(doc, path)
    sealed = audit.read_seal(path)
    assert sealed.problem is None and sealed.public_key == audit.public_key_of(key)
    assert doc["seal"]["events"] == 40 and doc["seal"]["root"] == chain.root(report.heads()).hex()
    assert [h["position"] for h in doc["seal"]["heads"]] == [10] * PARTITIONS
    archived(conn, 8, first=40)  # the chain goes on after the seal
    assert check(conn, [sealed]).ok
    assert audit.verify(conn, partitions=range(PARTITIONS), seals=[sealed], public_key=audit.public_key_of(key)).ok
    # the next seal names this one and starts its period where this one closed
    _, second = audit.seal(conn, private_key=key, ledger_topic=TOPICS["ledger"], partitions=range(PARTITIONS),
                           closed_at="2026-11-23T17:00:00+00:00")
    assert second["seal"]["period_from"] == "2026-11-22T17:00:00+00:00"
    assert second["seal"]["previous_seal_sha256"] == chain.value_digest(chain.canonical(doc["seal"])).hex()


def test_a_seal_whose_heads_were_edited_or_signed_by_another_key_is_refused(conn, tmp_path):
    key = audit.new_private_key()
    archived(conn, 40)
    _, doc = audit.seal(conn, private_key=key, ledger_topic=TOPICS["ledger"], partitions=range(PARTITIONS),
                        closed_at="2026-11-22T17:00:00+00:00")
    edited = dict(doc["seal"], closed_at="2026-11-30T17:00:00+00:00")
    report = check(conn, [audit.check_seal(edited, bytes.fromhex(doc["signature"]), "edited")])
    [finding] = report.findings
    assert finding.problem == chain.SEAL_INVALID and "signature" in finding.detail
    genuine = audit.check_seal(doc["seal"], bytes.fromhex(doc["signature"]), "genuine")
    other = audit.verify(conn, partitions=range(PARTITIONS), seals=[genuine],
                         public_key=audit.public_key_of(audit.new_private_key()))
    assert [f.problem for f in other.findings] == [chain.SEAL_INVALID]


def test_a_tampered_chain_is_not_sealed(conn):
    archived(conn, 20)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.events SET value = set_byte(value, 30, 0) WHERE event_id = %s",
                     (event_at(conn, 0, 2),))
    report, doc = audit.seal(conn, private_key=audit.new_private_key(), ledger_topic=TOPICS["ledger"],
                             partitions=range(PARTITIONS), closed_at="2026-11-22T17:00:00+00:00")
    assert doc is None and not report.ok
    assert conn.execute("SELECT count(*) FROM ledger.seals").fetchone()[0] == 0


# --- the same tampering at a reversal ----------------------------------------------------------------
# Reversals are chained like payments (their status, the stream's decision, lives outside the
# archive and the hash): each kind of tampering is found at a reversal's row too.

def with_reversals(conn, log: Log | None = None, first: int = 0) -> Log:
    """120 records through the projector's write path in batches of 25, every fifth a reversal
    of the payment before it (the stream's changelog not read: status plays no part)."""
    log = log or Log()
    records = log.records([reversal(i) if i % 5 == 4 else event(i) for i in range(first, first + 120)])
    for i in range(0, len(records), 25):
        write(conn, records[i : i + 25])
    return log


def reversal_at(conn, partition: int, nth: int) -> tuple[int, str]:
    """The chain position and event id of the `nth` reversal of a partition."""
    return conn.execute(
        "SELECT c.position, c.event_id::text FROM ledger.chain c JOIN ledger.reversal_events r USING (event_id)"
        " WHERE c.partition = %s ORDER BY c.position OFFSET %s LIMIT 1", (partition, nth)).fetchone()


def test_reversals_are_chained_with_the_payments_in_log_order(conn):
    with_reversals(conn)
    for p in range(PARTITIONS):
        rows = chain_rows(conn, p)
        archive = conn.execute('SELECT event_id::text, "offset" FROM ledger.archived_records WHERE partition = %s'
                               ' ORDER BY "offset"', (p,)).fetchall()
        assert [(r[2], r[1]) for r in rows] == archive and [r[1] for r in rows] == list(range(30))
    assert conn.execute("SELECT count(*) FROM ledger.reversal_events").fetchone()[0] == 24
    report = check(conn)
    assert report.ok and report.events == 120
    for sql in ("UPDATE ledger.reversal_events SET amount_idr = 1", "DELETE FROM ledger.reversal_events",
                "TRUNCATE ledger.reversal_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(sql)


def test_a_changed_byte_in_a_reversal(conn):
    with_reversals(conn)
    position, target = reversal_at(conn, 1, 2)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.reversal_events SET value = set_byte(value, 40, get_byte(value, 40) # 1)"
                     " WHERE event_id = %s", (target,))
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (1, position, chain.VALUE_CHANGED)
    assert target in finding.detail


def test_a_deleted_reversal(conn):
    with_reversals(conn)
    position, target = reversal_at(conn, 2, 3)
    with as_superuser(conn):
        conn.execute("DELETE FROM ledger.reversal_events WHERE event_id = %s", (target,))
        conn.execute("DELETE FROM ledger.chain WHERE event_id = %s", (target,))
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (2, position, chain.MISSING)


def test_a_reversal_swapped_with_a_payment(conn):
    with_reversals(conn)
    position, _ = reversal_at(conn, 3, 1)
    later = position + 3
    with as_superuser(conn):
        conn.execute("UPDATE ledger.chain SET position = 1000 WHERE partition = 3 AND position = %s", (position,))
        conn.execute("UPDATE ledger.chain SET position = %s WHERE partition = 3 AND position = %s", (position, later))
        conn.execute("UPDATE ledger.chain SET position = %s WHERE partition = 3 AND position = 1000", (later,))
    finding = only_problem(check(conn))
    assert (finding.partition, finding.position, finding.problem) == (3, position, chain.OUT_OF_ORDER)
    assert f"chained at position {later}" in finding.detail


def test_a_tail_truncated_from_a_reversal_on(conn):
    with_reversals(conn)
    sealed = make_seal(conn, audit.new_private_key(), "2026-11-22T17:00:00+00:00")
    position, _ = reversal_at(conn, 0, 4)
    with as_superuser(conn):
        for table in ("ledger.events", "ledger.reversal_events", "ledger.chain"):
            conn.execute(f"DELETE FROM {table} WHERE event_id IN (SELECT event_id FROM ledger.chain"
                         " WHERE partition = 0 AND position >= %s)", (position,))
    assert check(conn).ok  # a shorter chain holds by itself
    finding = only_problem(check(conn, [sealed]))
    assert (finding.partition, finding.position, finding.problem) == (0, position, chain.TRUNCATED)


def test_an_inserted_forged_reversal(conn):
    """A forged reversal (it would take money back from someone) put in after a genuine row,
    linked to it, the rows after it moved one up."""
    with_reversals(conn)
    forged = reversal(9999, amount_idr=5_000_000)
    value = codec.encode_reversal(forged)
    position = 10
    prev, offset = conn.execute('SELECT hash, "offset" FROM ledger.chain WHERE partition = 1 AND position = %s',
                                (position - 1,)).fetchone()
    digest = chain.value_digest(value)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.chain SET position = position + 1000 WHERE partition = 1 AND position >= %s",
                     (position,))
        conn.execute("UPDATE ledger.chain SET position = position - 999 WHERE partition = 1 AND position >= 1000")
        conn.execute(
            "INSERT INTO ledger.reversal_events (event_id, source_system, source_ref, original_source_system,"
            " original_source_ref, agency_code, person_token, identity_kind, amount_idr, reason, reversed_at,"
            " reversed_at_offset_min, recorded_at, topic, partition, \"offset\", value)"
            " VALUES (%s, 'SIKS-NG', 'V-9999', 'SIKS-NG', 'R-9998', 'KEMENSOS', %s, 'NIK', 5000000, 'paid twice',"
            " now(), 420, now(), %s, 1, %s, %s)",
            (forged.event_id, forged.person_token, TOPICS["ledger"], offset, value))
        conn.execute('INSERT INTO ledger.chain (partition, position, "offset", event_id, value_sha256, prev_hash, hash)'
                     " VALUES (1, %s, %s, %s, %s, %s, %s)",
                     (position, offset, forged.event_id, digest, prev,
                      chain.link(bytes(prev), 1, position, offset, digest)))
    report = check(conn)
    finding = only_problem(report)
    assert (finding.partition, finding.position, finding.problem) == (1, position, chain.INSERTED)


def test_a_chain_rewritten_from_a_reversal_on(conn):
    """A reversal's amount changed and every hash after it recomputed: only the seal tells."""
    key = audit.new_private_key()
    with_reversals(conn)
    sealed = make_seal(conn, key, "2026-11-22T17:00:00+00:00")
    position, target = reversal_at(conn, 2, 2)
    changed = replace(codec.decode_reversal(bytes(conn.execute(
        "SELECT value FROM ledger.reversal_events WHERE event_id = %s", (target,)).fetchone()[0])), amount_idr=1)
    with as_superuser(conn):
        conn.execute("UPDATE ledger.reversal_events SET value = %s, amount_idr = 1 WHERE event_id = %s",
                     (codec.encode_reversal(changed), target))
        relink_from(conn, 2, position)
    assert check(conn).ok  # the chain holds by itself
    finding = only_problem(check(conn, [sealed]))
    assert (finding.partition, finding.position, finding.problem) == (2, 1, chain.REWRITTEN)


def test_reversals_archived_before_they_were_chained_are_chained_by_the_migration(server):
    """Before, ledger.reversals held a reversal once the stream took it in, with its status:
    the migration archives each one (its status kept apart) and chains it after its
    partition's head."""
    url = fresh_database(server, upto="013")
    log = Log()
    payments, reversals = [event(i) for i in range(8)], [reversal(i) for i in range(1, 8, 2)]
    with psycopg.connect(url, autocommit=True) as c:
        records = log.records(payments)
        for r in records:
            insert_event(c, r)
        for row in chain.extend({}, [(r.partition, r.offset, codec.decode_disbursement(r.value).event_id, r.value)
                                     for r in records]):
            c.execute('INSERT INTO ledger.chain (partition, position, "offset", event_id, value_sha256, prev_hash,'
                      " hash) VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
        for i, v in enumerate(reversals):
            c.execute(
                "INSERT INTO ledger.reversals (event_id, source_system, source_ref, original_source_system,"
                " original_source_ref, agency_code, person_token, identity_kind, amount_idr, reason, reversed_at,"
                " reversed_at_offset_min, recorded_at, status, topic, partition, \"offset\", value)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 420, now(), %s, %s, 0, %s, %s)",
                (v.event_id, v.source_system, v.source_ref, v.original_source_system, v.original_source_ref,
                 v.agency_code, v.person_token, v.identity_kind, v.amount_idr, v.reason, ("applied", "pending")[i % 2],
                 TOPICS["ledger"], 10 + i, codec.encode_reversal(v)))
    migrate(url)
    with psycopg.connect(url, autocommit=True) as c:
        tail = c.execute('SELECT position, "offset", event_id::text FROM ledger.chain WHERE partition = 0'
                         " ORDER BY position").fetchall()[2:]
        assert tail == [(3 + i, 10 + i, v.event_id) for i, v in enumerate(reversals)]
        assert c.execute("SELECT source_ref, status FROM ledger.reversals ORDER BY source_ref").fetchall() == [
            ("V-1", "applied"), ("V-3", "pending"), ("V-5", "applied"), ("V-7", "pending")]
        assert check(c).ok
