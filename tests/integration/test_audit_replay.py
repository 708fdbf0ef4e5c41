"""`aidledger audit replay` and `aidledger audit export` on the real stack: a synthetic run with
reversals and budget records rebuilds from the log to exactly the live projections; a live row
altered behind the projector's back is reported by table and key; the export's files match its
manifest and its regency filter holds; and a projector killed (-9) in the middle of a batch and
restarted leaves projections that still rebuild to the same rows."""

from __future__ import annotations

import hashlib
import json

import psycopg
import pytest
from conftest import ingest_in_background, wait_until
from test_audit_stack import _stopped_inside_a_batch
from test_money_trail import allocation, payment, release, reversal

from connectors import synthetic
from aidcore.cases import Transition
from projections import export
from projections.cases import record_transition
from projections.replay import database_url
from schemas import codec

pytestmark = pytest.mark.integration

A, B = "1871014504850201", "1871024504850202"
MONEY = [
    allocation("RP-A1", "APBN-2026-PKH", "KEMENSOS", "PKH", 5_000_000),
    release("RP-T1", "APBN-2026-PKH", "KEMENSOS", 4_000_000),
    payment("RP-P1", A, "PKH", 750_000, period="2026-03"),
    payment("RP-P2", B, "PKH", 600_000, period="2026-03", region_code="1872011001"),
    reversal("RP-R1", "RP-P1", A, 250_000),  # partial: applied
    reversal("RP-R2", "RP-P9", B, 100_000),  # its original never comes: pending
]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def ledger(stack, cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay-files")
    dataset = synthetic.generate(4_000, seed=31, first_period="2026-02", months=3, reversal_rate=0.01)
    synthetic.write_jsonl(folder / "synthetic.jsonl", dataset.records)
    _write(folder / "money.jsonl", MONEY)
    cli.run("ingest", str(folder / "synthetic.jsonl"))
    cli.run("ingest", str(folder / "money.jsonl"))
    cli.run("wait", "--timeout", "240")
    with psycopg.connect(stack.database_url) as conn:
        counts = dict(conn.execute(
            "SELECT 'budget', count(*) FROM ledger.budget_events UNION ALL SELECT 'reversals', count(*) FROM"
            " ledger.reversals UNION ALL SELECT 'applied', count(*) FROM ledger.reversals WHERE applied_at IS NOT NULL"
            " UNION ALL SELECT 'alerts', count(*) FROM ledger.alerts").fetchall())
    assert counts["budget"] == 2 and counts["applied"] >= 1 and counts["reversals"] >= 20 and counts["alerts"] > 0, counts
    return folder


def _replay(cli, *extra, check=True):
    proc = cli.run("audit", "replay", "--json", *extra, check=False, timeout=600)
    assert proc.returncode in (0, 1) and proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert (proc.returncode == 0) == report["ok"]
    if check:
        assert report["ok"], json.dumps([t for t in report["tables"] if not t["same"]], indent=1)
    return report


def test_replay_rebuilds_exactly_the_live_projections(stack, cli, ledger):
    report = _replay(cli)
    rows = {t["table"]: t["live_rows"] for t in report["tables"]}
    assert rows["ledger.events"] >= 3_900
    # every archived record is chained: payments, budget records and reversals
    assert rows["ledger.chain"] == rows["ledger.events"] + rows["ledger.budget_events"] + rows["ledger.reversal_events"]
    assert rows["ledger.budget_events"] == 2 and rows["ledger.postings"] > 0
    # every reversal on the log is archived, the stream's word on it kept apart (none for one refused on arrival)
    assert rows["ledger.reversal_events"] >= rows["ledger.reversal_status"] >= 20
    assert rows["ledger.alerts"] > 0 and rows["ledger.balances"] > 0 and rows["ledger.deadletters"] > 0
    assert report["records"] >= rows["ledger.events"]
    verified = json.loads(cli.run("audit", "verify", "--json").stdout)
    assert verified["ok"] and verified["events"] == rows["ledger.chain"]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # dropped unless --keep
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (report["database"],)).fetchone()[0] == 0


def test_replay_names_a_live_row_changed_behind_the_projector(stack, cli, ledger):
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        token, programme, period, amount = conn.execute(
            "SELECT person_token, programme_code, period, amount_idr_total FROM ledger.person_totals"
            " ORDER BY person_token LIMIT 1").fetchone()
        event_id = conn.execute("SELECT event_id FROM ledger.events WHERE accepted ORDER BY event_id LIMIT 1").fetchone()[0]
        conn.execute("SET session_replication_role = replica")  # past the append-only triggers, as a superuser could
        conn.execute("UPDATE ledger.person_totals SET amount_idr_total = amount_idr_total + 1"
                     " WHERE person_token = %s AND programme_code = %s AND period = %s", (token, programme, period))
        conn.execute("UPDATE ledger.events SET channel = 'TAMPERED' WHERE event_id = %s", (event_id,))
        try:
            report = _replay(cli, "--keep", check=False)
            text = cli.run("audit", "replay", check=False, timeout=600)
        finally:
            conn.execute("UPDATE ledger.person_totals SET amount_idr_total = %s"
                         " WHERE person_token = %s AND programme_code = %s AND period = %s",
                         (amount, token, programme, period))
            value = conn.execute("SELECT value FROM ledger.events WHERE event_id = %s", (event_id,)).fetchone()[0]
            conn.execute("UPDATE ledger.events SET channel = %s WHERE event_id = %s",
                         (codec.decode_disbursement(bytes(value)).channel, event_id))
        assert not report["ok"] and report["kept"]
        bad = {t["table"]: t for t in report["tables"] if not t["same"]}
        assert set(bad) == {"ledger.person_totals", "ledger.events"}, bad
        totals = bad["ledger.person_totals"]
        assert (totals["differing"], totals["only_live"], totals["only_replay"]) == (1, 0, 0)
        assert totals["examples"] == [{"kind": "differs", "columns": ["amount_idr_total"],
                                       "key": {"person_token": token, "programme_code": programme, "period": period}}]
        assert bad["ledger.events"]["examples"] == [{"kind": "differs", "columns": ["channel"],
                                                     "key": {"event_id": str(event_id)}}]
        assert text.returncode == 1 and "ledger.person_totals" in text.stdout and "DIFFER" in text.stdout
        # the kept database is the rebuild: it holds the amount the log says
        with psycopg.connect(database_url(stack.database_url, report["database"])) as rebuilt:
            assert rebuilt.execute("SELECT amount_idr_total FROM ledger.person_totals WHERE person_token = %s"
                                   " AND programme_code = %s AND period = %s",
                                   (token, programme, period)).fetchone()[0] == amount
        conn.execute(f'DROP DATABASE "{report["database"]}" WITH (FORCE)')
    _replay(cli)


def test_replay_after_the_projector_is_killed_mid_batch(stack, cli, ledger, tmp_path):
    dataset = synthetic.generate(60_000, seed=47, first_period="2026-05", months=2, reversal_rate=0.005)
    path = tmp_path / "big.jsonl"
    synthetic.write_jsonl(path, dataset.records)
    ingest = ingest_in_background(stack, path)
    projector = stack.children["projector"]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0] >= before + 10_000, 240,
                   "the projector to be well into the new records", on_poll=stack.check_children)
        old_pid = projector.process.pid
        wait_until(lambda: _stopped_inside_a_batch(conn, projector.process), 120, "the projector inside a batch",
                   poll_s=0.005)
        projector.process.kill()  # SIGKILL: the batch's transaction never commits
        projector.process.wait(10)
        killed_at = conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0]
    assert killed_at < before + len(dataset.records) * 0.9, "the projector had nearly finished before it was killed"
    wait_until(lambda: projector.process.pid != old_pid and projector.process.poll() is None, 60,
               "the supervisor to restart the projector", on_poll=stack.check_children)
    out, err = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, err
    cli.run("wait", "--timeout", "400")
    assert projector.restarts >= 1
    report = _replay(cli)
    events = next(t for t in report["tables"] if t["table"] == "ledger.events")
    assert events["live_rows"] > killed_at and report["records"] > events["live_rows"]


def _export(cli, out, *extra):
    proc = cli.run("audit", "export", "--period", "2026-03", "--out", str(out), "--json", *extra)
    return json.loads(proc.stdout)["manifest"]


def _csv_rows(path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_writes_the_period_with_a_manifest_that_holds(stack, cli, ledger, tmp_path):
    cli.run("audit", "seal", "--out", str(tmp_path / "seal.json"))  # makes the seal key: the manifest is signed
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # an officer acknowledges one case
        acknowledged = conn.execute("SELECT alert_id FROM ledger.alerts WHERE period = '2026-03'"
                                    " ORDER BY alert_id LIMIT 1").fetchone()[0]
        assert record_transition(conn, acknowledged, 1, Transition("acknowledge", "open", "acknowledged", "", None, None),
                                 "pmo-officer", "pmo")
    whole = _export(cli, tmp_path / "all")
    assert export.check(tmp_path / "all") == []
    for name, f in whole["files"].items():
        data = (tmp_path / "all" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    lines = _csv_rows(tmp_path / "all" / "ledger.csv")
    with psycopg.connect(stack.database_url) as conn:
        payments = conn.execute("SELECT count(*) FROM ledger.events WHERE period = '2026-03'").fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM ledger.alerts WHERE period = '2026-03'").fetchone()[0]
        heads = conn.execute("SELECT count(DISTINCT partition) FROM ledger.chain").fetchone()[0]
    assert sum(r["record_type"] == "disbursement" for r in lines) == payments > 0
    assert whole["files"]["alerts.csv"]["rows"] == alerts > 0 and len(whole["chain"]["heads"]) == heads
    assert whole["public_key"] and whole["filters"] == {"period": "2026-03", "regency": None}
    # the planted reversal of RP-P1 is a line of the period, with its status; no clear NIK anywhere
    assert [(r["source_ref"], r["reversal_status"], r["amount_idr"]) for r in lines if r["source_ref"] == "RP-R1"] == [
        ("RP-R1", "applied", "250000")]
    for name in whole["files"]:
        text = (tmp_path / "all" / name).read_text()
        assert A not in text and B not in text
    balances = {r["account"]: int(r["period_movement_idr"]) for r in _csv_rows(tmp_path / "all" / "balances.csv")}
    assert sum(balances.values()) == 0  # every line's legs balance
    alert_rows = _csv_rows(tmp_path / "all" / "alerts.csv")
    assert {r["status"] for r in alert_rows} <= {"open", "void_reversed"}
    assert {(r["alert_id"], r["case_status"], r["case_step"]) for r in alert_rows if r["case_status"] != "open"} == {
        (acknowledged, "acknowledged", "1")}

    # the same data gives the same bytes
    again = _export(cli, tmp_path / "again")
    assert again == whole
    for name in list(whole["files"]) + ["manifest.json"]:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()

    # one regency: only its lines, and a tampered file is named
    metro = _export(cli, tmp_path / "1872", "--regency", "1872")
    rows = _csv_rows(tmp_path / "1872" / "ledger.csv")
    assert rows and {r["region_code"][:4] for r in rows} == {"1872"}
    assert metro["files"]["ledger.csv"]["rows"] == len(rows) < len(lines)
    assert {r["region_code"][:4] for r in _csv_rows(tmp_path / "1872" / "alerts.csv")} <= {"1872"}
    assert "RP-P2" in {r["source_ref"] for r in rows} and "RP-P1" not in {r["source_ref"] for r in rows}
    tampered = (tmp_path / "1872" / "ledger.csv")
    tampered.write_bytes(tampered.read_bytes().replace(b",600000,", b",60000,"))
    assert export.check(tmp_path / "1872") == ["ledger.csv: its SHA-256 is not the manifest's"]
