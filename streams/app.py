"""The Faust app of the ledger worker: topics, the ledger agent, and the batch processor.

The agent is `concurrency=1` (faust-streaming issue 606: with more, offsets can be committed past
unfinished work) and takes events in batches. If persisting a batch fails, the process exits at
once instead of letting the stream ack events whose effects were not written; the supervisor
restarts it and the events are read again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import Any, Sequence

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from aidcore import outcomes
from aidcore.ledger import Rulebook, decide_batch
from aidcore.reference import Reference, default_reference
from aidcore.settings import StackSettings, WorkerSettings
from schemas import codec
from schemas.topics import declared_topics
from streams import metrics
from streams.state import LedgerState, delta_record

log = logging.getLogger(__name__)

APP_ID = "aidledger-ledger"


def _now_us() -> int:
    return time.time_ns() // 1000


class LedgerProcessor:
    """Decode, decide, persist one batch of ledger records."""

    def __init__(self, app: faust.App, stack: StackSettings, worker: WorkerSettings, reference: Reference):
        topics = declared_topics(stack)
        self.app = app
        self.ledger_topic = topics["ledger"].name
        self.alerts_topic = topics["alerts"].name
        self.dead_topic = topics["deadletter"].name
        self.state_topic = topics["state"].name
        self.state = LedgerState(bootstrap_of(stack), self.state_topic, stack.fetch_max_wait_ms)
        self.rulebook = Rulebook(version=stack.rulebook_version)
        self.reference = reference

    async def process(self, events: Sequence[Any]) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append(event)
        await self.state.ensure_loaded(by_partition)
        sends = []
        deltas = []
        now_us = _now_us()
        for partition, part_events in by_partition.items():
            messages = [e.message for e in part_events]
            decoded = codec.decode_disbursements(m.value for m in messages)
            good, good_messages = [], []
            for message, item in zip(messages, decoded):
                if isinstance(item, codec.CodecError):
                    sends.append(await self._dead_letter(message, item.code, str(item)))
                    metrics.EVENTS_IN.labels(item.code).inc()
                else:
                    good.append(item)
                    good_messages.append(message)
            if not good:
                continue
            view = self.state.partitions[partition]
            result = decide_batch(view, good, rulebook=self.rulebook, reference=self.reference, now_us=now_us)
            for message, event, outcome in zip(good_messages, good, result.outcomes):
                metrics.EVENTS_IN.labels(outcome).inc()
                if outcome == outcomes.ACCEPTED:
                    metrics.ACCEPTED_BY.labels(event.source_type, event.programme_code).inc()
                    metrics.ACCEPTED_IDR.labels(event.programme_code).inc(event.amount_idr)
                    metrics.INGEST_TO_DECISION.observe(max(0.0, (now_us - event.recorded_at_us) / 1e6))
                elif outcome != outcomes.EXISTS:
                    sends.append(await self._dead_letter(message, outcome, "same source reference, different content"))
            for alert in result.alerts.values():
                sends.append(
                    await self.app.producer.send(
                        self.alerts_topic, alert.subject_token.encode(), codec.encode_alert(alert), None, None, None
                    )
                )
                metrics.ALERTS.labels(alert.rule_id).inc()
            offset_end = messages[-1].offset + 1
            record = delta_record(partition, offset_end, result.changed, view)
            if record is not None:
                deltas.append((partition, record, result.changed))
            hw = self.app.consumer.highwater(messages[-1].tp)
            if hw is not None:
                metrics.LAG.labels(str(partition)).set(max(0, hw - offset_end))
        try:
            for fut in sends:
                await fut
            state_sends = []
            for partition, record, _ in deltas:
                value = codec.codec(codec.STATE_DELTA).encode(record)
                state_sends.append(
                    await self.app.producer.send(self.state_topic, str(partition).encode(), value, partition, None, None)
                )
            for fut in state_sends:
                await fut
        except BaseException:
            log.exception("persisting a batch failed; exiting so that no unpersisted event is committed")
            os._exit(75)
        for partition, _, changed in deltas:
            self.state.partitions[partition].update(changed)
        metrics.PERSONS.set(self.state.persons())
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _dead_letter(self, message: Any, code: str, detail: str):
        metrics.REJECTIONS.labels(code).inc()
        headers = [
            ("code", code.encode()),
            ("detail", detail.encode()[:500]),
            ("stage", b"stream"),
            ("source_topic", message.topic.encode()),
            ("source_partition", str(message.partition).encode()),
            ("source_offset", str(message.offset).encode()),
        ]
        return await self.app.producer.send(self.dead_topic, message.key, message.value, None, None, headers)


def bootstrap_of(stack: StackSettings) -> str:
    if not stack.kafka_bootstrap:
        raise ValueError("the worker needs AIDLEDGER_KAFKA_BOOTSTRAP (the launcher sets it for the embedded broker)")
    return stack.kafka_bootstrap


def _limit_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust builds its consumer with fetch_max_wait_ms=1500 and offers no setting for it. Tansu
    answers a fetch only when that wait expires, even when records arrive sooner (measured: median
    650 ms at 1500, 3-6 ms at 20-100), so the wait is lowered on the consumer before it starts."""
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_aidledger_original_create", None) or thread_cls._create_worker_consumer

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    thread_cls._aidledger_original_create = original
    thread_cls._create_worker_consumer = create


def create_app(stack: StackSettings, worker: WorkerSettings, reference: Reference | None = None) -> tuple[faust.App, LedgerProcessor]:
    bootstrap = bootstrap_of(stack)
    _limit_fetch_wait(stack.fetch_max_wait_ms)
    app = faust.App(
        APP_ID,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=stack.partitions,
        topic_replication_factor=stack.replication,
        topic_allow_declare=False,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=worker.session_timeout_s,
        broker_commit_interval=worker.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=2,
        processing_guarantee="at_least_once",
        web_enabled=False,
    )
    processor = LedgerProcessor(app, stack, worker, reference or default_reference())
    ledger_topic = app.topic(processor.ledger_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw", partitions=stack.partitions)

    @app.agent(ledger_topic, concurrency=1)
    async def ledger(stream):
        async for events in stream.take_events(worker.batch_max, worker.batch_within_ms / 1000.0):
            await processor.process(events)

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs):
        # An eager rebalance revokes everything and then assigns; a partition that comes straight
        # back was processed by nobody else in between, so its state is kept. Others are dropped
        # and rebuilt from the changelog if they ever return.
        mine = {tp.partition for tp in assigned if tp.topic == processor.ledger_topic}
        processor.state.revoke([p for p in list(processor.state.partitions) if p not in mine])
        metrics.ASSIGNED.set(len(mine))
        log.info("assigned ledger partitions %s", sorted(mine))

    return app, processor
