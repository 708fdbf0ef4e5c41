"""`aidledger demo`: a fresh embedded stack, a synthetic Lampung dataset with planted cases,
ingest, wait until everything is projected, then a summary and a check of the alerts against
the dataset's answer key. Stops the stack at the end unless --keep-running.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import psycopg

from aidcore import nik as nikmod
from aidcore.ledger import RULE_DUPLICATE_PERSON, RULE_MODIFIED_RESUBMISSION
from aidcore.reference import default_reference
from aidcore.rupiah import rupiah
from connectors import synthetic
from connectors.intake import Progress, ingest_rows
from infra.stack import Stack, StackError, free_port_environ, load_endpoints, token_key
from projections.queries import alerts as alert_rows
from projections.queries import summary as summary_of
from schemas.topics import declared_topics

_STACK_MARKERS = ("postgres", "logs", "secrets")


def _fresh_home(home: Path) -> None:
    if home.exists():
        if load_endpoints(home) is not None:
            raise SystemExit(f"a stack is still recorded as running under {home}; stop it (Ctrl-C) or remove {home / 'endpoints.json'}")
        if any(p.name not in _STACK_MARKERS + ("input", "reports") for p in home.iterdir()):
            raise SystemExit(f"{home} holds files the demo did not make; choose another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)


def answer_key_check(dataset: synthetic.Dataset, alerts: list[dict], key: bytes) -> dict:
    """Precision and recall of the alerts against the planted cases, per rule."""

    def token(identity: str) -> str:
        return nikmod.person_token(key, identity) if nikmod.is_ascii_digits(identity, 16) else nikmod.provisional_token(key, identity)

    expected = {RULE_DUPLICATE_PERSON: set(), RULE_MODIFIED_RESUBMISSION: set()}
    for case in dataset.answer_key:
        if case.kind == "duplicate_person":
            expected[RULE_DUPLICATE_PERSON].add((token(case.nik), case.programme_code, case.period))
        elif case.kind == "modified_resubmission":
            system, ref = case.source_refs[0]
            expected[RULE_MODIFIED_RESUBMISSION].add((token(case.nik), system, ref))
    found = {RULE_DUPLICATE_PERSON: set(), RULE_MODIFIED_RESUBMISSION: set()}
    for a in alerts:
        if a["rule_id"] == RULE_DUPLICATE_PERSON:
            found[a["rule_id"]].add((a["subject_token"], a["programme_code"], a["period"]))
        elif a["rule_id"] == RULE_MODIFIED_RESUBMISSION:
            line = a["events"][0]
            found[a["rule_id"]].add((a["subject_token"], line["source_system"], line["source_ref"]))
    out = {}
    for rule in expected:
        hit = len(expected[rule] & found[rule])
        out[rule] = {
            "planted": len(expected[rule]),
            "alerted": len(found[rule]),
            "precision": hit / len(found[rule]) if found[rule] else 1.0,
            "recall": hit / len(expected[rule]) if expected[rule] else 1.0,
        }
    return out


def run_demo(args) -> int:
    home = Path(args.home).resolve() if args.home else Path(".aidledger/demo").resolve()
    _fresh_home(home)
    environ = free_port_environ(os.environ)
    t0 = time.monotonic()
    print(f"aidledger demo: starting the embedded stack under {home}", flush=True)
    stack = Stack(home, environ)
    stack.start()
    try:
        print(f"  broker {stack.bootstrap}, PostgreSQL {stack.database_url} ({time.monotonic() - t0:.1f}s)", flush=True)
        t1 = time.monotonic()
        dataset = synthetic.generate(args.records, seed=args.seed)
        input_path = home / "input" / "disbursements.jsonl"
        input_path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_jsonl(input_path, dataset.records)
        print(f"  generated {len(dataset.records):,} input records with {len(dataset.answer_key):,} planted cases "
              f"({time.monotonic() - t1:.1f}s) -> {input_path}", flush=True)

        t2 = time.monotonic()
        key = token_key(stack.stack, home)
        bar = Progress(len(dataset.records), "  ingest")
        from connectors.files import read_rows

        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            report = ingest_rows(
                conn, read_rows(input_path), source_name=input_path.name,
                ledger_topic=declared_topics(stack.stack)["ledger"].name, token_key=key,
                alerts_topic=declared_topics(stack.stack)["alerts"].name,
                reference=default_reference(), report_path=home / "reports" / "disbursements.rejections.csv",
                progress=lambda n: bar.update(n, n),
            )
        bar.close()
        ingest_s = time.monotonic() - t2
        print(f"  ingested in {ingest_s:.1f}s: {report.accepted:,} accepted, {report.redelivered:,} redelivered "
              f"(stored once), {report.rejected:,} rejected", flush=True)
        try:
            waited = stack.wait_caught_up(timeout_s=900)
        except StackError as exc:
            raise SystemExit(f"demo: {exc}") from None
        total_s = time.monotonic() - t2
        print(f"  processed and projected {waited:.1f}s after ingest finished "
              f"({report.accepted / total_s:,.0f} events/s from start of ingest to projected)", flush=True)

        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            summary = summary_of(conn, default_reference())
            alerts = alert_rows(conn, default_reference())
        _print_summary(summary, alerts)
        check = answer_key_check(dataset, alerts, key)
        print("\nAlerts against the planted answer key:")
        for rule, c in check.items():
            print(f"  {rule:<36} planted {c['planted']:>5,}  alerted {c['alerted']:>5,}  "
                  f"precision {c['precision']:.1%}  recall {c['recall']:.1%}")
        expected_rejections = sum(1 for c in dataset.answer_key if c.kind == "invalid")
        print(f"  invalid rows planted {expected_rejections:,}, rejected {report.rejected:,}")
        ok = all(c["precision"] == 1.0 and c["recall"] == 1.0 for c in check.values()) and expected_rejections == report.rejected
        print(f"\nEverything above in {time.monotonic() - t0:.1f}s.")
        if args.keep_running:
            print(f"The stack keeps running (Ctrl-C stops it). In another terminal: "
                  f".venv/bin/aidledger alerts --home {home}   .venv/bin/aidledger trail <NIK> --home {home}  "
                  f"(NIKs are in {input_path})", flush=True)
            stack.run_until_stopped()
        else:
            print("The stack is stopped. `make demo ARGS=--keep-running` leaves it running to explore with "
                  "`aidledger alerts` and `aidledger trail`.")
        return 0 if ok else 1
    finally:
        stack.stop()


def _print_summary(s: dict, alerts: list[dict]) -> None:
    i, led = s["intake"], s["ledger"]
    print("\nSummary")
    print(f"  input rows {i['rows']:,}: accepted {i['accepted']:,}, redelivered {i['redelivered']:,}, rejected {i['rejected']:,}")
    for code, n in i["rejected_by_code"].items():
        print(f"    rejected {n:>6,}  {code}")
    print(f"  ledger events {led['events']:,}: accepted {led['accepted']:,}; not accepted {led['not_accepted'] or 0}")
    print(f"  persons paid {led['persons']:,}; total {rupiah(led['amount_idr_total'])}")
    print("\n  Rupiah by programme")
    for k, v in s["amount_idr_by_programme"].items():
        print(f"    {k:<14} {rupiah(v):>22}")
    print("\n  Rupiah by regency")
    for k, v in s["amount_idr_by_regency"].items():
        print(f"    {k:<34} {rupiah(v):>22}")
    print("\n  Alerts by rule")
    for k, v in s["alerts_by_rule"].items():
        print(f"    {k:<36} {v:>6,}   at stake {rupiah(s['amount_idr_at_stake_by_rule'].get(k, 0))}")
    print("\n  Example alerts")
    shown = set()
    for a in alerts:
        if a["rule_id"] in shown:
            continue
        shown.add(a["rule_id"])
        print(f"    [{a['rule_id']}] {a['message']}")
    sys.stdout.flush()
