"""The stack launcher and supervisor behind `aidledger up` and `aidledger demo`.

Starts (or attaches to external) Kafka and PostgreSQL, applies migrations, creates the declared
topics with explicit partition counts, then runs the relay, the projector and N ledger workers
as child processes, restarting any that dies. Endpoints are recorded in <home>/endpoints.json so
the other commands find the running stack. Owns process lifecycles, nothing about events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import psycopg

from aidcore.settings import (DashboardSettings, GatewaySettings, ProjectorSettings, RelaySettings, StackSettings,
                              WorkerSettings, local_address)
from connectors.door import group_id as door_group_id
from infra import embedded, kafka
from projections.migrate import migrate
from projections.queries import progress
from schemas.topics import declared_topics
from streams.app import group_id

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"


class StackError(RuntimeError):
    pass


def _port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def key_path(stack: StackSettings, home: Path) -> Path:
    return Path(stack.nik_token_key_file) if stack.nik_token_key_file else home / "secrets" / "nik-token.key"


def ensure_token_key(stack: StackSettings, home: Path) -> None:
    """Create the NIK token secret on first start when none is configured."""
    if stack.nik_token_key:
        return
    path = key_path(stack, home)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def token_key(stack: StackSettings, home: Path) -> bytes:
    text = stack.nik_token_key
    if not text:
        path = key_path(stack, home)
        if not path.exists():
            raise StackError(f"no NIK token key: set AIDLEDGER_NIK_TOKEN_KEY or start the stack once (`aidledger up`) to create {path}")
        text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise StackError("the NIK token key must be hex") from None
    if len(key) < 16:
        raise StackError("the NIK token key must be at least 16 bytes (32 hex characters)")
    return key


def submissions_key_path(stack: StackSettings, home: Path) -> Path:
    return Path(stack.submissions_key_file) if stack.submissions_key_file else home / "secrets" / "submissions.key"


def add_submissions_key(path: Path, private_key: bytes) -> None:
    """Put a new submissions private key first in the key file (mode 600), keeping the older ones:
    the door opens records sealed to any of them, and agencies get the first one's public key."""
    older = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    new = path.with_name(path.name + ".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_key.hex() + "\n" + older)
    os.replace(new, path)


def ensure_submissions_key(stack: StackSettings, home: Path) -> None:
    """Create the submissions key on first start when none is configured."""
    from schemas.sealing import new_private_key

    path = submissions_key_path(stack, home)
    if not stack.submissions_key and not path.exists():
        add_submissions_key(path, new_private_key())


def submissions_keys(stack: StackSettings, home: Path) -> list[bytes]:
    """The submissions private keys, the current one first."""
    from schemas.sealing import parse_key

    if stack.submissions_key:
        texts = stack.submissions_key.split(",")
    else:
        path = submissions_key_path(stack, home)
        if not path.exists():
            raise StackError(f"no submissions key: set AIDLEDGER_SUBMISSIONS_KEY(_FILE), run `aidledger keys"
                             f" submissions-keypair` or start the stack once (`aidledger up`) to create {path}")
        texts = path.read_text().split()
    try:
        keys = [parse_key(t, "submissions key") for t in texts if t.strip()]
    except ValueError as err:
        raise StackError(str(err)) from None
    if not keys:
        raise StackError("the submissions key setting holds no key")
    return keys


def seal_key_path(stack: StackSettings, home: Path) -> Path:
    return Path(stack.audit_seal_key_file) if stack.audit_seal_key_file else home / "secrets" / "audit-seal.key"


def seal_key(stack: StackSettings, home: Path, new_key: Callable[[], bytes] | None = None) -> bytes:
    """The Ed25519 private key that signs audit seals. When the file is missing and `new_key` is
    given, a key from it is written there first (mode 600), as the first seal does."""
    path = seal_key_path(stack, home)
    if not path.exists():
        if new_key is None:
            raise StackError(f"no audit seal key at {path}: the first `aidledger audit seal` creates it")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key().hex() + "\n")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise StackError(f"the audit seal key in {path} must be hex") from None
    if len(key) != 32:
        raise StackError(f"the audit seal key in {path} must be 32 bytes (64 hex characters)")
    return key


def dashboard_session_key(home: Path, key_file: str = "") -> bytes:
    """The key that signs dashboard sessions; made (mode 600) on first use when missing."""
    path = Path(key_file) if key_file else home / "secrets" / "dashboard-session.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise StackError(f"the dashboard session key in {path} must be hex") from None
    if len(key) < 16:
        raise StackError(f"the dashboard session key in {path} must be at least 16 bytes")
    return key


def _group_behind(bootstrap: str, group: str, spec) -> list[str]:
    """What a consumer group has not committed of a topic, per partition."""
    marks = asyncio.run(kafka.high_watermarks(bootstrap, spec.name, spec.partitions))
    done = kafka.committed_offsets(bootstrap, group, spec.name)
    return [f"{spec.name}[{p}] {end - done.get(p, 0)} behind" for p, end in sorted(marks.items())
            if done.get(p, 0) < end]


def lag_report(bootstrap: str, dsn: str, stack: StackSettings) -> dict:
    """Everything `wait` needs: what is still behind, per stage. Empty lists mean caught up."""
    topics = declared_topics(stack)
    ledger = topics["ledger"].name
    with psycopg.connect(dsn) as conn:
        prog = progress(conn)
    behind = {"door": [], "relay": [], "worker": [], "projector": []}
    # first the door of the submissions topic: what it takes goes on to the outbox
    behind["door"] += _group_behind(bootstrap, door_group_id(stack), topics["submissions"])
    if prog["relay_seq"] < prog["outbox_max_seq"]:
        behind["relay"].append(f"outbox {prog['outbox_max_seq'] - prog['relay_seq']} records unpublished")
    produced = {p: o for (t, p), o in prog["relay_offsets"].items() if t == ledger}
    committed = kafka.committed_offsets(bootstrap, group_id(stack), ledger)
    for p, end in sorted(produced.items()):
        if committed.get(p, 0) < end:
            behind["worker"].append(f"{ledger}[{p}] {end - committed.get(p, 0)} behind")
        if prog["tracking"].get((ledger, p), 0) < end:
            behind["projector"].append(f"{ledger}[{p}] {end - prog['tracking'].get((ledger, p), 0)} behind")
    behind["worker"] += _group_behind(bootstrap, group_id(stack), topics["households"])
    # the state changelog: the stream's reversal decisions; the registry topic: imported extracts
    for role in ("alerts", "deadletter", "state", "registry"):
        spec = topics[role]
        marks = asyncio.run(kafka.high_watermarks(bootstrap, spec.name, spec.partitions))
        for p, end in marks.items():
            done = prog["tracking"].get((spec.name, p), 0)
            if done < end:
                behind["projector"].append(f"{spec.name}[{p}] {end - done} behind")
    return behind


PORT_VARIABLES = (
    "AIDLEDGER_BROKER_PORT",
    "AIDLEDGER_POSTGRES_PORT",
    "AIDLEDGER_WORKER_METRICS_PORT",
    "AIDLEDGER_PROJECTOR_METRICS_PORT",
    "AIDLEDGER_RELAY_METRICS_PORT",
    "AIDLEDGER_GATEWAY_PORT",
    "AIDLEDGER_DASHBOARD_PORT",
)


def free_port_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` where every port the stack listens on and that is not set is a free
    loopback port, so a throwaway stack (demo, bench, tests) never collides with a running one."""
    env = dict(environ)
    for var in PORT_VARIABLES:
        if not env.get(var):
            env[var] = str(embedded.free_port())
    return env


def load_endpoints(home: Path) -> dict | None:
    path = home / ENDPOINTS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float = 0.0


@dataclass
class Stack:
    home: Path
    environ: Mapping[str, str]
    workers: int = 1
    stack: StackSettings = field(init=False)
    broker: embedded.ManagedServer | None = None
    postgres: embedded.ManagedServer | None = None
    bootstrap: str = ""
    database_url: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    broker_restarts: int = 0
    postgres_restarts: int = 0

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self.stack = StackSettings.from_env(self.environ)

    # -- start ---------------------------------------------------------------------------------
    def ports(self) -> dict[str, int]:
        """Every loopback port this stack will listen on, by the variable that sets it."""
        worker = WorkerSettings.from_env(self.environ)
        ports = {
            "AIDLEDGER_PROJECTOR_METRICS_PORT": ProjectorSettings.from_env(self.environ).metrics_port,
            "AIDLEDGER_RELAY_METRICS_PORT": RelaySettings.from_env(self.environ).metrics_port,
            "AIDLEDGER_GATEWAY_PORT": GatewaySettings.from_env(self.environ).port,
            "AIDLEDGER_DASHBOARD_PORT": DashboardSettings.from_env(self.environ).port,
        }
        for i in range(self.workers):
            ports[f"AIDLEDGER_WORKER_METRICS_PORT (+{i})"] = worker.metrics_port + i
        if not self.stack.kafka_bootstrap:
            ports["AIDLEDGER_BROKER_PORT"] = self.stack.broker_port
        if not self.stack.database_url:
            ports["AIDLEDGER_POSTGRES_PORT"] = self.stack.postgres_port
        return ports

    def check_ports(self) -> None:
        taken = [f"{var}={port}" for var, port in self.ports().items() if _port_taken(port)]
        if taken:
            raise StackError("ports already in use: " + ", ".join(taken) + " (another stack running? set these variables to free ports)")

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        recorded = load_endpoints(self.home)
        supervisor = recorded.get("supervisor_pid", -1) if recorded else -1
        if supervisor != os.getpid() and embedded.pid_alive(supervisor):
            raise StackError(f"a stack is already running under {self.home} (pid {recorded['supervisor_pid']})")
        self.check_ports()
        ensure_token_key(self.stack, self.home)
        ensure_submissions_key(self.stack, self.home)
        try:
            if self.stack.kafka_bootstrap:
                self.bootstrap = self.stack.kafka_bootstrap
            else:
                self.broker = embedded.start_broker(self.home, self.stack.broker_port)
                self.bootstrap = self.broker.endpoint
            if self.stack.database_url:
                self.database_url = self.stack.database_url
            else:
                self.postgres = embedded.start_postgres(self.home, self.stack.postgres_port)
                self.database_url = self.postgres.endpoint
            migrate(self.database_url)
            kafka.create_topics(self.bootstrap, list(declared_topics(self.stack).values()), self.stack.replication)
            self._put_rulebook_in_force()
            self.children["relay"] = Child("relay", ["relay"])
            self.children["projector"] = Child("projector", ["project"])
            for i in range(self.workers):
                self.children[f"worker-{i}"] = Child(f"worker-{i}", ["worker", "--index", str(i)])
            self.children["gateway"] = Child("gateway", ["gateway"])
            self.children["dashboard"] = Child("dashboard", ["dashboard"])
            for child in self.children.values():
                self._spawn(child)
            self._write_endpoints()
        except BaseException:
            self.stop()
            raise

    def child_env(self) -> dict[str, str]:
        env = dict(self.environ)
        env["AIDLEDGER_HOME"] = str(self.home)
        env["AIDLEDGER_KAFKA_BOOTSTRAP"] = self.bootstrap
        env["AIDLEDGER_DATABASE_URL"] = self.database_url
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, child: Child) -> None:
        log_path = self.home / "logs" / f"{child.name}.log"
        out = open(log_path, "ab")
        child.process = subprocess.Popen(
            [sys.executable, "-m", "aidledger.cli", *child.args],
            env=self.child_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def endpoints(self) -> dict:
        worker = WorkerSettings.from_env(self.environ)
        host = local_address(self.stack.metrics_addr)
        metrics = {f"worker-{i}": f"http://{host}:{worker.metrics_port + i}/metrics" for i in range(self.workers)}
        metrics["projector"] = f"http://{host}:{ProjectorSettings.from_env(self.environ).metrics_port}/metrics"
        metrics["relay"] = f"http://{host}:{RelaySettings.from_env(self.environ).metrics_port}/metrics"
        metrics["gateway"] = f"{self.gateway_url()}/metrics"
        return {
            "gateway": self.gateway_url(),
            "dashboard": self.dashboard_url(),
            "home": str(self.home),
            "kafka_bootstrap": self.bootstrap,
            "database_url": self.database_url,
            "embedded_broker": self.broker is not None,
            "embedded_postgres": self.postgres is not None,
            "supervisor_pid": os.getpid(),
            "workers": self.workers,
            "topics": {role: spec.name for role, spec in declared_topics(self.stack).items()},
            "metrics": metrics,
            "children": {name: c.process.pid for name, c in self.children.items() if c.process},
        }

    def gateway_url(self) -> str:
        gateway = GatewaySettings.from_env(self.environ)
        return f"http://{local_address(gateway.host)}:{gateway.port}"

    def dashboard_url(self) -> str:
        dashboard = DashboardSettings.from_env(self.environ)
        return f"http://{local_address(dashboard.host)}:{dashboard.port}"

    def _put_rulebook_in_force(self) -> None:
        """The configured rulebook (AIDLEDGER_RULEBOOK, else the packaged default) becomes the one
        in force, unless it already is: an activation event on every ledger partition."""
        from aidcore.reference import default_reference
        from aidcore.rulebook import configured_rulebook
        from connectors.rulebooks import activate

        book = configured_rulebook(self.stack.rulebook, default_reference())
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            if activate(conn, book, ledger_topic=declared_topics(self.stack)["ledger"].name,
                        partitions=self.stack.partitions, by="stack start"):
                log.info("rulebook %s put in force", book.version)

    def _write_endpoints(self) -> None:
        path = self.home / ENDPOINTS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints(), indent=2))
        tmp.replace(path)

    # -- supervise -----------------------------------------------------------------------------
    def check_children(self) -> list[str]:
        """Restart children that died, backing off when one keeps dying young; returns the names
        restarted."""
        restarted = []
        if self.postgres is not None and not self.postgres.alive():
            self.recover_postgres()  # first: the children that died with it need it back
            restarted.append("postgres")
        now = time.monotonic()
        for child in self.children.values():
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at == 0.0:
                lived = now - child.started_at
                child.backoff_s = 0.0 if lived > 30 else min(30.0, max(1.0, child.backoff_s * 2))
                child.restart_at = now + child.backoff_s
                log.warning("%s exited with %s after %.1fs; restarting in %.0fs (see %s)", child.name,
                            child.process.returncode, lived, child.backoff_s, self.home / "logs" / f"{child.name}.log")
            if now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                self._spawn(child)
                restarted.append(child.name)
        if restarted:
            self._write_endpoints()
        if self.broker is not None and not self.broker.alive():
            self.recover_broker()
            restarted.append("broker")
        return restarted

    def recover_postgres(self) -> None:
        """The embedded PostgreSQL stopped (crashed, or was killed): start it again on the same
        data directory and port, which runs its crash recovery; everything committed is there.
        The relay, the projector and the gateway lose their connections; those that exit are
        restarted like any child, and resume from what PostgreSQL committed (the relay from its
        cursor, the projector from its tracked offsets). A start that fails raises."""
        log.warning("the embedded postgres stopped (see %s); starting it again", self.postgres.log_path)
        self.postgres.stop()
        self.postgres = embedded.start_postgres(self.home, self.stack.postgres_port)
        self.postgres_restarts += 1

    def recover_broker(self) -> None:
        """The embedded broker keeps its log in memory, so a broker that stopped took the log with
        it; the outbox in PostgreSQL still holds every accepted record. Start a new broker on the
        same port, create the topics, and restart every process that reads or writes Kafka: the
        relay finds the log behind what it had published and publishes the outbox again from the
        start, the workers rebuild their state from that log (their changelogs went with the
        broker), and the projector reads it from offset zero (its rows are keyed by identities,
        so what it had projected stays as it was). The gateway and the dashboard go on answering
        throughout: they need PostgreSQL only."""
        from projections.projector import PROJECTOR_NAME
        from projections.writer import forget_offsets

        log.warning("the embedded broker stopped (see %s); starting a new one and re-publishing the outbox",
                    self.broker.log_path)
        on_kafka = [c for c in self.children.values() if c.name not in ("gateway", "dashboard")]
        for child in on_kafka:
            self.stop_child(child, timeout_s=5.0)
        self.broker.stop()
        self.broker = embedded.start_broker(self.home, self.stack.broker_port)
        kafka.create_topics(self.bootstrap, list(declared_topics(self.stack).values()), self.stack.replication)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            forget_offsets(conn, PROJECTOR_NAME)
        for child in on_kafka:
            child.restarts += 1
            child.restart_at = 0.0
            self._spawn(child)
        self.broker_restarts += 1
        self._write_endpoints()

    def wait_caught_up(self, timeout_s: float, poll_s: float = 0.2) -> float:
        """Supervise until everything ingested is processed and projected; returns the seconds
        waited, or raises StackError naming what is still behind."""
        started = time.monotonic()
        while True:
            behind = lag_report(self.bootstrap, self.database_url, self.stack)
            if not any(behind.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise StackError(f"not caught up after {timeout_s:.0f}s: {behind}")
            self.check_children()
            time.sleep(poll_s)

    def run_until_stopped(self, poll_s: float = 0.5) -> None:
        stopping = []
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            stopping.append(signum)

        for s in previous:
            signal.signal(s, handler)
        try:
            while not stopping:
                self.check_children()
                time.sleep(poll_s)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- stop ----------------------------------------------------------------------------------
    def stop_child(self, child: Child, timeout_s: float = 15.0) -> None:
        p = child.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            self.stop_child(child)
        for server in (self.postgres, self.broker):
            if server is not None:
                server.stop()
        path = self.home / ENDPOINTS_FILE
        if path.exists():
            path.unlink()
