"""A graceful stop (SIGTERM) that lands while the worker persists a batch: the batch is finished,
the worker exits 0, and nothing is lost or counted twice.

The rolling restart in test_faults.py stops each worker once, wherever it happens to be; a stop
mid-persist is a narrow window there. Here every batch is held while it persists
(AIDLEDGER_WORKER_PERSIST_HOLD_MS) and the fetches are small, so under a backlog the worker is
mid-persist almost all the time, and each stop is checked to have landed there (the worker logs
that it finishes the work in hand) as well as to exit 0.
"""

from __future__ import annotations

import json

import pytest
from conftest import Cli, gauge, stack_environ, wait_until
from oracle import Accepted, check

from connectors import synthetic
from infra.stack import Stack

pytestmark = pytest.mark.integration

STOPS = 3
FINISHING = b"cancelled while persisting: the work in hand is finished first"


def test_sigterm_mid_persist_finishes_the_batch_and_exits_0(tmp_path):
    home = tmp_path / "home"
    env = stack_environ(home) | {"AIDLEDGER_WORKER_PERSIST_HOLD_MS": "300", "AIDLEDGER_WORKER_BATCH_MAX": "200"}
    stack = Stack(home, env)
    stack.start()
    try:
        worker = stack.children["worker-0"]
        log_path = home / "logs" / "worker-0.log"
        dataset = synthetic.generate(6000, seed=77, months=2)
        path = tmp_path / "load.jsonl"
        synthetic.write_jsonl(path, dataset.records)
        accepted = Accepted()
        must_accept = accepted.add_dataset(dataset)
        report = json.loads(Cli(stack).run("ingest", str(path), "--json").stdout)
        assert report["accepted"] == must_accept, report

        codes, landed = [], 0
        for _ in range(STOPS):
            # a backlog of ~30 held batches: once the worker has decided one, it is in the next
            wait_until(lambda: _decided(stack) > 0, 120, "the worker to decide its first batch",
                       on_poll=stack.check_children)
            before = log_path.read_bytes().count(FINISHING)
            stack.stop_child(worker, timeout_s=30)
            codes.append(worker.process.returncode)
            landed += log_path.read_bytes().count(FINISHING) > before
            worker.backoff_s = 0.0
            stack.check_children()  # the supervisor starts it again
        assert codes == [0] * STOPS, f"exit codes on SIGTERM: {codes}"
        assert landed >= 2, f"only {landed} of {STOPS} stops landed mid-persist; the test did not test it"

        figures = check(stack, accepted, timeout_s=240)
        assert figures["accepted"] == len(accepted.amounts)
    finally:
        stack.stop()


def _decided(stack) -> float:
    url = stack.endpoints()["metrics"]["worker-0"]
    try:
        return gauge(url, "aidledger_worker_state_persons")
    except OSError:
        return 0.0
