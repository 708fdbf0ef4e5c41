"""A real Prometheus server (Debian's `prometheus` package, installed by infra/system-packages.sh)
scrapes the running stack with the shipped configuration: the scrape jobs of
infra/monitoring/prometheus.yml pointed at this stack's ports, and the rules of alerts.yml with
every `for:` shortened to seconds and nothing else changed. Through Prometheus's HTTP API it
checks that every process is up, that the metrics carry what a small scenario should produce, and
that stopping the worker fires the down alerts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from conftest import Cli, stack_environ, wait_until
from gateway_client import call, issued_key, nik, record

from infra.embedded import free_port
from infra.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring"
SCENARIO = ROOT / "tests" / "scenarios" / "duplicate_person_programme_period.jsonl"
PROMETHEUS = shutil.which("prometheus")
FOR_IN_TEST = "2s"

if PROMETHEUS is None and not os.environ.get("CI"):
    pytest.skip("the prometheus binary is not installed (infra/system-packages.sh installs it)", allow_module_level=True)


def shipped_rules_with_short_for() -> dict:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = FOR_IN_TEST
    return rules


def config_for(stack: Stack, rule_file: str) -> dict:
    """prometheus.yml with its aidledger jobs scraping this stack (plus the gateway, which the
    compose deployment does not run yet), every second."""
    shipped = yaml.safe_load((MONITORING / "prometheus.yml").read_text(encoding="utf-8"))
    urls = stack.endpoints()["metrics"]
    where = {"aidledger-worker": [u for name, u in urls.items() if name.startswith("worker-")],
             "aidledger-projector": [urls["projector"]], "aidledger-relay": [urls["relay"]],
             "aidledger-gateway": [urls["gateway"]]}
    shipped_jobs = {job["job_name"] for job in shipped["scrape_configs"]}
    assert {"aidledger-worker", "aidledger-projector", "aidledger-relay"} <= shipped_jobs
    jobs = [{"job_name": job, "scrape_interval": "1s", "scrape_timeout": "900ms",
             "static_configs": [{"targets": [urlsplit(u).netloc for u in targets]}]}
            for job, targets in where.items()]
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [rule_file],
            "scrape_configs": jobs}


class PrometheusApi:
    def __init__(self, base: str):
        self.base = base

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def values(self, query: str) -> dict[tuple, float]:
        """Instant query: {(label values sorted by label name, without __name__): value}."""
        out = {}
        for series in self.get("/api/v1/query", query=query)["result"]:
            labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))
            out[labels] = float(series["value"][1])
        return out

    def value(self, query: str) -> float | None:
        found = self.values(query)
        assert len(found) <= 1, f"{query} gives {found}"
        return next(iter(found.values()), None)

    def firing(self) -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("job", "")) for a in self.get("/api/v1/alerts")["alerts"]
                if a["state"] == "firing"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("prometheus-stack")
    s = Stack(home, stack_environ(home) | {"AIDLEDGER_PROJECTOR_TABLE_STATS_INTERVAL_S": "1"})
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    assert PROMETHEUS, "prometheus is missing: run infra/system-packages.sh"
    where = tmp_path_factory.mktemp("prometheus")
    (where / "alerts.yml").write_text(yaml.safe_dump(shipped_rules_with_short_for()), encoding="utf-8")
    (where / "prometheus.yml").write_text(yaml.safe_dump(config_for(stack, "alerts.yml")), encoding="utf-8")
    port = free_port()
    log = open(where / "prometheus.log", "wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={where / 'prometheus.yml'}", f"--storage.tsdb.path={where / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: api.ready() or process.poll() is not None, 60, "Prometheus to be ready")
        assert process.poll() is None, (where / "prometheus.log").read_text(errors="replace")[-3000:]
        yield api
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture(scope="module")
def scenario(stack, tmp_path_factory) -> dict:
    """One disbursement over HTTP, then a file: a duplicate payment of one person in one period
    (regency 1871) and a changed resubmission of its first record, which the worker dead-letters."""
    cli = Cli(stack)
    key = issued_key(cli.run("agencies", "add", "DINSOS-LPG", "--programmes", "PKH", "--source-systems",
                             "SIKS-LPG").stdout)
    wait_until(lambda: call(stack.gateway_url(), "GET", "/openapi.json").status == 200, 60, "the gateway")
    answer = call(stack.gateway_url(), "POST", "/v1/disbursements", record(nik=nik(77)), key=key)
    assert answer.status == 202, answer.body
    lines = [json.loads(line) for line in SCENARIO.read_text(encoding="utf-8").splitlines() if line.strip()]
    changed = dict(lines[0], amount_idr=lines[0]["amount_idr"] + 1000)
    path = tmp_path_factory.mktemp("input") / "scenario.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*lines, changed]), encoding="utf-8")
    cli.run("ingest", str(path))
    cli.run("wait", "--timeout", "180")
    return {"file": lines, "changed": changed}


def test_prometheus_scrapes_every_process_of_the_stack(prometheus, stack):
    def health():
        return {(t["labels"]["job"], t["health"]) for t in prometheus.get("/api/v1/targets")["activeTargets"]}

    expected = {("aidledger-worker", "up"), ("aidledger-projector", "up"), ("aidledger-relay", "up"),
                ("aidledger-gateway", "up")}
    wait_until(lambda: health() == expected, 60, f"every target up, not {health()}", poll_s=0.5)
    assert prometheus.value('count(up{job=~"aidledger-.+"} == 1)') == 4


def test_the_metrics_carry_what_the_scenario_did(prometheus, stack, scenario):
    first, second = scenario["file"][0], scenario["file"][1]

    def settled(query: str, expected: float) -> bool:
        return prometheus.value(query) == expected

    checks = {
        # events in: at the HTTP door, and decided by the worker (by source type and programme)
        'sum(aidledger_gateway_disbursements_accepted_total{source_type="APBN",programme_code="PKH"})': 1,
        'sum(aidledger_gateway_requests_total{route="/v1/disbursements",status="202"})': 1,
        'sum(aidledger_worker_events_total{outcome="accepted"})': 3,
        f'sum(aidledger_worker_accepted_events_total{{source_type="{first["source_type"]}",'
        f'programme_code="{first["programme_code"]}"}})': 1,
        f'sum(aidledger_worker_accepted_events_total{{source_type="{second["source_type"]}",'
        f'programme_code="{second["programme_code"]}"}})': 1,
        # alerts by rule and regency, dead letters by code
        'sum(aidledger_worker_alerts_total{rule_id="duplicate_person_programme_period",regency_code="1871"})': 1,
        'sum(aidledger_worker_dead_letters_total{code="exists_with_different_amount_idr"})': 1,
        'sum(aidledger_worker_dead_letters_total)': 1,
        # the projection caught up, and every projected event is in the table sizes
        "sum(aidledger_projector_lag_records)": 0,
        'sum(aidledger_projector_rows_total{kind="event"})': 4,
        'sum(aidledger_projection_table_rows{table="ledger.events"})': 4,
    }
    for query, expected in checks.items():
        wait_until(lambda: settled(query, expected), 60, f"{query} == {expected} (now {prometheus.value(query)})",
                   poll_s=0.5)
    with psycopg.connect(stack.database_url) as conn:
        (events,) = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
    assert events == 4
    assert prometheus.value('aidledger_projection_table_bytes{table="ledger.events"}') > 0
    assert prometheus.value('count(aidledger_worker_consumer_lag_records{topic=~".+-households"})') > 0
    assert prometheus.value("sum(aidledger_ingest_to_decision_seconds_count)") >= 1
    assert prometheus.value("sum(aidledger_ingest_to_alert_seconds_count)") >= 1


def test_stopping_the_worker_fires_the_shipped_down_alerts(prometheus, stack, scenario):
    assert not {name for name, _ in prometheus.firing()} & {"AidledgerTargetDown", "AidledgerNoWorker"}
    # stopped through the supervisor, which restarts a child only when it is asked to check them
    stack.stop_child(stack.children["worker-0"])
    wanted = {("AidledgerTargetDown", "aidledger-worker"), ("AidledgerNoWorker", "")}
    wait_until(lambda: wanted <= prometheus.firing(), 60, f"{wanted} firing (now {prometheus.firing()})",
               poll_s=0.5)
    assert ("AidledgerTargetDown", "aidledger-projector") not in prometheus.firing()
