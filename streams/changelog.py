"""Reading one changelog partition from the start to its high watermark, for state rebuilds."""

from __future__ import annotations

from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition


async def replay_partition(bootstrap: str, topic: str, partition: int, apply: Callable[[bytes], None],
                           fetch_max_wait_ms: int = 25) -> int:
    """Feed every value of `topic`[`partition`] to `apply`, oldest first; returns how many."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    count = 0
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        # The end first: an empty changelog (every partition of a new worker's first batch) is
        # then done at once, where a fetch would wait 200 ms for records that never come.
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            return 0
        await consumer.seek_to_beginning(tp)
        while True:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
            for record in batch.get(tp, ()):
                apply(record.value)
                count += 1
            if await consumer.position(tp) >= max(end, consumer.highwater(tp) or 0):
                break
    finally:
        await consumer.stop()
    return count
