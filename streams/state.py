"""The ledger worker's live state, backed by its own changelog topic.

Why not a Faust Table: every table write is its own changelog record, sent one by one, which
caps a worker at a few hundred events per second. Here the state of ledger partition p is a
plain dict {person_token: {idem_key: Payment}}, and each batch appends ONE changelog record to
partition p of the state topic with every payment it accepted there (payments are only ever
added, so a delta is the exact change). On assignment a partition's dict is rebuilt by replaying
its changelog partition from the start to the high watermark read from fetch responses.

Ordering contract with the agent (at-least-once, idempotent effects): alerts and dead letters
are acknowledged by the broker first, then the state delta, and only then are the source events
acked for commit. A crash anywhere re-reads events that the restored state either does not know
(so they are decided again, re-emitting the same alert identities) or knows (so they are
recognised as redeliveries and change nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from aidcore.ledger import Payment
from schemas import codec
from streams import metrics

log = logging.getLogger(__name__)

PartitionState = dict[str, dict[str, Payment]]


def delta_record(partition: int, offset_end: int, changed: dict[str, dict[str, Payment]], before: PartitionState) -> dict | None:
    """The payments in `changed` that `before` does not have, as one PersonStateDelta record."""
    payments = []
    for token, state in changed.items():
        old = before.get(token, {})
        for key, p in state.items():
            if key not in old:
                payments.append(
                    {
                        "person_token": token, "idem_key": key, "event_id": p.event_id,
                        "programme_code": p.programme_code, "period": p.period, "amount_idr": p.amount_idr,
                        "digests": p.digests, "disbursed_at_us": p.disbursed_at_us,
                        "region_code": p.region_code, "source_type": p.source_type,
                    }
                )
    if not payments:
        return None
    return {"source_partition": partition, "source_offset_end": offset_end, "payments": payments}


def apply_delta(state: PartitionState, record: dict) -> None:
    for p in record["payments"]:
        person = state.get(p["person_token"])
        if person is None:
            person = state[p["person_token"]] = {}
        person[p["idem_key"]] = Payment(
            p["event_id"], p["programme_code"], p["period"], p["amount_idr"], p["digests"],
            p["disbursed_at_us"], p["region_code"], p["source_type"],
        )


class LedgerState:
    def __init__(self, bootstrap: str, state_topic: str, fetch_max_wait_ms: int = 25):
        self.bootstrap = bootstrap
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.state_topic = state_topic
        self.partitions: dict[int, PartitionState] = {}
        self._loading: dict[int, asyncio.Task] = {}

    def persons(self) -> int:
        return sum(len(s) for s in self.partitions.values())

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)
            task = self._loading.pop(p, None)
            if task is not None:
                task.cancel()
        metrics.PERSONS.set(self.persons())

    async def ensure_loaded(self, partitions: Iterable[int]) -> None:
        waits = []
        for p in partitions:
            if p in self.partitions:
                continue
            task = self._loading.get(p)
            if task is None:
                task = self._loading[p] = asyncio.ensure_future(self._load(p))
            waits.append(task)
        if waits:
            await asyncio.gather(*waits)

    async def _load(self, partition: int) -> None:
        started = time.perf_counter()
        state: PartitionState = {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await consumer.start()
        deltas = 0
        try:
            tp = TopicPartition(self.state_topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            decoder = codec.codec(codec.STATE_DELTA)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
                for record in batch.get(tp, ()):
                    apply_delta(state, decoder.decode(record.value))
                    deltas += 1
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    break
        finally:
            await consumer.stop()
        self.partitions[partition] = state
        self._loading.pop(partition, None)
        elapsed = time.perf_counter() - started
        metrics.RECOVERY_SECONDS.observe(elapsed)
        metrics.PERSONS.set(self.persons())
        log.info("state of partition %d rebuilt: %d persons from %d deltas in %.2fs", partition, len(state), deltas, elapsed)
