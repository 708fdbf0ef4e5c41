"""Fixtures that start the real stack: the embedded Tansu broker, the embedded PostgreSQL 18 and
the stack's own child processes (relay, projector, Faust worker), on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.embedded import free_port
from infra.stack import Stack

REPO = Path(__file__).resolve().parents[2]


def stack_environ(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDLEDGER_")}
    env.update(
        AIDLEDGER_HOME=str(home),
        AIDLEDGER_BROKER_PORT=str(free_port()),
        AIDLEDGER_POSTGRES_PORT=str(free_port()),
        AIDLEDGER_WORKER_METRICS_PORT=str(free_port()),
        AIDLEDGER_PROJECTOR_METRICS_PORT=str(free_port()),
        AIDLEDGER_RELAY_METRICS_PORT=str(free_port()),
        AIDLEDGER_PARTITIONS="4",
    )
    return env


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


def read_topic(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of a topic, read to the true high watermark of each partition."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from infra.kafka import high_watermarks

    async def main():
        marks = await high_watermarks(bootstrap, topic, partitions)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out = []
            pending = {tp for tp in tps if marks[tp.partition] > 0}
            while pending:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    out.extend(records)
                for tp in list(pending):
                    if await consumer.position(tp) >= marks[tp.partition]:
                        pending.discard(tp)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(main())
