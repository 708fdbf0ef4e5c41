"""Two ledger workers in one consumer group share the partitions; every event is decided by
exactly one of them, and a worker that leaves hands its partitions (and their state, rebuilt
from the changelog) to the other."""

from __future__ import annotations

import json
import urllib.request

import psycopg
import pytest
from conftest import Cli, changelog_state, gauge, stack_environ, wait_until

from aidcore.ledger import RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION
from aidledger.demo import answer_key_check
from connectors import synthetic
from infra.stack import Stack, token_key

pytestmark = pytest.mark.integration


def test_two_workers_split_the_partitions_and_count_every_event_once(tmp_path):
    stack = Stack(tmp_path / "home", stack_environ(tmp_path / "home"), workers=2)
    stack.start()
    try:
        metrics = stack.endpoints()["metrics"]
        def owned() -> list[float]:
            return [gauge(metrics[f"worker-{i}"], "aidledger_worker_assigned_partitions") for i in (0, 1)]

        # while the second worker joins, the first may still report the whole set: wait for the
        # split to settle rather than reading one moment of a rebalance
        wait_until(lambda: all(n > 0 for n in owned()) and sum(owned()) == stack.stack.partitions,
                   90, "both workers to own a share of the partitions")

        cli = Cli(stack)
        first = synthetic.generate(8000, seed=21, months=2)
        path = tmp_path / "first.jsonl"
        synthetic.write_jsonl(path, first.records)
        cli.run("ingest", str(path))
        cli.run("wait", "--timeout", "120")

        # one worker leaves; the other takes over its partitions, rebuilding their state
        stack.stop_child(stack.children["worker-1"])
        wait_until(lambda: gauge(metrics["worker-0"], "aidledger_worker_assigned_partitions") == stack.stack.partitions,
                   90, "the remaining worker to own every partition")
        # at-least-once: the log carries the first file's events a second time (as a relay replay
        # would); the partitions that moved must recognise them from the rebuilt state
        import asyncio

        from aiokafka import AIOKafkaProducer

        with psycopg.connect(stack.database_url) as conn:
            replay = conn.execute("SELECT topic, key, value FROM ledger.outbox ORDER BY seq").fetchall()

        async def republish():
            producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
            await producer.start()
            try:
                await asyncio.gather(*[await producer.send(t, bytes(v), key=bytes(k)) for t, k, v in replay])
            finally:
                await producer.stop()

        asyncio.run(republish())
        second = synthetic.generate(8000, seed=22, first_period="2026-03", months=2)
        records = [dict(r, source_ref="B-" + r["source_ref"]) for r in second.records]
        # and a redelivery of the whole first file: nothing may change for it
        path2 = tmp_path / "second.jsonl"
        synthetic.write_jsonl(path2, records + first.records)
        cli.run("ingest", str(path2))
        stack.wait_caught_up(180, poll_s=0.5)

        exists = 0.0
        with urllib.request.urlopen(metrics["worker-0"], timeout=5) as response:
            for line in response.read().decode().splitlines():
                # a redelivery, or a modified resubmission met again: either way a key the state knew
                if line.startswith('aidledger_worker_events_total{outcome="exists'):
                    exists += float(line.split()[-1])
        assert exists >= len([r for r in replay if r[0].endswith(".ledger.v1")])  # every replayed event recognised
        with psycopg.connect(stack.database_url) as conn:
            outbox, events = conn.execute(
                "SELECT (SELECT count(*) FROM ledger.outbox WHERE topic LIKE '%.ledger.v1' AND partition IS NULL), (SELECT count(*) FROM ledger.events)"
            ).fetchone()
            projected = {(t, p, per): (a, n) for t, p, per, a, n in conn.execute(
                "SELECT person_token, programme_code, period, amount_idr_total, payments FROM ledger.person_totals")}
        assert events == outbox
        keys, stream_totals = changelog_state(stack)
        assert max(keys.values()) == 1
        assert stream_totals == projected

        alerts = json.loads(cli.run("alerts", "--json").stdout)["alerts"]
        key = token_key(stack.stack, stack.home)
        for dataset in (first,):
            check = answer_key_check(dataset, [a for a in alerts if not any(
                e["source_ref"].startswith("B-") for e in a["events"])], key)
            for rule in (RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION):
                assert check[rule]["recall"] == 1.0 and check[rule]["precision"] == 1.0, check
    finally:
        stack.stop()
