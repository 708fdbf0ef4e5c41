"""Faults on the real stack (embedded broker, PostgreSQL, two ledger workers in one consumer group,
relay, projector, gateway), each judged by one oracle (`oracle.check`) against the records the
doors acknowledged: every one in the archive exactly once, stream totals = projection totals =
totals recomputed from the ledger topic, the hash chain verifies, lag returns to zero.

The tests share one stack and one known set, in this order:
1. kill -9 of a worker, more than 20 times at seeded random moments, during a run of 100,000
   events; some kills deliberately right after the other worker rejoined (mid-rebalance);
2. a rolling restart (SIGTERM, leave, rejoin) of both workers under steady ingest;
3. the workers' local state deleted: rebuilt from the changelog, then proven by a replay of the
   whole log that changes nothing;
4. kill -9 of PostgreSQL while the projector writes, restarted by the supervisor;
5. kill -9 of the broker under load from the CLI and the gateway; the supervisor starts a new one
   and the relay re-publishes the outbox.

Figures go to the test output and, when AIDLEDGER_TEST_FAULT_RESULTS names a file, into it as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import Cli, assigned, gauge, settled, stack_environ, wait_until, workers
from gateway_client import batch, call, issued_key, nik, record
from oracle import Accepted, check

from connectors import synthetic
from infra.stack import Stack

pytestmark = pytest.mark.integration

KILLS = 22  # at least 20 must land
SETTLED_KILLS = (1, 9, 17)  # these wait for a settled group; the rest come faster than it settles
EVENTS = 100_000
SEED = 20260401
RESULTS: dict = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults")
    env = stack_environ(home) | {"AIDLEDGER_GATEWAY_RATE_PER_S": "1000", "AIDLEDGER_GATEWAY_BURST": "1000"}
    s = Stack(home, env, workers=2)
    s.start()
    try:
        wait_until(lambda: settled(s), 120, "both workers to own a share of the partitions",
                   on_poll=s.check_children)
        yield s
    finally:
        s.stop()
        out = os.environ.get("AIDLEDGER_TEST_FAULT_RESULTS")
        if out and RESULTS:
            Path(out).write_text(json.dumps(RESULTS, indent=2) + "\n")


@pytest.fixture(scope="module")
def accepted() -> Accepted:
    return Accepted()


def tagged(dataset, tag: str):
    """The dataset with every source reference prefixed, so that datasets never share keys."""
    records = [dict(r, source_ref=f"{tag}-{r['source_ref']}") for r in dataset.records]
    key = [dataclasses.replace(c, source_refs=tuple((s, f"{tag}-{r}") for s, r in c.source_refs))
           for c in dataset.answer_key]
    return synthetic.Dataset(records, key)


def write_chunks(dataset, directory: Path, chunks: int) -> list[Path]:
    size = -(-len(dataset.records) // chunks)
    paths = []
    for i in range(chunks):
        path = directory / f"chunk-{i:02d}.jsonl"
        synthetic.write_jsonl(path, dataset.records[i * size:(i + 1) * size])
        paths.append(path)
    return paths


def ingest(stack, path: Path) -> dict:
    return json.loads(Cli(stack).run("ingest", str(path), "--json").stdout)


class Ingester(threading.Thread):
    """Ingests files one after another through the CLI, as an agency's uploads would arrive."""

    def __init__(self, stack, paths: list[Path], every_s: float = 0.0):
        super().__init__(daemon=True)
        self.stack, self.paths, self.every_s, self.reports, self.error = stack, list(paths), every_s, [], None
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        try:
            for i, path in enumerate(self.paths):
                # upload i starts no sooner than i * every_s after the first
                if self.stop.wait(max(0.0, started + i * self.every_s - time.monotonic())):
                    return
                self.reports.append(ingest(self.stack, path))
        except BaseException as err:  # surfaced by the test after join
            self.error = err


def pause(seconds: float, stack) -> None:
    """Supervise for `seconds` (restarting what died), as `aidledger up` would meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stack.check_children()
        time.sleep(0.05)


def kill_9(child) -> int:
    old = child.process.pid
    # a deliberate kill is not a crash loop: the supervisor restarts it after its shortest delay
    child.backoff_s = 0.0
    child.process.kill()
    child.process.wait(10)
    return old


# --------------------------------------------------------------------------------------- 1.

def test_kill_9_of_workers_twenty_times_during_100k_events(stack, accepted, tmp_path):
    dataset = tagged(synthetic.generate(EVENTS, seed=SEED, months=4), "K")
    must_accept = accepted.add_dataset(dataset)
    paths = write_chunks(dataset, tmp_path, 10)
    rng = random.Random(SEED)
    ingester = Ingester(stack, paths, every_s=5.0)  # uploads spread over the kills
    restarts_before = sum(w.restarts for w in workers(stack))
    started = time.monotonic()
    ingester.start()
    kills: list[dict] = []
    for k in range(KILLS):
        if k in SETTLED_KILLS:
            # into a group at rest: both workers own their share, nothing is moving
            wait_until(lambda: settled(stack), 120, "the group to settle", poll_s=0.05, on_poll=stack.check_children)
            pause(rng.uniform(0.0, 2.0), stack)
            victim = rng.choice(workers(stack))
        elif k % 4 == 3:
            # right after a worker came back: kill the other one while the group takes the
            # newcomer in (its metrics answer once it has started, before it has partitions)
            newest = max(workers(stack), key=lambda w: w.started_at)
            wait_until(lambda: newest.process.poll() is None and gauge(
                stack.endpoints()["metrics"][newest.name], "aidledger_worker_assigned_partitions") == 0
                and _serving(stack, newest), 60, f"{newest.name} to be back", poll_s=0.05,
                on_poll=stack.check_children)
            pause(rng.uniform(0.0, 1.0), stack)
            victim = next(w for w in workers(stack) if w is not newest)
        else:
            pause(rng.uniform(0.3, 3.5), stack)
            alive = wait_until(lambda: [w for w in workers(stack) if w.process.poll() is None], 60,
                               "a worker to be running", poll_s=0.05, on_poll=stack.check_children)
            victim = rng.choice(alive)
        if victim.process.poll() is not None:
            wait_until(lambda: victim.process.poll() is None, 60, f"{victim.name} to be back",
                       poll_s=0.05, on_poll=stack.check_children)
        mid = not settled(stack)
        kills.append({"at_s": round(time.monotonic() - started, 1), "worker": victim.name, "mid_rebalance": mid,
                      "pid": kill_9(victim)})
    last_kill = time.monotonic()
    wait_until(lambda: not ingester.is_alive(), 300, "the ingest to finish", on_poll=stack.check_children)
    assert ingester.error is None, ingester.error
    assert sum(r["accepted"] for r in ingester.reports) == must_accept

    recover_s = stack.wait_caught_up(300, poll_s=0.5)
    figures = check(stack, accepted)
    restarts = sum(w.restarts for w in workers(stack)) - restarts_before
    mid = sum(1 for k in kills if k["mid_rebalance"])
    RESULTS["worker_kill_9"] = {
        "events": len(dataset.records), "accepted": must_accept, "kills": len(kills), "restarts": restarts,
        "kills_mid_rebalance": mid, "run_s": round(last_kill - started, 1),
        "caught_up_after_last_kill_s": round(recover_s, 1), "kill_log": kills, **figures}
    print(f"\n{len(kills)} kill -9 ({mid} mid-rebalance) over {last_kill - started:.0f}s of {len(dataset.records):,}"
          f" events; caught up {recover_s:.1f}s after the last kill; oracle: {figures}")
    assert len(kills) >= 20 and restarts >= len(kills)
    assert mid >= 3 and len(kills) - mid >= len(SETTLED_KILLS), kills


def _serving(stack, child) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(stack.endpoints()["metrics"][child.name], timeout=2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------- 2.

def test_rolling_restart_under_load(stack, accepted, tmp_path):
    dataset = tagged(synthetic.generate(30_000, seed=SEED + 2, first_period="2026-05", months=2), "R")
    paths = write_chunks(dataset, tmp_path, 60)
    ingester = Ingester(stack, paths, every_s=0.75)  # a steady 500 records every 0.75 s, until stopped
    ingester.start()
    wait_until(lambda: ingester.reports, 120, "the first upload", on_poll=stack.check_children)
    steps = []
    for child in workers(stack):
        t0 = time.monotonic()
        stack.stop_child(child)  # SIGTERM: the worker commits, leaves the group, exits
        code = child.process.returncode
        wait_until(lambda: sum(n for w, n in zip(workers(stack), assigned(stack)) if w is not child)
                   == stack.stack.partitions, 90, f"the others to take over from {child.name}")
        handed = time.monotonic() - t0
        child.backoff_s = 0.0
        wait_until(lambda: settled(stack), 120, f"{child.name} to rejoin", on_poll=stack.check_children)
        steps.append({"worker": child.name, "exit_code": code, "handover_s": round(handed, 1),
                      "back_s": round(time.monotonic() - t0, 1)})
        assert code == 0, f"{child.name} exited {code} on SIGTERM"
    assert ingester.is_alive(), "the load ended before the restarts did; make the upload longer"
    ingester.stop.set()
    ingester.join(300)
    assert ingester.error is None, ingester.error
    sent = synthetic.Dataset([json.loads(line) for p in paths[:len(ingester.reports)]
                              for line in p.read_text().splitlines()], dataset.answer_key)
    assert sum(r["accepted"] for r in ingester.reports) == accepted.add_dataset(sent)
    figures = check(stack, accepted)
    RESULTS["rolling_restart"] = {"uploads": len(ingester.reports), "steps": steps, **figures}
    print(f"\nrolling restart under {len(ingester.reports)} uploads: {steps}; oracle: {figures}")


# --------------------------------------------------------------------------------------- 3.

def test_worker_state_deleted_is_rebuilt_from_the_changelog(stack, accepted):
    metrics = stack.endpoints()["metrics"]

    def persons() -> float:
        return sum(gauge(metrics[w.name], "aidledger_worker_state_persons") for w in workers(stack))

    held = persons()
    assert held > 0
    for child in workers(stack):
        stack.stop_child(child)
    data = stack.home / "worker-data"
    assert data.is_dir(), "the workers keep their data directory under the stack's home"
    shutil.rmtree(data)
    logs = {w.name: (stack.home / "logs" / f"{w.name}.log").stat().st_size for w in workers(stack)}
    t0 = time.monotonic()
    for child in workers(stack):
        child.backoff_s = 0.0
    wait_until(lambda: settled(stack), 120, "both workers back", poll_s=0.1, on_poll=stack.check_children)
    joined_s = time.monotonic() - t0
    assert persons() == 0  # nothing survived: a partition's state is rebuilt when its first batch comes

    # The entire ledger log once more, as a relay replay would bring it: its first batch on each
    # partition rebuilds the state from the changelog, and then every record must be recognised
    # and nothing counted again.
    exists_before = _exists(stack)
    with psycopg.connect(stack.database_url) as conn:
        replay = conn.execute("SELECT topic, key, value FROM ledger.outbox WHERE topic = %s ORDER BY seq",
                              (stack.endpoints()["topics"]["ledger"],)).fetchall()
    t1 = time.monotonic()
    _republish(stack, replay)
    wait_until(lambda: persons() == held, 120, "the workers to rebuild every person", poll_s=0.1,
               on_poll=stack.check_children)
    whole_s = time.monotonic() - t1
    rebuilt = []
    for name, offset in logs.items():
        with open(stack.home / "logs" / f"{name}.log", "rb") as f:
            f.seek(offset)
            rebuilt += [(int(p), int(n), int(d), float(s)) for p, n, d, s in re.findall(
                r"state of partition (\d+) rebuilt: (\d+) persons from (\d+) deltas in ([\d.]+)s", f.read().decode())]
    assert sorted(p for p, _, _, _ in rebuilt) == list(range(stack.stack.partitions))
    assert sum(n for _, n, _, _ in rebuilt) == held
    figures = check(stack, accepted)
    recognised = _exists(stack) - exists_before
    assert recognised >= len(replay) - stack.stack.partitions * 2  # all but the rulebook activations
    RESULTS["state_deleted"] = {
        "persons": int(held), "changelog_records": sum(d for _, _, d, _ in rebuilt), "rejoin_s": round(joined_s, 1),
        "partition_rebuild_s": {p: s for p, _, _, s in sorted(rebuilt)},
        "replay_to_state_whole_s": round(whole_s, 1), "replayed": len(replay), "recognised": int(recognised),
        **figures}
    print(f"\nstate deleted: both workers back in {joined_s:.1f}s; {int(held):,} persons rebuilt from"
          f" {sum(d for _, _, d, _ in rebuilt)} changelog records, per partition"
          f" {[s for *_, s in sorted(rebuilt)]}s; state whole {whole_s:.1f}s after the replay began;"
          f" {len(replay):,} replayed, {int(recognised):,} recognised; oracle: {figures}")


def _exists(stack) -> float:
    import urllib.request

    total = 0.0
    for w in workers(stack):
        with urllib.request.urlopen(stack.endpoints()["metrics"][w.name], timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith('aidledger_worker_events_total{outcome="exists'):
                    total += float(line.split()[-1])
    return total


def _republish(stack, rows) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def send():
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(t, bytes(v), key=bytes(k)) for t, k, v in rows])
        finally:
            await producer.stop()

    asyncio.run(send())


# --------------------------------------------------------------------------------------- 4.

def _projected(stack) -> int:
    ledger = stack.endpoints()["topics"]["ledger"]
    try:
        with psycopg.connect(stack.database_url, connect_timeout=2) as conn:
            return conn.execute("SELECT coalesce(sum(next_offset), 0)::bigint FROM ledger.tracking WHERE topic = %s",
                                (ledger,)).fetchone()[0]
    except psycopg.OperationalError:
        return -1


def test_postgres_kill_9_during_projection(stack, accepted, tmp_path):
    dataset = tagged(synthetic.generate(40_000, seed=SEED + 4, first_period="2026-07", months=2), "P")
    path = tmp_path / "p.jsonl"
    synthetic.write_jsonl(path, dataset.records)
    before = _projected(stack)
    ingester = Ingester(stack, [path])
    ingester.start()
    # the projector has written part of the new records, and more are waiting for it
    wait_until(lambda: _projected(stack) > before + 2000, 120, "the projector to be writing", poll_s=0.02)
    projected_at_kill = _projected(stack)
    old = stack.postgres.pid
    t0 = time.monotonic()
    stack.postgres.kill()
    wait_until(lambda: stack.postgres_restarts == 1 and _projected(stack) >= 0, 120, "PostgreSQL to be back",
               on_poll=stack.check_children)
    back_s = time.monotonic() - t0
    assert stack.postgres.pid != old
    ingester.join(300)
    # the upload may have died with its connection: the agency sends the file again, and what
    # intake had committed is recognised as already recorded
    resent = ingest(stack, path)
    assert resent["accepted"] + resent["redelivered"] + resent["rejected"] == len(dataset.records)
    accepted.add_dataset(dataset)
    recover_s = stack.wait_caught_up(300, poll_s=0.5) + back_s
    figures = check(stack, accepted)
    # no gap and no duplicate in what the projector tracked: every ledger offset of an archived
    # event is unique and below the tracked offset of its partition
    with psycopg.connect(stack.database_url) as conn:
        dup = conn.execute("SELECT count(*) FROM (SELECT partition, \"offset\" FROM ledger.events"
                           " GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0]
    assert dup == 0
    RESULTS["postgres_kill_9"] = {"events": len(dataset.records), "projected_at_kill": projected_at_kill,
                                  "upload_died": ingester.error is not None, "postgres_back_s": round(back_s, 1),
                                  "caught_up_after_kill_s": round(recover_s, 1), **figures}
    print(f"\nPostgreSQL kill -9 with {projected_at_kill:,} ledger records projected: back in {back_s:.1f}s, caught up"
          f" {recover_s:.1f}s after the kill (upload died: {ingester.error is not None}); oracle: {figures}")


# --------------------------------------------------------------------------------------- 5.

GATEWAY_BATCHES = 24
BATCH = 100


def test_broker_kill_9_under_load(stack, accepted, tmp_path):
    cli = Cli(stack)
    key = issued_key(cli.run("agencies", "add", "DINSOS-LPG", "--programmes", "PKH,BPNT",
                             "--source-systems", "SIKS-LPG").stdout)
    base = stack.gateway_url()
    dataset = tagged(synthetic.generate(20_000, seed=SEED + 5, first_period="2026-09", months=2), "B")
    paths = write_chunks(dataset, tmp_path, 10)
    ingester = Ingester(stack, paths)
    answered: dict[tuple[str, str], int] = {}
    retries = []

    def send(b: int) -> None:
        records = [record(source_ref=f"G-{b:03d}-{i:03d}", nik=nik(1 + (b * BATCH + i) % 3000),
                          amount_idr=100_000 + b * BATCH + i, programme_code="BPNT" if i % 2 else "PKH",
                          period=f"2026-{1 + i % 9:02d}") for i in range(BATCH)]
        deadline = time.monotonic() + 120
        while True:  # a door that did not answer 202 is asked again: the same content is idempotent
            try:
                answer = call(base, "POST", "/v1/batches", batch(records), key=key, timeout=30)
                if answer.status == 202:
                    break
                retries.append(answer.status)
            except OSError as err:
                retries.append(type(err).__name__)
            assert time.monotonic() < deadline, retries[-5:]
            time.sleep(0.2)
        for r in records:
            answered[(r["source_system"], r["source_ref"])] = r["amount_idr"]

    def gateway_load() -> None:
        for b in range(GATEWAY_BATCHES):
            send(b)
            time.sleep(0.1)

    sender = threading.Thread(target=gateway_load, daemon=True)
    ingester.start()
    sender.start()
    wait_until(lambda: len(answered) >= 6 * BATCH and ingester.reports, 120, "load under way")
    old = stack.broker.pid
    t0 = time.monotonic()
    stack.broker.kill()
    wait_until(lambda: stack.broker_restarts == 1, 120, "the supervisor to start a new broker",
               on_poll=stack.check_children)
    assert stack.broker.pid != old
    back_s = time.monotonic() - t0
    wait_until(lambda: not (sender.is_alive() or ingester.is_alive()), 300, "the load to finish",
               on_poll=stack.check_children)
    assert ingester.error is None, ingester.error
    assert len(answered) == GATEWAY_BATCHES * BATCH
    assert sum(r["accepted"] for r in ingester.reports) == accepted.add_dataset(dataset)
    for (s, r), amount in answered.items():
        accepted.add(s, r, amount)
    recover_s = stack.wait_caught_up(600, poll_s=0.5) + back_s
    figures = check(stack, accepted)
    assert "publishing the outbox again from the start" in (stack.home / "logs" / "relay.log").read_text()
    RESULTS["broker_kill_9"] = {"cli_events": len(dataset.records), "gateway_records": len(answered),
                                "gateway_retries": len(retries), "broker_back_s": round(back_s, 1),
                                "caught_up_after_kill_s": round(recover_s, 1), **figures}
    print(f"\nbroker kill -9 under load: new broker in {back_s:.1f}s, the whole outbox re-published and decided"
          f" again, caught up {recover_s:.1f}s after the kill; gateway retries {len(retries)}; oracle: {figures}")
