"""`aidledger bench` (`make bench`): throughput and latency of the whole stack, each round on a
fresh embedded stack, with the raw ceiling measured in the same round on the same events.

Per round:
- end to end: ingest N synthetic records (validation, outbox, relay, Kafka, Faust worker,
  projector) until every record is projected; events per second from start of ingest;
- raw ceiling: plain aiokafka batch consume plus Avro decode of the same ledger topic;
- latency: a paced phase at a fixed offered rate; p50/p99 from intake of an event to the alert it
  raised (alert.raised_at - event.recorded_at).
Medians over the rounds go to the JSON file with the machine and the date.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from aidcore.ledger import RULE_DUPLICATE_PERSON
from aidcore.reference import default_reference
from connectors import synthetic
from connectors.intake import ingest_rows
from infra import embedded
from infra.kafka import high_watermarks
from infra.stack import Stack, token_key
from schemas import codec
from schemas.topics import declared_topics


def _environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDLEDGER_")}
    for var in ("AIDLEDGER_BROKER_PORT", "AIDLEDGER_POSTGRES_PORT", "AIDLEDGER_PROJECTOR_METRICS_PORT",
                "AIDLEDGER_RELAY_METRICS_PORT", "AIDLEDGER_WORKER_METRICS_PORT"):
        env[var] = str(embedded.free_port())
    return env


def _caught_up(stack: Stack, timeout_s: float) -> None:
    from aidledger.cli import lag_report

    deadline = time.monotonic() + timeout_s
    while any(lag_report(stack.bootstrap, stack.database_url, stack.stack).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("bench: the stack did not catch up in time")
        stack.check_children()
        time.sleep(0.1)


async def raw_ceiling(bootstrap: str, topic: str, partitions: int) -> dict:
    marks = await high_watermarks(bootstrap, topic, partitions)
    total = sum(marks.values())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        n = 0
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                decoded = codec.decode_disbursements(r.value for r in records)
                n += len(decoded)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def one_round(records: int, seed: int, paced_rate: int, paced_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="aidledger-bench-") as tmp:
        home = Path(tmp)
        stack = Stack(home, _environ())
        stack.start()
        try:
            _caught_up(stack, 60)  # worker joined and idle
            key = token_key(stack.stack, home)
            topics = declared_topics(stack.stack)
            dataset = synthetic.generate(records, seed=seed)
            rows = list(enumerate(dataset.records, start=1))
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                t0 = time.perf_counter()
                report = ingest_rows(conn, iter(rows), source_name="bench", ledger_topic=topics["ledger"].name,
                                     alerts_topic=topics["alerts"].name, token_key=key, reference=default_reference())
                ingest_s = time.perf_counter() - t0
                _caught_up(stack, 1800)
                e2e_s = time.perf_counter() - t0
                ceiling = asyncio.run(raw_ceiling(stack.bootstrap, topics["ledger"].name, topics["ledger"].partitions))

                # paced phase: fresh people (another seed) offered at a steady rate in small chunks
                paced = synthetic.generate(int(paced_rate * paced_s), seed=seed + 1000, first_period="2026-08", months=3)
                chunk = max(1, paced_rate // 20)
                mark = conn.execute("SELECT now()").fetchone()[0]
                started = time.perf_counter()

                def paced_rows():
                    for i, row in enumerate(paced.records, start=1):
                        if i % chunk == 0:
                            lag = started + i / paced_rate - time.perf_counter()
                            if lag > 0:
                                time.sleep(lag)
                        yield i, dict(row, source_ref="PACED-" + row["source_ref"])

                ingest_rows(conn, paced_rows(), source_name="bench-paced", ledger_topic=topics["ledger"].name,
                            alerts_topic=topics["alerts"].name, token_key=key, reference=default_reference(),
                            chunk_rows=chunk)
                _caught_up(stack, 600)
                latencies = [r[0] for r in conn.execute(
                    "SELECT latency_ms FROM ledger.alerts WHERE first_raised_at >= %s AND rule_id = %s",
                    (mark, RULE_DUPLICATE_PERSON)).fetchall()]
        finally:
            stack.stop()
    return {
        "records": records,
        "accepted": report.accepted,
        "ingest_events_per_s": report.accepted / ingest_s,
        "e2e_seconds": e2e_s,
        "e2e_events_per_s": report.accepted / e2e_s,
        "raw_ceiling_events_per_s": ceiling["events_per_s"],
        "paced_offered_per_s": paced_rate,
        "paced_alerts": len(latencies),
        "alert_latency_p50_ms": _percentile(latencies, 0.50),
        "alert_latency_p99_ms": _percentile(latencies, 0.99),
    }


def _machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def run_bench(args) -> int:
    rounds = []
    for i in range(args.rounds):
        print(f"bench round {i + 1}/{args.rounds}: {args.records:,} records", flush=True)
        r = one_round(args.records, seed=1000 + i, paced_rate=args.paced_rate, paced_s=args.paced_seconds)
        print("  " + ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in r.items()), flush=True)
        rounds.append(r)
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float))]
    medians = {k: statistics.median(r[k] for r in rounds) for k in keys}
    medians["e2e_over_raw_ceiling"] = statistics.median(r["e2e_events_per_s"] / r["raw_ceiling_events_per_s"] for r in rounds)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "rounds": rounds,
        "median": medians,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nmedians over {len(rounds)} rounds -> {out}")
    for k, v in medians.items():
        print(f"  {k:<28} {v:>14,.2f}")
    return 0
