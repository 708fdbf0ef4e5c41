"""Kafka plumbing shared by the CLI and the launcher: create the declared topics, read true high
watermarks, read a consumer group's committed offsets.

Tansu's ListOffsets "latest" is wrong (start of the last batch + 1), so end offsets here come
from the high watermark carried in fetch responses, never from end_offsets().
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.topics import TopicSpec

log = logging.getLogger(__name__)


def create_topics(bootstrap: str, specs: list[TopicSpec], replication: int = 1) -> list[str]:
    """Create the missing topics with their explicit partition counts; returns those created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="aidledger-admin", request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.configs)],
                    validate_only=False,
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


async def high_watermarks(bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 10.0) -> dict[int, int]:
    """The true end offset of each partition, read from fetch responses."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=1024, fetch_max_bytes=64 * 1024, fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        marks: dict[int, int] = {}
        while len(marks) < partitions:
            await consumer.getmany(timeout_ms=100, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    marks[tp.partition] = hw
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no high watermark for {topic} partitions {sorted(set(range(partitions)) - set(marks))}")
        return marks
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int, limit: int | None = None) -> list:
    """The records of a topic from the start to each partition's true high watermark (at most
    `limit` of them)."""
    marks = await high_watermarks(bootstrap, topic, partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list = []
        pending = {tp for tp in tps if marks[tp.partition] > 0}
        while pending and (limit is None or len(out) < limit):
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                out.extend(records)
            for tp in list(pending):
                if await consumer.position(tp) >= marks[tp.partition]:
                    pending.discard(tp)
        return out if limit is None else out[:limit]
    finally:
        await consumer.stop()


def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="aidledger-admin", request_timeout_ms=15000)
    try:
        offsets = admin.list_group_offsets(group_id).get(group_id, {})
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
    finally:
        admin.close()
