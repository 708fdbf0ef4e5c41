"""Every setting, declared once: one frozen object per process type, each field with its
environment variable (prefix AIDLEDGER_), default and meaning. Built from a mapping that the
shell passes in (`Settings.from_env(os.environ)`), so this module reads no environment itself.
`aidledger settings` prints the table; a test checks the README lists every variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class _Group:
    @classmethod
    def from_env(cls, environ: Mapping[str, str]):
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
            except ValueError:
                raise SettingsError(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(cls)]


@dataclass(frozen=True)
class StackSettings(_Group):
    """Shared by every process: where things are."""

    home: str = _setting("AIDLEDGER_HOME", ".aidledger", "directory for the embedded stack's data, logs, endpoints and secrets")
    kafka_bootstrap: str = _setting("AIDLEDGER_KAFKA_BOOTSTRAP", "", "external Kafka bootstrap servers; empty starts the embedded Tansu broker")
    database_url: str = _setting("AIDLEDGER_DATABASE_URL", "", "external PostgreSQL URL; empty starts the embedded PostgreSQL")
    broker_port: int = _setting("AIDLEDGER_BROKER_PORT", 19092, "loopback port of the embedded broker")
    postgres_port: int = _setting("AIDLEDGER_POSTGRES_PORT", 15432, "loopback port of the embedded PostgreSQL")
    partitions: int = _setting("AIDLEDGER_PARTITIONS", 8, "partitions of every keyed topic (ledger, alerts, state changelog); fixed at topic creation")
    replication: int = _setting("AIDLEDGER_REPLICATION", 1, "replication factor for created topics (3 on a production cluster)")
    topic_prefix: str = _setting("AIDLEDGER_TOPIC_PREFIX", "aid", "prefix of the topic names: <prefix>.ledger.v1, <prefix>.alerts.v1, <prefix>.deadletter.v1")
    nik_token_key: str = _setting("AIDLEDGER_NIK_TOKEN_KEY", "", "hex secret for NIK tokens (HMAC-SHA256); empty reads AIDLEDGER_NIK_TOKEN_KEY_FILE")
    nik_token_key_file: str = _setting("AIDLEDGER_NIK_TOKEN_KEY_FILE", "", "file holding the hex token secret; empty means <home>/secrets/nik-token.key, created by `up` when missing")
    submissions_key: str = _setting("AIDLEDGER_SUBMISSIONS_KEY", "", "X25519 private keys (hex, comma-separated, the current one first) that open the identities the SDK seals; empty reads AIDLEDGER_SUBMISSIONS_KEY_FILE")
    submissions_key_file: str = _setting("AIDLEDGER_SUBMISSIONS_KEY_FILE", "", "file of submissions private keys, one hex key a line, the current one first; empty means <home>/secrets/submissions.key, created by `up` when missing")
    audit_seal_key_file: str = _setting("AIDLEDGER_AUDIT_SEAL_KEY_FILE", "", "Ed25519 private key (hex) that signs audit seals; empty means <home>/secrets/audit-seal.key, created by the first `aidledger audit seal`")
    log_level: str = _setting("AIDLEDGER_LOG_LEVEL", "INFO", "log level of every process")
    rulebook: str = _setting("AIDLEDGER_RULEBOOK", "", "rulebook file put in force when the stack starts (if not already in force); empty means the packaged default")
    consumer_group: str = _setting("AIDLEDGER_CONSUMER_GROUP", "", "consumer group (Faust app id) of the ledger workers; empty means aidledger-<topic prefix>-ledger")
    metrics_addr: str = _setting("AIDLEDGER_METRICS_ADDR", "127.0.0.1", "address the /metrics endpoints of the worker, projector and relay listen on (0.0.0.0 for a Prometheus on another host or container)")
    fetch_max_wait_ms: int = _setting("AIDLEDGER_FETCH_MAX_WAIT_MS", 25, "longest a consumer's fetch waits at the broker; Tansu answers only when it expires, so this bounds latency")


@dataclass(frozen=True)
class WorkerSettings(_Group):
    """The Faust ledger worker."""

    metrics_port: int = _setting("AIDLEDGER_WORKER_METRICS_PORT", 9601, "Prometheus /metrics of worker 0; worker i uses this + i")
    batch_max: int = _setting("AIDLEDGER_WORKER_BATCH_MAX", 5000, "most records one fetch hands to the ledger processor")
    session_timeout_s: float = _setting("AIDLEDGER_WORKER_SESSION_TIMEOUT_S", 6.0, "consumer-group session timeout (Tansu holds a join for half of it)")
    commit_interval_s: float = _setting("AIDLEDGER_WORKER_COMMIT_INTERVAL_S", 1.0, "how often consumed offsets are committed")
    expiry_interval_s: float = _setting("AIDLEDGER_WORKER_EXPIRY_INTERVAL_S", 5.0, "how often reversals still waiting for their original are checked against the rulebook's wait")
    persist_hold_ms: int = _setting("AIDLEDGER_WORKER_PERSIST_HOLD_MS", 0, "fault injection, 0 in service: hold every batch this long while persisting it, so that a test can stop the worker mid-persist")


@dataclass(frozen=True)
class ProjectorSettings(_Group):
    """The PostgreSQL projector."""

    metrics_port: int = _setting("AIDLEDGER_PROJECTOR_METRICS_PORT", 9611, "Prometheus /metrics of the projector")
    batch_max: int = _setting("AIDLEDGER_PROJECTOR_BATCH_MAX", 20000, "most records written in one transaction")
    fetch_max_wait_ms: int = _setting("AIDLEDGER_PROJECTOR_FETCH_MAX_WAIT_MS", 200, "longest the projector's fetch waits at the broker: alerts on the alerts topic do not wait for it, the dashboard's live feed (which reads the projection) by up to this much; every fetch that returns records costs the embedded broker a listing of each partition's stored batches")
    table_stats_interval_s: float = _setting("AIDLEDGER_PROJECTOR_TABLE_STATS_INTERVAL_S", 15.0, "how often the projector reads the projection tables' sizes from PostgreSQL's statistics for /metrics")


@dataclass(frozen=True)
class RelaySettings(_Group):
    """The outbox relay (PostgreSQL outbox to Kafka)."""

    metrics_port: int = _setting("AIDLEDGER_RELAY_METRICS_PORT", 9612, "Prometheus /metrics of the relay")
    batch_max: int = _setting("AIDLEDGER_RELAY_BATCH_MAX", 5000, "most outbox rows published per round")
    poll_interval_ms: int = _setting("AIDLEDGER_RELAY_POLL_INTERVAL_MS", 500, "poll interval when no NOTIFY arrives")


@dataclass(frozen=True)
class GatewaySettings(_Group):
    """The HTTP gateway (agencies submit and read over HTTP)."""

    host: str = _setting("AIDLEDGER_GATEWAY_HOST", "127.0.0.1", "address the gateway listens on (0.0.0.0 to serve other machines, behind TLS)")
    port: int = _setting("AIDLEDGER_GATEWAY_PORT", 8090, "port of the HTTP gateway (its /metrics too)")
    max_body_bytes: int = _setting("AIDLEDGER_GATEWAY_MAX_BODY_BYTES", 2_097_152, "largest request body accepted; larger gets 413 body_too_large")
    rate_per_s: float = _setting("AIDLEDGER_GATEWAY_RATE_PER_S", 20.0, "requests per second each client (API key, or address without one) may make on average; beyond gets 429 rate_limited")
    burst: int = _setting("AIDLEDGER_GATEWAY_BURST", 40, "requests a client may make at once before the rate applies")
    connections: int = _setting("AIDLEDGER_GATEWAY_CONNECTIONS", 4, "PostgreSQL connections of the gateway (requests wait for a free one)")


@dataclass(frozen=True)
class DashboardSettings(_Group):
    """The PMO web dashboard (alert feed, cases, recipients, regencies)."""

    host: str = _setting("AIDLEDGER_DASHBOARD_HOST", "127.0.0.1", "address the dashboard listens on (0.0.0.0 to serve other machines, behind TLS)")
    port: int = _setting("AIDLEDGER_DASHBOARD_PORT", 8091, "port of the PMO dashboard; `aidledger up` prints its URL")
    connections: int = _setting("AIDLEDGER_DASHBOARD_CONNECTIONS", 4, "PostgreSQL connections of the dashboard's pages (the live feed has its own)")
    session_hours: int = _setting("AIDLEDGER_DASHBOARD_SESSION_HOURS", 12, "how long a sign-in lasts")
    secure_cookies: bool = _setting("AIDLEDGER_DASHBOARD_SECURE_COOKIES", False, "mark the session cookie Secure (set it when the dashboard is served over HTTPS)")
    session_key_file: str = _setting("AIDLEDGER_DASHBOARD_SESSION_KEY_FILE", "", "hex key that signs session cookies; empty means <home>/secrets/dashboard-session.key, created on first start")


ALL_GROUPS = (StackSettings, WorkerSettings, ProjectorSettings, RelaySettings, GatewaySettings, DashboardSettings)


def local_address(addr: str) -> str:
    """Where a client on the same host reaches a listener bound to `addr`: loopback for a wildcard."""
    return "127.0.0.1" if addr in ("", "0.0.0.0", "::") else addr


def consumer_group(stack: StackSettings) -> str:
    """The ledger workers' consumer group, which is also their Faust app id."""
    return stack.consumer_group or f"aidledger-{stack.topic_prefix}-ledger"


def topic_names(stack: StackSettings) -> dict[str, str]:
    p = stack.topic_prefix
    return {
        "ledger": f"{p}.ledger.v1",
        "alerts": f"{p}.alerts.v1",
        "registry": f"{p}.registry.v1",
        "deadletter": f"{p}.deadletter.v1",
        # agency systems produce here directly (connectors.sdk); the gateway's door decides it
        "submissions": f"{p}.submissions.v1",
        # the state changelog belongs to one consumer group, like a Faust table's changelog
        "state": f"{consumer_group(stack)}-state-changelog",
        # what the person stage accepted, re-keyed by household, and the household stage's changelog
        "households": f"{consumer_group(stack)}-households",
        "household_state": f"{consumer_group(stack)}-household-changelog",
    }
