"""The Faust app of the ledger worker: topics, the ledger agent, and the batch processor.

There is no per-event agent: the batch consumer (`streams.transport`) hands each fetch to
`LedgerProcessor.process_batch`, one batch at a time, so offsets are never committed past
unfinished work (the hazard of agent concurrency > 1, faust-streaming issue 606). If persisting a batch fails, the process exits at
once instead of letting the stream ack events whose effects were not written; the supervisor
restarts it and the events are read again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Mapping

import faust

from aidcore import outcomes
from aidcore.ledger import Rulebook, decide_batch
from aidcore.reference import Reference, default_reference
from aidcore.settings import StackSettings, WorkerSettings, consumer_group
from schemas import codec
from schemas.topics import declared_topics
from streams import metrics
from streams.state import LedgerState, delta_records, store, view
from streams.transport import LedgerApp

log = logging.getLogger(__name__)

def group_id(stack: StackSettings) -> str:
    """The Faust app id, which is the consumer group of the ledger workers of one stack."""
    return consumer_group(stack)


DEAD_LETTER_MAX_BYTES = 256 * 1024


def _now_us() -> int:
    return time.time_ns() // 1000


class LedgerProcessor:
    """Decode, decide, persist one batch of ledger records."""

    def __init__(self, app: faust.App, stack: StackSettings, reference: Reference):
        topics = declared_topics(stack)
        self.app = app
        self.ledger_topic = topics["ledger"].name
        self.alerts_topic = topics["alerts"].name
        self.dead_topic = topics["deadletter"].name
        self.state_topic = topics["state"].name
        self.state = LedgerState(bootstrap_of(stack), self.state_topic, stack.fetch_max_wait_ms)
        self.rulebook = Rulebook(version=stack.rulebook_version)
        self.reference = reference

    async def process_batch(self, batch: Mapping[Any, list]) -> None:
        """One fetched batch: {TopicPartition: [ConsumerRecord, ...]} of the ledger topic."""
        started = time.perf_counter()
        await self.state.ensure_loaded(tp.partition for tp in batch)
        now_us = _now_us()
        sends, deltas = [], []
        outcome_counts: Counter = Counter()
        accepted_by: Counter = Counter()
        idr_by: Counter = Counter()
        alert_counts: Counter = Counter()
        latencies: list[float] = []
        for tp, records in batch.items():
            partition = tp.partition
            decoded = codec.decode_disbursements(r.value for r in records)
            good, good_records = [], []
            for record, item in zip(records, decoded):
                if isinstance(item, codec.CodecError):
                    sends.append(await self._dead_letter(record, item.code, str(item)))
                    outcome_counts[item.code] += 1
                else:
                    good.append(item)
                    good_records.append(record)
            offset_end = records[-1].offset + 1
            hw = self.app.consumer.highwater(tp)
            if hw is not None:
                metrics.LAG.labels(str(partition)).set(max(0, hw - offset_end))
            if not good:
                continue
            people = view(self.state.partitions[partition], {e.person_token for e in good})
            result = decide_batch(people, good, rulebook=self.rulebook, reference=self.reference, now_us=now_us)
            accepted_values = []
            for i, (record, event, outcome) in enumerate(zip(good_records, good, result.outcomes)):
                outcome_counts[outcome] += 1
                if outcome == outcomes.ACCEPTED:
                    accepted_values.append(record.value)
                    accepted_by[(event.source_type, event.programme_code)] += 1
                    idr_by[event.programme_code] += event.amount_idr
                    if i % 16 == 0:
                        latencies.append((now_us - event.recorded_at_us) / 1e6)
                elif outcome != outcomes.EXISTS:
                    sends.append(await self._dead_letter(record, outcome, "same source reference, different content"))
            for alert in result.alerts.values():
                sends.append(
                    await self.app.producer.send(
                        self.alerts_topic, alert.subject_token.encode(), codec.encode_alert(alert), None, None, None
                    )
                )
                alert_counts[alert.rule_id] += 1
            if accepted_values:
                deltas.append((partition, delta_records(partition, offset_end, accepted_values), result.changed))
        try:
            for fut in sends:
                await fut
            state_sends = []
            encoder = codec.codec(codec.STATE_DELTA)
            for partition, records, _ in deltas:
                for delta in records:
                    state_sends.append(
                        await self.app.producer.send(self.state_topic, str(partition).encode(), encoder.encode(delta),
                                                     partition, None, None)
                    )
            for fut in state_sends:
                await fut
        except BaseException:
            log.exception("persisting a batch failed; exiting so that no unpersisted event is committed")
            os._exit(75)
        for partition, _, changed in deltas:
            store(self.state.partitions[partition], changed)
        self.state.added(outcome_counts[outcomes.ACCEPTED])
        for outcome, n in outcome_counts.items():
            metrics.EVENTS_IN.labels(outcome).inc(n)
        for (source_type, programme), n in accepted_by.items():
            metrics.ACCEPTED_BY.labels(source_type, programme).inc(n)
        for programme, amount in idr_by.items():
            metrics.ACCEPTED_IDR.labels(programme).inc(amount)
        for rule, n in alert_counts.items():
            metrics.ALERTS.labels(rule).inc(n)
        for seconds in latencies:
            metrics.INGEST_TO_DECISION.observe(max(0.0, seconds))
        metrics.PERSONS.set(self.state.persons())
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _dead_letter(self, message: Any, code: str, detail: str):
        """`message` is a consumer record: topic, partition, offset, key, value. A value too large to
        be produced again is cut to DEAD_LETTER_MAX_BYTES (its full length in a header): otherwise
        the produce would fail, the worker would exit, and the partition would stall on it."""
        metrics.REJECTIONS.labels(code).inc()
        value = message.value
        headers = [
            ("code", code.encode()),
            ("detail", detail.encode()[:500]),
            ("stage", b"stream"),
            ("source_topic", message.topic.encode()),
            ("source_partition", str(message.partition).encode()),
            ("source_offset", str(message.offset).encode()),
        ]
        if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
            headers.append(("value_truncated_from", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        key = message.key[:1024] if message.key else message.key
        return await self.app.producer.send(self.dead_topic, key, value, None, None, headers)


def bootstrap_of(stack: StackSettings) -> str:
    if not stack.kafka_bootstrap:
        raise ValueError("the worker needs AIDLEDGER_KAFKA_BOOTSTRAP (the launcher sets it for the embedded broker)")
    return stack.kafka_bootstrap


def create_app(stack: StackSettings, worker: WorkerSettings, reference: Reference | None = None) -> tuple[faust.App, LedgerProcessor]:
    bootstrap = bootstrap_of(stack)
    app = LedgerApp(
        group_id(stack),
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=stack.partitions,
        topic_replication_factor=stack.replication,
        topic_allow_declare=False,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=worker.session_timeout_s,
        broker_commit_interval=worker.commit_interval_s,
        broker_max_poll_records=worker.batch_max,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=2,
        processing_guarantee="at_least_once",
        web_enabled=False,
    )
    app.fetch_max_wait_ms = stack.fetch_max_wait_ms
    processor = LedgerProcessor(app, stack, reference or default_reference())
    app.batch_handler = processor.process_batch
    # Subscribed through the conductor, consumed by the batch consumer (streams.transport): no
    # agent, because Faust's per-event path is what this worker exists to avoid.
    app.topics.add(app.topic(processor.ledger_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw", partitions=stack.partitions))

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs):
        # An eager rebalance revokes everything and then assigns; a partition that comes straight
        # back was processed by nobody else in between, so its state is kept. Others are dropped
        # and rebuilt from the changelog if they ever return.
        mine = {tp.partition for tp in assigned if tp.topic == processor.ledger_topic}
        app.consumer.forget_progress()
        processor.state.revoke([p for p in list(processor.state.partitions) if p not in mine])
        metrics.ASSIGNED.set(len(mine))
        log.info("assigned ledger partitions %s", sorted(mine))

    return app, processor
