"""Steps of a deployment on an external Kafka cluster and PostgreSQL, outside `aidledger up`.

`aidledger up` starts or attaches to Kafka and PostgreSQL, applies migrations, creates topics and
then supervises the processes itself. In a container deployment (infra/deploy/compose.yaml) each
process is its own service and the one-shot steps are jobs, so this module offers them one by one:

    python -m aidledger.deploy topics         create the declared topics, then check them
    python -m aidledger.deploy migrate        apply the PostgreSQL migrations
    python -m aidledger.deploy rulebook       put AIDLEDGER_RULEBOOK in force, unless it already is
    python -m aidledger.deploy metrics-port worker|project|relay
    python -m aidledger.deploy health worker|project|relay|gateway|dashboard

Topics come from `schemas.topics.declared_topics` and settings from the environment, exactly as
the workers, the projector and the relay read them, so the job cannot drift from the code.
`metrics-port` and `health` let the container entrypoint and health checks find a process's
/metrics port (or, for the gateway and the dashboard, their HTTP address) from the same settings
instead of repeating its default.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from typing import Mapping

from aidcore.settings import (DashboardSettings, GatewaySettings, ProjectorSettings, RelaySettings, StackSettings,
                              WorkerSettings, local_address)
from schemas.topics import TopicSpec, declared_topics

# the CLI subcommand of each long-running process -> the settings group holding its metrics port
METRICS_SETTINGS = {"worker": WorkerSettings, "project": ProjectorSettings, "relay": RelaySettings}
# the HTTP processes -> the settings group holding their listen host and port; they are healthy when
# /healthz answers 200, which it does once they reach PostgreSQL
HTTP_SETTINGS = {"gateway": GatewaySettings, "dashboard": DashboardSettings}


def topic_plan(environ: Mapping[str, str]) -> tuple[str, list[TopicSpec], int]:
    """(bootstrap servers, the declared topics, replication factor) under these settings."""
    stack = StackSettings.from_env(environ)
    return stack.kafka_bootstrap, list(declared_topics(stack).values()), stack.replication


def topic_problems(described: list[dict], specs: list[TopicSpec], replication: int) -> list[str]:
    """How the topics as the cluster describes them (kafka-python `describe_topics`) differ from
    the declaration: missing, another partition count, another replication factor."""
    by_name = {t["name"]: t for t in described}
    problems = []
    for spec in specs:
        topic = by_name.get(spec.name)
        if topic is None or topic.get("error_code", 0) != 0 or not topic.get("partitions"):
            problems.append(f"{spec.name}: missing")
            continue
        partitions = topic["partitions"]
        if len(partitions) != spec.partitions:
            problems.append(f"{spec.name}: {len(partitions)} partitions, declared {spec.partitions}")
        factors = sorted({len(p["replica_nodes"]) for p in partitions})
        if factors != [replication]:
            problems.append(f"{spec.name}: replication {'/'.join(map(str, factors))}, declared {replication}")
    return problems


def cmd_topics(environ: Mapping[str, str]) -> int:
    from kafka.admin import KafkaAdminClient

    from infra import kafka

    bootstrap, specs, replication = topic_plan(environ)
    if not bootstrap:
        print("aidledger.deploy topics: AIDLEDGER_KAFKA_BOOTSTRAP is not set", file=sys.stderr)
        return 2
    created = set(kafka.create_topics(bootstrap, specs, replication))
    for spec in specs:
        configs = ",".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
        print(f"{'created' if spec.name in created else 'exists '} {spec.name} (declared: partitions={spec.partitions} "
              f"replication={replication} {configs})")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="aidledger-deploy", request_timeout_ms=15000)
    try:
        problems = topic_problems(admin.describe_topics([s.name for s in specs]), specs, replication)
    finally:
        admin.close()
    for problem in problems:
        print(f"aidledger.deploy topics: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_migrate(environ: Mapping[str, str]) -> int:
    from projections.migrate import migrate

    url = StackSettings.from_env(environ).database_url
    if not url:
        print("aidledger.deploy migrate: AIDLEDGER_DATABASE_URL is not set", file=sys.stderr)
        return 2
    applied = migrate(url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_rulebook(environ: Mapping[str, str]) -> int:
    """What `aidledger up` does at start: the configured rulebook (AIDLEDGER_RULEBOOK, else the
    packaged default) becomes the one in force unless it already is, as an activation event on
    every ledger partition through the outbox."""
    import psycopg

    from aidcore.reference import default_reference
    from aidcore.rulebook import RulebookError, configured_rulebook
    from connectors.rulebooks import activate

    stack = StackSettings.from_env(environ)
    if not stack.database_url:
        print("aidledger.deploy rulebook: AIDLEDGER_DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        book = configured_rulebook(stack.rulebook, default_reference())
    except RulebookError as err:
        print(f"aidledger.deploy rulebook: {err}", file=sys.stderr)
        return 1
    ledger = declared_topics(stack)["ledger"]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        done = activate(conn, book, ledger_topic=ledger.name, partitions=ledger.partitions, by="deploy")
    print(f"rulebook {book.version} {'is now in force' if done else 'was already in force'}")
    return 0


def metrics_port(process: str, environ: Mapping[str, str]) -> int:
    """The /metrics port of a process as its settings give it (a worker container runs index 0)."""
    return METRICS_SETTINGS[process].from_env(environ).metrics_port


def health_url(process: str, environ: Mapping[str, str]) -> str:
    """Where a health check in the process's own container asks whether it serves."""
    if process in HTTP_SETTINGS:
        settings = HTTP_SETTINGS[process].from_env(environ)
        return f"http://{local_address(settings.host)}:{settings.port}/healthz"
    host = local_address(StackSettings.from_env(environ).metrics_addr)
    return f"http://{host}:{metrics_port(process, environ)}/metrics"


def cmd_health(process: str, environ: Mapping[str, str]) -> int:
    url = health_url(process, environ)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"aidledger.deploy health: {url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m aidledger.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("topics", help="create the declared topics that are missing, then check partitions and replication")
    sub.add_parser("migrate", help="apply the PostgreSQL migrations")
    sub.add_parser("rulebook", help="put AIDLEDGER_RULEBOOK (or the packaged default) in force unless it already is")
    sub.add_parser("metrics-port", help="print the /metrics port of a process").add_argument(
        "process", choices=sorted(METRICS_SETTINGS))
    sub.add_parser("health", help="exit 0 if the process answers on its /metrics port (gateway, dashboard: /healthz)"
                   ).add_argument("process", choices=sorted(METRICS_SETTINGS | HTTP_SETTINGS))
    args = parser.parse_args(argv)
    if args.step == "topics":
        return cmd_topics(environ)
    if args.step == "migrate":
        return cmd_migrate(environ)
    if args.step == "rulebook":
        return cmd_rulebook(environ)
    if args.step == "metrics-port":
        print(metrics_port(args.process, environ))
        return 0
    return cmd_health(args.process, environ)


if __name__ == "__main__":
    raise SystemExit(main())
