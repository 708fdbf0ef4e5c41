"""The batch transport on the real broker: records fetched while they cannot be handled are read
again, never skipped.

A fetch in flight when a rebalance starts waits for the new assignment and then returns records
read from the committed offsets; when they arrive after the seek that ends the rebalance but
while the flow is still stopped, the consumer's position is already past them. Handled later,
the partition's next records would be committed over them. Here the flow is stopped while a fetch
waits (what a rebalance does), records arrive, and the flow resumes: every record must reach the
handler, and the rewind must be counted. A rewind that fails ends the process (a restart reads
from the committed offsets), unless the worker is stopping anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from infra.embedded import free_port, start_broker
from infra.kafka import create_topics
from schemas.topics import TopicSpec
from streams import transport
from streams.transport import EXIT_TEMPFAIL, BatchGate, LedgerApp

TOPIC = "transport-in"
PARTITIONS = 2


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    home = tmp_path_factory.mktemp("transport")
    broker = start_broker(home, free_port())
    try:
        create_topics(broker.endpoint, [TopicSpec("in", TOPIC, PARTITIONS, "any", None, "transport test input")])
        yield broker.endpoint
    finally:
        broker.stop()


def _app(bootstrap: str, tmp_path, group: str, handler) -> LedgerApp:
    app = LedgerApp(group, broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=str(tmp_path / "data"), topic_allow_declare=False, web_enabled=False,
                    broker_commit_interval=0.2, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=6, broker_rebalance_timeout=6, broker_heartbeat_interval=1.0)
    app.fetch_max_wait_ms = 25
    app.batch_handler = handler
    app.topics.add(app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=PARTITIONS))
    return app


@contextlib.asynccontextmanager
async def _running(bootstrap: str, first: LedgerApp, *later: LedgerApp):
    """A producer and `first`, started; on leaving, the `later` apps (the test starts them), `first`
    and the producer are stopped."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await first.start()
    try:
        yield producer
    finally:
        for app in (*later, first):
            await app.stop()
        await producer.stop()


async def _send(producer: AIOKafkaProducer, n: int, sent: set) -> None:
    for i in range(n):
        meta = await producer.send_and_wait(TOPIC, b"v", partition=i % PARTITIONS)
        sent.add((meta.partition, meta.offset))


def _rewinds() -> float:
    return REGISTRY.get_sample_value("aidledger_worker_rewinds_total") or 0.0


async def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_records_fetched_while_the_flow_is_stopped_are_read_again(bootstrap, tmp_path):
    handled: list[tuple[int, int]] = []
    sent: set[tuple[int, int]] = set()

    async def handler(batch):
        for tp, records in batch.items():
            handled.extend((tp.partition, r.offset) for r in records)
        return True

    async def main() -> None:
        app = _app(bootstrap, tmp_path, "transport-test", handler)
        async with _running(bootstrap, app) as producer:
            await _send(producer, 20, sent)
            await _until(lambda: set(handled) >= sent, 60, "the first records to be handled")
            before = _rewinds()
            for _ in range(3):  # the stop must land while a fetch waits; it almost always does
                await asyncio.sleep(0.5)  # committed, and the fetcher is back in a fetch
                app.consumer.stop_flow()
                await _send(producer, 10, sent)
                await asyncio.sleep(0.5)  # the waiting fetch returns them, with the flow stopped
                app.consumer.resume_flow()
                await _send(producer, 4, sent)
                await _until(lambda: max(o for p, o in handled if p == 0) >= max(o for p, o in sent if p == 0)
                             and max(o for p, o in handled if p == 1) >= max(o for p, o in sent if p == 1),
                             30, "the records sent after the flow resumed")
                if _rewinds() > before:
                    break
            await asyncio.sleep(0.3)
            assert sent - set(handled) == set(), f"records never handled: {sorted(sent - set(handled))}"
            assert _rewinds() > before, "no fetch returned records while the flow was stopped"

    asyncio.run(main())


def test_a_rewind_that_fails_ends_the_process(bootstrap, tmp_path, monkeypatch):
    """The consumer cannot seek back (here: the committed-offset read fails): the worker must not
    go on handling the partition's later records, so it exits with EXIT_TEMPFAIL and its restart
    reads from the committed offsets. The exit is recorded instead of taken."""
    exits: list[int] = []
    handled: list[int] = []

    async def failing_rewind(consumer, partitions):
        raise ConnectionError("the broker went away mid-rewind")

    monkeypatch.setattr(transport, "_rewind_to_committed", failing_rewind)
    monkeypatch.setattr(transport, "_exit", exits.append)

    async def handler(batch):
        handled.extend(r.offset for records in batch.values() for r in records)
        return True

    async def main() -> None:
        app = _app(bootstrap, tmp_path, "transport-test-exit", handler)
        async with _running(bootstrap, app) as producer:
            await _send(producer, 1, set())
            await _until(lambda: bool(handled), 60, "a first record to be handled")
            for _ in range(3):
                await asyncio.sleep(0.5)
                app.consumer.stop_flow()
                await _send(producer, 10, set())
                await asyncio.sleep(0.5)
                if exits:
                    break
                app.consumer.resume_flow()
            assert exits == [EXIT_TEMPFAIL], f"a failed rewind did not end the process: {exits}"

    asyncio.run(main())


def test_a_revocation_waits_for_the_batch_in_hand_and_nothing_is_lost(bootstrap, tmp_path):
    """Two apps in one group, the first holding each batch 3 s (what a slow persist does): when the
    second joins, the first's revocation returns only after the batch in hand has ended, no batch
    of the first starts between the revocation's start and the new assignment, and every record is
    handled by one of them."""
    events: list[tuple[str, str, float]] = []  # (app, what, when)
    handled: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    sent: set[tuple[int, int]] = set()
    gate = BatchGate()

    async def slow_work(batch):
        events.append(("a", "batch-start", time.monotonic()))
        await asyncio.sleep(3.0)  # longer than the second app's join and a heartbeat of the first
        handled["a"].extend((tp.partition, r.offset) for tp, records in batch.items() for r in records)
        events.append(("a", "batch-end", time.monotonic()))

    def handler_a(batch):
        return gate.run(gate.admit(), lambda: slow_work(batch))

    async def handler_b(batch):
        handled["b"].extend((tp.partition, r.offset) for tp, records in batch.items() for r in records)
        return True

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def main() -> None:
        a = _app(bootstrap, tmp_path / "a", "transport-test-settle", handler_a)
        b = _app(bootstrap, tmp_path / "b", "transport-test-settle", handler_b)

        @a.on_partitions_revoked.connect
        async def on_revoked(app_, revoked, **kwargs):
            events.append(("a", "revoke-start", time.monotonic()))
            await gate.revoke()
            events.append(("a", "revoke-end", time.monotonic()))

        @a.on_partitions_assigned.connect
        async def on_assigned(app_, assigned, **kwargs):
            events.append(("a", "assigned", time.monotonic()))

        async with _running(bootstrap, a, b) as producer:
            await _send(producer, 40, sent)
            await _until(lambda: any(w == "batch-start" for _, w, _ in events), 60, "a first slow batch")
            await _until(lambda: events[-1][1] == "batch-start", 10, "a slow batch in hand")
            await b.start()  # joins the group while a batch of the first app is in hand
            await _until(lambda: sum(w == "assigned" for _, w, _ in events) >= 2, 60, "the rebalance")
            await _send(producer, 40, sent)
            await _until(lambda: set(handled["a"]) | set(handled["b"]) >= sent, 60, "every record to be handled")

    asyncio.run(main())
    what = [w for _, w, _ in events]
    revoked_at = what.index("revoke-start", what.index("assigned") + 1)
    ended_at = what.index("revoke-end", revoked_at)
    in_hand = what[:revoked_at].count("batch-start") - what[:revoked_at].count("batch-end")
    assert in_hand == 1, f"no batch was in hand when the revocation began: {what}"
    assert "batch-end" in what[revoked_at:ended_at], f"the revocation returned before the batch in hand ended: {what}"
    reassigned_at = what.index("assigned", ended_at)
    assert "batch-start" not in what[revoked_at:reassigned_at], f"a batch started during the revocation: {what}"
    assert set(handled["b"]), "the second app was given no partition"


def test_a_batch_handed_over_before_a_revocation_is_refused_and_read_again(bootstrap, tmp_path):
    """The reversal expiry timer holds the gate (here: the test holds its lock) when a batch is
    handed over; a second app joins, and the revocation begins while the batch waits. Released,
    the batch must be refused, not decided (its partitions may be rebuilt elsewhere already), and
    its records handled after the rebalance by whichever app owns them."""
    gate = BatchGate()
    handled: list[tuple[int, int]] = []
    refused: list[tuple[int, int]] = []
    sent: set[tuple[int, int]] = set()
    revoking = asyncio.Event()

    def handler_a(batch):
        ticket = gate.admit()  # at hand-over, as LedgerProcessor.process_batch takes it

        async def work():
            handled.extend((tp.partition, r.offset) for tp, records in batch.items() for r in records)

        async def go():
            ok = await gate.run(ticket, work)
            if not ok:
                refused.extend((tp.partition, r.offset) for tp, records in batch.items() for r in records)
            return ok
        return go()

    async def handler_b(batch):
        handled.extend((tp.partition, r.offset) for tp, records in batch.items() for r in records)
        return True

    for name in ("a", "b"):
        (tmp_path / name).mkdir()

    async def main() -> None:
        a = _app(bootstrap, tmp_path / "a", "transport-test-refuse", handler_a)
        b = _app(bootstrap, tmp_path / "b", "transport-test-refuse", handler_b)

        @a.on_partitions_revoked.connect
        async def on_revoked(app_, revoked, **kwargs):
            revoking.set()
            await gate.revoke()

        async with _running(bootstrap, a, b) as producer:
            await _send(producer, 1, set())
            await _until(lambda: bool(handled), 60, "a first record to be handled")
            await asyncio.sleep(0.5)  # the first rebalance is over; its revocation has returned
            revoking.clear()
            async with gate.lock:  # what the expiry timer does while it works
                await _send(producer, 20, sent)
                await asyncio.sleep(0.5)  # fetched and handed over; waiting for the gate
                joining = asyncio.ensure_future(b.start())  # its join waits for the first app's revocation
                await asyncio.wait_for(revoking.wait(), 60)
            await joining
            await _until(lambda: set(handled) >= sent, 60, "every record to be handled after the rebalance")

    asyncio.run(main())
    assert refused, "no batch was refused (none waited at the gate, or the gate let it run after the revocation)"
    assert set(refused) <= set(handled), "a refused record was never handled by its owner"
