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
import time

import pytest
from conftest import Cli, gauge, settled, stack_environ, wait_until
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
            wait_until(lambda: gauge(stack.endpoints()["metrics"]["worker-0"], "aidledger_worker_state_persons") > 0,
                       120, "the worker to decide its first batch", on_poll=stack.check_children)
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


REBALANCING = b"stopping during a rebalance"


def test_sigterm_during_a_rebalance_exits_0(tmp_path):
    """One worker leaves; while the group rebalances around the other, it is stopped too. Faust
    takes a cancelled fetcher during a rebalance for a rebalance restart and crashes on it; the
    worker must instead stop as it would at any other moment."""
    home = tmp_path / "home"
    stack = Stack(home, stack_environ(home), workers=2)
    stack.start()
    try:
        first, second = stack.children["worker-0"], stack.children["worker-1"]
        log_path = home / "logs" / "worker-0.log"
        codes, landed = [], 0
        for delay_s in (0.3, 0.8, 1.5, 0.1, 2.0):
            wait_until(lambda: settled(stack), 120, "both workers to own a share", on_poll=stack.check_children)
            before = log_path.read_bytes().count(REBALANCING)
            stack.stop_child(second)  # the group rebalances around the first
            time.sleep(delay_s)
            stack.stop_child(first, timeout_s=30)
            codes.append(first.process.returncode)
            landed += log_path.read_bytes().count(REBALANCING) > before
            for child in (first, second):
                child.backoff_s = 0.0
            stack.check_children()
            if landed >= 2:
                break
        assert all(code == 0 for code in codes), f"exit codes on SIGTERM: {codes}"
        assert landed >= 1, f"no stop of {len(codes)} landed during a rebalance; the test did not test it"
    finally:
        stack.stop()

