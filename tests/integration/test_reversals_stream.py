"""Reversals on the real stack: a reversal voids the case it ends, one that takes back too much
and one whose original never comes are dead-lettered with their codes (the latter after the
rulebook's wait), and one that comes before its original applies when the original arrives."""

from __future__ import annotations

import json

import psycopg
import pytest

from aidcore.ledger import pending_reversals, totals
from aidcore.rulebook import default_rulebook_text
from infra.stack import Stack
from schemas import codec
from streams import state as st

from conftest import Cli, read_topic, stack_environ, wait_until

A = "1871014504850201"
B = "1871014504850202"
KK_A = "1871010101100201"


def payment(ref: str, nik: str, programme: str, amount: int, **extra) -> dict:
    row = {"source_system": "SIKS-NG", "source_ref": ref, "source_type": "APBN", "agency_code": "KEMENSOS",
           "programme_code": programme, "nik": nik, "kk": KK_A if nik == A else "", "recipient_name": "Warga",
           "amount_idr": amount, "kind": "CASH", "period": "2026-04", "disbursed_at": "2026-04-03T10:00:00+07:00",
           "channel": "BANK_TRANSFER", "region_code": "1871011001", "funding_account": f"FA-{programme}"}
    row.update(extra)
    return row


def reversal(ref: str, original: str, nik: str, amount: int) -> dict:
    return {"record_type": "reversal", "source_system": "SIKS-NG", "source_ref": ref, "original_source_ref": original,
            "agency_code": "KEMENSOS", "nik": nik, "amount_idr": amount, "reason": "paid twice",
            "reversed_at": "2026-04-09T09:00:00+07:00"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    book = home / "short-wait.toml"
    book.write_text(default_rulebook_text().replace('version = "2026-11-01"', 'version = "short-wait"')
                    .replace("wait_seconds = 604_800", "wait_seconds = 3"))
    env = stack_environ(home)
    env.update(AIDLEDGER_RULEBOOK=str(book), AIDLEDGER_WORKER_EXPIRY_INTERVAL_S="0.5")
    s = Stack(home, env)
    s.start()
    yield s
    s.stop()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _stream_state(stack):
    """The person states the worker's changelog rebuilds to, as the worker rebuilds them."""
    parts: dict[int, st.PartitionState] = {}
    decoder = codec.codec(codec.STATE_DELTA)
    for record in read_topic(stack.bootstrap, stack.endpoints()["topics"]["state"], stack.stack.partitions):
        st.apply_delta(parts.setdefault(record.partition, st.PartitionState()), decoder.decode(record.value))
    return {key.hex(): st.unpack(blob) for part in parts.values() for key, blob in part.items()}


def _deadletters(stack) -> dict[str, int]:
    with psycopg.connect(stack.database_url) as conn:
        return dict(conn.execute("SELECT code, count(*) FROM ledger.deadletters GROUP BY code").fetchall())


def test_reversals_end_to_end(stack, tmp_path):
    cli = Cli(stack)
    first = [
        payment("P1", A, "PKH", 750_000),
        payment("P2", A, "PKH", 750_000, disbursed_at="2026-04-05T10:00:00+07:00"),
        reversal("R1", "P2", A, 750_000),  # ends the duplicate
        reversal("R2", "P1", A, 800_000),  # more than P1 holds
        reversal("R3", "P3", B, 200_000),  # before its original
        reversal("R4", "P9", B, 100_000),  # its original never comes
    ]
    out = json.loads(cli.run("ingest", _write(tmp_path / "first.jsonl", first), "--json").stdout)
    assert out["accepted"] == 6 and out["rejected"] == 0
    cli.run("ingest", _write(tmp_path / "second.jsonl", [payment("P3", B, "BPNT", 400_000)]))
    cli.run("wait", "--timeout", "120")

    alerts = json.loads(cli.run("alerts", "--json", "--rule", "duplicate_person_programme_period").stdout)["alerts"]
    (case,) = alerts
    assert case["status"] == "void_reversed" and case["rulebook_version"] == "short-wait"
    assert case["message"].startswith("No longer holds")
    # the stream's void revision knows no village; the projection keeps the case's
    assert case["region_code"] == "1871011001" and "Kota Bandar Lampung (village 1871011001)" in case["message"]

    wait_until(lambda: _deadletters(stack).get("reversal_original_unknown") == 1, 60,
               "the reversal of an original that never came to be dead-lettered after the wait")
    assert _deadletters(stack) == {"reversal_exceeds_original": 1, "reversal_original_unknown": 1}

    people = _stream_state(stack)
    token_a = next(t for t, s in people.items() if any(p.programme_code == "PKH" for p in s.values()))
    token_b = next(t for t, s in people.items() if any(p.programme_code == "BPNT" for p in s.values()))
    assert totals(people[token_a]) == {("PKH", "2026-04"): (750_000, 2)}
    assert totals(people[token_b]) == {("BPNT", "2026-04"): (200_000, 1)}
    assert not pending_reversals(people[token_b])  # R4 left the state when it was dead-lettered

    listed = json.loads(cli.run("deadletters", "--json").stdout)
    assert listed["by_code"] == {"reversal_exceeds_original": 1, "reversal_original_unknown": 1}
    assert all(d["record_kind"] == codec.REVERSAL and d["source"]["offset"] >= 0 for d in listed["deadletters"])
    assert A not in json.dumps(listed) and B not in json.dumps(listed)

    # once its original exists, the expired reversal is sent back and decided again, once
    cli.run("ingest", _write(tmp_path / "third.jsonl", [payment("P9", B, "PIP", 450_000)]))
    cli.run("wait", "--timeout", "120")
    first_replay = json.loads(cli.run("deadletters", "replay", "--code", "reversal_original_unknown", "--json").stdout)
    again = json.loads(cli.run("deadletters", "replay", "--code", "reversal_original_unknown", "--json").stdout)
    assert (first_replay["queued"], again["queued"], again["already_replayed"]) == (1, 0, 1)
    cli.run("wait", "--timeout", "120")
    people = _stream_state(stack)
    assert totals(people[token_b])[("PIP", "2026-04")] == (350_000, 1)
