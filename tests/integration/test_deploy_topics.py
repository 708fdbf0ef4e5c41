"""`python -m aidledger.deploy topics` (the topic job of infra/deploy/compose.yaml) against a real
Kafka-protocol broker: it creates the declared topics with their partition counts, is a no-op
when they exist, and fails when existing topics differ from the declaration."""

from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient

from aidcore.settings import StackSettings
from aidledger import deploy
from infra.embedded import free_port, start_broker
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
