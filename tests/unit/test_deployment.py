"""The production deployment (infra/deploy) and the monitoring configs (infra/monitoring) agree
with the code, read from the files as Docker Compose, Prometheus and Grafana would read them:

- three Kafka nodes in KRaft mode, each durable: replication 3, min.insync.replicas 2, no
  unclean leader election, no automatic topic creation;
- the topic job creates exactly the topics schemas/topics.py declares, under the same settings
  as the processes that use them;
- every AIDLEDGER_* variable the deployment sets is a setting aidcore/settings.py reads, and no
  secret is written into the files;
- every metric and label the alert rules and the dashboard use exists in the code's Prometheus
  registry, and Prometheus scrapes each process on the port its settings give it;
- the HTTP gateway and the PMO dashboard run with the settings and secrets their commands read,
  listen where the published ports and health checks expect them, and the dashboard runs once.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from aidcore import ledger, rulebook
from aidcore.reference import default_reference
from aidcore.settings import ALL_GROUPS, DashboardSettings, GatewaySettings, RelaySettings, StackSettings, WorkerSettings
from aidledger import deploy
from aidledger.cli import build_parser
from schemas.topics import declared_topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
MONITORING = ROOT / "infra" / "monitoring"
COMPOSE_FILE = DEPLOY / "compose.yaml"
PROMETHEUS_FILE = MONITORING / "prometheus.yml"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
PROVISIONING = MONITORING / "grafana" / "provisioning"

KAFKA_IMAGE = "apache/kafka"
APP_IMAGE = "aidledger"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


COMPOSE = load_yaml(COMPOSE_FILE)
SERVICES: dict[str, dict] = COMPOSE["services"]


def image_name(service: dict) -> str:
    return str(service.get("image", "")).split(":", 1)[0]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def secret_names(service: dict) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


KAFKA_NODES = {name: s for name, s in SERVICES.items() if image_name(s) == KAFKA_IMAGE}


def roles(service: dict) -> set[str]:
    return set(environment(service).get("KAFKA_PROCESS_ROLES", "").split(","))


# combined nodes (broker and controller) or separate controllers: both layouts are checked the same
BROKERS = {name: s for name, s in KAFKA_NODES.items() if "broker" in roles(s)}
APP_SERVICES = {name: s for name, s in SERVICES.items() if image_name(s) == APP_IMAGE}
# the long-running processes with a /metrics endpoint: their CLI command -> compose service
PROCESS_SERVICES = {s["command"][0]: name for name, s in APP_SERVICES.items()
                    if s.get("command") and s["command"][0] in deploy.METRICS_SETTINGS}
# the HTTP processes: their CLI command -> compose service
HTTP_SERVICES = {s["command"][0]: name for name, s in APP_SERVICES.items()
                 if s.get("command") and s["command"][0] in deploy.HTTP_SETTINGS}
SETTING_VARIABLES = {f.metadata["env"] for group in ALL_GROUPS for f in fields(group)}


def test_the_files_describe_the_whole_stack():
    assert {"topics", "migrate", "rulebook", "postgres", "relay", "projector", "worker", "gateway", "dashboard",
            "prometheus", "grafana"} <= set(SERVICES)
    assert set(PROCESS_SERVICES) == set(deploy.METRICS_SETTINGS), "a worker, a projector and a relay service"
    assert HTTP_SERVICES == {"gateway": "gateway", "dashboard": "dashboard"}, "a gateway and a dashboard service"


# --- Kafka ----------------------------------------------------------------------------------------


def listeners(text: str) -> dict[str, tuple[str, int]]:
    """'INTERNAL://kafka-1:9092,CONTROLLER://:9093' -> {name: (host, port)}."""
    out = {}
    for item in filter(None, text.split(",")):
        name, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def test_three_kafka_brokers_in_kraft_mode():
    assert len(BROKERS) == 3, f"three Kafka brokers, found {sorted(BROKERS)}"
    envs = {name: environment(s) for name, s in KAFKA_NODES.items()}
    node_ids = {name: int(env["KAFKA_NODE_ID"]) for name, env in envs.items()}
    assert len(set(node_ids.values())) == len(node_ids), f"node ids must be unique: {node_ids}"
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1, "one cluster id for every node"
    for name, env in envs.items():
        assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env), f"{name}: KRaft needs no ZooKeeper"
    # The quorum voters are exactly the nodes with the controller role, at their controller listener.
    controllers = {}
    for name, env in envs.items():
        if "controller" in roles(KAFKA_NODES[name]):
            (controller_listener,) = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
            host = KAFKA_NODES[name].get("hostname", name)
            controllers[node_ids[name]] = (host, listeners(env["KAFKA_LISTENERS"])[controller_listener][1])
    assert len(controllers) >= 3 and len(controllers) % 2 == 1, "an odd quorum of at least three controllers"
    for name, env in envs.items():
        voters = {}
        for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
            node, address = voter.split("@")
            host, port = address.rsplit(":", 1)
            voters[int(node)] = (host, int(port))
        assert voters == controllers, f"{name}: quorum voters {voters}, controllers {controllers}"


DURABILITY = {
    "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
    "KAFKA_MIN_INSYNC_REPLICAS": "2",
    "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    # the consumer groups' offsets and transaction state are as precious as the topics
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
}


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_every_broker_is_durable(broker):
    env = environment(BROKERS[broker])
    wrong = {k: env.get(k) for k, v in DURABILITY.items() if env.get(k, "").lower() != v}
    assert not wrong, f"{broker}: {wrong}, expected {DURABILITY}"


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_every_broker_keeps_its_log_in_its_own_volume(broker):
    log_dir = environment(BROKERS[broker])["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in BROKERS[broker].get("volumes", [])}
    assert log_dir in mounts, f"{broker}: {log_dir} is not a mounted volume"
    assert mounts[log_dir] in COMPOSE.get("volumes", {}), f"{broker}: {mounts[log_dir]} is not a named volume"
    others = {v.split(":")[0] for name, s in KAFKA_NODES.items() if name != broker for v in s.get("volumes", [])}
    assert mounts[log_dir] not in others, f"{broker} shares its log volume"


def test_the_processes_bootstrap_from_every_broker():
    advertised = set()
    for name, s in BROKERS.items():
        env = environment(s)
        host, port = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
        advertised.add(f"{host}:{port}")
    for name, s in APP_SERVICES.items():
        bootstrap = StackSettings.from_env(environment(s)).kafka_bootstrap
        assert set(bootstrap.split(",")) == advertised, f"{name}: bootstrap {bootstrap}, brokers {advertised}"


# --- the topic job --------------------------------------------------------------------------------


def declaration(env: dict[str, str]) -> dict[str, tuple[int, dict[str, str]]]:
    return {s.name: (s.partitions, s.configs) for s in declared_topics(StackSettings.from_env(env)).values()}


def test_the_topic_job_runs_the_code_declaration():
    job = SERVICES["topics"]
    assert job["command"] == ["deploy", "topics"]
    entrypoint = (DEPLOY / "entrypoint.sh").read_text(encoding="utf-8")
    assert re.search(r'deploy\)\s*\n\s*shift\s*\n\s*exec python -m aidledger\.deploy "\$@"', entrypoint), \
        "entrypoint.sh must hand `deploy ...` to python -m aidledger.deploy"
    _, specs, replication = deploy.topic_plan(environment(job))
    assert replication == int(DURABILITY["KAFKA_DEFAULT_REPLICATION_FACTOR"])
    assert replication > int(DURABILITY["KAFKA_MIN_INSYNC_REPLICAS"]), "one broker down must not stop writes"
    assert replication <= len(BROKERS)
    assert {s.name for s in specs}, "the code declares topics"


@pytest.mark.parametrize("service", sorted(set(APP_SERVICES) - {"topics", "migrate"}))
def test_every_process_uses_the_topics_the_job_creates(service):
    """Names, partitions and configs derive from the prefix, partitions and consumer group settings:
    a process with other values would read or write topics that were never created."""
    job = declaration(environment(SERVICES["topics"]))
    assert declaration(environment(SERVICES[service])) == job
    stack = StackSettings.from_env(environment(SERVICES[service]))
    assert stack.replication == StackSettings.from_env(environment(SERVICES["topics"])).replication


class FakeAdmin:
    """Describes the cluster as kafka-python does, for the topics the fake create made."""

    created: list = []
    replication = 0

    def __init__(self, **kwargs):
        pass

    def describe_topics(self, names):
        return [{"name": s.name, "error_code": 0,
                 "partitions": [{"partition_index": p, "replica_nodes": list(range(self.replication))}
                                for p in range(s.partitions)]}
                for s in self.created if s.name in names]

    def close(self):
        pass


def test_the_topic_job_creates_every_declared_topic_with_its_partitions_and_configs(monkeypatch, capsys):
    import kafka.admin

    from infra import kafka as kafka_helpers

    calls = []

    def create_topics(bootstrap, specs, replication):
        calls.append((bootstrap, specs, replication))
        FakeAdmin.created, FakeAdmin.replication = specs, replication
        return [s.name for s in specs]

    monkeypatch.setattr(kafka_helpers, "create_topics", create_topics)
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", FakeAdmin)
    env = environment(SERVICES["topics"])
    assert deploy.main(["topics"], environ=env) == 0
    ((bootstrap, specs, replication),) = calls
    assert bootstrap == env["AIDLEDGER_KAFKA_BOOTSTRAP"]
    assert replication == 3
    assert {s.name: (s.partitions, s.configs) for s in specs} == declaration(environment(SERVICES["worker"]))
    assert all(s.configs["retention.ms"] == "-1" for s in specs), "the log is the truth: infinite retention"
    printed = capsys.readouterr().out
    assert all(f"created {s.name}" in printed for s in specs)


def test_topic_problems_name_missing_and_different_topics():
    specs = list(declared_topics(StackSettings.from_env({"AIDLEDGER_PARTITIONS": "4"})).values())

    def described(spec, partitions, replicas):
        return {"name": spec.name, "error_code": 0,
                "partitions": [{"partition_index": p, "replica_nodes": list(range(replicas))} for p in range(partitions)]}

    good = [described(s, 4, 3) for s in specs]
    assert deploy.topic_problems(good, specs, 3) == []
    bad = [described(specs[0], 8, 3), described(specs[1], 4, 1)] + good[3:]
    problems = deploy.topic_problems(bad, specs, 3)
    assert problems == [
        f"{specs[0].name}: 8 partitions, declared 4",
        f"{specs[1].name}: replication 1, declared 3",
        f"{specs[2].name}: missing",
    ]


# --- settings, commands and secrets ---------------------------------------------------------------


DEPLOYMENT_TEXTS = [
    COMPOSE_FILE, DEPLOY / "Dockerfile", DEPLOY / "entrypoint.sh", DEPLOY / "example.env",
    PROMETHEUS_FILE, MONITORING / "alerts.yml", ROOT / "docs" / "operations.md",
]


@pytest.mark.parametrize("path", DEPLOYMENT_TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_aidledger_variable_is_a_setting_the_code_reads(path):
    used = set(re.findall(r"\bAIDLEDGER_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    # AIDLEDGER_TEST_*: knobs of the test suite (the soak's length, where results go), not settings
    unknown = sorted(v for v in used - SETTING_VARIABLES if not v.startswith("AIDLEDGER_TEST_"))
    assert not unknown, f"{path.relative_to(ROOT)} names variables no settings group reads: {unknown}"


def test_the_compose_file_sets_settings_at_all():
    # guards the test above: a compose file with no AIDLEDGER_ variable would pass it vacuously
    assert {"AIDLEDGER_KAFKA_BOOTSTRAP", "AIDLEDGER_DATABASE_URL", "AIDLEDGER_REPLICATION"} <= set(environment(SERVICES["worker"]))


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_every_command_is_a_real_command(service):
    command = SERVICES[service].get("command")
    if command is None:
        assert "tools" in SERVICES[service].get("profiles", []), f"{service} runs nothing"
        return
    if command[0] == "deploy":
        with pytest.raises(SystemExit) as done:
            deploy.main([*command[1:], "--help"])
        assert done.value.code == 0
    else:
        assert build_parser().parse_args(command).command == command[0]


@pytest.mark.parametrize("process", sorted(PROCESS_SERVICES))
def test_every_process_has_a_health_check_on_its_own_metrics(process):
    test = SERVICES[PROCESS_SERVICES[process]]["healthcheck"]["test"]
    assert test[-3:] == ["aidledger.deploy", "health", process]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_secret_is_written_into_the_compose_file(service):
    env = environment(SERVICES[service])
    assert "AIDLEDGER_NIK_TOKEN_KEY" not in env, "the token key comes from a secret file"
    spelled_out = [k for k in env if re.search(r"PASSWORD$|SECRET$|_KEY$", k)]
    assert not spelled_out, f"{service}: {spelled_out} (use the *_FILE variant and a secret)"
    url = env.get("AIDLEDGER_DATABASE_URL")
    if url:
        assert urlsplit(url).password is None, f"{service}: a password in AIDLEDGER_DATABASE_URL"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_secret_file_a_service_reads_is_given_to_it(service):
    for key, value in environment(SERVICES[service]).items():
        if value.startswith("/run/secrets/"):
            name = PurePosixPath(value).name
            assert name in secret_names(SERVICES[service]), f"{service}: {key}={value} but no secret {name}"
            assert name in COMPOSE["secrets"]


def test_secrets_live_in_files_that_git_ignores():
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    for name, secret in COMPOSE["secrets"].items():
        path = PurePosixPath(secret["file"])
        assert path.parts[0] == "secrets" or path.parts[:2] == (".", "secrets"), f"{name}: {path}"
    assert "secrets/" in ignored and ".env" in ignored


def test_only_intake_holds_the_token_key():
    """Intake (the operator tool's `ingest`, the gateway's submissions) and `trail` tokenize NIKs;
    the worker, projector, relay and dashboard never need the key."""
    holders = {name for name, s in SERVICES.items() if "nik_token_key" in secret_names(s)}
    assert holders == {"cli", HTTP_SERVICES["gateway"]}


def test_the_image_is_the_package_on_python_3_11_slim():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", dockerfile, re.M)
    assert re.search(r"^RUN pip install [^\n]*\s\.(\s|$)", dockerfile, re.M)
    assert "infra/deploy/entrypoint.sh" in dockerfile
    for service in APP_SERVICES.values():
        assert service["build"]["dockerfile"] == "infra/deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT


# --- metrics: the code's registry -----------------------------------------------------------------

METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
PACKAGES = ("aidcore", "schemas", "streams", "projections", "connectors", "infra", "aidledger")


def metric_modules() -> list[str]:
    """Every module that creates a prometheus_client metric, found in the source."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "prometheus_client" for a in node.names if a.name in METRIC_CLASSES}
            if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names for n in ast.walk(tree)):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


SERIES_SUFFIXES = {
    "counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "stateset": ("",),
}


@pytest.fixture(scope="module")
def registry() -> dict[str, set[str]]:
    """Series name -> label names, for every aidledger metric the code defines. Label names of a
    metric that has no child yet are not in `collect()`: they come from the collector itself."""
    for module in metric_modules():
        importlib.import_module(module)
    series = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("aidledger_"):
            continue
        labels = set(getattr(REGISTRY._names_to_collectors[family.name], "_labelnames", ()))
        for suffix in SERIES_SUFFIXES[family.type]:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def test_the_registry_holds_the_metrics_of_every_process(registry):
    assert {"streams.metrics", "projections.projector", "connectors.relay"} <= set(metric_modules())
    for name in ("aidledger_worker_events_total", "aidledger_projector_lag_records", "aidledger_relay_published_total",
                 "aidledger_ingest_to_alert_seconds_bucket"):
        assert name in registry
    assert registry["aidledger_worker_consumer_lag_records"] == {"topic", "partition"}
    assert registry["aidledger_worker_alerts_total"] == {"rule_id", "regency_code"}
    assert registry["aidledger_projection_table_rows"] == {"table"}


# units last, counters in _total, histograms in a base unit; no label that could carry a person
UNIT_SUFFIXES = ("_seconds", "_bytes", "_records", "_rows", "_objects", "_partitions", "_persons", "_households")
PERSONAL_LABEL = re.compile(r"nik|token|person|name|kk", re.I)


def test_every_metric_follows_the_prometheus_naming_conventions(registry):
    families = {family.name: family.type for family in REGISTRY.collect() if family.name.startswith("aidledger_")}
    assert families
    for name, kind in families.items():
        assert re.fullmatch(r"aidledger_[a-z0-9_]+", name), name
        if kind == "counter":
            assert f"{name}_total" in registry and not name.endswith("_total"), name
        elif kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram is in a base unit"
        elif kind == "gauge":
            assert name.endswith(UNIT_SUFFIXES), f"{name}: a gauge names its unit last"
    for series, labels in registry.items():
        assert not [label for label in labels if PERSONAL_LABEL.search(label)], f"{series}: {labels}"


# --- PromQL: which metrics and labels an expression uses ------------------------------------------

# every rule id an alert can carry
RULE_IDS = frozenset(rulebook.RULE_IDS) | {ledger.RULE_MODIFIED_RESUBMISSION}
# series that Prometheus itself adds for every target, and the labels it puts on every target
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
# Grafana's variables are not PromQL: stand-ins with the same syntax role
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promql_uses(expr: str) -> tuple[set[str], set[str]]:
    """(series names, label names) an expression refers to: selectors, matchers, by/without,
    on/ignoring and group_left/group_right."""
    for variable, stand_in in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, stand_in)
    names: set[str] = set()
    labels: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names, labels


def rule_id_matchers(expr: str) -> list[tuple[str, str]]:
    """(operator, value) of every matcher on the rule_id label in an expression."""
    for variable, stand_in in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, stand_in)
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.extend((str(m.op), m.value) for m in node.matchers.matchers if m.name == "rule_id")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def unknown_rule_ids(expr: str) -> list[str]:
    """rule_id values (=) or patterns (=~) in `expr` that name or match no rule of the code: an
    alert on a renamed rule would never fire."""
    out = []
    for op, value in rule_id_matchers(expr):
        if op.endswith("NotEqual") or op.endswith("NotRe"):
            continue
        if op.endswith("Re"):
            if not any(re.fullmatch(value, rule) for rule in RULE_IDS):
                out.append(f"rule_id=~{value!r} matches no rule")
        elif value not in RULE_IDS:
            out.append(f"rule_id={value!r} is no rule")
    return out


def promql_problems(expr: str, registry: dict[str, set[str]], shown_labels: set[str] = frozenset()) -> list[str]:
    """What in `expr` (and in the labels its legend or annotations show) the code does not define."""
    names, labels = promql_uses(expr)
    known = {**registry, **PROMETHEUS_SERIES}
    problems = [f"metric {n} is not defined by the code" for n in sorted(names - set(known))]
    available = set(TARGET_LABELS).union(*(known.get(n, set()) for n in names))
    problems += [f"label {label} is on none of {sorted(names)}" for label in sorted((labels | shown_labels) - available)]
    return problems + unknown_rule_ids(expr)


def test_promql_uses_reads_selectors_and_groupings():
    names, labels = promql_uses(
        'sum by (partition) (rate(a_total{code!~"x.+"}[$__rate_interval])) > on(job) group_left(rule_id) b'
        ' and histogram_quantile(0.9, sum without (le) (rate(c_bucket[5m])))')
    assert names == {"a_total", "b", "c_bucket"}
    assert labels == {"partition", "code", "job", "rule_id", "le"}


def test_promql_problems_flag_unknown_metrics_and_labels():
    registry = {"x_total": {"code"}, "h_bucket": {"le"}}
    assert promql_problems('sum by (code) (rate(x_total[5m]))', registry) == []
    assert promql_problems('sum by (le) (rate(h_bucket[5m]))', registry) == []
    assert promql_problems('up{job="w"} == 0', registry) == []
    assert promql_problems('rate(y_total[5m])', registry) == ["metric y_total is not defined by the code"]
    assert promql_problems('sum by (regency) (x_total)', registry) == ["label regency is on none of ['x_total']"]
    assert promql_problems('x_total', registry, shown_labels={"rule_id"}) == ["label rule_id is on none of ['x_total']"]
    with pytest.raises(Exception):
        promql_uses("sum by (code (x_total)")


def test_rule_ids_in_matchers_must_be_rules_of_the_code():
    assert unknown_rule_ids('x{rule_id="duplicate_person_programme_period"}') == []
    assert unknown_rule_ids('x{rule_id=~"duplicate_.+"}') == []
    assert unknown_rule_ids('x{rule_id!="anything"}') == []
    assert unknown_rule_ids('x{rule_id="duplicate_person"}') == ["rule_id='duplicate_person' is no rule"]
    assert unknown_rule_ids('x{rule_id=~"dup_.+"}') == ["rule_id=~'dup_.+' matches no rule"]


# --- alert rules ------------------------------------------------------------------------------


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(MONITORING / "alerts.yml")["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_every_alert_rule_uses_only_metrics_and_labels_of_the_code(rule, registry):
    shown = set()
    for text in rule.get("annotations", {}).values():
        shown.update(re.findall(r"\$labels\.(\w+)", text))
    problems = promql_problems(rule["expr"], registry, shown)
    assert not problems, f"{rule['alert']}: {problems}"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: every rule says how long it must hold"


def test_the_operations_guide_says_what_to_do_for_every_alert():
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [rule["alert"] for rule in alert_rules() if f"`{rule['alert']}`" not in guide]
    assert not missing, f"docs/operations.md does not explain {missing}"


def test_the_alert_rule_tests_feed_series_the_code_defines(registry):
    """alerts_test.yml (run by promtool) proves nothing about the real metrics if its input series
    are named differently: they must be metrics and labels of the code too."""
    spec = load_yaml(MONITORING / "alerts_test.yml")
    assert spec["rule_files"] == ["alerts.yml"]
    tested = set()
    for case in spec["tests"]:
        for series in case["input_series"]:
            problems = promql_problems(series["series"], registry)
            assert not problems, f"{series['series']}: {problems}"
        tested |= {test["alertname"] for test in case.get("alert_rule_test", [])}
    assert tested <= {rule["alert"] for rule in alert_rules()}, "tests of alerts that do not exist"


def test_the_alert_rules_cover_stalls_lag_dead_letters_and_duplicate_spikes():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {"AidledgerTargetDown", "AidledgerPipelineStalled", "AidledgerWorkersStalled", "AidledgerConsumerLagGrowing",
            "AidledgerDeadLetterRateHigh", "AidledgerDuplicateAlertSpike"} <= set(rules)
    spike = promql_uses(rules["AidledgerDuplicateAlertSpike"]["expr"])
    assert "regency_code" in spike[1], "the duplicate spike is watched per regency"


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"),
                    reason="promtool is not installed (infra/system-packages.sh installs Debian's prometheus)")
@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]],
                         ids=["check-config", "test-rules"])
def test_promtool_accepts_the_config_and_the_rule_tests_pass(args):
    """Prometheus's own checker and rule unit tests: each alert fires on its case, with its labels
    and annotations, and stays quiet on its look-alike (alerts_test.yml)."""
    assert PROMTOOL, "promtool is missing: run infra/system-packages.sh"
    done = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the dashboard --------------------------------------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_targets() -> list[tuple[str, dict, dict]]:
    return [(f"{name}: {panel['title']} {t['refId']}", panel, t)
            for name, d in dashboards().items() for panel in panels(d) for t in panel.get("targets", [])]


@pytest.mark.parametrize(("where", "panel", "target"), dashboard_targets(), ids=[w for w, _, _ in dashboard_targets()])
def test_every_dashboard_query_uses_only_metrics_and_labels_of_the_code(where, panel, target, registry):
    shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    problems = promql_problems(target["expr"], registry, shown)
    assert not problems, f"{where}: {problems}"


def test_the_dashboard_shows_every_metric_of_the_pipeline(registry):
    used = set()
    for _, _, target in dashboard_targets():
        used |= promql_uses(target["expr"])[0]
    families = {re.sub(r"(_total|_bucket|_count|_sum|_created)$", "", n) for n in registry}
    shown = {re.sub(r"(_total|_bucket|_count|_sum|_created)$", "", n) for n in used}
    # the baseline agent runs in the benchmark only, never in a deployment
    missing = sorted(families - shown - {"aidledger_baseline_events"})
    assert not missing, f"metrics on no dashboard panel: {missing}"


def test_the_dashboard_reads_the_provisioned_prometheus():
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and "prometheus" in SERVICES
    assert url.port == 9090
    for where, panel, target in dashboard_targets():
        for ds in (panel.get("datasource"), target.get("datasource")):
            assert ds is None or ds["uid"] == source["uid"], f"{where}: data source {ds}"


# --- how the monitoring files reach the containers ------------------------------------------------


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> repository path of the bind mounts from the repository."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def test_prometheus_reads_the_config_and_rules_of_this_repository():
    service = SERVICES["prometheus"]
    (config_flag,) = [a for a in service["command"] if a.startswith("--config.file=")]
    config_in_container = PurePosixPath(config_flag.split("=", 1)[1])
    mapped = mounts(service)
    assert mapped[str(config_in_container)] == PROMETHEUS_FILE.resolve()
    rule_files = load_yaml(PROMETHEUS_FILE)["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        in_container = str(config_in_container.parent / rule_file)
        assert mapped.get(in_container) == (MONITORING / rule_file).resolve(), f"{rule_file} is not mounted beside the config"


def test_grafana_provisions_the_dashboards_of_this_repository():
    mapped = mounts(SERVICES["grafana"])
    assert mapped["/etc/grafana/provisioning"] == PROVISIONING.resolve()
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "aidledger.yaml")["providers"]
    assert mapped[provider["options"]["path"]] == DASHBOARDS.resolve()
    assert dashboards(), "no dashboard JSON"


# --- scrape targets -------------------------------------------------------------------------------


def scrape_targets() -> dict[str, set[tuple[str, int]]]:
    jobs = {}
    for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]:
        targets = set()
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets.update((name, int(dns["port"])) for name in dns["names"])
        jobs[job["job_name"]] = targets
    return jobs


@pytest.mark.parametrize("process", sorted(PROCESS_SERVICES))
def test_prometheus_scrapes_each_process_on_the_port_its_settings_give(process):
    service = PROCESS_SERVICES[process]
    port = deploy.metrics_port(process, environment(SERVICES[service]))
    scraping = [job for job, targets in scrape_targets().items() if (service, port) in targets]
    assert scraping, f"no scrape job has {service}:{port}; targets: {scrape_targets()}"


def test_every_scrape_target_is_a_service_of_the_stack():
    for job, targets in scrape_targets().items():
        for host, _ in targets:
            assert host == "localhost" or host in SERVICES, f"{job}: {host} is no compose service"


def test_metrics_port_follows_the_settings():
    assert deploy.metrics_port("worker", {}) == WorkerSettings().metrics_port
    assert deploy.metrics_port("relay", {}) == RelaySettings().metrics_port
    assert deploy.metrics_port("project", {"AIDLEDGER_PROJECTOR_METRICS_PORT": "9700"}) == 9700


# --- the doors: HTTP gateway and PMO dashboard ----------------------------------------------------


def http_settings(process: str):
    return deploy.HTTP_SETTINGS[process].from_env(environment(SERVICES[HTTP_SERVICES[process]]))


def app_paths(process: str) -> set[str]:
    """The routes the process's app serves, built as its command builds it (nothing connects)."""
    from projections import cases, queries

    if process == "gateway":
        from connectors.gateway import GatewayContext, create_app
        app = create_app(GatewaySettings(), GatewayContext("postgresql://unused", bytes(16), default_reference(),
                                                           "ledger", "alerts"))
    else:
        from connectors.dashboard import DashboardContext, create_app
        app = create_app(DashboardSettings(), DashboardContext("postgresql://unused", default_reference(), bytes(16),
                                                               cases, queries.trail))
    return {getattr(route, "path", "") for route in app.router.routes}


def published(service: dict) -> list[tuple[str, str, int]]:
    """(host address, host port or range, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        *address, host_ports, container_port = str(port).split(":")  # [ADDRESS:]HOST_PORT[-LAST]:CONTAINER_PORT
        out.append((":".join(address), host_ports, int(container_port)))
    return out


def completed_before(name: str) -> set[str]:
    """The one-shot jobs that must have exited 0 before `name` starts, directly or through others."""
    done = set()
    for dependency, condition in (SERVICES[name].get("depends_on") or {}).items():
        if condition.get("condition") == "service_completed_successfully":
            done |= {dependency} | completed_before(dependency)
    return done


@pytest.mark.parametrize("process", sorted(deploy.HTTP_SETTINGS))
def test_every_http_process_listens_where_its_port_is_published(process):
    service = SERVICES[HTTP_SERVICES[process]]
    settings = http_settings(process)
    assert settings.host in ("0.0.0.0", "::"), f"{process} listens on {settings.host}: unreachable from outside its container"
    ports = published(service)
    assert ports, f"{process} publishes no port"
    for address, _, container_port in ports:
        assert container_port == settings.port, f"{process}: publishes container port {container_port}, listens on {settings.port}"
        assert address == "127.0.0.1", f"{process}: plain HTTP published on {address or 'every address'}: keep it behind the TLS proxy"


@pytest.mark.parametrize("process", sorted(deploy.HTTP_SETTINGS))
def test_every_http_process_is_checked_on_a_path_it_serves(process):
    service = SERVICES[HTTP_SERVICES[process]]
    assert service["healthcheck"]["test"][-3:] == ["aidledger.deploy", "health", process]
    url = urlsplit(deploy.health_url(process, environment(service)))
    assert (url.hostname, url.port) == ("127.0.0.1", http_settings(process).port)
    assert url.path in app_paths(process)


@pytest.mark.parametrize("process", sorted(deploy.HTTP_SETTINGS))
def test_every_http_process_runs_on_a_migrated_database_and_restarts(process):
    service = SERVICES[HTTP_SERVICES[process]]
    assert "migrate" in completed_before(HTTP_SERVICES[process])
    assert service["restart"] == "unless-stopped"
    env = environment(service)
    assert StackSettings.from_env(env).database_url and env["DB_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "db_password" in secret_names(service)


def test_the_gateway_reads_the_token_key_from_its_secret():
    """Intake tokenizes NIKs: without the key file the gateway would look for <home>/secrets, which a
    container does not have, and refuse to start."""
    service = SERVICES[HTTP_SERVICES["gateway"]]
    key_file = StackSettings.from_env(environment(service)).nik_token_key_file
    assert PurePosixPath(key_file).parent == PurePosixPath("/run/secrets")
    assert PurePosixPath(key_file).name in secret_names(service) and PurePosixPath(key_file).name in COMPOSE["secrets"]


def test_only_the_gateway_opens_sealed_identities_with_the_key_from_its_secret():
    """The submissions door runs in the gateway and opens what the SDK seals: without the key file
    the gateway would look for <home>/secrets, which a container does not have, and refuse to start."""
    holders = {name for name, s in SERVICES.items() if "submissions_key" in secret_names(s)}
    assert holders == {HTTP_SERVICES["gateway"]}
    settings = StackSettings.from_env(environment(SERVICES[HTTP_SERVICES["gateway"]]))
    key_file = PurePosixPath(settings.submissions_key_file)
    assert not settings.submissions_key and key_file.parent == PurePosixPath("/run/secrets")
    assert key_file.name in COMPOSE["secrets"]


def test_the_dashboard_signs_sessions_with_one_key_from_a_secret():
    """Without the key file each container would make its own key on start, and every restart would
    sign everyone out; the cookie is Secure because the dashboard is served through HTTPS."""
    service = SERVICES[HTTP_SERVICES["dashboard"]]
    settings = http_settings("dashboard")
    key = PurePosixPath(settings.session_key_file)
    assert key.parent == PurePosixPath("/run/secrets")
    assert key.name in secret_names(service) and key.name in COMPOSE["secrets"]
    assert settings.secure_cookies


def test_the_dashboard_runs_exactly_once_and_the_gateway_may_scale():
    """The dashboard's live feed listens per process: one replica, on a fixed host port so that a
    second one cannot start. Gateway replicas each get a host port of the published range."""
    dashboard = SERVICES[HTTP_SERVICES["dashboard"]]
    assert dashboard["deploy"]["replicas"] == 1
    assert all(ports.isdigit() for _, ports, _ in published(dashboard)), "a fixed host port, no range"
    gateway = SERVICES[HTTP_SERVICES["gateway"]]
    ((_, ports, _),) = published(gateway)
    first, _, last = ports.partition("-")
    assert int(last or first) - int(first) + 1 >= gateway.get("deploy", {}).get("replicas", 1)
    assert int(last or first) > int(first), "a range of host ports, so that the gateway can scale"


@pytest.mark.parametrize("process", sorted(deploy.HTTP_SETTINGS))
def test_prometheus_scrapes_the_http_processes_that_serve_metrics(process):
    service = HTTP_SERVICES[process]
    scraping = {job for job, targets in scrape_targets().items() if any(host == service for host, _ in targets)}
    if "/metrics" in app_paths(process):
        port = http_settings(process).port
        assert [job for job, targets in scrape_targets().items() if (service, port) in targets], \
            f"no scrape job has {service}:{port}"
    else:
        assert not scraping, f"{service} serves no /metrics, yet {scraping} scrape it"


def test_the_health_step_asks_the_http_processes_healthz():
    """A real HTTP server stands in for the gateway: 200 on /healthz is healthy, no answer is not."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    env = {"AIDLEDGER_GATEWAY_HOST": "0.0.0.0", "AIDLEDGER_GATEWAY_PORT": str(server.server_port)}
    try:
        assert deploy.main(["health", "gateway"], environ=env) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert deploy.main(["health", "gateway"], environ=env) == 1
