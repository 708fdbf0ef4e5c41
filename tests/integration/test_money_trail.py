"""The money trail on the real stack: allocations, treasury releases, payments and reversals
ingested through the CLI; balances that reconcile; the overspending report listing exactly what
was planted; the trail of a person and of a record, now and as of an earlier moment; and person
totals in PostgreSQL equal to the stream's, whatever the stream did with each reversal (one
applied on arrival, one waiting for its original, one refused, one whose original came only
after the rulebook's wait)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import psycopg
import pytest

from aidcore.ledger import totals as stream_totals
from aidcore.rulebook import default_rulebook_text
from infra.stack import Stack
from schemas import codec
from streams import state as st

from conftest import Cli, read_topic, stack_environ, wait_until

pytestmark = pytest.mark.integration

A, B, C = "1871014504850201", "1871014504850202", "1871014504850203"
WAIT_S = 20  # the rulebook's wait for a reversal's original


def payment(ref: str, nik: str, programme: str, amount: int, agency: str = "KEMENSOS", line: str | None = None,
            source_type: str = "APBN", **extra) -> dict:
    row = {"source_system": "SIKS-NG", "source_ref": ref, "source_type": source_type, "agency_code": agency,
           "programme_code": programme, "nik": nik, "kk": "", "recipient_name": "Warga", "amount_idr": amount,
           "kind": "CASH", "period": "2026-04", "disbursed_at": "2026-04-03T10:00:00+07:00", "channel": "BANK_TRANSFER",
           "region_code": "1871011001", "funding_account": line or f"APBN-2026-{programme}"}
    row.update(extra)
    return row


def reversal(ref: str, original: str, nik: str, amount: int) -> dict:
    return {"record_type": "reversal", "source_system": "SIKS-NG", "source_ref": ref, "original_source_ref": original,
            "agency_code": "KEMENSOS", "nik": nik, "amount_idr": amount, "reason": "paid twice",
            "reversed_at": "2026-04-09T09:00:00+07:00"}


def allocation(ref: str, line: str, agency: str, programme: str, amount: int, source_type: str = "APBN") -> dict:
    return {"record_type": "allocation", "source_system": "SIPD", "source_ref": ref, "source_type": source_type,
            "funding_account": line, "agency_code": agency, "programme_code": programme, "fiscal_year": 2026,
            "amount_idr": amount, "allocated_at": "2026-01-05T09:00:00+07:00"}


def release(ref: str, line: str, agency: str, amount: int, source_type: str = "APBN") -> dict:
    return {"record_type": "release", "source_system": "SPAN", "source_ref": ref, "source_type": source_type,
            "funding_account": line, "agency_code": agency, "amount_idr": amount,
            "released_at": "2026-02-02T10:00:00+07:00"}


BUDGET = [
    allocation("A-PKH", "APBN-2026-PKH", "KEMENSOS", "PKH", 3_000_000),
    allocation("A-BPNT", "APBN-2026-BPNT", "KEMENSOS", "BPNT", 400_000),  # paid 500,000: over
    allocation("A-PROV", "APBD-2026-SEMBAKO", "DINSOS-LPG", "PROV_SEMBAKO", 1_000_000, "APBD_PROV"),
    allocation("A-CSR", "CSR-2026", "CSR-PTX", "CSR_PANGAN", 50_000, "CSR"),  # paid 100,000: over
    release("T-1", "APBN-2026-PKH", "KEMENSOS", 2_500_000),
    release("T-2", "APBN-2026-BPNT", "KEMENSOS", 1_000_000),
    release("T-3", "APBD-2026-SEMBAKO", "DINSOS-LPG", 300_000, "APBD_PROV"),  # paid 450,000: over
    release("T-4", "CSR-2026", "CSR-PTX", 100_000, "CSR"),
]
FIRST = BUDGET + [
    payment("P1", A, "PKH", 750_000),
    payment("P2", A, "PKH", 750_000, disbursed_at="2026-04-05T10:00:00+07:00"),
    reversal("R1", "P2", A, 750_000),  # applied on arrival
    reversal("R2", "P1", A, 800_000),  # more than P1 holds: refused
    payment("P3", B, "BPNT", 200_000),
    payment("P4", C, "BPNT", 300_000),
    payment("P5", B, "PROV_SEMBAKO", 250_000, agency="DINSOS-LPG", line="APBD-2026-SEMBAKO", source_type="APBD_PROV"),
    payment("P6", C, "PROV_SEMBAKO", 200_000, agency="DINSOS-LPG", line="APBD-2026-SEMBAKO", source_type="APBD_PROV"),
    payment("P8", C, "CSR_PANGAN", 100_000, agency="CSR-PTX", line="CSR-2026", source_type="CSR", kind="IN_KIND",
            channel="GOODS"),
    reversal("R3", "P9", B, 100_000),  # before its original: waits for it
    reversal("R4", "P10", C, 150_000),  # its original comes only after the wait
]
SECOND = [
    payment("P9", B, "PKH", 400_000),
    payment("P7", A, "PKH", 750_000, period="2026-05"),
    allocation("A-PKH", "APBN-2026-PKH", "KEMENSOS", "PKH", 9_000_000),  # the same key, other content: refused
]
THIRD = [payment("P10", C, "PKH", 150_000)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("money-stack")
    book = home / "wait.toml"
    book.write_text(default_rulebook_text().replace('version = "2026-11-01"', 'version = "money-wait"')
                    .replace("wait_seconds = 604_800", f"wait_seconds = {WAIT_S}"))
    env = stack_environ(home)
    env.update(AIDLEDGER_RULEBOOK=str(book), AIDLEDGER_WORKER_EXPIRY_INTERVAL_S="0.5")
    s = Stack(home, env)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ledger(stack, tmp_path_factory):
    """Everything ingested in three rounds; returns the moment between the first and the second."""
    cli = Cli(stack)
    folder = tmp_path_factory.mktemp("money-files")

    def ingest(name, rows):
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return json.loads(cli.run("ingest", str(path), "--json").stdout)

    first = ingest("first.jsonl", FIRST)
    assert (first["accepted"], first["rejected"]) == (len(FIRST), 0)
    between = datetime.now(timezone.utc)  # after the first round's intake times, before the second's
    second = ingest("second.jsonl", SECOND)  # at once: R3 must not outwait the rulebook's wait for P9
    cli.run("wait", "--timeout", "120")
    assert second["rejections_by_code"] == {"exists_with_different_amount_idr": 1}
    wait_until(lambda: _deadletters(stack).get("reversal_original_unknown") == 1, WAIT_S + 60,
               "the reversal whose original had not come to be dead-lettered after the wait")
    ingest("third.jsonl", THIRD)
    cli.run("wait", "--timeout", "120")
    return between


def _deadletters(stack) -> dict[str, int]:
    with psycopg.connect(stack.database_url) as conn:
        return dict(conn.execute("SELECT code, count(*) FROM ledger.deadletters GROUP BY code").fetchall())


def _stream_state(stack):
    parts: dict[int, st.PartitionState] = {}
    decoder = codec.codec(codec.STATE_DELTA)
    for record in read_topic(stack.bootstrap, stack.endpoints()["topics"]["state"], stack.stack.partitions):
        st.apply_delta(parts.setdefault(record.partition, st.PartitionState()), decoder.decode(record.value))
    return {key.hex(): st.unpack(blob) for part in parts.values() for key, blob in part.items()}


def _json(cli, *args):
    return json.loads(cli.run(*args).stdout)


def test_budget_records_pass_the_stream_by_and_only_the_planted_reversals_are_dead_lettered(stack, ledger):
    assert _deadletters(stack) == {"reversal_exceeds_original": 1, "reversal_original_unknown": 1}
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT record_type, count(*), sum(amount_idr)::bigint FROM ledger.budget_events"
                            " WHERE accepted GROUP BY 1 ORDER BY 1").fetchall()
        assert rows == [("allocation", 4, 4_450_000), ("release", 4, 3_900_000)]
        assert conn.execute("SELECT source_ref, status FROM ledger.reversals ORDER BY source_ref").fetchall() == [
            ("R1", "applied"), ("R3", "applied"), ("R4", "removed")]


def test_the_books_reconcile(stack, ledger):
    report = _json(Cli(stack), "audit", "balances", "--json")
    check = report["reconciliation"]
    assert check["holds"] and check["sum_of_balances_idr"] == 0
    assert check["treasury_outflow_idr"] == check["agency_inflow_idr"] == 3_900_000
    held = report["balances"]
    assert sum(held.values()) == 0
    with psycopg.connect(stack.database_url) as conn:
        received = Counter(dict(conn.execute("SELECT agency_code, sum(amount_idr)::bigint FROM ledger.budget_events"
                                             " WHERE accepted AND record_type = 'release' GROUP BY 1").fetchall()))
        paid = Counter(dict(conn.execute("SELECT agency_code, sum(amount_idr)::bigint FROM ledger.events"
                                         " WHERE accepted GROUP BY 1").fetchall()))
        for agency, amount in conn.execute(
                "SELECT o.agency_code, sum(r.amount_idr)::bigint FROM ledger.reversals r JOIN ledger.events o"
                " ON o.event_id = r.original_event_id WHERE r.applied_at IS NOT NULL GROUP BY 1"):
            paid[agency] -= amount
        journal = {a: b for a, b in conn.execute("SELECT account, sum(amount_idr)::bigint FROM ledger.journal"
                                                 " GROUP BY 1") if b}
    assert paid == Counter({"KEMENSOS": 750_000 + 200_000 + 300_000 + 300_000 + 750_000 + 150_000,
                            "DINSOS-LPG": 450_000, "CSR-PTX": 100_000})
    for agency in set(received) | set(paid):
        assert received[agency] == paid[agency] + held.get(f"agency:{agency}", 0), agency
    assert -sum(b for a, b in held.items() if a.startswith("treasury:")) == sum(received.values())
    assert journal == held


def test_the_overspending_report_lists_exactly_what_was_planted(stack, ledger):
    report = _json(Cli(stack), "audit", "overspend", "--json")
    assert [(r["agency_code"], r["programme_code"], r["over_idr"]) for r in report["programmes"]] == [
        ("KEMENSOS", "BPNT", 100_000), ("CSR-PTX", "CSR_PANGAN", 50_000)]
    assert [(r["agency_code"], r["over_idr"]) for r in report["agencies_over_allocation"]] == [("CSR-PTX", 50_000)]
    assert [(r["agency_code"], r["received_idr"], r["disbursed_idr"]) for r in report["agencies_over_releases"]] == [
        ("DINSOS-LPG", 300_000, 450_000)]
    assert [(r["funding_account"], r["over_idr"]) for r in report["budget_lines"]] == [
        ("APBN-2026-BPNT", 100_000), ("CSR-2026", 50_000)]
    text = Cli(stack).run("audit").stdout
    assert "programme KEMENSOS BPNT" in text and "books reconcile" in text


def test_person_totals_are_net_of_reversals_and_equal_the_streams(stack, ledger):
    people = _stream_state(stack)
    with psycopg.connect(stack.database_url) as conn:
        projected = {(t, p, pe): (a, n) for t, p, pe, a, n in conn.execute(
            "SELECT person_token, programme_code, period, amount_idr_total, payments FROM ledger.person_totals")}
    streamed = {(token, p, pe): v for token, state in people.items() for (p, pe), v in stream_totals(state).items()}
    assert projected == streamed
    # R4's original came after the wait: the stream never applied R4, nor does the projection
    assert sorted(a for (_, p, _), (a, _) in projected.items() if p == "PKH") == [150_000, 300_000, 750_000, 750_000]


def test_the_trail_of_a_person_shows_the_path_of_each_payment_and_its_reversals(stack, ledger):
    cli = Cli(stack)
    with psycopg.connect(stack.database_url) as conn:
        logged = conn.execute("SELECT count(*) FROM vault.access_log").fetchone()[0]
    trail = _json(cli, "trail", A, "--json", "--why", "audit 7")
    by_ref = {e["source_ref"]: e for e in trail["events"]}
    assert sorted(by_ref) == ["P1", "P2", "P7"]
    p2 = by_ref["P2"]
    for field in ("event_id", "source_system", "source_type", "agency_code", "programme_code", "amount_idr", "kind",
                  "period", "disbursed_at", "channel", "region_code", "funding_account", "recorded_at", "accepted",
                  "outcome"):
        assert field in p2  # the fields the trail always had
    assert p2["net_amount_idr"] == 0
    assert [(r["source_ref"], r["status"], r["amount_idr"]) for r in p2["reversals"]] == [("R1", "applied", 750_000)]
    assert [(r["source_ref"], r["status"]) for r in by_ref["P1"]["reversals"]] == [("R2", "reversal_exceeds_original")]
    path = p2["path"]
    assert path["treasury"] == ["APBN"]
    assert (path["budget_line"]["funding_account"], path["budget_line"]["allocated_idr"],
            path["budget_line"]["released_to_agency_idr"]) == ("APBN-2026-PKH", 3_000_000, 2_500_000)
    assert [a["source_ref"] for a in path["budget_line"]["allocations"]] == ["A-PKH"]
    assert (path["agency"]["agency_code"], path["programme"]["programme_code"], path["channel"]) == (
        "KEMENSOS", "PKH", "BANK_TRANSFER")
    token = trail["person_token"]
    assert path["recipient"] == {"person_token": token, "account": f"recipient:{token}"}
    assert p2["postings"] == [{"account": "agency:KEMENSOS", "amount_idr": -750_000},
                              {"account": f"recipient:{token}", "amount_idr": 750_000},
                              {"account": "programme:KEMENSOS:PKH", "amount_idr": -750_000},
                              {"account": "budget:APBN-2026-PKH", "amount_idr": 750_000}]
    assert trail["balance_idr"] == 750_000 + 750_000
    assert trail["recipient_name"] == "Warga"
    text = cli.run("trail", A).stdout
    assert "budget line APBN-2026-PKH" in text and "reversal SIKS-NG/R1" in text
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM vault.access_log").fetchone()[0] == logged + 2
        assert conn.execute("SELECT why FROM vault.access_log ORDER BY at DESC LIMIT 1 OFFSET 1").fetchone()[0] == "audit 7"


def test_the_trail_as_of_an_earlier_moment_shows_the_ledger_as_it_stood(stack, ledger):
    cli = Cli(stack)
    moment = ledger.isoformat()
    then = _json(cli, "trail", B, "--json", "--as-of", moment)
    now = _json(cli, "trail", B, "--json")
    assert sorted(e["source_ref"] for e in then["events"]) == ["P3", "P5"]
    assert sorted(e["source_ref"] for e in now["events"]) == ["P3", "P5", "P9"]
    assert [(r["source_ref"], r["status"]) for r in then["reversals_without_payment"]] == [("R3", "pending")]
    (p9,) = [e for e in now["events"] if e["source_ref"] == "P9"]
    assert [(r["source_ref"], r["status"]) for r in p9["reversals"]] == [("R3", "applied")]
    assert p9["net_amount_idr"] == 300_000
    assert (then["balance_idr"], now["balance_idr"]) == (450_000, 750_000)
    assert then["as_of"] is not None and now["as_of"] is None
    # the allocation trail of A as of then: P7 (second round) not there yet
    assert sorted(e["source_ref"] for e in _json(cli, "trail", A, "--json", "--as-of", moment)["events"]) == ["P1", "P2"]
    # the accounts as of then: the second and third rounds' payments are not in them
    earlier = _json(cli, "audit", "balances", "--json", "--as-of", moment)
    assert earlier["balances"]["agency:KEMENSOS"] == 3_500_000 - (750_000 + 750_000 - 750_000 + 200_000 + 300_000)
    assert earlier["reconciliation"]["holds"]


def test_the_trail_of_a_record_by_its_source_reference(stack, ledger):
    cli = Cli(stack)
    paid = _json(cli, "trail", "--source-ref", "SIKS-NG", "P9", "--json")
    assert (paid["record_type"], paid["payment"]["source_ref"], paid["payment"]["net_amount_idr"]) == (
        "disbursement", "P9", 300_000)
    assert paid["payment"]["path"]["budget_line"]["funding_account"] == "APBN-2026-PKH"
    refused = _json(cli, "trail", "--source-ref", "SIKS-NG", "R2", "--json")
    assert (refused["record_type"], refused["payment"]["source_ref"], refused["reversal"]["status"]) == (
        "reversal", "P1", "reversal_exceeds_original")
    late = _json(cli, "trail", "--source-ref", "SIKS-NG", "R4", "--json")
    assert (late["reversal"]["status"], late["payment"]["net_amount_idr"]) == ("reversal_original_unknown", 150_000)
    budget = _json(cli, "trail", "--source-ref", "SIPD", "A-BPNT", "--json")
    assert budget["record_type"] == "allocation" and budget["budget_record"]["programme_code"] == "BPNT"
    assert budget["postings"] == [{"account": "budget:APBN-2026-BPNT", "amount_idr": -400_000},
                                  {"account": "programme:KEMENSOS:BPNT", "amount_idr": 400_000}]
    assert budget["budget_line"]["released_to_agency_idr"] == 1_000_000
    assert "recipient_name" not in budget
    before = cli.run("trail", "--source-ref", "SIKS-NG", "P9", "--as-of", ledger.isoformat(), check=False)
    assert before.returncode == 1  # P9 was not recorded yet
    missing = cli.run("trail", "--source-ref", "SIKS-NG", "NO-SUCH", check=False)
    assert missing.returncode == 1 and "nothing recorded" in missing.stderr
    assert A not in json.dumps(paid) and B not in json.dumps(paid)


def test_the_status_summary_has_the_money(stack, ledger):
    money = _json(Cli(stack), "status")["money"]
    assert (money["allocated_idr"], money["released_idr"], money["reversed_idr"]) == (4_450_000, 3_900_000, 850_000)
    assert money["reversals_by_status"] == {"applied": 2, "removed": 1}
