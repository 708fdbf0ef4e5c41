"""The archive's hash chain on the whole stack: kill -9 of the projector in the middle of writing
a batch leaves a chain that verifies and holds every archived event exactly once; and through the
command line, a seal exported to a file catches a chain that a superuser rewrote with recomputed
hashes, which the chain alone cannot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace

import psycopg
import pytest
from conftest import REPO, ingest_in_background, wait_until

from aidcore import chain
from connectors import synthetic
from schemas import codec

pytestmark = pytest.mark.integration

KILLS = 2
# the projector's backend is inside a batch's transaction that has written rows
_WRITING = (
    "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
    " AND (query LIKE 'COPY ledger.events%%' OR query LIKE 'COPY ledger.chain%%' OR query LIKE 'SELECT p, c.position%%'"
    " OR query LIKE 'INSERT INTO ledger.person_totals%%' OR query LIKE 'SELECT event_id::text FROM ledger.events%%')"
)


def _stopped_inside_a_batch(conn, process) -> bool:
    """Freeze the projector when its connection holds a batch's open transaction that has
    written rows; True if it is frozen there."""
    row = conn.execute(_WRITING).fetchone()
    if row is None:
        return False
    process.send_signal(signal.SIGSTOP)
    still = conn.execute("SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = %s", (row[0],)).fetchone()
    if still and still[0]:
        return True
    process.send_signal(signal.SIGCONT)  # it committed in between: try the next batch
    return False


def test_kill_projector_mid_batch_chains_every_archived_event_once(stack, tmp_path):
    dataset = synthetic.generate(60_000, seed=23, months=4)
    path = tmp_path / "big.jsonl"
    synthetic.write_jsonl(path, dataset.records)
    env = dict(stack.environ, AIDLEDGER_HOME=str(stack.home))
    ingest = ingest_in_background(stack, path)
    projector = stack.children["projector"]
    hit = 0
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for kill in range(KILLS):
            floor = (kill + 1) * 10_000
            wait_until(lambda: conn.execute("SELECT count(*) FROM ledger.chain").fetchone()[0] >= floor, 240,
                       f"{floor} chained events", on_poll=stack.check_children)
            old_pid = projector.process.pid
            wait_until(lambda: _stopped_inside_a_batch(conn, projector.process), 120, "the projector inside a batch",
                       poll_s=0.005)
            projector.process.kill()  # SIGKILL: the batch's transaction never commits
            hit += 1
            projector.process.wait(10)
            wait_until(lambda: projector.process.pid != old_pid and projector.process.poll() is None, 60,
                       "the supervisor to restart the projector", on_poll=stack.check_children)
        out, err = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, err
        stack.wait_caught_up(300, poll_s=0.5)
        assert projector.restarts >= KILLS and hit == KILLS

        events, chained, distinct, joined = conn.execute(
            "SELECT (SELECT count(*) FROM ledger.events), (SELECT count(*) FROM ledger.chain),"
            " (SELECT count(DISTINCT event_id) FROM ledger.chain),"
            " (SELECT count(*) FROM ledger.chain c JOIN ledger.events e USING (event_id))"
        ).fetchone()
        outbox = conn.execute("SELECT count(*) FROM ledger.outbox WHERE partition IS NULL").fetchone()[0]
        gaps = conn.execute("SELECT partition, count(*), max(position) FROM ledger.chain GROUP BY 1"
                            " HAVING count(*) <> max(position)").fetchall()
    assert events == chained == distinct == joined == outbox
    assert gaps == []
    proc = subprocess.run([sys.executable, "-m", "aidledger.cli", "audit", "verify", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["events"] == events and report["findings"] == []


def test_a_seal_file_catches_a_chain_rewritten_with_recomputed_hashes(stack, cli, tmp_path):
    seal_file = tmp_path / "auditor" / "seal.json"
    proc = cli.run("audit", "seal", "--out", str(seal_file))
    assert "sealed" in proc.stdout and seal_file.exists()
    assert (stack.home / "secrets" / "audit-seal.key").stat().st_mode & 0o777 == 0o600
    sealed = json.loads(seal_file.read_text())["seal"]
    assert cli.run("audit", "verify", "--seal", str(seal_file)).returncode == 0

    # a superuser raises one payment in partition 1 and recomputes every hash after it
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        target, value = conn.execute(
            "SELECT c.event_id, e.value FROM ledger.chain c JOIN ledger.events e USING (event_id)"
            " WHERE c.partition = 1 AND c.position = 3").fetchone()
        changed = codec.encode_disbursement(replace(codec.decode_disbursement(bytes(value)), amount_idr=7_500_000))
        conn.execute("UPDATE ledger.events SET value = %s, amount_idr = 7500000 WHERE event_id = %s", (changed, target))
        prev = bytes(conn.execute("SELECT hash FROM ledger.chain WHERE partition = 1 AND position = 2").fetchone()[0])
        rows = conn.execute(
            'SELECT c.position, c."offset", e.value FROM ledger.chain c JOIN ledger.events e USING (event_id)'
            " WHERE c.partition = 1 AND c.position >= 3 ORDER BY c.position").fetchall()
        with conn.transaction():
            for position, offset, v in rows:
                digest = chain.value_digest(bytes(v))
                h = chain.link(prev, 1, position, offset, digest)
                conn.execute("UPDATE ledger.chain SET value_sha256 = %s, prev_hash = %s, hash = %s"
                             " WHERE partition = 1 AND position = %s", (digest, prev, h, position))
                prev = h

    alone = cli.run("audit", "verify", "--json")
    assert alone.returncode == 0  # the chain holds by itself
    against = cli.run("audit", "verify", "--seal", str(seal_file), "--json", check=False)
    assert against.returncode == 1
    report = json.loads(against.stdout)
    bad = [p for p in report["partitions"] if p["first_bad"]]
    sealed_head = next(h["position"] for h in sealed["heads"] if h["partition"] == 1)
    assert [p["partition"] for p in bad] == [1]
    assert bad[0]["first_bad"]["problem"] == chain.REWRITTEN and bad[0]["first_bad"]["position"] == 1
    assert f"1..{sealed_head}" in bad[0]["first_bad"]["detail"]
    text = cli.run("audit", "verify", "--seal", str(seal_file), check=False).stdout
    assert "partition 1: FIRST BAD POSITION 1 (rewritten)" in text
