"""`aidledger bench` (`make bench`): throughput and latency of the whole stack, each round on a
fresh embedded stack, with the raw ceiling measured in the same round on the same events.

Per round:
- end to end: ingest N synthetic records (validation, outbox, relay, Kafka, Faust worker,
  projector) until every record is projected; events per second from start of ingest;
- raw ceiling: plain aiokafka batch consume plus Avro decode of the same ledger topic;
- latency: a paced phase at a fixed offered rate; p50/p99 from intake of an event to the alert it
  raised (alert.raised_at - event.recorded_at);
- audit verify: every partition's hash chain recomputed from the round's whole archive;
- audit replay: every projection rebuilt from offset zero of the log and compared with the live
  one (`aidledger.bench_replay`, also runnable alone with `make bench-replay`).
Medians over the rounds go to the JSON file with the machine and the date.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from aidcore.ledger import RULE_DUPLICATE_PERSON
from aidledger import bench_replay
from aidcore.reference import default_reference
from connectors import synthetic
from connectors.intake import ingest_rows
from infra.kafka import high_watermarks, read_topic
from infra.stack import Stack, free_port_environ, token_key
from schemas import codec
from schemas.topics import declared_topics


def _environ() -> dict[str, str]:
    """The machine's environment without any AIDLEDGER_ setting, on free ports: a bench stack is
    always the default configuration."""
    return free_port_environ({k: v for k, v in os.environ.items() if not k.startswith("AIDLEDGER_")})


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


def raw_ceiling_apart(bootstrap: str, topic: str, partitions: int) -> dict:
    """`raw_ceiling` in a fresh interpreter, as the worker it is compared with runs. Measured in
    the bench's own process it read ~30% slower (84,000 against 118,000 events/s on the same
    topic): the events the bench generated are still alive there (200,000 in the detection stage,
    a million rows end to end), and each full collection the decode triggers walks them all."""
    done = subprocess.run([sys.executable, "-m", "aidledger.bench", "ceiling", bootstrap, topic, str(partitions)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the raw ceiling's process exited with {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def projection_write_rate(stack: Stack, topics: dict, limit: int = 200_000, batch: int = 20_000) -> dict:
    """The projector's write path alone (decode, idempotency, COPY, totals, tracking) into a
    fresh database, in its production batch size."""
    from projections.migrate import migrate
    from projections.writer import prepare, write_batch

    from projections.writer import Record

    records = [Record(r.topic, r.partition, r.offset, r.key, r.value, ())
               for r in asyncio.run(read_topic(stack.bootstrap, topics["ledger"].name, topics["ledger"].partitions, limit))]
    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS bench_projection")
        admin.execute("CREATE DATABASE bench_projection")
    url = stack.database_url.rsplit("/", 1)[0] + "/bench_projection"
    migrate(url)
    names = {role: topics[role].name for role in ("ledger", "alerts", "deadletter")}
    with psycopg.connect(url, autocommit=True) as conn:
        prepare(conn)
        started = time.perf_counter()
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            ends = {}
            for r in chunk:
                ends[(r.topic, r.partition)] = r.offset + 1
            write_batch(conn, "bench", names, chunk, ends)
        seconds = time.perf_counter() - started
        rows = conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0]
        conn.execute("SELECT pg_stat_force_next_flush()")
    # every row the write path inserted or updated, in every table (events, chain, postings,
    # balances, totals, tracking, ...): what "rows written" means to PostgreSQL
    with psycopg.connect(url, autocommit=True) as conn:
        by_table = {name: n for name, n in conn.execute(
            "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables"
            " WHERE schemaname = 'ledger' AND n_tup_ins + n_tup_upd > 0 ORDER BY 2 DESC").fetchall()}
    written = sum(by_table.values())
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "table_rows_written": written,
            "table_rows_written_per_s": written / seconds, "table_rows_written_by_table": by_table}


def audit_verify_rate(database_url: str, partitions: int) -> dict:
    """`aidledger audit verify` over the round's whole archive: every partition's hash chain
    recomputed from the archived values, in one snapshot."""
    from projections.audit import verify

    with psycopg.connect(database_url) as conn:
        report = verify(conn, partitions=range(partitions))
    if not report.ok:
        raise RuntimeError(f"bench: the archive's chain does not verify: {report.findings[:3]}")
    return {"events": report.events, "seconds": report.seconds, "events_per_s": report.events_per_s}


def _worker_ready(stack: Stack, timeout_s: float = 60.0) -> None:
    """Start timing only once the worker owns its partitions: group join is start-up, not
    throughput."""
    from aidledger.bench_stage import counter_total

    url = stack.endpoints()["metrics"]["worker-0"]
    deadline = time.monotonic() + timeout_s
    while counter_total(url, "aidledger_worker_assigned_partitions") < stack.stack.partitions:
        if time.monotonic() > deadline:
            raise RuntimeError("bench: the worker did not join its consumer group in time")
        stack.check_children()
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the stack: this process (the
    intake; its own time only, the stack's processes are its children), the broker, each
    supervised child, and PostgreSQL (the postmaster and its backends, live or reaped)."""
    from aidledger.bench_scale import _tree_cpu_seconds

    roots = {"broker": stack.broker.pid, "postgres": stack.postgres.pid,
             **{name: child.process.pid for name, child in stack.children.items() if child.process is not None}}
    return {"intake": sum(os.times()[:2]), **{name: _tree_cpu_seconds(pid) for name, pid in roots.items()}}


@contextmanager
def bench_stack(prefix: str) -> Iterator[tuple[Stack, Path]]:
    """A fresh embedded stack in the default configuration, in a temporary home, with its worker
    owning its partitions; stopped and removed on leaving."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        stack = Stack(home, _environ())
        stack.start()
        try:
            _worker_ready(stack)
            yield stack, home
        finally:
            stack.stop()


def one_round(records: int, seed: int, paced_rate: int, paced_s: float) -> dict:
    with bench_stack("aidledger-bench-") as (stack, home):
        key = token_key(stack.stack, home)
        topics = declared_topics(stack.stack)
        dataset = synthetic.generate(records, seed=seed)
        rows = list(enumerate(dataset.records, start=1))
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            cpu_before = _cpu_seconds(stack)
            t0 = time.perf_counter()
            report = ingest_rows(conn, iter(rows), source_name="bench", ledger_topic=topics["ledger"].name,
                                 alerts_topic=topics["alerts"].name, token_key=key, reference=default_reference())
            ingest_s = time.perf_counter() - t0
            stack.wait_caught_up(1800, poll_s=0.1)
            e2e_s = time.perf_counter() - t0
            cpu_after = _cpu_seconds(stack)
            cpu_us = {name: round((used - cpu_before.get(name, 0.0)) / report.accepted * 1e6, 1)
                      for name, used in cpu_after.items() if name not in ("gateway", "dashboard")}
            ceiling = raw_ceiling_apart(stack.bootstrap, topics["ledger"].name, topics["ledger"].partitions)

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
            stack.wait_caught_up(600, poll_s=0.1)
            projection = projection_write_rate(stack, topics)
            audit = audit_verify_rate(stack.database_url, topics["ledger"].partitions)
            replayed = bench_replay.replay_rate(stack, topics["ledger"].name)
            latencies = [r[0] for r in conn.execute(
                "SELECT latency_ms FROM ledger.alerts WHERE first_raised_at >= %s AND rule_id = %s",
                (mark, RULE_DUPLICATE_PERSON)).fetchall()]
    return {
        "records": records,
        "accepted": report.accepted,
        "ingest_events_per_s": report.accepted / ingest_s,
        "e2e_seconds": e2e_s,
        "e2e_events_per_s": report.accepted / e2e_s,
        # what one event costs the two cores end to end: the ceiling is cores / this total
        "e2e_cpu_us_per_event": round(sum(cpu_us.values()), 1),
        "e2e_cpu_us_per_event_by_process": cpu_us,
        "raw_ceiling_events_per_s": ceiling["events_per_s"],
        "projection_rows_per_s": projection["rows_per_s"],
        "projection_table_rows_written_per_s": projection["table_rows_written_per_s"],
        "projection_table_rows_by_table": projection["table_rows_written_by_table"],
        "audit_verify_events": audit["events"],
        "audit_verify_events_per_s": audit["events_per_s"],
        "replay_events": replayed["events"],
        "replay_events_per_s": replayed["events_per_s"],
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


TARGETS = {
    "detection_events_per_s": 30_000,
    "detection_over_raw_ceiling": 0.5,
    "e2e_events_per_s": 10_000,
    "alert_latency_p99_ms": 100,
    "projection_rows_per_s": 50_000,
    "audit_verify_events_per_s": 100_000,
    "replay_events_per_s": bench_replay.TARGET_EVENTS_PER_S,
    "rebuild_seconds_per_million_tokens": 120,
    "state_mib_per_million_tokens": 200,
}


def _medians(rounds: list[dict]) -> dict:
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in rounds if r.get(k) is not None) for k in keys}


def _print_rounds(title: str, rounds: list[dict], medians: dict) -> None:
    print(f"\n{title}: medians of {len(rounds)} rounds")
    for k, v in medians.items():
        print(f"  {k:<34} {v:>16,.2f}")


def run_bench(args) -> int:
    from aidledger import bench_stage

    e2e = []
    for i in range(args.rounds):
        print(f"end to end, round {i + 1}/{args.rounds}: {args.records:,} records", flush=True)
        e2e.append(one_round(args.records, seed=1000 + i, paced_rate=args.paced_rate, paced_s=args.paced_seconds))
    detection = []
    for i in range(args.rounds):
        print(f"detection stage, round {i + 1}/{args.rounds}", flush=True)
        detection.append(bench_stage.detection_stage(seed=7 + i))
    print("worker state rebuild: 1,000,000 tokens", flush=True)
    recovery = bench_stage.recovery_stage()
    e2e_m, det_m = _medians(e2e), _medians(detection)
    e2e_m["e2e_over_raw_ceiling"] = statistics.median(r["e2e_events_per_s"] / r["raw_ceiling_events_per_s"] for r in e2e)
    scale = 1e6 / recovery["tokens"]
    summary = {
        "detection_events_per_s": det_m["worker_events_per_s"],
        "detection_over_raw_ceiling": det_m["worker_over_raw_ceiling"],
        "detection_two_workers_events_per_s": det_m["two_workers_events_per_s"],
        "detection_over_baseline": det_m["worker_over_baseline"],
        "e2e_events_per_s": e2e_m["e2e_events_per_s"],
        "e2e_cpu_us_per_event": e2e_m["e2e_cpu_us_per_event"],
        "alert_latency_p50_ms": e2e_m["alert_latency_p50_ms"],
        "alert_latency_p99_ms": e2e_m["alert_latency_p99_ms"],
        "projection_rows_per_s": e2e_m["projection_rows_per_s"],
        "projection_table_rows_written_per_s": e2e_m["projection_table_rows_written_per_s"],
        "audit_verify_events_per_s": e2e_m["audit_verify_events_per_s"],
        "audit_verify_over_target": e2e_m["audit_verify_events_per_s"] / TARGETS["audit_verify_events_per_s"],
        "replay_events_per_s": e2e_m["replay_events_per_s"],
        "rebuild_seconds_per_million_tokens": recovery["rebuild_seconds"] * scale,
        "state_mib_per_million_tokens": recovery["state_mib_per_million_tokens"],
    }
    met = {}
    for k, target in TARGETS.items():
        value = summary[k]
        met[k] = value <= target if k in ("alert_latency_p99_ms", "rebuild_seconds_per_million_tokens",
                                          "state_mib_per_million_tokens") else value >= target
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "summary": summary,
        "targets": TARGETS,
        "met": met,
        "end_to_end": {"rounds": e2e, "median": e2e_m},
        # medians of the CPU microseconds each process spent per event in the end-to-end phase
        "e2e_cpu_us_per_event_by_process": {
            name: statistics.median(r["e2e_cpu_us_per_event_by_process"].get(name, 0.0) for r in e2e)
            for name in e2e[0]["e2e_cpu_us_per_event_by_process"]},
        "detection_stage": {"rounds": detection, "median": det_m},
        "recovery": recovery,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print_rounds("end to end", e2e, e2e_m)
    _print_rounds("detection stage", detection, det_m)
    print("\nsummary against the targets")
    for k, v in summary.items():
        mark = "" if k not in met else ("  met" if met[k] else f"  NOT MET (target {TARGETS[k]:,})")
        print(f"  {k:<40} {v:>14,.2f}{mark}")
    chart = out.with_suffix(".png")
    if _chart(result, chart):
        print(f"chart -> {chart}")
    print(f"results -> {out}")
    return 0


def _chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (make bench installs it); no chart", file=sys.stderr)
        return False
    s, det, e2e = result["summary"], result["detection_stage"]["median"], result["end_to_end"]["median"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    names = ["raw ceiling\n(consume+decode)", "ledger worker\n1 process", "ledger worker\n2 processes",
             "per-event Faust\nagent + Table", "end to end\n(ingest to projected)", "projector\nwrite path"]
    values = [det["raw_ceiling_events_per_s"], s["detection_events_per_s"], s["detection_two_workers_events_per_s"],
              det["baseline_events_per_s"], s["e2e_events_per_s"], s["projection_rows_per_s"]]
    bars = left.bar(names, values, color=["#999999", "#1f77b4", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"])
    left.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values], fontsize=8)
    left.set_ylabel("events (rows) per second")
    left.set_title("Throughput, medians", fontsize=10)
    left.tick_params(axis="x", labelsize=7)
    lat = [e2e["alert_latency_p50_ms"], e2e["alert_latency_p99_ms"]]
    lbars = right.bar(["p50", "p99"], lat, color=["#2ca02c", "#ff7f0e"])
    right.bar_label(lbars, labels=[f"{v:.0f} ms" for v in lat], fontsize=8)
    right.axhline(100, color="#d62728", linestyle="--", linewidth=1)
    right.set_title(f"Ingest to alert at {e2e['paced_offered_per_s']:,.0f}/s offered", fontsize=10)
    right.set_ylabel("milliseconds")
    fig.suptitle(f"aidledger bench {result['date'][:10]}, {result['machine']['cores']} cores, {result['machine']['cpu']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":  # python -m aidledger.bench ceiling BOOTSTRAP TOPIC PARTITIONS (see raw_ceiling_apart)
    if len(sys.argv) != 5 or sys.argv[1] != "ceiling":
        sys.exit("usage: python -m aidledger.bench ceiling BOOTSTRAP TOPIC PARTITIONS")
    print(json.dumps(asyncio.run(raw_ceiling(sys.argv[2], sys.argv[3], int(sys.argv[4])))))
