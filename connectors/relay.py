"""The outbox relay: publishes rows of ledger.outbox to Kafka in sequence order, then advances its
cursor. At-least-once: a crash between publishing and the cursor update re-publishes the same
records, which downstream recognises by event id. Woken by NOTIFY, with a polling fallback.

The producer uses acks=all without the idempotent-producer protocol: the embedded broker answers
InitProducerId with an error for aiokafka, and duplicates are harmless here anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import psycopg
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from aidcore.settings import RelaySettings
from connectors.intake import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

PUBLISHED = Counter("aidledger_relay_published_total", "Outbox records published to Kafka")
BACKLOG = Gauge("aidledger_relay_backlog_records", "Outbox records not yet published")
RELAY_NAME = "main"


async def run_relay(database_url: str, bootstrap: str, settings: RelaySettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024,
        request_timeout_ms=30000, retry_backoff_ms=200,
    )
    await producer.start()
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
    try:
        row = await (await conn.execute("SELECT last_seq FROM ledger.relay_cursor WHERE relay = %s", (RELAY_NAME,))).fetchone()
        cursor = row[0] if row else 0
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
            futures = [await producer.send(topic, bytes(value), key=bytes(key), partition=partition)
                       for _, topic, key, value, partition in rows]
            metas = await asyncio.gather(*futures)
            ends: dict[tuple[str, int], int] = defaultdict(int)
            for meta in metas:
                k = (meta.topic, meta.partition)
                ends[k] = max(ends[k], meta.offset + 1)
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
            left = await (await conn.execute("SELECT count(*) FROM ledger.outbox WHERE seq > %s", (cursor,))).fetchone()
            BACKLOG.set(left[0])
    finally:
        await producer.stop()
        await conn.close()
        await listener.close()


async def _wait_for_notify(listener: psycopg.AsyncConnection, timeout_s: float, stop: asyncio.Event) -> None:
    try:
        async for _ in listener.notifies(timeout=timeout_s, stop_after=1):
            break
    except asyncio.CancelledError:
        raise
