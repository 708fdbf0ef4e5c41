"""kill -9 of the ledger worker while events flow: after the supervisor restarts it, every event
is counted exactly once in the stream state, the totals projection and the archive, and the alerts
still match the planted answer key."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from conftest import REPO, changelog_state, wait_until

from aidcore.ledger import RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION
from aidledger.demo import answer_key_check
from connectors import synthetic
from infra import kafka
from infra.stack import token_key
from streams.app import group_id

pytestmark = pytest.mark.integration

KILLS = 2


def _committed(stack) -> int:
    ledger = stack.endpoints()["topics"]["ledger"]
    return sum(kafka.committed_offsets(stack.bootstrap, group_id(stack.stack), ledger).values())


def test_kill_worker_mid_stream_counts_every_event_once(stack, tmp_path):
    dataset = synthetic.generate(40_000, seed=11, months=4)
    path = tmp_path / "big.jsonl"
    synthetic.write_jsonl(path, dataset.records)
    env = dict(stack.environ, AIDLEDGER_HOME=str(stack.home))
    ingest = subprocess.Popen([sys.executable, "-m", "aidledger.cli", "ingest", str(path)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = stack.children["worker-0"]
    accepted_total = len(dataset.records) - sum(1 for c in dataset.answer_key if c.kind in ("invalid", "redelivery"))
    for kill in range(KILLS):
        floor = (kill + 1) * accepted_total // (KILLS + 2)
        wait_until(lambda: _committed(stack) >= floor, 240, f"the worker to commit {floor} offsets",
                   on_poll=stack.check_children)
        old_pid = worker.process.pid
        worker.process.kill()  # SIGKILL: no goodbye, no final commit
        worker.process.wait(10)
        wait_until(lambda: worker.process.pid != old_pid and worker.process.poll() is None, 60,
                   "the supervisor to restart the worker", on_poll=stack.check_children)
    out, err = ingest.communicate(timeout=300)
    assert ingest.returncode == 0, err
    stack.wait_caught_up(300, poll_s=0.5)
    assert worker.restarts >= KILLS
    # the restarted worker rebuilt non-empty state from its changelog before deciding again
    log_text = (stack.home / "logs" / "worker-0.log").read_text()
    rebuilt = [int(n) for n in __import__("re").findall(r"rebuilt: (\d+) persons", log_text)]
    assert any(n > 0 for n in rebuilt), "no restart rebuilt any state"

    with psycopg.connect(stack.database_url) as conn:
        outbox, events, accepted = conn.execute(
            "SELECT (SELECT count(*) FROM ledger.outbox WHERE partition IS NULL), (SELECT count(*) FROM ledger.events),"
            " (SELECT count(*) FROM ledger.events WHERE accepted)"
        ).fetchone()
        projected = {
            (t, p, per): (a, n)
            for t, p, per, a, n in conn.execute(
                "SELECT person_token, programme_code, period, amount_idr_total, payments FROM ledger.person_totals"
            )
        }
    assert events == outbox == accepted_total
    modified = sum(1 for c in dataset.answer_key if c.kind == "modified_resubmission")
    assert accepted == accepted_total - modified

    # The worker's own state, as its changelog holds it: every idempotency key exactly once.
    keys, stream_totals = changelog_state(stack)
    assert max(keys.values()) == 1
    assert len(keys) == accepted
    assert stream_totals == projected

    alerts_json = subprocess.run([sys.executable, "-m", "aidledger.cli", "alerts", "--json"], env=env, cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout
    import json

    check = answer_key_check(dataset, json.loads(alerts_json)["alerts"], token_key(stack.stack, stack.home))
    for rule in (RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION):
        assert check[rule]["precision"] == 1.0 and check[rule]["recall"] == 1.0, check
