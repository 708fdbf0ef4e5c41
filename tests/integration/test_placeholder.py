"""Placeholder identities on the real stack: one KK typed for hundreds of people and one NIK
typed for hundreds of payments in a month. Every payment is still in the ledger once, the cases
stand as they were at the reference data's `period_payments_max` (250), the worker counts what it
left unevaluated, and its partitions keep flowing (the worker is never restarted)."""

from __future__ import annotations

import json
import re
import urllib.request

import psycopg
import pytest
from conftest import wait_until
from gateway_client import nik, record

from connectors.synthetic import write_jsonl

pytestmark = pytest.mark.integration

LIMIT = 250
PEOPLE = 300  # each with its own NIK, all on one KK
PAYMENTS = 300  # to one NIK with no KK: its own household of one
DUMMY_KK = "1871000000000000"
DUMMY_NIK = "1871014504850001"


def unevaluated(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    found = re.findall(r'^aidledger_worker_unevaluated_payments_total\{stage="(\w+)"\} (\S+)$', body, re.M)
    return {stage: float(value) for stage, value in found}


def test_placeholder_identities_are_bounded_and_counted(stack, cli, tmp_path):
    rows = [record(source_system="SIKS-NG", source_ref=f"BPNT-DUMMY-KK-{i:04d}", programme_code="BPNT",
                   amount_idr=200_000, nik=nik(i + 2), kk=DUMMY_KK) for i in range(PEOPLE)]
    rows += [record(source_system="SIPINTAR", source_ref=f"PIP-DUMMY-NIK-{i:04d}", programme_code="PIP",
                    amount_idr=450_000, nik=DUMMY_NIK, kk="") for i in range(PAYMENTS)]
    path = tmp_path / "placeholders.jsonl"
    write_jsonl(path, rows)
    worker = stack.children["worker-0"].process.pid
    cli.run("ingest", str(path))
    cli.run("wait", "--timeout", "180")

    metrics = stack.endpoints()["metrics"]["worker-0"]
    expected = {"person": PAYMENTS - LIMIT, "household": (PEOPLE - LIMIT) + (PAYMENTS - LIMIT)}
    wait_until(lambda: unevaluated(metrics) == expected, 30, f"the unevaluated counts to read {expected}")

    alerts = json.loads(cli.run("alerts", "--json").stdout)["alerts"]
    household = [a for a in alerts if a["rule_id"] == "duplicate_household_programme_period"
                 and any(e["source_ref"].startswith("BPNT-DUMMY-KK-") for e in a["events"])]
    person = [a for a in alerts if a["rule_id"] == "duplicate_person_programme_period"
              and any(e["source_ref"].startswith("PIP-DUMMY-NIK-") for e in a["events"])]
    assert len(household) == 1 and len(household[0]["events"]) == LIMIT
    assert len(person) == 1 and len(person[0]["events"]) == LIMIT
    # every payment is in the ledger once, evaluated or not
    with psycopg.connect(stack.database_url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM ledger.events WHERE source_ref LIKE '%-DUMMY-%'").fetchone()
    assert count == PEOPLE + PAYMENTS
    assert stack.children["worker-0"].process.pid == worker, "the worker was restarted"
