"""Integration tests for infra.embedded: real Tansu broker and real PostgreSQL, no mocks.

Every server is started through a fixture whose finalizer kills it, so a failing
test never leaves a process behind.  Waits poll against a deadline; no bare sleeps.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from infra.embedded import (
    EmbeddedServerError,
    ManagedServer,
    free_port,
    start_broker,
    start_postgres,
)

pytestmark = pytest.mark.integration

GONE_DEADLINE_S = 10.0


# ---------------------------------------------------------------- helpers


def _running(pid: int) -> bool:
    """A pid counts as running unless it is gone or a zombie (already dead, awaiting reaping)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                kids.append(int(entry))
    return kids


def _wait_all_gone(pids: list[int], deadline_s: float = GONE_DEADLINE_S) -> list[int]:
    deadline = time.monotonic() + deadline_s
    alive = [p for p in pids if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


@pytest.fixture
def servers():
    """Collects started servers; kills whatever is still alive at teardown."""
    started: list[ManagedServer] = []
    yield started
    for server in started:
        try:
            server.kill()
        except Exception:  # pragma: no cover - best effort cleanup
            pass
    assert not _wait_all_gone([s.pid for s in started]), "server process left behind"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def broker(home: Path, servers: list[ManagedServer]) -> ManagedServer:
    server = start_broker(home, free_port())
    servers.append(server)
    return server


def _pg(home: Path, port: int, servers: list[ManagedServer]) -> ManagedServer:
    server = start_postgres(home, port)
    servers.append(server)
    return server


# ---------------------------------------------------------------- broker


def test_broker_roundtrip_one_record(broker: ManagedServer) -> None:
    assert broker.alive()
    assert broker.endpoint.startswith("127.0.0.1:")
    topic = f"ledger-{uuid.uuid4().hex[:8]}"

    admin = KafkaAdminClient(bootstrap_servers=broker.endpoint, request_timeout_ms=5000)
    try:
        admin.create_topics(
            [NewTopic(topic, 3, 1, topic_configs={"retention.ms": "-1", "retention.bytes": "-1"})]
        )
        assert topic in admin.list_topics()
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=broker.endpoint, acks="all", request_timeout_ms=5000)
    try:
        meta = producer.send(topic, key=b"case-1", value=b"disbursed:100", partition=1).get(timeout=10)
    finally:
        producer.close()
    assert meta.partition == 1

    consumer = KafkaConsumer(
        bootstrap_servers=broker.endpoint,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=5000,
    )
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1, 2}
        tp = TopicPartition(topic, 1)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = []
        deadline = time.monotonic() + 10
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    assert [(r.key, r.value, r.offset) for r in records] == [(b"case-1", b"disbursed:100", meta.offset)]

    broker.stop()
    assert not broker.alive()
    broker.stop()  # idempotent


def test_broker_kill_leaves_no_process(broker: ManagedServer) -> None:
    pid = broker.pid
    assert _running(pid)
    broker.kill()
    assert not _wait_all_gone([pid]), f"broker pid {pid} still running after kill()"
    assert not broker.alive()
    broker.kill()  # idempotent
    broker.stop()


def test_broker_port_in_use_fails_fast(home: Path, servers: list[ManagedServer]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(EmbeddedServerError) as excinfo:
            servers.append(start_broker(home, port, ready_timeout_s=20))
        elapsed = time.monotonic() - t0
    message = str(excinfo.value)
    assert elapsed < 5, f"took {elapsed:.1f}s to notice the port was taken"
    assert "broker.log" in message
    assert "in use" in message.lower()


def test_broker_port_held_by_another_broker_is_not_mistaken_for_ours(
    broker: ManagedServer, tmp_path: Path, servers: list[ManagedServer]
) -> None:
    # The first broker answers ApiVersions on the port; the second must still fail.
    with pytest.raises(EmbeddedServerError, match="exited during start-up"):
        servers.append(start_broker(tmp_path / "other", broker.port, ready_timeout_s=20))
    assert broker.alive()


# ---------------------------------------------------------------- postgres


def test_postgres_restart_keeps_data(home: Path, servers: list[ManagedServer]) -> None:
    port = free_port()
    pg = _pg(home, port, servers)
    assert pg.endpoint == f"postgresql://postgres@127.0.0.1:{port}/aidledger"
    assert (home / "postgres" / "data" / "PG_VERSION").exists()
    with psycopg.connect(pg.endpoint, autocommit=True) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO ledger VALUES (1, 'first disbursement')")

    pg.stop()
    assert not pg.alive()
    pg.stop()  # idempotent

    pg2 = _pg(home, port, servers)
    assert pg2.pid != pg.pid
    with psycopg.connect(pg2.endpoint) as conn:
        assert conn.execute("SELECT id, note FROM ledger").fetchall() == [(1, "first disbursement")]
    pg2.stop()


def test_postgres_kill_leaves_no_process_and_committed_data_survives(
    home: Path, servers: list[ManagedServer]
) -> None:
    pg = _pg(home, free_port(), servers)
    with psycopg.connect(pg.endpoint, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        conn.execute("INSERT INTO ledger VALUES (42)")
    idle = psycopg.connect(pg.endpoint)  # a live backend too
    family = [pg.pid, *_children(pg.pid)]
    assert len(family) > 3  # postmaster + checkpointer, walwriter, backend, ...

    pg.kill()
    survivors = _wait_all_gone(family)
    idle.close()
    assert not survivors, f"postgres processes left after kill(): {survivors}"
    assert not pg.alive()

    # crash recovery on the same home (new port, same data dir)
    pg2 = _pg(home, free_port(), servers)
    with psycopg.connect(pg2.endpoint) as conn:
        assert conn.execute("SELECT id FROM ledger").fetchall() == [(42,)]
    pg2.stop()


def test_postgres_running_postmaster_is_reattached_or_refused(
    home: Path, servers: list[ManagedServer]
) -> None:
    port = free_port()
    pg = _pg(home, port, servers)
    again = start_postgres(home, port)  # same data dir, same port: attach
    assert again.process is None and again.pid == pg.pid
    assert again.alive()
    with pytest.raises(EmbeddedServerError, match="still running"):
        start_postgres(home, free_port())  # same data dir, other port: refuse
    again.stop()
    assert not pg.alive()


def test_postgres_port_in_use_fails_fast(home: Path, servers: list[ManagedServer]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(EmbeddedServerError) as excinfo:
            servers.append(start_postgres(home, port, ready_timeout_s=20))
        elapsed = time.monotonic() - t0
    assert elapsed < 10, f"took {elapsed:.1f}s to notice the port was taken"
    assert "postgres.log" in str(excinfo.value)
    assert "in use" in str(excinfo.value).lower()


def test_postgres_deep_home_uses_short_socket_dir(tmp_path: Path, servers: list[ManagedServer]) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "home"
    pg = _pg(deep, free_port(), servers)
    with psycopg.connect(pg.endpoint) as conn:
        sock_dir = Path(conn.execute("SHOW unix_socket_directories").fetchone()[0])
    try:
        assert sock_dir.name.startswith("aidledger-pg-") and sock_dir.parent == Path("/tmp")
        assert len(f"{sock_dir}/.s.PGSQL.{pg.port}") <= 107
    finally:
        pg.stop()
        sock_dir.rmdir()  # the socket itself is removed by a clean shutdown
