"""kill -9 of the broker and of the gateway right after the gateway answered 202: every record
answered 202 reaches the ledger topic and the projection exactly once.

The embedded broker keeps its log in memory, so the restarted broker starts empty: the stack
notices the dead broker, starts a new one, and the relay finds the log behind what it had
published and publishes the outbox again from the start."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import psycopg
import pytest
from conftest import changelog_state, read_topic, stack_environ, wait_until
from gateway_client import batch, call, nik, record

from infra.stack import Stack
from schemas import codec

pytestmark = pytest.mark.integration

SINGLES = 160  # in 4 threads
BATCHES = 3
BATCH_RECORDS = 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-crash")
    env = stack_environ(home) | {"AIDLEDGER_GATEWAY_RATE_PER_S": "1000", "AIDLEDGER_GATEWAY_BURST": "1000"}
    s = Stack(home, env)
    s.start()
    try:
        wait_until(lambda: _answers(s.gateway_url()), 60, "the gateway to answer")
        yield s
    finally:
        s.stop()


def _answers(base: str) -> bool:
    try:
        return call(base, "GET", "/healthz", timeout=2).status == 200
    except OSError:
        return False


def _key(stack) -> str:
    from conftest import Cli
    from gateway_client import issued_key

    return issued_key(Cli(stack).run("agencies", "add", "DINSOS-LPG", "--programmes", "PKH,BPNT",
                                     "--source-systems", "SIKS-LPG").stdout)


def _single(i: int) -> dict:
    # a few people paid several times, so the stream has per-person state to rebuild
    return record(source_ref=f"CRASH-S-{i:05d}", nik=nik(1 + i % 60), amount_idr=200_000 + i,
                  programme_code="BPNT" if i % 2 else "PKH", period=f"2026-0{1 + i % 9}")


def _batch_records(b: int) -> list[dict]:
    return [record(source_ref=f"CRASH-B{b}-{i:04d}", nik=nik(1000 + b * BATCH_RECORDS + i), amount_idr=300_000 + i)
            for i in range(BATCH_RECORDS)]


def test_records_answered_202_survive_kill_9_of_broker_and_gateway(stack):
    base = stack.gateway_url()
    key = _key(stack)
    answered: dict[str, int] = {}  # event id -> amount, for every 202
    lock = threading.Lock()
    failures: list = []

    def send_singles(part: int) -> None:
        for i in range(part, SINGLES, 4):
            body = _single(i)
            answer = call(base, "POST", "/v1/disbursements", body, key=key)
            if answer.status != 202:
                failures.append((answer.status, answer.body))
                continue
            with lock:
                answered[answer.body["event_id"]] = body["amount_idr"]

    threads = [threading.Thread(target=send_singles, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()

    def send_batch(b: int) -> None:
        records = _batch_records(b)
        answer = call(base, "POST", "/v1/batches", batch(records), key=key)
        assert answer.status == 202, answer.body
        with lock:
            for r, out in zip(records, answer.body["records"]):
                answered[out["event_id"]] = r["amount_idr"]

    for b in range(BATCHES - 1):
        send_batch(b)
    for t in threads:
        t.join()
    # The last batch is answered while the relay is frozen: its records are then only in
    # PostgreSQL when the broker dies.
    relay = stack.children["relay"].process
    os.kill(relay.pid, signal.SIGSTOP)
    send_batch(BATCHES - 1)
    # right after the last answer: no goodbye for the broker or the gateway
    old_broker = stack.broker.pid
    stack.broker.kill()
    gateway = stack.children["gateway"]
    gateway.process.kill()
    gateway.process.wait(10)
    assert not failures, failures[:3]
    assert len(answered) == SINGLES + BATCHES * BATCH_RECORDS

    with psycopg.connect(stack.database_url) as conn:
        published_before, unpublished = conn.execute(
            "SELECT (SELECT coalesce(sum(next_offset), 0) FROM ledger.relay_offsets WHERE topic = %s),"
            " (SELECT count(*) FROM ledger.outbox WHERE seq > (SELECT last_seq FROM ledger.relay_cursor))",
            (stack.endpoints()["topics"]["ledger"],)).fetchone()
    assert unpublished >= BATCH_RECORDS

    # the supervisor notices, starts a new broker and restarts what talks to it, and the gateway
    wait_until(lambda: stack.broker_restarts == 1 and _answers(base), 120, "the broker and gateway to be back",
               on_poll=stack.check_children)
    assert stack.broker.pid != old_broker
    stack.wait_caught_up(300, poll_s=0.5)

    # the ledger topic: every record answered 202 exactly once
    ledger = stack.endpoints()["topics"]["ledger"]
    on_log = Counter(e.event_id for e in codec.decode_ledger_values(
        r.value for r in read_topic(stack.bootstrap, ledger, stack.stack.partitions))
        if not isinstance(e, codec.RulebookActivation))
    assert {e: on_log[e] for e in answered if on_log[e] != 1} == {}
    assert sum(on_log.values()) == len(answered)

    # the projection: every one exactly once, accepted, the totals their sum
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT event_id::text, accepted, amount_idr FROM ledger.events").fetchall()
        totals = conn.execute("SELECT coalesce(sum(amount_idr_total), 0), coalesce(sum(payments), 0)"
                              " FROM ledger.person_totals").fetchone()
        relay_lost = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM ledger.relay_offsets").fetchone()[0]
    assert Counter(r[0] for r in rows) == Counter(list(answered))
    assert all(accepted for _, accepted, _ in rows)
    assert totals == (sum(answered.values()), len(answered))
    # the stream's own state, rebuilt from the re-published log: every key once
    keys, _ = changelog_state(stack)
    assert len(keys) == len(answered) and max(keys.values()) == 1

    relay_log = (stack.home / "logs" / "relay.log").read_text()
    if published_before:
        assert "publishing the outbox again from the start" in relay_log
    assert relay_lost >= len(answered)
    print(f"\n{len(answered)} records answered 202; at kill -9 the lost log held {published_before} ledger records"
          f" (with the rulebook activations) and {unpublished} were in the outbox only; after recovery"
          f" {sum(on_log.values())} on the ledger topic, {len(rows)} projected")

    # and the gateway goes on accepting
    after = call(base, "POST", "/v1/disbursements", _single(SINGLES + 1), key=key)
    assert after.status == 202
