"""The outbox relay: publishes rows of ledger.outbox to Kafka in sequence order, then advances its
cursor. At-least-once: a crash between publishing and the cursor update re-publishes the same
records, which downstream recognises by event id. Woken by NOTIFY, with a polling fallback.

The producer uses acks=all without the idempotent-producer protocol: the embedded broker answers
InitProducerId with an error for aiokafka, and duplicates are harmless here anyway.

A broker that lost its log (the embedded broker keeps it in memory, so every restart does) is
noticed at start and while publishing: a partition whose end lies before what the relay saw
acknowledged there (ledger.relay_offsets), or a record acknowledged at an offset below it. The
relay then publishes the whole outbox again from the start, in sequence order; downstream every
record is recognised by its event id. It refuses to publish while a topic it published to is
missing, so the broker cannot auto-create it with the wrong partition count.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import defaultdict

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge

from aidcore.settings import RelaySettings
from connectors.intake import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

PUBLISHED = Counter("aidledger_relay_published_total", "Outbox records published to Kafka")
BACKLOG = Gauge("aidledger_relay_backlog_records", "Outbox records not yet published")
REPUBLISHED = Counter("aidledger_relay_log_lost_total",
                      "Times the broker was found to have lost records it had acknowledged, so the outbox was re-published from the start")
RELAY_NAME = "main"


class RelayError(RuntimeError):
    pass


_WORD = struct.Struct("<I")
_M = 0x5BD1E995
_U32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of a record key (the Java client's `Utils.murmur2`, as an unsigned 32-bit
    value), with the key's words unpacked in one C call; aiokafka's pure-Python one assembles each
    word byte by byte and was 14% of the relay's time."""
    n = len(data)
    h = 0x9747B28C ^ n
    for (k,) in _WORD.iter_unpack(data[: n & ~3]):
        k = (k * _M) & _U32
        k = ((k ^ (k >> 24)) * _M) & _U32
        h = ((h * _M) & _U32) ^ k
    rest = n & 3
    if rest:
        tail = data[n & ~3:]
        if rest == 3:
            h ^= tail[2] << 16
        if rest >= 2:
            h ^= tail[1] << 8
        h = ((h ^ tail[0]) * _M) & _U32
    h = ((h ^ (h >> 13)) * _M) & _U32
    return h ^ (h >> 15)


class KeyPartitioner:
    """Kafka's default partitioner for a keyed record (murmur2 of the key, positive, modulo the
    partition count), so every producer of the ledger topic agrees on where a person's records
    go; with the last 65,536 keys' hashes kept, since one person's payments come in runs. Every
    outbox row has a key (the column is NOT NULL)."""

    def __init__(self, keep: int = 65_536):
        self._hashes: dict[bytes, int] = {}
        self._keep = keep

    def __call__(self, key: bytes, all_partitions: list[int]) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._keep:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


async def run_relay(database_url: str, bootstrap: str, settings: RelaySettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024,
        request_timeout_ms=30000, retry_backoff_ms=200,
    )
    partitioner = KeyPartitioner()
    await producer.start()
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
    try:
        row = await (await conn.execute("SELECT last_seq FROM ledger.relay_cursor WHERE relay = %s", (RELAY_NAME,))).fetchone()
        cursor = row[0] if row else 0
        published = await _published_ends(conn)
        lost = await _log_behind(bootstrap, published)
        if lost:
            cursor, published = await _start_over(conn, lost)
        log.info("relay starting after outbox seq %d", cursor)
        while not stop.is_set():
            rows = await (
                await conn.execute(
                    "SELECT seq, topic, key, value, partition FROM ledger.outbox WHERE seq > %s ORDER BY seq LIMIT %s",
                    (cursor, settings.batch_max),
                )
            ).fetchall()
            if not rows:
                BACKLOG.set(0)
                await _wait_for_notify(listener, settings.poll_interval_ms / 1000.0, stop)
                continue
            sent = await _send_batches(producer, partitioner, rows)
            metas = await asyncio.gather(*(future for future, _ in sent))
            ends: dict[tuple[str, int], int] = defaultdict(int)
            went_back = []
            for meta, (_, count) in zip(metas, sent):  # a batch's offset is its first record's
                k = (meta.topic, meta.partition)
                ends[k] = max(ends[k], meta.offset + count)
                if meta.offset < published.get(k, 0):
                    went_back.append(f"{meta.topic}[{meta.partition}] acknowledged offset {meta.offset},"
                                     f" below {published[k]} acknowledged before")
            if went_back:
                cursor, published = await _start_over(conn, went_back[:3])
                continue
            published.update(ends)
            cursor = rows[-1][0]
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO ledger.relay_cursor (relay, last_seq) VALUES (%s, %s)"
                    " ON CONFLICT (relay) DO UPDATE SET last_seq = excluded.last_seq",
                    (RELAY_NAME, cursor),
                )
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO ledger.relay_offsets (topic, partition, next_offset) VALUES (%s, %s, %s)"
                        " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                        [(t, p, o) for (t, p), o in ends.items()],
                    )
            PUBLISHED.inc(len(rows))
            if len(rows) < settings.batch_max:
                BACKLOG.set(0)  # the round read everything there was
            else:  # the highest sequence less the cursor: one index lookup, where a count reads the backlog
                left = await (await conn.execute("SELECT coalesce(max(seq), 0) - %s FROM ledger.outbox", (cursor,))).fetchone()
                BACKLOG.set(max(0, left[0]))
    finally:
        await producer.stop()
        await conn.close()
        await listener.close()


async def _send_batches(producer: AIOKafkaProducer, partitioner: KeyPartitioner, rows: list) -> list:
    """The rows as record batches, one open batch per topic-partition, each record appended in
    sequence order (so a partition's records keep the outbox's order). Returns (future of the
    batch's acknowledgement, records in it) for every batch sent. One future a batch, where
    producer.send makes one a record: per-record futures, partition lookups and the accumulator
    were most of the relay's time."""
    open_: dict[tuple[str, int], list] = {}  # (topic, partition) -> [batch, records in it]
    partitions: dict[str, list[int]] = {}
    sent = []
    for _, topic, key, value, partition in rows:
        key, value = bytes(key), bytes(value)
        if partition is None:
            every = partitions.get(topic)
            if every is None:
                every = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = partitioner(key, every)
        current = open_.get((topic, partition))
        if current is None:
            current = open_[(topic, partition)] = [producer.create_batch(), 0]
        if current[0].append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
            current[0].close()
            sent.append((await producer.send_batch(current[0], topic, partition=partition), current[1]))
            current[:] = [producer.create_batch(), 0]
            if current[0].append(key=key, value=value, timestamp=None) is None:
                raise RelayError(f"an outbox record of {len(value)} bytes does not fit in a record batch")
        current[1] += 1
    for (topic, partition), (batch, count) in open_.items():
        batch.close()
        sent.append((await producer.send_batch(batch, topic, partition=partition), count))
    return sent


async def _wait_for_notify(listener: psycopg.AsyncConnection, timeout_s: float, stop: asyncio.Event) -> None:
    try:
        async for _ in listener.notifies(timeout=timeout_s, stop_after=1):
            break
    except asyncio.CancelledError:
        raise


async def _published_ends(conn: psycopg.AsyncConnection) -> dict[tuple[str, int], int]:
    rows = await (await conn.execute("SELECT topic, partition, next_offset FROM ledger.relay_offsets")).fetchall()
    return {(t, p): n for t, p, n in rows}


async def _log_behind(bootstrap: str, published: dict[tuple[str, int], int], timeout_s: float = 30.0) -> list[str]:
    """The partitions whose end lies before what was acknowledged there: the broker lost them.
    Ends come from the high watermark in fetch responses (the embedded broker's ListOffsets
    answer is wrong)."""
    if not published:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=1024, fetch_max_bytes=64 * 1024, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        missing = sorted({t for t, _ in published} - set(await consumer.topics()))
        if missing:
            raise RelayError(f"the broker lacks the topics {missing} that the relay published to; create them with their"
                             " partition counts (`aidledger up` does) before the relay publishes again")
        tps = [TopicPartition(t, p) for t, p in published]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        marks: dict[TopicPartition, int] = {}
        while len(marks) < len(tps):
            await consumer.getmany(timeout_ms=100, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    marks[tp] = hw
            if asyncio.get_running_loop().time() > deadline:
                raise RelayError("the broker gave no end offsets for the relay's partitions")
        return [f"{tp.topic}[{tp.partition}] ends at {marks[tp]}, {published[(tp.topic, tp.partition)]} were acknowledged"
                for tp in tps if marks[tp] < published[(tp.topic, tp.partition)]]
    finally:
        await consumer.stop()


async def _start_over(conn: psycopg.AsyncConnection, why: list[str]) -> tuple[int, dict[tuple[str, int], int]]:
    """Forget what was published: the next rounds publish the outbox from its first record."""
    log.warning("the broker lost records it had acknowledged (%s%s); publishing the outbox again from the start",
                "; ".join(why[:3]), " ..." if len(why) > 3 else "")
    async with conn.transaction():
        await conn.execute("DELETE FROM ledger.relay_offsets")
        await conn.execute(
            "INSERT INTO ledger.relay_cursor (relay, last_seq) VALUES (%s, 0)"
            " ON CONFLICT (relay) DO UPDATE SET last_seq = 0", (RELAY_NAME,))
    REPUBLISHED.inc()
    return 0, {}
