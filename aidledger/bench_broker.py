"""The embedded broker's fetch cost against the number of record batches a partition holds
(`make bench-broker`).

Why: after `make bench`'s million-record round the alert latency at 5,000 events/s is about
twice what it is on a fresh stack, and the broker's CPU share at the same load grows about
threefold. This probe isolates the broker: one partition is filled with small record batches,
and at each size the last batch is fetched again and again, timing the fetch and the broker's
CPU. On the embedded broker (Tansu, in-memory storage) a fetch that returns records lists every
batch the partition holds, so its cost grows with the partition's history, not with what it
returns.

Writes bench/results/broker.json: per size, the median wall and broker-CPU milliseconds of a
fetch, and their ratio to the smallest size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SIZES = (100, 1_000, 5_000, 20_000)
TOPIC = "broker-probe"


async def _fill(producer, upto: int, stored: int) -> int:
    """Append one-record batches until the partition holds `upto` of them."""
    while stored < upto:
        futures = []
        for _ in range(min(50, upto - stored)):
            batch = producer.create_batch()
            batch.append(key=None, value=b"v" * 100, timestamp=None)
            batch.close()
            futures.append(await producer.send_batch(batch, TOPIC, partition=0))
            stored += 1
        await asyncio.gather(*futures)
    return stored


async def _fetch_last(bootstrap: str, pid: int, stored: int, fetches: int) -> tuple[float, float]:
    """Median wall ms and mean broker-CPU ms of fetching the partition's last batch."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from aidledger.bench_scale import _tree_cpu_seconds

    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        consumer.assign([tp])
        walls = []
        cpu0 = _tree_cpu_seconds(pid)
        for _ in range(fetches):
            consumer.seek(tp, stored - 1)
            t0 = time.perf_counter()
            for _ in range(50):
                if (await consumer.getmany(tp, timeout_ms=100)).get(tp):
                    break
            else:
                raise RuntimeError("the broker returned no record for the last offset")
            walls.append(time.perf_counter() - t0)
        return statistics.median(walls) * 1000, (_tree_cpu_seconds(pid) - cpu0) / fetches * 1000
    finally:
        await consumer.stop()


async def probe(sizes=SIZES, fetches: int = 200) -> list[dict]:
    from aiokafka import AIOKafkaProducer

    from infra.embedded import free_port, start_broker
    from infra.kafka import create_topics
    from schemas.topics import TopicSpec

    with tempfile.TemporaryDirectory(prefix="aidledger-broker-probe-") as home:
        broker = start_broker(Path(home), free_port())
        try:
            create_topics(broker.endpoint, [TopicSpec("probe", TOPIC, 1, "none", None, "broker fetch-cost probe")])
            producer = AIOKafkaProducer(bootstrap_servers=broker.endpoint, linger_ms=0)
            await producer.start()
            rows, stored = [], 0
            try:
                for size in sorted(sizes):
                    stored = await _fill(producer, size, stored)
                    wall_ms, cpu_ms = await _fetch_last(broker.endpoint, broker.pid, stored, fetches)
                    rows.append({"batches": size, "fetch_wall_ms": round(wall_ms, 3), "broker_cpu_ms": round(cpu_ms, 3)})
                    print(f"  {size:>7,} batches in the partition: a fetch of the last one takes {wall_ms:.2f} ms,"
                          f" {cpu_ms:.2f} ms of broker CPU", flush=True)
            finally:
                await producer.stop()
        finally:
            broker.stop()
    base = rows[0]
    for row in rows:
        row["wall_ratio"] = round(row["fetch_wall_ms"] / base["fetch_wall_ms"], 1) if base["fetch_wall_ms"] else None
        row["cpu_ratio"] = round(row["broker_cpu_ms"] / base["broker_cpu_ms"], 1) if base["broker_cpu_ms"] else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(SIZES),
                        help="batches in the partition at each step, comma-separated")
    parser.add_argument("--fetches", type=int, default=200, help="fetches timed at each step")
    parser.add_argument("--out", type=Path, default=Path("bench/results/broker.json"))
    args = parser.parse_args(argv)
    rows = asyncio.run(probe(args.sizes, args.fetches))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "cpus": os.cpu_count(), "fetches_per_step": args.fetches, "steps": rows},
                                   indent=2) + "\n")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
