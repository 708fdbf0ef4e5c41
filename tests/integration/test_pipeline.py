"""The walking skeleton end to end, through the public CLI, on the real broker and PostgreSQL."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import psycopg
import pytest

from aidcore.ledger import RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION
from aidcore.rulebook import RULE_IDS
from aidledger.demo import answer_key_check
from connectors import synthetic
from infra.stack import token_key
from conftest import read_topic

pytestmark = pytest.mark.integration

EVENT_FIELDS = {
    "event_id", "source_system", "source_ref", "source_type", "agency_code", "programme_code", "amount_idr",
    "kind", "period", "disbursed_at", "channel", "region_code", "funding_account", "recorded_at", "accepted", "outcome",
}
MONEY_FIELDS = {"net_amount_idr", "path", "postings", "reversals"}


@pytest.fixture(scope="module")
def dataset():
    return synthetic.generate(6000, seed=7, months=3)


@pytest.fixture(scope="module")
def ingested(stack, cli, dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "disbursements.jsonl"
    synthetic.write_jsonl(path, dataset.records)
    report = json.loads(cli.run("ingest", str(path), "--json").stdout)
    cli.run("wait", "--timeout", "180")
    return report


def test_ingest_counts_and_rejection_report(ingested, dataset):
    kinds = Counter(c.kind for c in dataset.answer_key)
    assert ingested["rows"] == len(dataset.records)
    assert ingested["rejected"] == kinds["invalid"]
    assert ingested["redelivered"] == kinds["redelivery"]
    assert ingested["accepted"] == len(dataset.records) - kinds["invalid"] - kinds["redelivery"]
    with open(ingested["rejection_report"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["code"] for r in rows) == Counter(c.rule_id for c in dataset.answer_key if c.kind == "invalid")
    assert {(r["source_system"], r["source_ref"]) for r in rows} == {
        c.source_refs[0] for c in dataset.answer_key if c.kind == "invalid"
    }


def test_alerts_match_the_answer_key(stack, cli, ingested, dataset):
    alerts = json.loads(cli.run("alerts", "--json").stdout)["alerts"]
    check = answer_key_check(dataset, alerts, token_key(stack.stack, stack.home))
    assert set(check) == set(RULE_IDS)
    for rule, c in check.items():  # every rule is planted, and found exactly with its rupiah at stake
        assert c["planted"] > 0, (rule, c)
        assert c["precision"] == 1.0 and c["recall"] == 1.0, (rule, c)
        assert c["at_stake_right"] == c["at_stake_known"] == c["planted"], (rule, c)
    for a in alerts:
        assert a["rulebook_version"] and a["message"] and a["regency_name"]
        assert a["events"] and all(set(e) == {"event_id", "source_system", "source_ref", "programme_code", "source_type",
                                                  "member_token", "amount_idr", "disbursed_at"} for e in a["events"])


def test_trail_shows_a_duplicate_in_stable_json(stack, cli, ingested, dataset):
    case = next(c for c in dataset.answer_key if c.kind == "duplicate_person" and c.nik and len(c.nik) == 16)
    out = json.loads(cli.run("trail", case.nik, "--json", "--why", "integration test").stdout)
    assert out["identity_kind"] == "NIK"
    for e in out["events"]:
        assert set(e) == EVENT_FIELDS | MONEY_FIELDS  # the fields it always had stay, the money trail's are added
        assert isinstance(e["amount_idr"], int)
    paid = [e for e in out["events"] if e["programme_code"] == case.programme_code and e["period"] == case.period]
    assert {(e["source_system"], e["source_ref"]) for e in paid} == set(case.source_refs)
    assert any(a["rule_id"] == RULE_DUPLICATE_PERSON and a["period"] == case.period for a in out["alerts"])
    total = next(t for t in out["totals"] if t["programme_code"] == case.programme_code and t["period"] == case.period)
    assert total["payments"] == 2 and total["amount_idr_total"] == sum(e["amount_idr"] for e in paid)
    with psycopg.connect(stack.database_url) as conn:
        logged = conn.execute("SELECT count(*) FROM vault.access_log WHERE why = 'integration test'").fetchone()[0]
    assert logged == 1


def test_totals_projection_equals_the_archive(stack, ingested):
    with psycopg.connect(stack.database_url) as conn:
        diff = conn.execute(
            "SELECT count(*) FROM (SELECT person_token, programme_code, period, sum(amount_idr)::bigint AS a, count(*)::int AS n"
            " FROM ledger.events WHERE accepted GROUP BY 1, 2, 3) e"
            " FULL JOIN ledger.person_totals t USING (person_token, programme_code, period)"
            " WHERE e.a IS DISTINCT FROM t.amount_idr_total OR e.n IS DISTINCT FROM t.payments"
        ).fetchone()[0]
        events, outbox = conn.execute("SELECT (SELECT count(*) FROM ledger.events), (SELECT count(*) FROM ledger.outbox WHERE partition IS NULL)").fetchone()
    assert diff == 0
    assert events == outbox


def test_the_relay_records_where_each_ledger_partition_ends(stack, ingested):
    """The relay sends record batches and keeps, per partition, the offset after the last record
    the broker acknowledged (a batch's acknowledged offset is its first record's): what it kept is
    the ledger topic's true end on every partition, which its check for a broker that lost its log
    compares with."""
    import asyncio

    from infra.kafka import high_watermarks

    ledger = stack.endpoints()["topics"]["ledger"]
    with psycopg.connect(stack.database_url) as conn:
        kept = dict(conn.execute("SELECT partition, next_offset FROM ledger.relay_offsets WHERE topic = %s",
                                 (ledger,)).fetchall())
    ends = asyncio.run(high_watermarks(stack.bootstrap, ledger, stack.stack.partitions))
    assert kept == {p: end for p, end in ends.items() if end > 0}
    assert sum(kept.values()) >= ingested["accepted"]  # the module's upload, spread over the partitions


def test_no_clear_nik_leaves_intake(stack, ingested, dataset):
    niks = {r["nik"] for r in dataset.records if r["nik"]}
    digits16 = re.compile(rb"(?<![0-9])[0-9]{16}(?![0-9])")
    for role, name in stack.endpoints()["topics"].items():
        for record in read_topic(stack.bootstrap, name, stack.stack.partitions):
            blobs = [record.key or b"", record.value or b""] + [v for _, v in (record.headers or ())]
            for blob in blobs:
                for run in digits16.findall(blob):
                    assert run.decode() not in niks, f"clear NIK on topic {name}"
    logs = "".join(p.read_text(errors="replace") for p in (stack.home / "logs").glob("*.log"))
    assert not any(n in logs for n in niks)


def test_redelivered_and_garbage_records_on_the_topic(stack, cli, ingested):
    """At-least-once delivery: the same record twice on the log changes nothing; bytes that are not
    an event are dead-lettered with a named code and the partition keeps flowing."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    ledger = stack.endpoints()["topics"]["ledger"]
    with psycopg.connect(stack.database_url) as conn:
        key, value = conn.execute("SELECT key, value FROM ledger.outbox WHERE partition IS NULL ORDER BY seq LIMIT 1").fetchone()
        before = conn.execute("SELECT sum(amount_idr_total)::bigint, sum(payments)::bigint FROM ledger.person_totals").fetchone()

    async def produce():
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await p.start()
        try:
            await p.send_and_wait(ledger, bytes(value), key=bytes(key))
            await p.send_and_wait(ledger, b"not avro at all", key=bytes(key))
            await p.send_and_wait(ledger, b"\xc3\x01" + b"\x00" * 8 + b"body", key=bytes(key))
            # nearly the largest record a producer may send: dead-lettered (cut), never a stall
            await p.send_and_wait(ledger, b"\x00" * 900_000, key=bytes(key))
        finally:
            await p.stop()

    asyncio.run(produce())
    from conftest import wait_until

    def dead_letters():
        with psycopg.connect(stack.database_url) as conn:
            return dict(conn.execute("SELECT code, count(*) FROM ledger.deadletters WHERE stage = 'stream' GROUP BY 1").fetchall())

    codes = wait_until(lambda: (d := dead_letters()).get("avro_marker_invalid") == 2 and d.get("schema_fingerprint_unknown") and d,
                       60, "dead letters for the garbage records")
    assert codes["avro_marker_invalid"] == 2 and codes["schema_fingerprint_unknown"] == 1
    with psycopg.connect(stack.database_url) as conn:
        (size,) = conn.execute("SELECT max(length(value)) FROM ledger.deadletters WHERE code = 'avro_marker_invalid'").fetchone()
    assert size == 256 * 1024
    cli.run("wait", "--timeout", "60")
    with psycopg.connect(stack.database_url) as conn:
        after = conn.execute("SELECT sum(amount_idr_total)::bigint, sum(payments)::bigint FROM ledger.person_totals").fetchone()
    assert after == before


def test_wait_fails_on_timeout_while_the_worker_is_down(stack, cli, ingested, tmp_path):
    worker = stack.children["worker-0"]
    stack.stop_child(worker)
    record = dict(synthetic.generate(1, seed=99).records[0], source_ref="WAIT-TEST-1")
    path = tmp_path / "one.jsonl"
    synthetic.write_jsonl(path, [record])
    assert json.loads(cli.run("ingest", str(path), "--json").stdout)["accepted"] == 1
    proc = cli.run("wait", "--timeout", "3", check=False)
    assert proc.returncode == 1
    assert "worker" in proc.stderr
    stack._spawn(worker)
    cli.run("wait", "--timeout", "120")


def test_a_reference_resent_for_another_person_is_rejected_at_intake(stack, cli, ingested, dataset, tmp_path):
    """Keys are global at the door: the same (source_system, source_ref) for a different NIK is
    rejected with a named code, raises a modified_resubmission alert, and changes no total."""
    original = next(r for r in dataset.records if r["nik"] and r["programme_code"] == "BPNT")
    other = next(r for r in dataset.records if r["nik"] and r["nik"] != original["nik"])
    resent = dict(original, nik=other["nik"], recipient_name=other["recipient_name"])
    path = tmp_path / "resent.jsonl"
    synthetic.write_jsonl(path, [resent])
    with psycopg.connect(stack.database_url) as conn:
        before = conn.execute("SELECT sum(amount_idr_total)::bigint FROM ledger.person_totals").fetchone()[0]
    out = json.loads(cli.run("ingest", str(path), "--json").stdout)
    assert out["accepted"] == 0 and out["rejections_by_code"] == {"exists_with_different_nik": 1}
    cli.run("wait", "--timeout", "60")
    alerts = json.loads(cli.run("alerts", "--json", "--rule", RULE_MODIFIED_RESUBMISSION).stdout)["alerts"]
    hits = [a for a in alerts if a["outcome_code"] == "exists_with_different_nik"
            and a["events"][0]["source_ref"] == original["source_ref"]]
    assert len(hits) == 1
    with psycopg.connect(stack.database_url) as conn:
        after = conn.execute("SELECT sum(amount_idr_total)::bigint FROM ledger.person_totals").fetchone()[0]
    assert after == before


def test_within_one_file_the_first_version_of_a_reference_wins(stack, cli, ingested, tmp_path):
    """Outbox order is input order, so a modified copy later in the same chunk never displaces
    the original."""
    base = synthetic.generate(3, seed=4242, first_period="2026-05", months=1).records
    first = dict(base[0], source_ref=base[0]["source_ref"] + "-ORDER")
    modified = dict(first, amount_idr=first["amount_idr"] + 1000)
    path = tmp_path / "order.jsonl"
    synthetic.write_jsonl(path, [first, modified])
    cli.run("ingest", str(path))
    cli.run("wait", "--timeout", "60")
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT amount_idr, accepted, outcome FROM ledger.events WHERE source_ref = %s ORDER BY accepted DESC",
                            (first["source_ref"],)).fetchall()
    assert rows == [(first["amount_idr"], True, "accepted"), (modified["amount_idr"], False, "exists_with_different_amount_idr")]


def test_csv_ingest_counts_like_json_lines(stack, cli, ingested, tmp_path):
    data = synthetic.generate(400, seed=515, first_period="2026-06", months=1)
    records = [dict(r, source_ref="CSV-" + r["source_ref"]) for r in data.records]
    path = tmp_path / "batch.csv"
    synthetic.write_csv(path, records)
    out = json.loads(cli.run("ingest", str(path), "--json").stdout)
    kinds = Counter(c.kind for c in data.answer_key)
    assert out["rows"] == len(records)
    assert out["rejected"] == kinds["invalid"]
    assert out["accepted"] + out["redelivered"] + out["rejected"] == len(records)
    cli.run("wait", "--timeout", "60")


def test_every_process_serves_prometheus_metrics(stack, ingested):
    import urllib.request

    text = {}
    for name, url in stack.endpoints()["metrics"].items():
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            text[name] = response.read().decode()

    def value(body: str, sample: str) -> float:
        m = re.search(r"^" + re.escape(sample) + r" ([0-9.e+]+)$", body, re.MULTILINE)
        assert m, f"{sample} missing"
        return float(m.group(1))

    assert value(text["worker-0"], 'aidledger_worker_events_total{outcome="accepted"}') > 0
    duplicates = re.findall(r'^aidledger_worker_alerts_total\{regency_code="(\d{4}|unknown)",'
                            r'rule_id="duplicate_person_programme_period"\} ([0-9.e+]+)$', text["worker-0"], re.MULTILINE)
    assert sum(float(n) for _, n in duplicates) > 0
    assert "aidledger_worker_consumer_lag_records" in text["worker-0"]
    assert "aidledger_ingest_to_decision_seconds_bucket" in text["worker-0"]
    assert value(text["projector"], 'aidledger_projector_rows_total{kind="event"}') > 0
    assert "aidledger_projector_lag_records" in text["projector"]
    assert value(text["relay"], "aidledger_relay_published_total") > 0
