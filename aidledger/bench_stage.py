"""The detection stage alone, as issue targets define it: a pre-produced ledger topic of N events
over T person tokens and P partitions, then
- raw ceiling: plain aiokafka batch consume plus Avro decode of that topic;
- the ledger worker (the real one, a subprocess) deciding every event with all rules on;
- the straightforward per-event Faust agent with a Table (streams.baseline) on the same topic,
  timed over its first events (it is two orders of magnitude slower).
Rates come from the processes' own Prometheus counters, polled, from the first counted event to
the last, so group-join time is excluded for both workers alike.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
import urllib.request
from dataclasses import replace
from pathlib import Path

from aiokafka import AIOKafkaProducer

from aidcore.intake import Disbursement, content_digest, field_digests, make_event_id
from aidcore.settings import StackSettings
from infra import embedded, kafka
from schemas import codec
from schemas.topics import declared_topics

PROGRAMMES = (("PKH", 750_000), ("BPNT", 200_000), ("BLT_DD", 300_000), ("PBI_JK", 42_000), ("PIP", 900_000))
assert PROGRAMMES[0][0] == "PKH" and PROGRAMMES[1][0] == "BPNT"
PERIODS = tuple(f"2026-{m:02d}" for m in range(1, 13))
PER_HOUSEHOLD = frozenset({"PKH", "BPNT", "BLT_DD"})


def make_events(n: int, tokens: int, seed: int, duplicate_rate: float = 0.01) -> list[Disbursement]:
    rnd = random.Random(seed)
    people = [f"{rnd.getrandbits(128):032x}" for _ in range(tokens)]
    # households of three people, so the household stage has real work; as in DOMAIN.md, the
    # per-household programmes are paid to the household's head, the others to any member
    homes = {p: f"{rnd.getrandbits(128):032x}" for p in people[::3]}
    head = {p: people[(i // 3) * 3] for i, p in enumerate(people)}
    household = {p: homes[head[p]] for p in people}
    village_funded = {p: i % 9 == 0 for i, p in enumerate(people)}  # a third of the heads
    seen: list[tuple[str, str, str, int]] = []
    used: set[tuple[str, str, str]] = set()
    out = []
    base_us = 1_767_225_600_000_000  # 2026-01-01 UTC
    for i in range(n):
        if seen and rnd.random() < duplicate_rate:
            token, programme, period, amount = seen[rnd.randrange(len(seen))]
        else:
            while True:  # one payment per person, programme and period, except the planted duplicates
                token = people[rnd.randrange(tokens)]
                programme, amount = PROGRAMMES[rnd.randrange(len(PROGRAMMES))]
                if programme in PER_HOUSEHOLD:
                    token = head[token]
                    # village-fund BLT_DD goes to households outside PKH and BPNT, as the rule says
                    village_fund = village_funded[token]
                    if (programme == "BLT_DD") != village_fund:
                        programme, amount = (("BLT_DD", 300_000) if village_fund
                                             else PROGRAMMES[rnd.randrange(2)])
                period = PERIODS[rnd.randrange(len(PERIODS))]
                if (token, programme, period) not in used:
                    break
            used.add((token, programme, period))
            seen.append((token, programme, period, amount))
        d = Disbursement(
            event_id="", source_system="BENCH", source_ref=f"R{i:09d}", source_type="APBN", agency_code="KEMENSOS",
            programme_code=programme, person_token=token, identity_kind="NIK", kk_token=household[token], amount_idr=amount,
            kind="CASH", period=period, disbursed_at_us=base_us + i * 1_000_000, disbursed_at_offset_min=420,
            channel="BANK_TRANSFER", region_code="1871011001", funding_account="APBN-2026-KEMENSOS",
            recorded_at_us=base_us + i * 1_000_000,
        )
        values = d.content_values()
        # as intake makes them: event id and field digests from the content
        out.append(replace(d, event_id=make_event_id(d.source_system, d.source_ref, content_digest(values)),
                           field_digests=field_digests(values)))
    return out


async def produce(bootstrap: str, topic: str, events: list[Disbursement]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, codec.encode_disbursement(d), key=d.person_token.encode()) for d in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def counter_total(url: str, metric: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in body.splitlines():
        if line.startswith(metric) and not line.startswith("#"):
            name = line.rsplit(" ", 1)[0]
            if name == metric or ("{" not in metric and name.startswith(metric + "{")):
                total += float(line.rsplit(" ", 1)[1])
    return total


def time_processes(commands: list[tuple[list[str], dict, str]], metric: str, target: int, timeout_s: float,
                   log_path: Path, end_metric: str | None = None) -> dict:
    """Run workers (args, env, metrics url) until their counters add up to `target` (or the
    timeout); the rate counts from the first counted event. With `end_metric`, the run ends only
    once that counter too reaches `target` (the worker's household stage, after its person stage)."""
    procs = []
    with open(log_path, "ab") as log:
        for args, env, _ in commands:
            procs.append(subprocess.Popen([sys.executable, "-m", "aidledger.cli", *args], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    try:
        deadline = time.monotonic() + timeout_s
        first = None
        count = 0.0
        while time.monotonic() < deadline:
            count = sum(counter_total(url, metric) for _, _, url in commands)
            now = time.perf_counter()
            if count > 0 and first is None:
                first = (now, count)
            if count >= target and (end_metric is None
                                    or sum(counter_total(url, end_metric) for _, _, url in commands) >= target):
                break
            for proc, (args, _, _) in zip(procs, commands):
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {proc.returncode}; see {log_path}")
            # every scrape costs the worker a few percent of a core at 50 a second: poll slowly
            # until the end is near, then finely, so the end time is still read to ~10 ms
            time.sleep(0.01 if count >= 0.95 * target else 0.1)
        end = time.perf_counter()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    if first is None or count <= first[1]:
        return {"events": int(count), "events_per_s": 0.0, "seconds": 0.0}
    return {"events": int(count), "seconds": end - first[0], "events_per_s": (count - first[1]) / (end - first[0])}


def detection_stage(events: int = 200_000, tokens: int = 50_000, partitions: int = 8, seed: int = 7,
                    baseline_events: int = 20_000) -> dict:
    from aidledger.bench import raw_ceiling_apart

    with tempfile.TemporaryDirectory(prefix="aidledger-stage-") as tmp:
        home = Path(tmp)
        broker = embedded.start_broker(home, embedded.free_port())
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIDLEDGER_")}
            # the workers' data under the bench's own home: the default, .aidledger, is relative
            # to wherever the bench was started and may not exist there
            env.update(AIDLEDGER_KAFKA_BOOTSTRAP=broker.endpoint, AIDLEDGER_PARTITIONS=str(partitions),
                       AIDLEDGER_LOG_LEVEL="WARNING", AIDLEDGER_HOME=str(home))
            stack = StackSettings.from_env(env)
            specs = declared_topics(stack)
            kafka.create_topics(broker.endpoint, list(specs.values()))
            data = make_events(events, tokens, seed)
            t = time.perf_counter()
            asyncio.run(produce(broker.endpoint, specs["ledger"].name, data))
            produce_s = time.perf_counter() - t
            ceiling = raw_ceiling_apart(broker.endpoint, specs["ledger"].name, partitions)
            workers = {}
            for n in (1, 2):
                commands = []
                group_env = dict(env, AIDLEDGER_CONSUMER_GROUP=f"bench-{n}-workers")
                group_specs = declared_topics(StackSettings.from_env(group_env))
                kafka.create_topics(broker.endpoint, [group_specs[r] for r in ("state", "households", "household_state")])
                for i in range(n):
                    port = embedded.free_port()
                    commands.append((["worker", "--index", str(i)],
                                     dict(group_env, AIDLEDGER_WORKER_METRICS_PORT=str(port - i)),
                                     f"http://127.0.0.1:{port}/metrics"))
                # accepted events only: after a rebalance a worker re-reads some events and answers
                # `exists`, which must not count as throughput; and the clock stops only when the
                # household stage has taken every posting too (all rules, both stages)
                workers[n] = time_processes(commands, 'aidledger_worker_events_total{outcome="accepted"}', events,
                                            600, home / f"worker-{n}.log",
                                            end_metric="aidledger_worker_household_postings_total")
            worker = workers[1]
            bport = embedded.free_port()
            baseline = time_processes([(["baseline", "--metrics-port", str(bport)], env, f"http://127.0.0.1:{bport}/metrics")],
                                      "aidledger_baseline_events_total", baseline_events, 300, home / "baseline.log")
        finally:
            broker.stop()
    return {
        "events": events, "tokens": tokens, "partitions": partitions,
        "produce_events_per_s": events / produce_s,
        "raw_ceiling_events_per_s": ceiling["events_per_s"],
        "raw_ceiling_events": ceiling["events"],
        "worker_events_per_s": worker["events_per_s"],
        "worker_seconds": worker["seconds"],
        "two_workers_events_per_s": workers[2]["events_per_s"],
        "baseline_events_per_s": baseline["events_per_s"],
        "baseline_events_timed": baseline["events"],
        "worker_over_raw_ceiling": worker["events_per_s"] / ceiling["events_per_s"],
        "worker_over_baseline": worker["events_per_s"] / baseline["events_per_s"] if baseline["events_per_s"] else None,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(detection_stage(), indent=2))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recovery_stage(tokens: int = 1_000_000, payments_per_token: int = 2, partitions: int = 8, seed: int = 11) -> dict:
    """Rebuild a worker's state for `tokens` people from a changelog holding
    tokens x payments_per_token accepted events; time it and measure the state's memory."""
    import gc

    from streams.state import LedgerState, delta_records

    rnd = random.Random(seed)
    people = [f"{rnd.getrandbits(128):032x}" for _ in range(tokens)]
    template = make_events(1, 1, seed)[0]
    with tempfile.TemporaryDirectory(prefix="aidledger-recovery-") as tmp:
        broker = embedded.start_broker(Path(tmp), embedded.free_port())
        try:
            env = {"AIDLEDGER_KAFKA_BOOTSTRAP": broker.endpoint, "AIDLEDGER_PARTITIONS": str(partitions)}
            specs = declared_topics(StackSettings.from_env(env))
            kafka.create_topics(broker.endpoint, [specs["state"]])
            encoder = codec.codec(codec.STATE_DELTA)

            async def fill() -> int:
                producer = AIOKafkaProducer(bootstrap_servers=broker.endpoint, acks="all", linger_ms=20,
                                            max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024)
                await producer.start()
                try:
                    n = 0
                    pending: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
                    futures = []
                    for i in range(tokens * payments_per_token):
                        token = people[i % tokens]
                        programme, amount = PROGRAMMES[i % len(PROGRAMMES)]
                        d = replace(template, person_token=token, source_ref=f"S{i:010d}", event_id=str(uuid.UUID(int=i)),
                                    programme_code=programme, amount_idr=amount, period=PERIODS[(i // tokens) % 12])
                        p = int(token[:8], 16) % partitions
                        pending[p].append(codec.encode_disbursement(d))
                        if len(pending[p]) >= 4000:
                            for rec in delta_records(p, 0, pending[p]):
                                futures.append(await producer.send(specs["state"].name, encoder.encode(rec), partition=p))
                            n += len(pending[p])
                            pending[p] = []
                    for p, values in pending.items():
                        for rec in delta_records(p, 0, values):
                            futures.append(await producer.send(specs["state"].name, encoder.encode(rec), partition=p))
                        n += len(values)
                    await asyncio.gather(*futures)
                    return n
                finally:
                    await producer.stop()

            produced = asyncio.run(fill())
            gc.collect()
            before = _rss_bytes()
            state = LedgerState(broker.endpoint, specs["state"].name)

            async def load() -> float:
                started = time.perf_counter()
                await state.ensure_loaded(range(partitions))
                return time.perf_counter() - started

            seconds = asyncio.run(load())
            gc.collect()
            after = _rss_bytes()
            persons = state.persons()
            # the state's own objects, counted exactly (an RSS difference depends on what the
            # process freed before, and under-counted when earlier rounds left reusable memory)
            owned = sum(part.nbytes() for part in state.partitions.values())
        finally:
            broker.stop()
    return {
        "tokens": persons,
        "payments": produced,
        "rebuild_seconds": seconds,
        "rebuild_payments_per_s": produced / seconds,
        "state_bytes": owned,
        "state_mib_per_million_tokens": owned / 2**20 / (persons / 1e6),
        "state_bytes_per_payment": owned / produced,
        "rss_growth_bytes": after - before,
    }
