"""The steps of `python -m aidledger.deploy` (the jobs and health checks of
infra/deploy/compose.yaml) against a real broker, PostgreSQL and metrics endpoint: `topics`
creates the declared topics with their partition counts, is a no-op when they exist, and fails
when existing topics differ from the declaration; `migrate` applies the migrations once;
`rulebook` puts the configured rulebook in force once; `health` tells whether a process answers
on its metrics port."""

from __future__ import annotations

import psycopg
import pytest
from kafka.admin import KafkaAdminClient
from prometheus_client import start_http_server

from aidcore.settings import StackSettings
from aidledger import deploy
from infra.embedded import free_port, start_broker, start_postgres
from schemas.topics import declared_topics

pytestmark = pytest.mark.integration


def test_the_topic_step_creates_the_declared_topics_and_refuses_drift(tmp_path, capsys):
    broker = start_broker(tmp_path, free_port())
    try:
        env = {"AIDLEDGER_KAFKA_BOOTSTRAP": broker.endpoint, "AIDLEDGER_PARTITIONS": "3", "AIDLEDGER_TOPIC_PREFIX": "dep"}
        specs = declared_topics(StackSettings.from_env(env))

        assert deploy.main(["topics"], environ=env) == 0
        out = capsys.readouterr().out
        assert all(f"created {s.name} " in out for s in specs.values()), out
        admin = KafkaAdminClient(bootstrap_servers=broker.endpoint)
        try:
            described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs.values()])}
        finally:
            admin.close()
        assert described == {s.name: 3 for s in specs.values()}

        assert deploy.main(["topics"], environ=env) == 0
        out = capsys.readouterr().out
        assert all(f"exists  {s.name} " in out for s in specs.values()), out

        assert deploy.main(["topics"], environ={**env, "AIDLEDGER_PARTITIONS": "5"}) == 1
        err = capsys.readouterr().err
        assert all(f"{s.name}: 3 partitions, declared 5" in err for s in specs.values()), err
    finally:
        broker.stop()


def test_the_migrate_and_rulebook_steps_apply_once(tmp_path, capsys):
    postgres = start_postgres(tmp_path, free_port(), database="deploy_steps")
    try:
        env = {"AIDLEDGER_DATABASE_URL": postgres.endpoint, "AIDLEDGER_PARTITIONS": "3"}
        assert deploy.main(["migrate"], environ=env) == 0
        assert "001_ledger.sql" in capsys.readouterr().out
        assert deploy.main(["migrate"], environ=env) == 0
        assert "nothing (up to date)" in capsys.readouterr().out

        assert deploy.main(["rulebook"], environ=env) == 0
        assert "is now in force" in capsys.readouterr().out
        assert deploy.main(["rulebook"], environ=env) == 0
        assert "was already in force" in capsys.readouterr().out
        ledger = declared_topics(StackSettings.from_env(env))["ledger"].name
        with psycopg.connect(postgres.endpoint) as conn:
            rows = conn.execute("SELECT topic, partition FROM ledger.outbox ORDER BY partition").fetchall()
        assert rows == [(ledger, 0), (ledger, 1), (ledger, 2)], "one activation on every ledger partition"

        assert deploy.main(["rulebook"], environ={**env, "AIDLEDGER_RULEBOOK": str(tmp_path / "none.toml")}) == 1
        assert "cannot read rulebook file" in capsys.readouterr().err
    finally:
        postgres.stop()


def test_the_health_step_answers_whether_the_metrics_endpoint_does():
    port = free_port()
    env = {"AIDLEDGER_RELAY_METRICS_PORT": str(port)}
    assert deploy.main(["health", "relay"], environ=env) == 1
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        assert deploy.main(["health", "relay"], environ=env) == 0
    finally:
        server.shutdown()
        thread.join(5)
