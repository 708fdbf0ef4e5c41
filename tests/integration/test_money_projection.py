"""The money trail in projections.writer.write_batch, on the real PostgreSQL: budget records and
their legs, reversals archived and chained as read from the ledger topic with their status as
the person stage's changelog says it decided them (whatever the order the projector reads the
ledger and the changelog in), net person totals, balances that reconcile, and replays that
change nothing."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest

from aidcore import postings as pst
from aidcore.intake import AcceptedBudget, Accepted, AcceptedReversal, validate_any
from aidcore.ledger import event_id_bytes, idem_key
from aidcore.reference import default_reference
from infra.embedded import free_port, start_postgres
from projections.migrate import migrate
from projections.writer import Record, prepare, write_batch
from schemas import codec

pytestmark = pytest.mark.integration

TOPICS = {"ledger": "aid.ledger.v1", "alerts": "aid.alerts.v1", "deadletter": "aid.deadletter.v1",
          "state": "aidledger-aid-ledger-state-changelog"}
KEY = b"m" * 32
NOW_US = 1_776_000_000_000_000  # 2026-04-12
NIK = "1871014504850001"
OTHER_NIK = "1807020101900002"


def make(raw: dict):
    out = validate_any(raw, reference=default_reference(), token_key=KEY, now_us=NOW_US)
    if isinstance(out, Accepted):
        return out.disbursement
    if isinstance(out, AcceptedReversal):
        return out.reversal
    assert isinstance(out, AcceptedBudget), out
    return out.record


def payment(ref: str, amount: int = 750_000, nik: str = NIK, **extra):
    return make({"source_system": "SIKS-NG", "source_ref": ref, "source_type": "APBN", "agency_code": "KEMENSOS",
                 "programme_code": "PKH", "nik": nik, "recipient_name": "Warga", "amount_idr": amount, "kind": "CASH",
                 "period": "2026-04", "disbursed_at": "2026-04-03T10:00:00+07:00", "channel": "BANK_TRANSFER",
                 "region_code": "1871011001", "funding_account": "APBN-2026-PKH", **extra})


def reversal(ref: str, original: str, amount: int, nik: str = NIK):
    return make({"record_type": "reversal", "source_system": "SIKS-NG", "source_ref": ref,
                 "original_source_ref": original, "agency_code": "KEMENSOS", "nik": nik, "amount_idr": amount,
                 "reason": "paid twice", "reversed_at": "2026-04-09T09:00:00+07:00"})


def allocation(ref: str, amount: int, **extra):
    return make({"record_type": "allocation", "source_system": "SIPD", "source_ref": ref, "source_type": "APBN",
                 "funding_account": "APBN-2026-PKH", "agency_code": "KEMENSOS", "programme_code": "PKH",
                 "fiscal_year": 2026, "amount_idr": amount, "allocated_at": "2026-01-05T09:00:00+07:00", **extra})


def release(ref: str, amount: int, **extra):
    return make({"record_type": "release", "source_system": "SPAN", "source_ref": ref, "source_type": "APBN",
                 "funding_account": "APBN-2026-PKH", "agency_code": "KEMENSOS", "amount_idr": amount,
                 "released_at": "2026-02-02T10:00:00+07:00", **extra})


def encode(e) -> bytes:
    if hasattr(e, "programme_code") and hasattr(e, "person_token"):
        return codec.encode_disbursement(e)
    if hasattr(e, "original_source_ref"):
        return codec.encode_reversal(e)
    return codec.encode_budget(e)


class Log:
    """The ledger topic and the person stage's changelog, partition 0 of each."""

    def __init__(self):
        self.ledger_offset = 0
        self.state_offset = 0
        self.positions: dict[str, int] = {}

    def ledger(self, *events) -> list[Record]:
        out = []
        for e in events:
            self.positions.setdefault(e.event_id, self.ledger_offset)
            out.append(Record(TOPICS["ledger"], 0, self.ledger_offset, b"k", encode(e)))
            self.ledger_offset += 1
        return out

    def changelog(self, taken=(), applied=(), removed=()) -> list[Record]:
        """One AcceptedEvents record: the events the stage took in, the reversals that took effect
        and the entries it removed ((person token, source_ref) of reversals)."""
        delta = {"source_partition": 0, "source_offset_end": self.ledger_offset,
                 "events": [encode(e) for e in taken], "offsets": [self.positions.get(e.event_id, -1) for e in taken],
                 "removed": [bytes.fromhex(e.person_token) + idem_key(e.source_system, e.source_ref).to_bytes(8, "big")
                             for e in removed],
                 "applied": [event_id_bytes(e.event_id) for e in applied]}
        record = Record(TOPICS["state"], 0, self.state_offset, b"0", codec.codec(codec.STATE_DELTA).encode(delta))
        self.state_offset += 1
        return [record]


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
        c.execute("TRUNCATE ledger.events, ledger.chain, ledger.person_totals, ledger.tracking, ledger.budget_events,"
                  " ledger.reversal_events, ledger.reversal_status, ledger.postings, ledger.balances")
        c.execute("RESET session_replication_role")
        prepare(c)
        yield c


def write(conn, records: list[Record]):
    ends = {(r.topic, r.partition): r.offset + 1 for r in records}
    return write_batch(conn, "test", TOPICS, records, ends)


def balances(conn) -> dict[str, int]:
    return {a: b for a, b in conn.execute("SELECT account, balance_idr FROM ledger.account_balances") if b}


def journal_balances(conn, as_of=None) -> dict[str, int]:
    sql = "SELECT account, sum(amount_idr)::bigint FROM ledger.journal"
    if as_of is not None:
        sql += " WHERE at <= %s"
    sql += " GROUP BY account"
    return {a: b for a, b in conn.execute(sql, () if as_of is None else (as_of,)) if b}


def status(conn) -> dict[str, tuple]:
    """The stream's word on each reversal it took in, archived yet or not."""
    return {ref: (state, applied is not None) for ref, state, applied in conn.execute(
        "SELECT source_ref, status, applied_at FROM ledger.reversal_status")}


def totals(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT person_token, sum(amount_idr_total)::bigint FROM ledger.person_totals"
                             " GROUP BY 1").fetchall())


def snapshot(conn):
    return (balances(conn), status(conn), totals(conn),
            conn.execute("SELECT count(*) FROM ledger.postings").fetchone()[0],
            conn.execute("SELECT count(*) FROM ledger.budget_events").fetchone()[0])


# --- budget records ---------------------------------------------------------------------------------


def test_budget_records_are_archived_and_posted_and_a_replay_changes_nothing(conn):
    log = Log()
    a, r = allocation("DIPA-1", 5_000_000), release("SP2D-1", 2_000_000)
    batch = log.ledger(a, r, a)
    stats = write(conn, batch)
    assert stats.budget_events == 2
    rows = conn.execute("SELECT record_type, source_ref, agency_code, programme_code, fiscal_year, amount_idr,"
                        " accepted, outcome, \"offset\" FROM ledger.budget_events ORDER BY \"offset\"").fetchall()
    assert rows == [("allocation", "DIPA-1", "KEMENSOS", "PKH", 2026, 5_000_000, True, "accepted", 0),
                    ("release", "SP2D-1", "KEMENSOS", None, None, 2_000_000, True, "accepted", 1)]
    assert balances(conn) == {"budget:APBN-2026-PKH": -5_000_000, "programme:KEMENSOS:PKH": 5_000_000,
                              "treasury:APBN": -2_000_000, "agency:KEMENSOS": 2_000_000}
    before = snapshot(conn)
    write(conn, batch)
    assert snapshot(conn) == before


def test_another_version_of_a_budget_record_is_archived_as_not_accepted_and_not_posted(conn):
    log = Log()
    write(conn, log.ledger(allocation("DIPA-1", 5_000_000)))
    write(conn, log.ledger(allocation("DIPA-1", 9_000_000), release("DIPA-1", 1, source_system="SIPD")))
    rows = conn.execute("SELECT amount_idr, accepted, outcome FROM ledger.budget_events ORDER BY \"offset\"").fetchall()
    assert rows == [(5_000_000, True, "accepted"), (9_000_000, False, "exists_with_different_amount_idr"),
                    (1, False, "exists_with_different_record_type")]
    assert balances(conn)["programme:KEMENSOS:PKH"] == 5_000_000


# --- reversals as the stream decided them -----------------------------------------------------------


def test_a_reversal_the_stream_applied_is_posted_and_nets_the_totals(conn):
    log = Log()
    p, v = payment("P1"), reversal("V1", "P1", 250_000)
    write(conn, log.ledger(p, v) + log.changelog(taken=[p, v], applied=[v]))
    assert status(conn) == {"V1": ("applied", True)}
    assert totals(conn) == {p.person_token: 500_000}
    assert balances(conn) == {"agency:KEMENSOS": -500_000, f"recipient:{p.person_token}": 500_000,
                              "programme:KEMENSOS:PKH": -500_000, "budget:APBN-2026-PKH": 500_000}
    legs = conn.execute("SELECT account, amount_idr, record_type, \"offset\" FROM ledger.postings ORDER BY leg").fetchall()
    assert legs == [(a, amount, "reversal", 1) for a, amount in pst.legs_of(v, p)]
    assert journal_balances(conn) == balances(conn)


def test_a_reversal_the_stream_refused_is_archived_and_chained_but_has_no_status_and_is_not_posted(conn):
    log = Log()
    p, v = payment("P1"), reversal("V1", "P1", 800_000)
    write(conn, log.ledger(p, v) + log.changelog(taken=[p]))
    assert status(conn) == {}
    assert totals(conn) == {p.person_token: 750_000}
    assert conn.execute('SELECT source_ref, "offset", value FROM ledger.reversal_events').fetchall() == [
        ("V1", 1, codec.encode_reversal(v))]
    assert [event_id for _, _, _, event_id, _ in _chain(conn)] == [p.event_id, v.event_id]
    assert conn.execute("SELECT count(*) FROM ledger.reversals").fetchone()[0] == 0  # the stream never took it in


def test_a_waiting_reversal_is_pending_until_the_stream_applies_it_when_its_original_comes(conn):
    log = Log()
    v, p = reversal("V1", "P1", 250_000), payment("P1")
    write(conn, log.ledger(v) + log.changelog(taken=[v]))
    assert status(conn) == {"V1": ("pending", False)}
    write(conn, log.ledger(p) + log.changelog(taken=[p], applied=[v]))
    assert status(conn) == {"V1": ("applied", True)}
    assert totals(conn) == {p.person_token: 500_000}
    applied_at, recorded_at = conn.execute("SELECT r.applied_at, e.recorded_at FROM ledger.reversals r"
                                           " JOIN ledger.events e ON e.event_id = r.original_event_id").fetchone()
    assert applied_at == recorded_at  # it took effect when its original came


def test_the_changelog_ahead_of_the_ledger_waits_for_the_original_in_the_archive(conn):
    """The projector may read a changelog record before the ledger record it decided: the
    reversal is applied then, and posted once its original is archived."""
    log = Log()
    p, v = payment("P1"), reversal("V1", "P1", 750_000)
    ledger = log.ledger(p, v)
    write(conn, log.changelog(taken=[p, v], applied=[v]))
    assert status(conn) == {"V1": ("applied", False)}
    assert conn.execute("SELECT count(*) FROM ledger.reversals").fetchone()[0] == 0  # not archived yet
    assert totals(conn) == {}
    write(conn, ledger)
    assert status(conn) == {"V1": ("applied", True)}
    assert [(r, s) for r, s in conn.execute("SELECT source_ref, status FROM ledger.reversals")] == [("V1", "applied")]
    assert totals(conn) == {p.person_token: 0}
    assert balances(conn) == {}  # every account back to zero


def test_a_removed_reversal_is_never_posted_until_it_is_taken_in_again_and_applied(conn):
    log = Log()
    v = reversal("V1", "P1", 250_000)
    write(conn, log.ledger(v) + log.changelog(taken=[v]))
    write(conn, log.changelog(removed=[v]))  # its wait ran out: dead-lettered
    p = payment("P1")
    write(conn, log.ledger(p) + log.changelog(taken=[p]))
    assert status(conn) == {"V1": ("removed", False)}
    assert totals(conn) == {p.person_token: 750_000}
    write(conn, log.ledger(v) + log.changelog(taken=[v], applied=[v]))  # replayed after the fix
    assert status(conn) == {"V1": ("applied", True)}
    assert totals(conn) == {p.person_token: 500_000}


def test_taken_in_and_dropped_in_one_batch_is_removed(conn):
    log = Log()
    v, p = reversal("V1", "P1", 800_000), payment("P1")
    write(conn, log.ledger(v, p) + log.changelog(taken=[v, p], removed=[v]))
    assert status(conn) == {"V1": ("removed", False)}


def test_an_applied_reversal_is_never_undone(conn):
    log = Log()
    p, v = payment("P1"), reversal("V1", "P1", 250_000)
    write(conn, log.ledger(p, v) + log.changelog(taken=[p, v], applied=[v]))
    before = snapshot(conn)
    write(conn, log.changelog(taken=[v], removed=[v]))  # a log decided again, differently
    assert snapshot(conn) == before


def test_replaying_ledger_and_changelog_changes_nothing(conn):
    log = Log()
    p1, p2 = payment("P1"), payment("P2", nik=OTHER_NIK, amount=200_000)
    v1, v2 = reversal("V1", "P1", 250_000), reversal("V2", "P2", 200_000, nik=OTHER_NIK)
    batch = (log.ledger(allocation("A1", 1_000_000), release("T1", 600_000), v2, p1, v1, p2)
             + log.changelog(taken=[v2, p1, v1, p2], applied=[v1, v2]))
    write(conn, batch)
    before = snapshot(conn)
    write(conn, batch)
    write(conn, list(reversed(batch)))
    assert snapshot(conn) == before


def test_the_journal_derives_each_payments_legs_as_the_core_does_and_sums_to_the_balances(conn):
    log = Log()
    events = [payment(f"P{i}", amount=100_000 + i, nik=(NIK, OTHER_NIK)[i % 2], agency_code=f"AG-{i % 3}",
                      programme_code=("PKH", "BPNT", "PIP")[i % 3], funding_account=f"LINE-{i % 2}")
              for i in range(12)]
    budget = [allocation("A1", 500_000, agency_code="AG-0"), release("T1", 400_000, agency_code="AG-1",
                                                                      source_type="APBD_PROV")]
    v = reversal("V1", "P0", 50_000)
    write(conn, log.ledger(*budget, *events, v) + log.changelog(taken=[*events, v], applied=[v]))
    for d in events:
        got = conn.execute("SELECT account, amount_idr FROM ledger.journal WHERE event_id = %s ORDER BY leg",
                           (d.event_id,)).fetchall()
        assert [tuple(leg) for leg in pst.legs_of(d)] == got
    assert journal_balances(conn) == balances(conn)
    assert sum(balances(conn).values()) == 0
    expected = pst.fold(leg for e in [*events, *budget] for leg in pst.legs_of(e))
    pst.fold(pst.legs_of(v, events[0]), expected)
    assert balances(conn) == {a: b for a, b in expected.items() if b}


def test_balances_as_of_a_moment_leave_out_what_was_recorded_later(conn):
    log = Log()
    early = payment("P1")
    late = make({**_raw_payment("P2"), "amount_idr": 300_000})
    write(conn, log.ledger(early))
    conn.execute("SET session_replication_role = replica")  # the archive is append-only: move time as its owner
    conn.execute("UPDATE ledger.events SET recorded_at = recorded_at - interval '1 day'")
    conn.execute("RESET session_replication_role")
    write(conn, log.ledger(late))
    moment = conn.execute("SELECT min(recorded_at) + interval '1 hour' FROM ledger.events").fetchone()[0]
    assert journal_balances(conn, moment) == {a: b for a, b in pst.fold(pst.legs_of(early)).items()}


def _raw_payment(ref):
    return {"source_system": "SIKS-NG", "source_ref": ref, "source_type": "APBN", "agency_code": "KEMENSOS",
            "programme_code": "PKH", "nik": NIK, "recipient_name": "Warga", "amount_idr": 750_000, "kind": "CASH",
            "period": "2026-04", "disbursed_at": "2026-04-03T10:00:00+07:00", "channel": "BANK_TRANSFER",
            "region_code": "1871011001", "funding_account": "APBN-2026-PKH"}


def test_the_person_totals_are_the_payments_net_of_applied_reversals_over_many_batches(conn):
    log = Log()
    people = [NIK, OTHER_NIK]
    expected: Counter = Counter()
    for b in range(5):
        ps = [payment(f"P{b}-{i}", amount=100_000 * (i + 1), nik=people[i % 2]) for i in range(4)]
        vs = [reversal(f"V{b}-{i}", f"P{b}-{i}", 50_000, nik=people[i % 2]) for i in range(0, 4, 2)]
        for d in ps:
            expected[d.person_token] += d.amount_idr
        for v in vs:
            expected[v.person_token] -= v.amount_idr
        write(conn, log.ledger(*ps, *vs) + log.changelog(taken=[*ps, *vs], applied=vs))
    assert totals(conn) == dict(expected)


def _chain(conn) -> list[tuple]:
    return conn.execute('SELECT partition, position, "offset", event_id::text, hash FROM ledger.chain'
                        " ORDER BY partition, position").fetchall()


def test_budget_records_and_reversals_are_chained_in_log_order_however_the_log_is_cut_into_batches(conn):
    """Whatever the stream decides about a reversal (applied here, the changelog read in the
    same batches), its chain row is the ledger record's, in log order."""
    log = Log()
    c1, v1, v2 = payment("C1"), reversal("CV1", "C1", 100_000), reversal("CV2", "C9", 100_000)
    records = log.ledger(c1, allocation("CA", 9_000_000), v1, payment("C2"), release("CT", 5_000_000), v2,
                         payment("C3"), allocation("CA", 9_000_000), v1)  # the last two: redeliveries, archived once
    records += log.changelog(taken=[c1, v1], applied=[v1]) + log.changelog(taken=[v2])
    write(conn, records)
    whole = _chain(conn)
    assert [offset for _, _, offset, _, _ in whole] == [0, 1, 2, 3, 4, 5, 6]
    assert status(conn) == {"CV1": ("applied", True), "CV2": ("pending", False)}
    for cut in range(1, len(records)):
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE ledger.events, ledger.chain, ledger.budget_events, ledger.reversal_events,"
                     " ledger.reversal_status, ledger.postings, ledger.balances, ledger.person_totals, ledger.tracking")
        conn.execute("RESET session_replication_role")
        write(conn, records[:cut])
        write(conn, records[cut:])
        assert _chain(conn) == whole, cut
        assert status(conn) == {"CV1": ("applied", True), "CV2": ("pending", False)}, cut
    from projections.audit import verify

    report = verify(conn, partitions=[0])
    assert report.ok and report.events == 7, report.findings
