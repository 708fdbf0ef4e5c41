"""The replay stage of `make bench`, also runnable alone (`make bench-replay`): `aidledger audit
replay` (`projections.replay`) over a stack that projected N synthetic records end to end (default
1,000,000), timed from offset zero until the rebuild reaches the live projection's offsets, then
compared with the live projection (which must be identical). Target: 20,000 events/s.

Alone, it runs one stack and replays it `--repeats` times (each into a fresh database), and writes
the rates and their median to bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

TARGET_EVENTS_PER_S = 20_000


def replay_rate(stack, ledger_topic: str) -> dict:
    """One replay of a running `infra.stack.Stack`'s projections; raises if the rebuild is not
    identical."""
    from projections.replay import ProgressBar, replay

    from aidledger.bench_scale import _tree_cpu_seconds

    settings = dataclasses.replace(stack.stack, kafka_bootstrap=stack.bootstrap, database_url=stack.database_url)
    bar = ProgressBar("  replay", stream=sys.stdout)
    cpu: dict[str, tuple[float, float]] = {}  # CPU seconds (this process, PostgreSQL) at the start and the end

    def progress(done: int, total: int) -> None:
        if done == 0 or done >= total:
            cpu["end" if done else "start"] = (sum(os.times()[:2]), _tree_cpu_seconds(stack.postgres.pid))
        bar(done, total)

    report = replay(stack.database_url, settings, progress=progress)
    if not report.ok:
        raise RuntimeError(f"bench: the replay differs from the live projection: "
                           f"{[t.as_dict() for t in report.tables if not t.same][:2]}")
    events = sum(o for (t, _), o in report.offsets.items() if t == ledger_topic)
    python_s, postgres_s = (cpu["end"][i] - cpu["start"][i] for i in (0, 1))
    # CPU per record says what the machine's other work hid from the wall clock: on two idle
    # cores the rate would approach 1 / max(Python, PostgreSQL) per record, the two overlapping
    return {"records": report.records, "events": events, "seconds": report.replay_seconds,
            "records_per_s": report.records_per_s, "events_per_s": events / report.replay_seconds,
            "compare_seconds": report.compare_seconds,
            "python_cpu_us_per_record": 1e6 * python_s / report.records,
            "postgres_cpu_us_per_record": 1e6 * postgres_s / report.records}


def run(records: int, seed: int, repeats: int, log=print) -> dict:
    from aidledger.bench import _machine, bench_stack
    from aidcore.reference import default_reference
    from connectors import synthetic
    from connectors.intake import ingest_rows
    from infra.stack import token_key
    from schemas.topics import declared_topics

    with bench_stack("aidledger-bench-replay-") as (stack, home):
        topics = declared_topics(stack.stack)
        dataset = synthetic.generate(records, seed=seed)
        log(f"ingest {records:,} records end to end")
        t0 = time.perf_counter()
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            ingest_rows(conn, iter(enumerate(dataset.records, start=1)), source_name="bench",
                        ledger_topic=topics["ledger"].name, alerts_topic=topics["alerts"].name,
                        token_key=token_key(stack.stack, home), reference=default_reference())
        stack.wait_caught_up(1800, poll_s=0.1)
        log(f"  projected in {time.perf_counter() - t0:.0f} s")
        rounds = []
        for i in range(repeats):
            log(f"replay {i + 1}/{repeats}")
            rounds.append(replay_rate(stack, topics["ledger"].name))
            r = rounds[-1]
            log(f"  {r['events_per_s']:,.0f} events/s ({r['records_per_s']:,.0f} records/s of every topic),"
                f" compared in {r['compare_seconds']:.1f} s; CPU per record: Python"
                f" {r['python_cpu_us_per_record']:.1f} µs, PostgreSQL {r['postgres_cpu_us_per_record']:.1f} µs")
    median = statistics.median(r["events_per_s"] for r in rounds)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
            "records": records, "rounds": rounds, "replay_events_per_s_median": median,
            "target_events_per_s": TARGET_EVENTS_PER_S, "met": median >= TARGET_EVENTS_PER_S}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aidledger.bench_replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default="bench/results/replay.json")
    args = ap.parse_args(argv)
    result = run(args.records, args.seed, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"replay: median {result['replay_events_per_s_median']:,.0f} events/s over {args.repeats} replays of"
          f" {args.records:,} records; target {TARGET_EVENTS_PER_S:,}: {'met' if result['met'] else 'NOT MET'}")
    print(f"results -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
