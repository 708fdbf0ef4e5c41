"""Fixtures that start the real stack: the embedded Tansu broker, the embedded PostgreSQL 18 and
the stack's own child processes (relay, projector, Faust worker), on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from infra.stack import Stack, free_port_environ

REPO = Path(__file__).resolve().parents[2]


def stack_environ(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDLEDGER_")}
    env.update(AIDLEDGER_HOME=str(home), AIDLEDGER_PARTITIONS="4")
    return free_port_environ(env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    s = Stack(home, stack_environ(home))
    s.start()
    yield s
    s.stop()


class Cli:
    def __init__(self, stack: Stack):
        self.stack = stack

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.stack.environ)
        env["AIDLEDGER_HOME"] = str(self.stack.home)
        proc = subprocess.run(
            [sys.executable, "-m", "aidledger.cli", *args], env=env, cwd=REPO,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"aidledger {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


def ingest_in_background(stack: Stack, path: Path) -> subprocess.Popen:
    """`aidledger ingest FILE` as a child process, while the test does something to the stack."""
    env = dict(stack.environ, AIDLEDGER_HOME=str(stack.home))
    return subprocess.Popen([sys.executable, "-m", "aidledger.cli", "ingest", str(path)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli(stack):
    return Cli(stack)


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.2, on_poll=None):
    deadline = time.monotonic() + timeout_s
    while True:
        if on_poll is not None:
            on_poll()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def gauge(url: str, name: str) -> float:
    """One unlabelled sample of a process's Prometheus text; 0 while it is not serving (starting,
    or stopped)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def workers(stack: Stack) -> list:
    return [stack.children[f"worker-{i}"] for i in range(stack.workers)]


def assigned(stack) -> list[float]:
    metrics = stack.endpoints()["metrics"]
    return [gauge(metrics[w.name], "aidledger_worker_assigned_partitions") for w in workers(stack)]


def settled(stack) -> bool:
    """Every worker running and owning a share, and the shares adding up to the partitions: the
    group is between rebalances. Anything else (a worker dead, starting, joining, or holding an
    assignment the group has since changed) is a rebalance under way."""
    owned = assigned(stack)
    return (all(w.process.poll() is None for w in workers(stack)) and all(n > 0 for n in owned)
            and sum(owned) == stack.stack.partitions)


def read_topic(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of a topic, read to the true high watermark of each partition."""
    import asyncio

    from infra.kafka import read_topic as read

    return asyncio.run(read(bootstrap, topic, partitions))


def changelog_state(stack: Stack) -> tuple[Counter, dict[tuple[str, str, str], tuple[int, int]]]:
    """The ledger workers' state as their changelog holds it: how often each idempotency key
    appears, and (amount_idr_total, payments) per person, programme and period."""
    from schemas import codec

    keys: Counter = Counter()
    totals: dict[tuple[str, str, str], list[int]] = {}
    for record in read_topic(stack.bootstrap, stack.endpoints()["topics"]["state"], stack.stack.partitions):
        for d in codec.decode_ledger_values(codec.codec(codec.STATE_DELTA).decode(record.value)["events"]):
            if isinstance(d, codec.RulebookActivation):
                continue
            keys[(d.person_token, d.source_system, d.source_ref)] += 1
            t = totals.setdefault((d.person_token, d.programme_code, d.period), [0, 0])
            t[0] += d.amount_idr
            t[1] += 1
    return keys, {k: (a, n) for k, (a, n) in totals.items()}
