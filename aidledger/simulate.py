"""What-if: replay the ledger's history under a proposed rulebook, beside the live system.

The log is read from offset zero to its current end with no consumer group, and both runs use
the core's own decisions (`aidcore.ledger.decide_batch`, then `aidcore.household
.decide_household_batch` on the postings), in memory: nothing is written to a topic, a state
or a database. The baseline run applies the rulebooks as they were in force (each activation on
the log from its position on); the proposed run applies the proposed rulebook to everything.
Their final open cases are compared by alert identity (rule, subject, period, fingerprint).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from aidcore.household import decide_household_batch
from aidcore.intake import Disbursement, Reversal
from aidcore.ledger import Alert, decide_batch
from aidcore.reference import Reference
from aidcore.rulebook import Rulebook, parse_rulebook
from schemas import codec

_BATCH = 5000


@dataclass(frozen=True)
class Replayed:
    events: int
    alerts: dict[str, Alert]  # final revision of every case, open or void


def replay(records_by_partition: dict[int, Sequence[bytes]], *, default: Rulebook, reference: Reference,
           proposed: Rulebook | None = None) -> Replayed:
    """Decide the whole history. `proposed` overrides every rulebook when given."""
    alerts: dict[str, Alert] = {}
    books: dict[str, Rulebook] = {default.version: default}
    postings_by_version: dict[str, list] = defaultdict(list)
    events = 0

    def keep(new: Iterable[Alert]) -> None:
        for a in new:
            held = alerts.get(a.alert_id)
            if held is None or a.revision >= held.revision:
                alerts[a.alert_id] = a

    for partition in sorted(records_by_partition):
        states: dict = {}
        book = proposed or default
        run: list = []

        def flush() -> None:
            nonlocal run
            for i in range(0, len(run), _BATCH):
                result = decide_batch(states, run[i:i + _BATCH], rulebook=book, reference=reference, now_us=0)
                states.update(result.changed)
                keep(result.alerts.values())
                postings_by_version[book.version].extend(result.postings)
            run = []

        for item in codec.decode_ledger_values(records_by_partition[partition]):
            if isinstance(item, codec.RulebookActivation):
                if proposed is None:
                    flush()
                    book = books.setdefault(item.version, parse_rulebook(item.text, reference))
            elif isinstance(item, (Disbursement, Reversal)):
                run.append(item)
                events += 1
        flush()
    if proposed is not None:
        books[proposed.version] = proposed
    households: dict = {}
    for version, postings in postings_by_version.items():
        for i in range(0, len(postings), _BATCH):
            result = decide_household_batch(households, postings[i:i + _BATCH], rulebook=books[version],
                                            reference=reference, now_us=0)
            households.update(result.changed)
            keep(result.alerts.values())
    return Replayed(events, alerts)


def compare(live: Replayed, proposed: Replayed, reference: Reference) -> dict:
    """Per rule and per regency: cases added and removed by the proposal, and the rupiah at stake."""
    def open_cases(r: Replayed) -> dict[str, Alert]:
        return {i: a for i, a in r.alerts.items() if a.status == "open"}

    before, after = open_cases(live), open_cases(proposed)
    rows: dict[tuple[str, str], dict] = {}

    def row(a: Alert) -> dict:
        regency = a.region_code[:4]
        return rows.setdefault((a.rule_id, regency), {
            "rule_id": a.rule_id, "regency_code": regency,
            "regency_name": reference.regency_name(a.region_code) if regency else "",
            "alerts_added": 0, "alerts_removed": 0, "idr_at_stake_added": 0, "idr_at_stake_removed": 0,
            "alerts_kept": 0,
        })

    for i, a in after.items():
        if i not in before:
            r = row(a)
            r["alerts_added"] += 1
            r["idr_at_stake_added"] += a.amount_idr_at_stake
        else:
            row(a)["alerts_kept"] += 1
    for i, a in before.items():
        if i not in after:
            r = row(a)
            r["alerts_removed"] += 1
            r["idr_at_stake_removed"] += a.amount_idr_at_stake
    ordered = [rows[k] for k in sorted(rows)]
    return {
        "events": live.events,
        "open_alerts_in_force": len(before),
        "open_alerts_proposed": len(after),
        "alerts_added": sum(r["alerts_added"] for r in ordered),
        "alerts_removed": sum(r["alerts_removed"] for r in ordered),
        "idr_at_stake_added": sum(r["idr_at_stake_added"] for r in ordered),
        "idr_at_stake_removed": sum(r["idr_at_stake_removed"] for r in ordered),
        "by_rule_and_regency": ordered,
    }


def render_table(report: dict) -> str:
    from aidcore.rupiah import rupiah

    lines = [
        f"{report['events']:,} events replayed: {report['open_alerts_in_force']:,} open alerts under the rules in force,"
        f" {report['open_alerts_proposed']:,} under the proposal"
        f" (+{report['alerts_added']:,} / -{report['alerts_removed']:,}).",
        "",
        f"{'rule':<38} {'regency':<26} {'added':>7} {'removed':>8} {'at stake added':>18} {'at stake removed':>18}",
    ]
    for r in report["by_rule_and_regency"]:
        if not (r["alerts_added"] or r["alerts_removed"]):
            continue
        lines.append(f"{r['rule_id']:<38} {(r['regency_name'] or '-')[:26]:<26} {r['alerts_added']:>7,}"
                     f" {r['alerts_removed']:>8,} {rupiah(r['idr_at_stake_added']):>18} {rupiah(r['idr_at_stake_removed']):>18}")
    if len(lines) == 3:
        lines.append("(no difference)")
    return "\n".join(lines)


def simulate(bootstrap: str, ledger_topic: str, partitions: int, proposed: Rulebook, default: Rulebook,
             reference: Reference) -> dict:
    import asyncio

    from infra.kafka import read_topic

    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for record in asyncio.run(read_topic(bootstrap, ledger_topic, partitions)):
        by_partition[record.partition].append(record.value)  # in offset order within a partition
    live = replay(by_partition, default=default, reference=reference)
    what_if = replay(by_partition, default=default, reference=reference, proposed=proposed)
    report = compare(live, what_if, reference)
    report["rulebook_proposed"] = proposed.describe()
    return report
