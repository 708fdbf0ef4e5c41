"""The doors in besides HTTP, on the real stack: an Excel file, an agency's PostgreSQL table polled
by watermark (restart, kill -9, rows arriving later at the same watermark), and the national
registries' extracts with the report of where they disagree."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import openpyxl
import psycopg
import pytest
from conftest import REPO, read_topic, wait_until

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidcore import nik as nikmod
from aidcore.reference import default_reference
from aidcore.registries import Entry, disagreements
from connectors.registries import import_rows
from infra.stack import token_key
from projections.migrate import migrate
from projections.registries import disagreement_report
from schemas import codec
from tests.unit.builders import make_nik, raw_record

pytestmark = pytest.mark.integration

COLUMNS = list(raw_record())


def _record(i: int, **overrides) -> dict:
    values = {"source_system": "OPD-TEST", "source_ref": f"R-{i:04d}", "nik": make_nik(serial=i),
              "kk": make_nik(serial=5000 + i, female=False)}
    return raw_record(**(values | overrides))


# --- Excel ------------------------------------------------------------------------------------

def test_excel_ingest_reports_rows_as_excel_numbers_them_and_totals_per_programme(cli, tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(COLUMNS)
    rows = [
        _record(1),  # PKH Rp 750.000: row 2
        _record(2, programme_code="BPNT", amount_idr=200_000),  # row 3
        _record(3, programme_code="BPNT", amount_idr=200_000.0),  # a float cell of a whole number: row 4
        _record(4, nik=int(make_nik(serial=4))),  # a NIK typed as a number: row 5
        _record(5, amount_idr=250_000.5),  # row 6
    ]
    for r in rows:
        sheet.append([r[c] for c in COLUMNS])
    sheet.append([])  # row 7, empty
    sheet.append([_record(8)[c] for c in COLUMNS])  # row 8
    path = tmp_path / "opd.xlsx"
    book.save(path)
    report_path = tmp_path / "rejections.csv"
    report = json.loads(cli.run("ingest", str(path), "--json", "--report", str(report_path)).stdout)
    assert (report["rows"], report["accepted"], report["rejected"]) == (6, 4, 2)
    assert report["accepted_by_programme"] == {"PKH": 2, "BPNT": 2}
    assert report["accepted_idr_by_programme"] == {"PKH": 1_500_000, "BPNT": 400_000}
    with open(report_path, newline="") as f:
        got = [(r["row_number"], r["field"], r["code"]) for r in csv.DictReader(f)]
    assert got == [("5", "nik", "nik_stored_as_number"), ("6", "amount_idr", "amount_idr_must_be_whole_rupiah")]

    # text output: totals per programme (the progress bar stays off: stderr is no terminal here)
    csv_path = tmp_path / "one.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerow(_record(9, programme_code="BPNT", amount_idr=200_000))
    proc = cli.run("ingest", str(csv_path))
    assert "accepted       1  BPNT             Rp 200.000" in proc.stdout
    assert proc.stderr == ""


# --- an agency table --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def agency(stack):
    """An agency database on the stack's PostgreSQL, with a payments table whose amount column
    has its own name and whose watermark values are shared by several rows."""
    dsn = stack.endpoints()["database_url"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE agency")
    agency_dsn = psycopg.conninfo.make_conninfo(dsn, dbname="agency")
    cols = ", ".join(f"{c} text" for c in COLUMNS if c != "amount_idr")
    with psycopg.connect(agency_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA opd")
        conn.execute(f"CREATE TABLE opd.payments (id serial, updated_at timestamptz NOT NULL, jumlah numeric, {cols})")
    return agency_dsn


T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)


def _insert(agency_dsn: str, items: list[tuple[int, datetime]]) -> None:
    names = [c for c in COLUMNS if c != "amount_idr"]
    with psycopg.connect(agency_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO opd.payments (updated_at, jumlah, {', '.join(names)})"
            f" VALUES (%s, %s, {', '.join(['%s'] * len(names))})",
            [(at, r["amount_idr"], *[r[c] for c in names]) for i, at in items for r in [_record(i)]],
        )


def _poll(cli, agency_dsn: str, *extra: str) -> dict:
    return json.loads(cli.run("poll-db", "--dsn", agency_dsn, "--table", "opd.payments", "--watermark", "updated_at",
                              "--map", "amount_idr=jumlah", "--once", "--json", *extra).stdout)


def _position(stack, name: str = "opd.payments") -> dict:
    with psycopg.connect(stack.endpoints()["database_url"]) as conn:
        row = conn.execute("SELECT watermark, seen_keys, rows_read, rows_accepted, rows_redelivered, rows_rejected"
                           " FROM ledger.db_source_positions WHERE source_name = %s", (name,)).fetchone()
    return dict(zip(("watermark", "seen_keys", "read", "accepted", "redelivered", "rejected"), row)) if row else {}


def test_table_rows_are_read_once_and_rows_arriving_later_at_the_last_watermark_are_not_lost(stack, cli, agency):
    # 30 rows, 10 per watermark value; read 7 at a time so batches end inside a tie
    _insert(agency, [(i, T0 + timedelta(seconds=(i - 101) // 10)) for i in range(101, 131)])
    first = _poll(cli, agency, "--batch-rows", "7")
    assert (first["rows"], first["accepted"], first["redelivered"], first["rejected"]) == (30, 30, 0, 0)
    assert first["accepted_idr_by_programme"] == {"PKH": 30 * 750_000}
    pos = _position(stack)
    assert pos["seen_keys"] == [f"R-{i:04d}" for i in range(121, 131)]

    again = _poll(cli, agency)  # a restart with nothing new reads nothing
    assert again["rows"] == 0

    # later, at the very watermark last read: keys sorting before and after those read, and one beyond
    last = T0 + timedelta(seconds=2)
    _insert(agency, [(100, last), (199, last), (200, last + timedelta(seconds=1))])
    later = _poll(cli, agency)
    assert (later["rows"], later["accepted"], later["redelivered"]) == (3, 3, 0)
    pos = _position(stack)
    assert (pos["read"], pos["accepted"], pos["redelivered"]) == (33, 33, 0)
    assert pos["seen_keys"] == ["R-0200"]


def test_kill_9_mid_run_then_restart_records_every_row_exactly_once(stack, cli, agency):
    name = "killed"
    total_before = _position(stack)["read"]
    n = 600
    _insert(agency, [(1000 + i, T0 + timedelta(minutes=10, seconds=i // 3)) for i in range(n)])
    env = dict(stack.environ, AIDLEDGER_HOME=str(stack.home))
    args = [sys.executable, "-m", "aidledger.cli", "poll-db", "--dsn", agency, "--table", "opd.payments",
            "--watermark", "updated_at", "--map", "amount_idr=jumlah", "--name", name, "--batch-rows", "4",
            "--poll-interval-s", "0.2"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _position(stack, name).get("read", 0) >= 150, 120, "the poller to be under way",
                   poll_s=0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    at_kill = _position(stack, name)["read"]
    everything = total_before + n
    assert at_kill < everything, "the poller finished before it was killed: nothing was tested"
    resumed = _poll(cli, agency, "--name", name, "--batch-rows", "50")
    pos = _position(stack, name)
    assert resumed["rows"] == everything - at_kill
    # the position never re-read a committed row: what was read equals what the table holds
    assert (pos["read"], pos["redelivered"], pos["rejected"]) == (everything, total_before, 0)
    assert pos["accepted"] == n  # the first 33 were recorded by the other source name

    cli.run("wait", "--timeout", "180")
    refs = [f"R-{1000 + i:04d}" for i in range(n)]
    with psycopg.connect(stack.endpoints()["database_url"]) as conn:
        counts = dict(conn.execute("SELECT source_ref, count(*) FROM ledger.events WHERE source_system = 'OPD-TEST'"
                                   " AND source_ref = ANY(%s) GROUP BY source_ref", (refs,)).fetchall())
    assert counts == {r: 1 for r in refs}
    ledger = stack.endpoints()["topics"]["ledger"]
    on_log = [d.source_ref for d in codec.decode_ledger_values(
        [r.value for r in read_topic(stack.bootstrap, ledger, stack.stack.partitions)])
        if getattr(d, "source_system", "") == "OPD-TEST" and d.source_ref in set(refs)]
    assert sorted(on_log) == sorted(refs)  # published once each


# --- registries -------------------------------------------------------------------------------

PEOPLE = {p: make_nik(serial=700 + i) for i, p in enumerate(("P1", "P2", "P3", "P4", "P5", "P6", "P7"))}
MAP = ("--map", "nik=NIK", "--map", "village_code=KODE_DESA")
EXTRACTS = {
    ("DTKS", "2026-06-01"): [("P7", "1871011001", "1")],  # an older extract: not current
    ("DTKS", "2026-10-01"): [("P1", "1871011001", "1"), ("P2", "1807012003", "1"), ("P3", "1871011002", "2"),
                             ("P4", "1871011001", "3"), ("P5", "1807012003", "")],
    ("P3KE", "2026-09-15"): [("P1", "1871011001", "1"), ("P2", "1807012003", "2"), ("P3", "1801012001", "2"),
                             ("P4", "1871011001", "3"), ("P1", "1871011001", "4"), ("bad", "1871011001", "1")],
    ("REGSOSEK", "2026-08-31"): [("P1", "1871011001", "1"), ("P2", "1807012003", "1"), ("P3", "1871011002", "2"),
                                 ("P5", "1807012003", "5"), ("P6", "1801012001", "1")],
}


def test_registry_extracts_and_their_disagreements(stack, cli, tmp_path):
    reports = {}
    for (registry, day), rows in EXTRACTS.items():
        path = tmp_path / f"{registry}-{day}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["NO", "NIK", "name", "KODE_DESA", "decile", "address"])  # as an extract names them
            for n, (who, village, decile) in enumerate(rows, start=1):
                w.writerow([n, PEOPLE.get(who, "1871014504850000"), f"Name {who}", village, decile, "Jl. Mawar"])
        reports[(registry, day)] = json.loads(cli.run("registries", "import", str(path), "--registry", registry,
                                                      "--extract-date", day, *MAP, "--json").stdout)
    p3ke = reports[("P3KE", "2026-09-15")]
    assert (p3ke["accepted"], p3ke["rejected"]) == (4, 2)
    assert p3ke["rejections_by_code"] == {"person_repeated_in_extract": 1, "nik_serial_invalid": 1}
    again = json.loads(cli.run("registries", "import", str(tmp_path / "P3KE-2026-09-15.csv"), "--registry", "P3KE",
                               "--extract-date", "2026-09-15", *MAP, "--json").stdout)
    assert (again["accepted"], again["redelivered"]) == (0, 4)
    cli.run("wait", "--timeout", "180")

    key = token_key(stack.stack, stack.home)
    tok = {p: nikmod.person_token(key, nik) for p, nik in PEOPLE.items()}
    report = json.loads(cli.run("registries", "report", "--json").stdout)
    assert report["registries"] == ["DTKS", "P3KE", "REGSOSEK"] and report["people"] == 6
    assert report["by_kind"] == {"absent_from_registry": 3, "decile_differs": 1, "village_differs": 1}
    assert report["by_regency"] == {
        "1801": {"absent_from_registry": 1, "decile_differs": 0, "village_differs": 1},
        "1807": {"absent_from_registry": 1, "decile_differs": 1, "village_differs": 0},
        "1871": {"absent_from_registry": 1, "decile_differs": 0, "village_differs": 1},
    }
    examples = {k: {e["person_token"]: e["detail"] for e in v} for k, v in report["examples"].items()}
    assert examples["absent_from_registry"] == {
        tok["P4"]: {"missing_from": ["REGSOSEK"], "in": ["DTKS", "P3KE"]},
        tok["P5"]: {"missing_from": ["P3KE"], "in": ["DTKS", "REGSOSEK"]},
        tok["P6"]: {"missing_from": ["DTKS", "P3KE"], "in": ["REGSOSEK"]},
    }
    assert examples["decile_differs"] == {tok["P2"]: {"DTKS": 1, "P3KE": 2, "REGSOSEK": 1}}
    assert examples["village_differs"] == {tok["P3"]: {"DTKS": "1871011002", "P3KE": "1801012001",
                                                       "REGSOSEK": "1871011002"}}
    only = json.loads(cli.run("registries", "report", "--json", "--regency", "1801").stdout)
    assert only["people"] == 2 and only["by_kind"] == {"absent_from_registry": 1, "decile_differs": 0,
                                                        "village_differs": 1}

    with psycopg.connect(stack.endpoints()["database_url"]) as conn:
        columns = conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema ="
                               " 'ledger' AND table_name = 'registered_people' ORDER BY ordinal_position").fetchall()
        assert columns == [("person_token", "text"), ("registry", "text"), ("regency_code", "text"),
                           ("village_code", "text"), ("decile", "integer")]
        dtks = conn.execute("SELECT person_token FROM ledger.registered_people WHERE registry = 'DTKS'").fetchall()
        assert {t for (t,) in dtks} == {tok[p] for p in ("P1", "P2", "P3", "P4", "P5")}  # P7's extract is older
        vault = dict(conn.execute("SELECT person_token, nik FROM vault.identity WHERE person_token = ANY(%s)",
                                  (list(tok.values()),)).fetchall())
        assert vault == {tok[p]: PEOPLE[p] for p in PEOPLE}
    registry_topic = stack.endpoints()["topics"]["registry"]
    values = [r.value for r in read_topic(stack.bootstrap, registry_topic, stack.stack.partitions)]
    assert len(values) == 5 + 4 + 5 + 1
    assert not any(nik.encode() in v for v in values for nik in PEOPLE.values())


# --- the registries report in PostgreSQL, against its specification -----------------------------

@pytest.fixture(scope="module")
def registry_db(stack):
    """A database of its own on the stack's PostgreSQL, migrated, that no relay or projector reads:
    the tests below write registry rows and outbox rows into it directly."""
    dsn = stack.endpoints()["database_url"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE registry_report")
    url = psycopg.conninfo.make_conninfo(dsn, dbname="registry_report")
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


TOKENS = [f"{i:02x}" * 8 for i in range(10)]  # hex, as person tokens are
VILLAGES = ["1801012001", "1801012002", "1807012003", "1871011001"]
entry = st.builds(lambda v, d: Entry(v[:4], v, d), st.sampled_from(VILLAGES), st.none() | st.integers(1, 3))
contents = st.dictionaries(st.sampled_from(TOKENS), entry, max_size=8)
# registry -> (current extract, an older one or None); an extract of nobody leaves no row, so none is empty
registries_state = st.dictionaries(st.sampled_from(("DTKS", "P3KE", "REGSOSEK", "OTHER")),
                                   st.tuples(st.dictionaries(st.sampled_from(TOKENS), entry, min_size=1, max_size=8),
                                             st.none() | contents.filter(bool)), max_size=4)


def _load(conn, state: dict) -> None:
    """Each registry's current extract, and an older one when given (which must not count)."""
    conn.execute("TRUNCATE ledger.registry_records")
    with conn.cursor() as cur, cur.copy("COPY ledger.registry_records FROM STDIN") as copy:
        for registry, (current, older) in state.items():
            for day, people in (("2026-10-01", current), ("2026-01-01", older or {})):
                for token, e in people.items():
                    copy.write_row((uuid.uuid4(), registry, day, token, None, e.regency_code, e.village_code,
                                    e.decile, "x", T0, "t", 0, 0))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=registries_state, regency=st.none() | st.sampled_from(("1801", "1807", "1871", "1804")),
       n=st.integers(0, 3))
def test_the_report_in_postgresql_is_the_pure_report(registry_db, state, regency, n):
    _load(registry_db, state)
    spec = disagreements({r: current for r, (current, _) in state.items()}, regency=regency, examples_per_kind=n)
    got = disagreement_report(registry_db, regency, examples_per_kind=n)
    assert json.dumps(got.as_dict()) == json.dumps(spec.as_dict())  # the same, in the same order


def test_a_person_repeated_chunks_apart_is_rejected_without_the_import_holding_the_extract(stack, registry_db):
    nik = {p: make_nik(serial=800 + i) for i, p in enumerate("ABCD")}
    rows = [(n, {"nik": nik[p], "village_code": "1871011001", "decile": "2"})
            for n, p in enumerate("ABCADBB", start=1)]
    registry_db.execute("TRUNCATE ledger.outbox CASCADE")
    report = import_rows(registry_db, rows, registry="DTKS", extract_date="2026-10-01", source_name="dtks.csv",
                         registry_topic="aid.registry.v1", token_key=b"k" * 32, reference=default_reference(),
                         chunk_rows=2)
    assert (report.rows, report.accepted, report.rejected) == (7, 4, 3)
    got = registry_db.execute("SELECT row_number, code FROM ledger.intake_rejections WHERE batch_id = %s"
                              " ORDER BY row_number", (report.batch_id,)).fetchall()
    assert got == [(4, "person_repeated_in_extract"), (6, "person_repeated_in_extract"),
                   (7, "person_repeated_in_extract")]
    assert registry_db.execute("SELECT count(*) FROM ledger.outbox").fetchone()[0] == 4
    assert registry_db.execute("SELECT to_regclass('registry_import_seen')").fetchone()[0] is None  # dropped
    again = import_rows(registry_db, rows, registry="DTKS", extract_date="2026-10-01", source_name="dtks.csv",
                        registry_topic="aid.registry.v1", token_key=b"k" * 32, reference=default_reference(),
                        chunk_rows=3)
    assert (again.accepted, again.redelivered, again.rejected) == (0, 4, 3)
