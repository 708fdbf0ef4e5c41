"""With AIDLEDGER_KAFKA_BOOTSTRAP and AIDLEDGER_DATABASE_URL set, the stack starts no broker and
no PostgreSQL of its own and runs against the ones given (here: servers started separately)."""

from __future__ import annotations

import json

import pytest
from conftest import Cli, stack_environ

from connectors import synthetic
from infra.embedded import free_port, start_broker, start_postgres
from infra.stack import Stack

pytestmark = pytest.mark.integration


def test_stack_uses_external_kafka_and_postgres(tmp_path):
    servers = tmp_path / "servers"
    broker = start_broker(servers, free_port())
    postgres = start_postgres(servers, free_port(), database="ledger_elsewhere")
    try:
        env = stack_environ(tmp_path / "home")
        env["AIDLEDGER_KAFKA_BOOTSTRAP"] = broker.endpoint
        env["AIDLEDGER_DATABASE_URL"] = postgres.endpoint
        env["AIDLEDGER_NIK_TOKEN_KEY"] = "ab" * 32
        env["AIDLEDGER_SUBMISSIONS_KEY"] = "cd" * 32
        stack = Stack(tmp_path / "home", env)
        stack.start()
        try:
            assert stack.broker is None and stack.postgres is None
            ep = stack.endpoints()
            assert ep["kafka_bootstrap"] == broker.endpoint and ep["database_url"] == postgres.endpoint
            assert not (tmp_path / "home" / "postgres").exists()
            assert not (tmp_path / "home" / "secrets").exists()  # the keys came from the environment
            path = tmp_path / "in.jsonl"
            data = synthetic.generate(200, seed=3)
            synthetic.write_jsonl(path, data.records)
            cli = Cli(stack)
            report = json.loads(cli.run("ingest", str(path), "--json").stdout)
            assert report["accepted"] > 0
            cli.run("wait", "--timeout", "120")
            assert json.loads(cli.run("status").stdout)["ledger"]["events"] == report["accepted"]
        finally:
            stack.stop()
        assert broker.alive() and postgres.alive()  # not ours to stop
    finally:
        broker.stop()
        postgres.stop()
