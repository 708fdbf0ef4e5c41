"""The projector process: reads the ledger, alert and dead-letter topics and the person stage's
state changelog (which says what the stream did with each reversal) with manually assigned
partitions (no consumer group: its positions are the tracking records in PostgreSQL), and writes
each batch with its offsets in one transaction (`projections.writer.write_batch`).

If a tracked offset lies beyond the end of a partition (the broker lost its log and it was
re-published from zero), the consumer resets to the earliest offset and the re-read records are
recognised by their identities.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from aidcore.settings import ProjectorSettings, StackSettings
from projections.writer import Record, prepare, tracked_offsets, write_batch
from schemas.topics import declared_topics

log = logging.getLogger(__name__)

ROWS = Counter("aidledger_projector_rows_total", "Rows written by the projector, by kind", ["kind"])
BATCH_SECONDS = Histogram(
    "aidledger_projector_batch_seconds", "Time to write one batch and its tracking records",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge("aidledger_projector_lag_records", "Records behind the high watermark", ["topic", "partition"])
ALERT_LATENCY = Histogram(
    "aidledger_ingest_to_alert_seconds", "From intake of the triggering event to the alert being raised",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
UNDECODABLE = Counter(
    "aidledger_projector_undecodable_total", "Records the projector could not decode and skipped, by topic role",
    ["role"],
)
TABLE_ROWS = Gauge(
    "aidledger_projection_table_rows", "Live rows of each table in the ledger schema, PostgreSQL's running estimate",
    ["table"],
)
TABLE_BYTES = Gauge(
    "aidledger_projection_table_bytes", "Size on disk of each table in the ledger schema, with its indexes and TOAST",
    ["table"],
)
OBJECTS_EVERY_S = 30.0
PYTHON_OBJECTS = Gauge(
    "aidledger_projector_python_objects",
    f"Python objects alive in the projector, counted every {OBJECTS_EVERY_S:g} s after a full collection (which also "
    "empties the interpreter's free lists): what a leak of objects grows. Resident memory also keeps the "
    "allocator's arenas that a backlog's large batches touched, while any object lives in them",
)
# PostgreSQL's cumulative statistics, not count(*): a catalogue read, the same cost at any size
TABLE_STATS_SQL = """
    SELECT schemaname || '.' || relname, n_live_tup, pg_total_relation_size(relid)
    FROM pg_stat_user_tables WHERE schemaname = 'ledger'
"""
PROJECTOR_NAME = "main"
PROJECTED_ROLES = ("ledger", "alerts", "deadletter", "state", "registry")


async def run_projector(database_url: str, stack: StackSettings, settings: ProjectorSettings,
                        stop: asyncio.Event | None = None, until: dict[tuple[str, int], int] | None = None,
                        on_batch: Callable[[int], None] | None = None) -> None:
    """Project until `stop` is set; with `until` (next offset per topic and partition), read each
    partition up to that offset and return once all are there (`aidledger audit replay`: the
    live projection's positions, so the rebuild is of the same records). `on_batch` hears how
    many records each batch held."""
    stop = stop or asyncio.Event()
    specs = declared_topics(stack)
    topic_names = {role: specs[role].name for role in PROJECTED_ROLES}
    conn = psycopg.connect(database_url, autocommit=True)
    prepare(conn)
    offsets = tracked_offsets(conn, PROJECTOR_NAME)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    await consumer.start()
    # Every call on the connection runs on this one thread, and the connection is closed only
    # after a call still running when the projector stops has ended. One thread also keeps the
    # batches' memory in one glibc arena (asyncio.to_thread's shared pool may start more threads,
    # each with an arena of its own).
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-db")
    loop = asyncio.get_running_loop()
    try:
        tps = [TopicPartition(specs[role].name, p) for role in topic_names for p in range(specs[role].partitions)]
        if until is not None:
            tps = [tp for tp in tps if until.get((tp.topic, tp.partition), 0) > offsets.get((tp.topic, tp.partition), 0)]
            if not tps:
                return
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, offsets.get((tp.topic, tp.partition), 0))
        log.info("projector reading %d partitions", len(tps))
        stats_due = objects_due = 0.0
        while not stop.is_set():
            if time.monotonic() >= objects_due:  # between batches: of the last, only its records are held
                gc.collect()  # a few ms for the projector's ~200,000 objects
                PYTHON_OBJECTS.set(sys.getallocatedblocks())
                objects_due = time.monotonic() + OBJECTS_EVERY_S
            if time.monotonic() >= stats_due:
                await loop.run_in_executor(db, report_table_sizes, conn)
                stats_due = time.monotonic() + settings.table_stats_interval_s
            batch = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max)
            if batch:
                records = []
                next_offsets = {}
                for tp, messages in batch.items():
                    if until is not None:
                        messages = [m for m in messages if m.offset < until[(tp.topic, tp.partition)]]
                        if not messages:
                            continue
                    for m in messages:
                        records.append(Record(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ())))
                    next_offsets[(tp.topic, tp.partition)] = messages[-1].offset + 1
                started = time.perf_counter()
                stats = await loop.run_in_executor(db, write_batch, conn, PROJECTOR_NAME, topic_names, records,
                                                   next_offsets)
                BATCH_SECONDS.observe(time.perf_counter() - started)
                ROWS.labels("event").inc(stats.events_new)
                ROWS.labels("alert").inc(stats.alerts)
                ROWS.labels("deadletter").inc(stats.deadletters)
                ROWS.labels("budget").inc(stats.budget_events)
                ROWS.labels("reversal").inc(stats.reversals)
                ROWS.labels("reversal_posted").inc(stats.reversals_posted)
                ROWS.labels("registry").inc(stats.registry_records)
                UNDECODABLE.labels("registry").inc(stats.registry_undecodable)
                UNDECODABLE.labels("ledger").inc(stats.events_undecodable)
                UNDECODABLE.labels("alerts").inc(stats.alerts_undecodable)
                UNDECODABLE.labels("state").inc(stats.changelog_undecodable)
                for ms in stats.alert_latencies_ms:
                    ALERT_LATENCY.observe(ms / 1000.0)
                if on_batch is not None:
                    on_batch(len(records))
                if until is not None:
                    offsets.update(next_offsets)
                    reached = [tp for tp in tps if offsets.get((tp.topic, tp.partition), 0) >= until[(tp.topic, tp.partition)]]
                    if reached:
                        consumer.pause(*reached)
                    if len(reached) == len(tps):
                        return
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    LAG.labels(tp.topic, str(tp.partition)).set(max(0, hw - await consumer.position(tp)))
    finally:
        await consumer.stop()
        db.shutdown(wait=True)
        conn.close()


def report_table_sizes(conn: psycopg.Connection) -> None:
    for table, rows, size_bytes in conn.execute(TABLE_STATS_SQL).fetchall():
        TABLE_ROWS.labels(table).set(rows)
        TABLE_BYTES.labels(table).set(size_bytes)
