"""The oracle of the fault tests: what the ledger must hold after any fault, checked against a
known set of accepted records (what the doors acknowledged), never against the ledger's own
counts.

After a fault and recovery, `check` asserts that
- lag returns to zero: the relay, every ledger worker group (ledger and households topics) and
  the projector are caught up (`Stack.wait_caught_up`);
- every accepted record is in the archive (`ledger.events`, accepted) exactly once, with its amount,
  and nothing else is accepted there;
- the worker's state as its changelog holds it names every accepted record exactly once;
- per person, programme and period, the totals of the stream (changelog), of the projection
  (`ledger.person_totals`) and recomputed here from the ledger topic itself are equal, and add up
  to the amounts acknowledged;
- the archive's hash chain verifies (`aidledger audit verify`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from conftest import Cli, changelog_state, read_topic

from schemas import codec

Key = tuple[str, str]  # (source_system, source_ref): the idempotency key


@dataclass
class Accepted:
    """The known set: every record a door acknowledged, by key, with its amount."""

    amounts: dict[Key, int] = field(default_factory=dict)

    def add(self, source_system: str, source_ref: str, amount_idr: int) -> None:
        # the first acknowledged version of a key is the one the ledger keeps
        self.amounts.setdefault((source_system, source_ref), int(amount_idr))

    def add_dataset(self, dataset) -> int:
        """A synthetic dataset ingested in its order: every record but the planted invalid rows
        (rejected at intake), a key's first version kept. Returns how many rows intake must accept:
        the new keys, and the other versions of a key (modified resubmissions reach the outbox
        too; the stream refuses them), but not a copy of a record (a redelivery)."""
        invalid = {k for c in dataset.answer_key if c.kind == "invalid" for k in c.source_refs}
        first: dict[Key, dict] = {}
        must_accept = 0
        for r in dataset.records:
            key = (r["source_system"], r["source_ref"])
            if key in invalid:
                continue
            if key not in first:
                first[key] = r
                self.add(*key, r["amount_idr"])
                must_accept += 1
            elif r != first[key]:
                must_accept += 1
        return must_accept


def recomputed_totals(stack) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Totals per (person, programme, period) from the ledger topic alone: on each partition in
    offset order a key's first payment counts, every later record of the key (a redelivery, a
    relay replay, a modified resubmission) does not."""
    ledger = stack.endpoints()["topics"]["ledger"]
    records = sorted(read_topic(stack.bootstrap, ledger, stack.stack.partitions), key=lambda r: (r.partition, r.offset))
    seen: set = set()
    totals: dict[tuple[str, str, str], list[int]] = {}
    for e in codec.decode_ledger_values(r.value for r in records):
        if isinstance(e, codec.CodecError):
            raise AssertionError(f"an undecodable value on the ledger topic: {e}")
        if isinstance(e, codec.RulebookActivation) or not hasattr(e, "person_token"):
            continue
        assert not hasattr(e, "original_source_ref"), "the fault tests send no reversals"
        key = (e.person_token, e.source_system, e.source_ref)
        if key in seen:
            continue
        seen.add(key)
        t = totals.setdefault((e.person_token, e.programme_code, e.period), [0, 0])
        t[0] += e.amount_idr
        t[1] += 1
    return {k: (a, n) for k, (a, n) in totals.items()}


def check(stack, accepted: Accepted, *, timeout_s: float = 300) -> dict:
    """Wait for lag zero, then assert everything the module docstring lists. Returns figures."""
    caught_up_s = stack.wait_caught_up(timeout_s, poll_s=0.5)
    expected = accepted.amounts
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT source_system, source_ref, amount_idr FROM ledger.events WHERE accepted").fetchall()
        archived = conn.execute("SELECT count(*) FROM ledger.events").fetchone()[0]
        projected = {(t, p, per): (a, n) for t, p, per, a, n in conn.execute(
            "SELECT person_token, programme_code, period, amount_idr_total, payments FROM ledger.person_totals")}
    in_archive = Counter((s, r) for s, r, _ in rows)
    doubled = {k: n for k, n in in_archive.items() if n > 1}
    assert not doubled, f"{len(doubled)} accepted records archived more than once, e.g. {list(doubled.items())[:3]}"
    missing = expected.keys() - in_archive.keys()
    assert not missing, f"{len(missing)} acknowledged records not in the archive, e.g. {sorted(missing)[:3]}"
    extra = in_archive.keys() - expected.keys()
    assert not extra, f"{len(extra)} records accepted that no door acknowledged, e.g. {sorted(extra)[:3]}"
    wrong = [(s, r, a) for s, r, a in rows if a != expected[(s, r)]]
    assert not wrong, f"{len(wrong)} archived with another amount, e.g. {wrong[:3]}"

    keys, stream = changelog_state(stack)
    doubled = {k: n for k, n in keys.items() if n > 1}
    assert not doubled, f"{len(doubled)} keys in the worker state more than once, e.g. {list(doubled.items())[:3]}"
    in_state = {(s, r) for _, s, r in keys}
    lost, unknown = expected.keys() - in_state, in_state - expected.keys()
    if lost:  # where they sit in the ledger, to read against the workers' logs
        with psycopg.connect(stack.database_url) as conn:
            where = sorted(conn.execute(
                "SELECT partition, \"offset\" FROM ledger.events WHERE (source_system, source_ref) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([s for s, _ in lost], [r for _, r in lost])).fetchall())
        runs = Counter(p for p, _ in where)
        raise AssertionError(f"{len(lost)} accepted records missing from the worker state, e.g. {sorted(lost)[:3]};"
                             f" per ledger partition {dict(sorted(runs.items()))}, first offsets {where[:10]}")
    assert not unknown, f"{len(unknown)} records in the worker state that were not accepted, e.g. {sorted(unknown)[:3]}"

    recomputed = recomputed_totals(stack)
    assert stream == projected, _diff("stream", stream, "projection", projected)
    assert recomputed == projected, _diff("log", recomputed, "projection", projected)
    assert sum(a for a, _ in projected.values()) == sum(expected.values())
    assert sum(n for _, n in projected.values()) == len(expected)

    verify = Cli(stack).run("audit", "verify", "--json", check=False)
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"], report.get("findings")
    assert report["events"] == archived
    return {"accepted": len(expected), "archived": archived, "caught_up_s": round(caught_up_s, 1)}


def _diff(a_name: str, a: dict, b_name: str, b: dict) -> str:
    keys = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
    return (f"{len(keys)} (person, programme, period) differ between {a_name} and {b_name}, e.g. "
            + "; ".join(f"{k[1:]}: {a.get(k)} vs {b.get(k)}" for k in keys[:3]))
