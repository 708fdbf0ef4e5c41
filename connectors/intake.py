"""File intake: validate each row with the core, then write accepted records durably into the
PostgreSQL outbox (and clear identities into the vault) in chunks, one transaction per chunk.
Rejected rows go to a rejection report (row, field, code, message) and to ledger.intake_rejections.
The relay publishes the outbox to Kafka; a record is accepted once its chunk has committed.

The same record submitted again (same event id) is counted as redelivered and stored once.
Budget records (allocations, releases) are keyed by their funding account on the log and no
stream decides them, so another version under a known key is refused here, with its
`exists_with_different_<field>` code, and never reaches the log.
"""

from __future__ import annotations

import csv
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import psycopg

from aidcore.intake import (
    Accepted,
    AcceptedBudget,
    AcceptedReversal,
    BudgetAllocation,
    Rejection,
    Reversal,
    TreasuryRelease,
    record_type_of,
    validate_any,
)
from aidcore.outcomes import ACCEPTED, EXISTS
from aidcore.ledger import (
    RULE_MODIFIED_RESUBMISSION,
    Payment,
    Rulebook,
    event_id_bytes,
    idem_key,
    key_outcome,
    modified_resubmission_alert,
    payment_of,
)
from aidcore.reference import Reference
from connectors.files import RowError, read_rows
from schemas import codec

CHUNK_ROWS = 5000
NOTIFY_CHANNEL = "aid_outbox"


@dataclass
class IntakeReport:
    batch_id: str
    source_name: str
    rows: int = 0
    accepted: int = 0
    redelivered: int = 0
    rejected: int = 0
    rejections_by_code: Counter = field(default_factory=Counter)
    accepted_idr_by_programme: Counter = field(default_factory=Counter)
    accepted_by_programme: Counter = field(default_factory=Counter)
    report_path: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "batch_id": self.batch_id, "source": self.source_name, "rows": self.rows,
            "accepted": self.accepted, "redelivered": self.redelivered, "rejected": self.rejected,
            "rejections_by_code": dict(self.rejections_by_code),
            "accepted_by_programme": dict(self.accepted_by_programme),
            "accepted_idr_by_programme": dict(self.accepted_idr_by_programme),
            "rejection_report": self.report_path, "seconds": round(self.seconds, 3),
        }


def _now_us() -> int:
    return time.time_ns() // 1000


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, timezone.utc)


class Progress:
    """A plain progress bar on stderr, for terminals only."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total = max(total, 1)
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.perf_counter()

    def update(self, done: int, rows: int) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        rate = rows / max(1e-6, time.perf_counter() - self.started)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {rows:>10,} rows {rate:>9,.0f} rows/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def ingest_rows(
    conn: psycopg.Connection,
    rows: Iterable[tuple[int, object]],
    *,
    source_name: str,
    ledger_topic: str,
    token_key: bytes,
    reference: Reference,
    report_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
    now_us: Callable[[], int] = _now_us,
    chunk_rows: int = CHUNK_ROWS,
    alerts_topic: str,
    rulebook: Rulebook | None = None,
) -> IntakeReport:
    if not conn.autocommit:
        raise ValueError("intake needs an autocommit connection: each chunk is its own transaction")
    report = IntakeReport(batch_id=str(uuid.uuid4()), source_name=source_name)
    if rulebook is None:
        from connectors.rulebooks import active_rulebook

        rulebook = active_rulebook(conn, reference)
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO ledger.intake_batches (batch_id, source_name, started_at) VALUES (%s, %s, now())",
        (report.batch_id, source_name),
    )
    writer = None
    report_file = None
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_file = open(report_path, "w", newline="", encoding="utf-8")
        writer = csv.writer(report_file)
        writer.writerow(["row_number", "field", "code", "message", "source_system", "source_ref"])
        report.report_path = str(report_path)
    # Two stages overlap: while one thread writes chunk N in its transaction (most of that time is
    # spent waiting on PostgreSQL, with the interpreter lock released), this one validates chunk
    # N+1. Chunks still commit one after another in input order, and each decides on keys against
    # everything committed before it, so the outcome is the one the sequential loop gives.
    pending = None

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            done, pending = pending, None
            _count_rejections(report, writer, done.result())
            if progress:
                progress(report.rows)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-commit") as committer:
            def flush(chunk: list[tuple[int, object]]) -> None:
                nonlocal pending
                stamp = now_us()
                validated = _validate_chunk(chunk, report, reference, token_key, stamp)
                settle()
                pending = committer.submit(_commit_chunk, conn, validated, report, ledger_topic, alerts_topic, reference,
                                           rulebook, stamp)

            chunk: list[tuple[int, object]] = []
            for item in rows:
                chunk.append(item)
                if len(chunk) >= chunk_rows:
                    flush(chunk)
                    chunk = []
            if chunk:
                flush(chunk)
            settle()
    finally:
        if pending is not None:  # reading or validating failed: that error propagates; the chunk in flight
            # has landed or failed whole by now (leaving the pool waited for it), and is counted if it landed
            try:
                _count_rejections(report, writer, pending.result())
            except Exception:
                pass
        if report_file is not None:
            report_file.close()
    conn.execute(
        "UPDATE ledger.intake_batches SET finished_at = now(), accepted = %s, redelivered = %s, rejected = %s WHERE batch_id = %s",
        (report.accepted, report.redelivered, report.rejected, report.batch_id),
    )
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Validated:
    candidates: list  # (row number, accepted record)
    raws: dict  # row number -> the raw row, for the rejection report of a key conflict
    rejections: list  # report rows: (row number, field, code, message, source system, source ref)


def _rejection_row(number: int, raw: object, code: str, field: str | None, message: str) -> tuple:
    system = raw.get("source_system") if isinstance(raw, dict) else None
    ref = raw.get("source_ref") if isinstance(raw, dict) else None
    return (number, field, code, message,
            str(system)[:128] if system is not None else None, str(ref)[:128] if ref is not None else None)


def _validate_chunk(chunk, report: IntakeReport, reference, token_key, now_us: int) -> _Validated:
    """The pure part of a chunk: every row validated and tokenized; nothing written yet."""
    out = _Validated([], {}, [])
    for number, raw in chunk:
        report.rows += 1
        if isinstance(raw, RowError):
            out.rejections.append(_rejection_row(number, raw, raw.code, raw.field, raw.message))
            continue
        outcome = validate_any(raw, reference=reference, token_key=token_key, now_us=now_us)
        if isinstance(outcome, Rejection):
            out.rejections.append(_rejection_row(number, raw, outcome.code, outcome.field, outcome.message))
        else:
            out.candidates.append((number, outcome))
            out.raws[number] = raw
    return out


def _count_rejections(report: IntakeReport, writer, rejections: list) -> None:
    """A committed chunk's rejections, in row order, into the report and its file."""
    for row in sorted(rejections, key=lambda r: r[0]):
        report.rejected += 1
        report.rejections_by_code[row[2]] += 1
        if writer is not None:
            writer.writerow(row)


def _commit_chunk(conn, validated: _Validated, report: IntakeReport, ledger_topic, alerts_topic, reference,
                  rulebook: Rulebook, now_us: int) -> list:
    """A validated chunk decided against the keys already recorded and written in one
    transaction; returns all of its rejections (validation's and key conflicts') for the caller
    to count. Counts the accepted and redelivered here: nothing else touches them meanwhile."""
    candidates, raws = validated.candidates, validated.raws
    rejections = list(validated.rejections)

    def reject(number: int, raw: object, code: str, field: str | None, message: str) -> None:
        rejections.append(_rejection_row(number, raw, code, field, message))

    with conn.transaction():
        with conn.cursor() as cur:
            # one intake at a time decides on keys, so two files racing on one key cannot both win
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
            known = _known_keys(cur, candidates)
            outbox_rows, new_keys, identities, households = [], [], {}, {}
            by_event: dict[str, tuple[str, int]] = {}
            for number, acc in candidates:
                d = _event(acc)
                key = (d.source_system, d.source_ref)
                original = known.get(key)
                if original is not None and original.event_id == d.event_id:
                    report.redelivered += 1
                    continue
                if original is not None and _budget_involved(original, d):
                    code = key_outcome(original.record_type, original.event_id, original.digests, d)
                    reject(number, raws[number], code, code.removeprefix("exists_with_different_"),
                           f"{d.source_system} reference {d.source_ref} was already recorded with other content")
                    continue
                if isinstance(d, BUDGET_TYPES):
                    known[key] = _KnownKey(d.event_id, "", d.digests(), _budget_payment(d), record_type_of(d))
                    new_keys.append(_budget_key_row(d))
                    outbox_rows.append(_budget_outbox_row(d, ledger_topic))
                    by_event[d.event_id] = (ALLOCATIONS if isinstance(d, BudgetAllocation) else RELEASES, d.amount_idr)
                    continue
                if original is not None and original.person_token != d.person_token:
                    code = key_outcome(original.record_type, original.event_id, original.digests, d)
                    reject(number, raws[number], code, "nik",
                           f"{d.source_system} reference {d.source_ref} was already recorded for another person")
                    if RULE_MODIFIED_RESUBMISSION in rulebook.enabled:
                        alert = modified_resubmission_alert(d, original.payment, original.person_token, code, rulebook,
                                                            reference, now_us)
                        outbox_rows.append((_alert_row_id(alert), alerts_topic, alert.subject_token.encode(),
                                            codec.encode_alert(alert), _ts(now_us)))
                    continue
                if isinstance(d, Reversal):
                    if original is None:
                        known[key] = _KnownKey(d.event_id, d.person_token, d.digests(), _reversal_payment(d), "reversal")
                        new_keys.append((d.source_system, d.source_ref, d.event_id, d.person_token, d.digests(), "",
                                         "", d.amount_idr, d.reversed_at_us, "", "", "reversal"))
                    outbox_rows.append((d.event_id, ledger_topic, d.person_token.encode(), codec.encode_reversal(d),
                                        _ts(d.recorded_at_us)))
                    by_event[d.event_id] = (REVERSALS, -d.amount_idr)
                    continue
                if original is None:
                    digests = d.digests()
                    entry = _KnownKey(d.event_id, d.person_token, digests, payment_of(d, digests), "disbursement")
                    known[key] = entry
                    new_keys.append((d.source_system, d.source_ref, d.event_id, d.person_token, digests, d.programme_code,
                                     d.period, d.amount_idr, d.disbursed_at_us, d.region_code, d.source_type,
                                     "disbursement"))
                # a new key, or the same person's key with other content: the stream decides and alerts
                outbox_rows.append((d.event_id, ledger_topic, d.person_token.encode(), codec.encode_disbursement(d),
                                    _ts(d.recorded_at_us)))
                by_event[d.event_id] = (d.programme_code, d.amount_idr)
                ident = acc.identity
                identities[ident.person_token] = (ident.person_token, ident.identity_kind, ident.nik,
                                                  ident.provisional_id, ident.recipient_name)
                if d.kk_token and ident.kk:
                    households[d.kk_token] = (d.kk_token, ident.kk)
            inserted = _write(cur, new_keys, outbox_rows, identities, households)
            if outbox_rows:
                for event_id, (programme, amount) in by_event.items():
                    if event_id in inserted:
                        report.accepted += 1
                        report.accepted_by_programme[programme] += 1
                        report.accepted_idr_by_programme[programme] += amount
                    else:
                        report.redelivered += 1
            if rejections:
                cur.executemany(
                    "INSERT INTO ledger.intake_rejections (batch_id, row_number, field, code, message, source_system, source_ref)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(report.batch_id, *r) for r in rejections],
                )
    return rejections


_KEYS_LOCK = 0x41_49_44_4B  # "AIDK"


def _write(cur, new_keys, outbox_rows, identities: dict, households: dict) -> set[str]:
    """Within the caller's transaction: the new idempotency keys, the outbox rows (in the order
    given) and the vault rows; returns the event ids the outbox did not hold yet."""
    if new_keys:
        with cur.copy("COPY ledger.intake_keys (source_system, source_ref, event_id, person_token, digests,"
                      " programme_code, period, amount_idr, disbursed_at_us, region_code, source_type, record_type)"
                      " FROM STDIN") as copy:
            for row in new_keys:
                copy.write_row(row)
    if not outbox_rows:
        return set()
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_outbox (ord int, event_id uuid, topic text, key bytea,"
        " value bytea, recorded_at timestamptz) ON COMMIT DELETE ROWS"
    )
    with cur.copy("COPY stage_outbox FROM STDIN") as copy:
        for ord_, row in enumerate(outbox_rows):
            copy.write_row((ord_, *row))
    # outbox order is input order: it is the order of each person's events on the log
    cur.execute(
        "INSERT INTO ledger.outbox (event_id, topic, key, value, recorded_at)"
        " SELECT event_id, topic, key, value, recorded_at FROM"
        " (SELECT DISTINCT ON (event_id) * FROM stage_outbox ORDER BY event_id, ord) s"
        " ORDER BY ord"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id::text"
    )
    inserted = {r[0] for r in cur.fetchall()}
    if identities:
        _copy_upsert(cur, "vault.identity", ("person_token", "identity_kind", "nik", "provisional_id", "recipient_name"),
                     identities.values())
    if households:
        _copy_upsert(cur, "vault.household", ("kk_token", "kk"), households.values())
    cur.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return inserted


def write_outbox(cur, outbox_rows, identities: dict, households: dict) -> set[str]:
    """Records that need no idempotency key of the ledger's (registry extracts): their outbox rows
    and vault rows, in the caller's transaction; returns the event ids new to the outbox."""
    return _write(cur, [], outbox_rows, identities, households)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What became of one record handed to `submit`."""

    outcome: str  # `accepted`, `exists` (sent before with the same content) or `exists_with_different_<field>`
    event_id: str
    source_system: str
    source_ref: str

    @property
    def redelivered(self) -> bool:
        return self.outcome == EXISTS

    @property
    def conflict(self) -> bool:
        return self.outcome.startswith("exists_with_different_")


BATCH_HAS_CONFLICTS = "batch_has_conflicts"  # the outcome of a new record not written because another conflicted


def submit(conn: psycopg.Connection, items: list[Accepted | AcceptedReversal | AcceptedBudget], *, ledger_topic: str, alerts_topic: str,
           reference: Reference, rulebook: Rulebook, now_us: int) -> list[Submitted]:
    """Records validated by the core, decided against every idempotency key at the door and
    written durably all together or not at all, in one transaction (the HTTP gateway's path).

    A key sent before with the same content is `exists` and writes nothing. A key sent before
    with other content is a conflict, `exists_with_different_<field>`: then no record of `items`
    is written, only the modified-resubmission alerts (when the rulebook has that rule on). On
    return without an exception, everything `accepted` is committed.
    """
    if not conn.autocommit:
        raise ValueError("submit needs an autocommit connection: its transaction must really commit")
    results: list[Submitted] = []
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
            candidates = list(enumerate(items))
            known = _known_keys(cur, candidates)
            outbox_rows, new_keys, identities, households, alert_rows = [], [], {}, {}, []
            for _, acc in candidates:
                d = _event(acc)
                key = (d.source_system, d.source_ref)
                original = known.get(key)
                if original is not None:
                    code = key_outcome(original.record_type, original.event_id, original.digests, d)
                    results.append(Submitted(code, original.event_id if code == EXISTS else d.event_id, *key))
                    if code != EXISTS and RULE_MODIFIED_RESUBMISSION in rulebook.enabled \
                            and not _budget_involved(original, d):
                        alert = modified_resubmission_alert(d, original.payment, original.person_token, code, rulebook,
                                                            reference, now_us)
                        alert_rows.append((_alert_row_id(alert), alerts_topic, alert.subject_token.encode(),
                                           codec.encode_alert(alert), _ts(now_us)))
                    continue
                digests = d.digests()
                if isinstance(d, BUDGET_TYPES):
                    known[key] = _KnownKey(d.event_id, "", digests, _budget_payment(d), record_type_of(d))
                    new_keys.append(_budget_key_row(d))
                    outbox_rows.append(_budget_outbox_row(d, ledger_topic))
                elif isinstance(d, Reversal):
                    known[key] = _KnownKey(d.event_id, d.person_token, digests, _reversal_payment(d), "reversal")
                    new_keys.append((d.source_system, d.source_ref, d.event_id, d.person_token, digests, "", "",
                                     d.amount_idr, d.reversed_at_us, "", "", "reversal"))
                    outbox_rows.append((d.event_id, ledger_topic, d.person_token.encode(), codec.encode_reversal(d),
                                        _ts(d.recorded_at_us)))
                else:
                    known[key] = _KnownKey(d.event_id, d.person_token, digests, payment_of(d, digests), "disbursement")
                    new_keys.append((d.source_system, d.source_ref, d.event_id, d.person_token, digests, d.programme_code,
                                     d.period, d.amount_idr, d.disbursed_at_us, d.region_code, d.source_type,
                                     "disbursement"))
                    outbox_rows.append((d.event_id, ledger_topic, d.person_token.encode(),
                                        codec.encode_disbursement(d), _ts(d.recorded_at_us)))
                    ident = acc.identity
                    identities[ident.person_token] = (ident.person_token, ident.identity_kind, ident.nik,
                                                      ident.provisional_id, ident.recipient_name)
                    if d.kk_token and ident.kk:
                        households[d.kk_token] = (d.kk_token, ident.kk)
                results.append(Submitted(ACCEPTED, d.event_id, *key))
            if any(r.conflict for r in results):
                _write(cur, [], alert_rows, {}, {})
                # the records that were new are not written: the request is rejected whole
                return [r if r.outcome != ACCEPTED else Submitted(BATCH_HAS_CONFLICTS, r.event_id, r.source_system,
                                                                   r.source_ref) for r in results]
            _write(cur, new_keys, outbox_rows, identities, households)
    return results


def recorded(conn: psycopg.Connection, source_system: str, source_ref: str):
    """The event recorded under an idempotency key, decoded from the outbox (tokens only, never a
    clear NIK), with whether the projection has it and its outcome there; None when unknown. A
    reversal's outcome is the stream's: `accepted` once applied, `reversal_pending` while it waits
    for its original, its dead letter's code once dropped."""
    row = conn.execute(
        "SELECT o.value, o.recorded_at, coalesce(e.accepted, b.accepted, r.status <> 'removed'),"
        " coalesce(e.outcome, b.outcome, CASE r.status WHEN 'applied' THEN 'accepted'"
        " WHEN 'pending' THEN 'reversal_pending' ELSE coalesce(d.code, 'removed') END)"
        " FROM ledger.intake_keys k"
        " JOIN ledger.outbox o ON o.event_id = k.event_id"
        " LEFT JOIN ledger.events e ON e.event_id = k.event_id"
        " LEFT JOIN ledger.budget_events b ON b.event_id = k.event_id"
        " LEFT JOIN ledger.reversals r ON r.event_id = k.event_id"
        " LEFT JOIN LATERAL (SELECT code FROM ledger.deadletters d WHERE d.source_topic = r.topic"
        " AND d.source_partition = r.partition AND d.source_offset = r.\"offset\" LIMIT 1) d ON true"
        " WHERE k.source_system = %s AND k.source_ref = %s", (source_system, source_ref),
    ).fetchone()
    if row is None:
        return None
    value, recorded_at, accepted, outcome = row
    return codec.decode_ledger_values([bytes(value)])[0], recorded_at, accepted, outcome


def _copy_upsert(cur, table: str, columns: tuple[str, ...], rows) -> None:
    """Insert rows that are not there yet, through COPY into a temporary twin of the table."""
    stage = "stage_" + table.replace(".", "_")
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    cols = ", ".join(columns)
    with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(f"INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({columns[0]}) {cols} FROM {stage} ON CONFLICT DO NOTHING")


@dataclass(frozen=True, slots=True)
class _KnownKey:
    event_id: str
    person_token: str  # empty for a budget record
    digests: bytes
    payment: Payment
    record_type: str  # disbursement, reversal, allocation or release


REVERSALS = "(reversals)"  # the intake report's line for reversals: count and rupiah taken back
ALLOCATIONS = "(allocations)"  # the same for budget allocations and treasury releases
RELEASES = "(releases)"
BUDGET_TYPES = (BudgetAllocation, TreasuryRelease)
_BUDGET_RECORD_TYPES = ("allocation", "release")


def _event(acc: Accepted | AcceptedReversal | AcceptedBudget):
    if isinstance(acc, Accepted):
        return acc.disbursement
    return acc.reversal if isinstance(acc, AcceptedReversal) else acc.record


def _budget_involved(original: "_KnownKey", event) -> bool:
    """A key that is or would become a budget record's: decided here alone, never alerted (alerts
    are about people) and never passed to the stream."""
    return original.record_type in _BUDGET_RECORD_TYPES or isinstance(event, BUDGET_TYPES)


def _budget_payment(d: BudgetAllocation | TreasuryRelease) -> Payment:
    """How a budget record's key is remembered next to the others (only its id and digests count)."""
    return Payment(event_id_bytes(d.event_id), getattr(d, "programme_code", ""), "", d.amount_idr, d.digests(),
                   d.allocated_at_us if isinstance(d, BudgetAllocation) else d.released_at_us, d.source_type)


def _budget_key_row(d: BudgetAllocation | TreasuryRelease) -> tuple:
    p = _budget_payment(d)
    return (d.source_system, d.source_ref, d.event_id, "", p.digests, p.programme_code, "", d.amount_idr,
            p.disbursed_at_us, "", d.source_type, record_type_of(d))


def _budget_outbox_row(d: BudgetAllocation | TreasuryRelease, ledger_topic: str) -> tuple:
    # keyed by the budget line: its records stay in order on one partition
    return (d.event_id, ledger_topic, d.funding_account.encode(), codec.encode_budget(d), _ts(d.recorded_at_us))


def _reversal_payment(r: Reversal) -> Payment:
    """How intake remembers a reversal's key: no programme, and a non-zero original key."""
    return Payment(event_id_bytes(r.event_id), "", "", r.amount_idr, r.digests(), r.reversed_at_us, "", b"",
                   idem_key(r.original_source_system, r.original_source_ref))


def _known_keys(cur, candidates) -> dict[tuple[str, str], _KnownKey]:
    if not candidates:
        return {}
    systems = [_event(acc).source_system for _, acc in candidates]
    refs = [_event(acc).source_ref for _, acc in candidates]
    cur.execute(
        "SELECT k.source_system, k.source_ref, k.event_id::text, k.person_token, k.digests, k.programme_code, k.period,"
        " k.amount_idr, k.disbursed_at_us, k.region_code, k.source_type,"
        # keys recorded before record types were kept: a reversal's row is the one without a programme
        " coalesce(k.record_type, CASE WHEN k.programme_code = '' THEN 'reversal' ELSE 'disbursement' END)"
        " FROM ledger.intake_keys k"
        " JOIN unnest(%s::text[], %s::text[]) AS c(s, r) ON k.source_system = c.s AND k.source_ref = c.r",
        (systems, refs),
    )
    out = {}
    for (system, ref, event_id, token, digests, programme, period, amount, at_us, region, source_type,
         record_type) in cur.fetchall():
        digests = bytes(digests)
        # a reversal's original key is not kept, so 1 marks it
        out[(system, ref)] = _KnownKey(event_id, token, digests,
                                       Payment(event_id_bytes(event_id), programme, period, amount, digests, at_us,
                                               source_type, b"", 1 if record_type == "reversal" else 0), record_type)
    return out


def _alert_row_id(alert) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aidledger-alert:{alert.alert_id}:{alert.revision}:{alert.trigger_event_id}"))


def ingest_file(conn: psycopg.Connection, path: Path, **kwargs) -> IntakeReport:
    return ingest_rows(conn, read_rows(path), source_name=path.name, **kwargs)
