"""`aidledger demo`: a fresh embedded stack, a synthetic Lampung dataset with planted cases,
ingest, wait until everything is projected, then a summary and a check of the alerts against
the dataset's answer key: precision and recall for every rule, the rupiah at stake, the planted
reversals (voided cases, reversals still waiting for their original) and the rejected rows.
Stops the stack at the end unless --keep-running.

The reversals of unknown originals stay pending for the whole demo: the shipped rulebook lets a
reversal wait 7 days (from intake) before it is dead-lettered as reversal_original_unknown, and
the demo lasts seconds.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg

from aidcore import nik as nikmod
from aidcore.ledger import RULE_MODIFIED_RESUBMISSION
from aidcore.rulebook import RULE_IDS
from aidcore.reference import default_reference
from aidcore.rupiah import rupiah
from connectors import synthetic
from connectors.intake import REVERSALS, Progress, ingest_rows
from infra.stack import Stack, StackError, free_port_environ, load_endpoints, token_key
from projections.queries import alerts as alert_rows
from projections.queries import money_audit
from projections.queries import summary as summary_of
from schemas.topics import declared_topics

_STACK_MARKERS = ("postgres", "logs", "secrets")
REVERSAL_RATE = 0.0025  # a few hundred reversals in a default run


def _fresh_home(home: Path) -> None:
    if home.exists():
        if load_endpoints(home) is not None:
            raise SystemExit(f"a stack is still recorded as running under {home}; stop it (Ctrl-C) or remove {home / 'endpoints.json'}")
        if any(p.name not in _STACK_MARKERS + ("input", "reports") for p in home.iterdir()):
            raise SystemExit(f"{home} holds files the demo did not make; choose another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)


def _person_token(key: bytes, identity: str) -> str:
    if nikmod.is_ascii_digits(identity, 16):
        return nikmod.person_token(key, identity)
    return nikmod.provisional_token(key, identity)


def _case_key(case: synthetic.PlantedCase, key: bytes) -> tuple:
    """What identifies the alert a planted case must raise: rule, subject token, period and
    programme; a modified resubmission by the reference sent again."""
    person = _person_token(key, case.nik)
    if case.kind == "modified_resubmission":
        return (RULE_MODIFIED_RESUBMISSION, person, case.source_refs[0])
    subject = nikmod.kk_token(key, case.kk) if case.subject_kind == "HOUSEHOLD" and case.kk else person
    return (case.rule_id, subject, case.period, case.programme_code or "")


def _alert_key(alert: dict) -> tuple:
    if alert["rule_id"] == RULE_MODIFIED_RESUBMISSION:
        line = alert["events"][0]
        return (alert["rule_id"], alert["subject_token"], (line["source_system"], line["source_ref"]))
    return (alert["rule_id"], alert["subject_token"], alert["period"], alert["programme_code"] or "")


def _planted(dataset: synthetic.Dataset, key: bytes, status: str) -> dict[tuple, synthetic.PlantedCase]:
    return {_case_key(c, key): c for c in dataset.answer_key
            if c.status == status and (c.kind in synthetic.RULE_KINDS or c.kind == "modified_resubmission")}


def answer_key_check(dataset: synthetic.Dataset, alerts: list[dict], key: bytes) -> dict:
    """Per rule: precision and recall of the open alerts against the planted cases (an alert is
    a true positive if it is the one alert of a planted case's rule, subject, period and
    programme), and how many of the rupiah at stake the key knows the alerts got right. Void
    alerts are not positives; `reversal_check` accounts for them."""
    expected = _planted(dataset, key, "open")
    by_rule: dict[str, list[dict]] = {rule: [] for rule in RULE_IDS}
    for a in alerts:
        if a["status"] == "open":
            by_rule.setdefault(a["rule_id"], []).append(a)
    out = {}
    for rule, found in by_rule.items():
        planted = {k: c for k, c in expected.items() if k[0] == rule}
        hits: dict[tuple, dict] = {}
        for a in found:
            k = _alert_key(a)
            if k in planted and k not in hits:  # a second alert for one case is a false positive
                hits[k] = a
        known = [k for k in hits if planted[k].amount_idr_at_stake is not None]
        out[rule] = {
            "planted": len(planted),
            "alerted": len(found),
            "precision": len(hits) / len(found) if found else 1.0,
            "recall": len(hits) / len(planted) if planted else 1.0,
            "at_stake_known": len(known),
            "at_stake_right": sum(1 for k in known if hits[k]["amount_idr_at_stake"] == planted[k].amount_idr_at_stake),
        }
    return out


def reversal_check(dataset: synthetic.Dataset, alerts: list[dict], key: bytes) -> dict:
    """The planted reversals by kind, and the duplicates they take back: each must have ended as
    a void_reversed alert, and no other alert may have."""
    kinds = Counter(c.kind for c in dataset.answer_key if c.kind.startswith("reversal_"))
    expected = _planted(dataset, key, "void_reversed")
    void = {_alert_key(a) for a in alerts if a["status"] == "void_reversed"}
    return {
        "planted": sum(kinds.values()),
        "void": kinds["reversal_void"],
        "partial": kinds["reversal_partial"],
        "unknown": kinds["reversal_unknown"],
        "voided": len(void & set(expected)),
        "to_void": len(expected),
        "voided_unplanted": len(void - set(expected)),
    }


def _worker_outcomes(stack: Stack) -> Counter | None:
    """The workers' decisions by outcome, from their metrics (refused reversals are only in their
    dead letters); None if a worker does not answer."""
    out: Counter = Counter()
    prefix = 'aidledger_worker_events_total{outcome="'
    for name, url in stack.endpoints()["metrics"].items():
        if not name.startswith("worker"):
            continue
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:  # URLError and timeouts included
            return None
        for line in text.splitlines():
            if line.startswith(prefix):
                out[line[len(prefix):].split('"', 1)[0]] += int(float(line.rsplit(" ", 1)[1]))
    return out


def _print_check(check: dict, reversals: dict, pending: int | None, dead: int) -> bool:
    """The answer-key table; True when everything matches."""
    print("\nAlerts against the planted answer key (open alerts; void ones under reversals):")
    ok = True
    for rule, c in check.items():
        print(f"  {rule:<36} planted {c['planted']:>5,}  alerted {c['alerted']:>5,}  "
              f"precision {c['precision']:.1%}  recall {c['recall']:.1%}  "
              f"at stake right {c['at_stake_right']:,}/{c['at_stake_known']:,}")
        ok &= c["precision"] == 1.0 and c["recall"] == 1.0 and c["at_stake_right"] == c["at_stake_known"]
    r = reversals
    waiting = "not readable" if pending is None else f"{pending:,}/{r['unknown']:,}"
    print(f"  reversals planted {r['planted']:,} ({r['void']:,} of planted duplicates, {r['partial']:,} partial, "
          f"{r['unknown']:,} of unknown originals), voided cases {r['voided']:,}/{r['to_void']:,}"
          + (f", {r['voided_unplanted']:,} voided without a planted reversal" if r["voided_unplanted"] else ""))
    print(f"  reversals of unknown originals waiting {waiting}, dead-lettered {dead:,} "
          f"(they wait up to the rulebook's 7 days)")
    ok &= r["voided"] == r["to_void"] and not r["voided_unplanted"] and dead == 0
    ok &= pending is None or pending == r["unknown"]
    return ok


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
        dataset = synthetic.generate(args.records, seed=args.seed, reversal_rate=REVERSAL_RATE)
        input_path = home / "input" / "disbursements.jsonl"
        input_path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_jsonl(input_path, dataset.records)
        budget, short_lines = synthetic.budget_records(dataset.records)
        budget_path = input_path.with_name("budget.jsonl")
        synthetic.write_jsonl(budget_path, budget)
        print(f"  generated {len(dataset.records):,} input records with {len(dataset.answer_key):,} planted cases, "
              f"resends, reversals and invalid rows ({time.monotonic() - t1:.1f}s) -> {input_path}; "
              f"{len(budget):,} allocations and releases, {len(short_lines)} budget line planted short -> "
              f"{budget_path}", flush=True)

        t2 = time.monotonic()
        key = token_key(stack.stack, home)
        bar = Progress(len(dataset.records), "  ingest")
        from connectors.files import read_rows

        topics = declared_topics(stack.stack)
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            def ingest(path: Path, progress=None):
                return ingest_rows(conn, read_rows(path), source_name=path.name, ledger_topic=topics["ledger"].name,
                                   token_key=key, alerts_topic=topics["alerts"].name, reference=default_reference(),
                                   report_path=home / "reports" / f"{path.stem}.rejections.csv", progress=progress)

            budget_report = ingest(budget_path)
            report = ingest(input_path, lambda n: bar.update(n, n))
        bar.close()
        ingest_s = time.monotonic() - t2
        print(f"  ingested in {ingest_s:.1f}s: {report.accepted:,} accepted "
              f"({report.accepted_by_programme[REVERSALS]:,} of them reversals, taking back "
              f"{rupiah(-report.accepted_idr_by_programme[REVERSALS])}), {report.redelivered:,} redelivered "
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
        outcomes = _worker_outcomes(stack)
        dead = summary["deadletters_by_code"].get("reversal_original_unknown", 0)
        ok = _print_check(answer_key_check(dataset, alerts, key), reversal_check(dataset, alerts, key),
                          None if outcomes is None else outcomes["reversal_pending"], dead)
        with psycopg.connect(stack.database_url) as conn:
            money = money_audit(conn, None)
        ok &= _print_money_check(money, short_lines, budget_report.rejected)
        expected_rejections = sum(1 for c in dataset.answer_key if c.kind == "invalid")
        print(f"  invalid rows planted {expected_rejections:,}, rejected {report.rejected:,}")
        ok &= expected_rejections == report.rejected
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


def _print_money_check(money: dict, short_lines: list[str], budget_rejected: int) -> bool:
    """The audit must find exactly the budget lines planted short, and the books must reconcile."""
    found = sorted(r["funding_account"] for r in money["overspending"]["budget_lines"])
    check = money["reconciliation"]
    ok = found == short_lines and check["holds"] and budget_rejected == 0
    print(f"  money audit: budget lines charged beyond their allocation {', '.join(found) or 'none'} "
          f"(planted {', '.join(short_lines) or 'none'}); books {'reconcile' if check['holds'] else 'DO NOT RECONCILE'}"
          f"{'' if budget_rejected == 0 else f'; {budget_rejected} budget rows rejected'} -> {'ok' if ok else 'FAILED'}")
    return ok


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
    opened, at_stake, void = Counter(), Counter(), Counter()
    for a in alerts:
        if a["status"] == "open":
            opened[a["rule_id"]] += 1
            at_stake[a["rule_id"]] += a["amount_idr_at_stake"]
        else:
            void[a["rule_id"]] += 1
    print("\n  Open alerts by rule (void: held only by a payment since reversed)")
    for k in sorted(set(opened) | set(void)):
        print(f"    {k:<36} {opened[k]:>6,}   at stake {rupiah(at_stake[k])}" + (f"   void {void[k]:,}" if void[k] else ""))
    print("\n  Example alerts")
    shown = set()
    for a in alerts:  # one open alert of each rule, and one void alert
        kind = a["rule_id"] if a["status"] == "open" else a["status"]
        if kind not in shown:
            shown.add(kind)
            label = a["rule_id"] if a["status"] == "open" else f"{a['rule_id']}, {a['status']}"
            print(f"    [{label}] {a['message']}")
    sys.stdout.flush()
