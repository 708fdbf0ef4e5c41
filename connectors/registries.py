"""Registry import: one extract file of DTKS, P3KE or Regsosek becomes `RegistryRecorded` events
in the outbox (the relay publishes them to the registry topic), the clear NIK and KK going to the
vault alone, in chunks of one transaction each. Rejected rows go to a rejection report (row,
field, code, message) and to ledger.intake_rejections, like a file of disbursements.

It decides nothing about disbursements and writes no idempotency key of theirs: a registry row's
event id is its (registry, extract date, person), so importing an extract again adds nothing.

Memory is bounded by a chunk, whatever the size of the extract: the people already met in the
extract (for `person_repeated_in_extract`) are kept by PostgreSQL, in a temporary table of the
import's session whose primary key answers "met before?" for a whole chunk in one statement.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import psycopg

from aidcore.intake import Rejection
from aidcore.reference import Reference
from aidcore.registries import RegistryRow, validate_registry_row
from connectors.files import RowError
from connectors.intake import write_outbox
from schemas import codec

CHUNK_ROWS = 5000
SEEN_TABLE = "registry_import_seen"  # temporary: the person tokens this import has met so far


@dataclass
class RegistryImportReport:
    batch_id: str
    registry: str
    extract_date: str
    source_name: str
    rows: int = 0
    accepted: int = 0
    redelivered: int = 0  # already imported from this extract
    rejected: int = 0
    rejections_by_code: Counter = field(default_factory=Counter)
    accepted_by_regency: Counter = field(default_factory=Counter)
    report_path: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "batch_id": self.batch_id, "registry": self.registry, "extract_date": self.extract_date,
            "source": self.source_name, "rows": self.rows, "accepted": self.accepted,
            "redelivered": self.redelivered, "rejected": self.rejected,
            "rejections_by_code": dict(self.rejections_by_code),
            "accepted_by_regency": dict(sorted(self.accepted_by_regency.items())),
            "rejection_report": self.report_path, "seconds": round(self.seconds, 3),
        }


def import_rows(conn: psycopg.Connection, rows: Iterable[tuple[int, object]], *, registry: str, extract_date: str,
                source_name: str, registry_topic: str, token_key: bytes, reference: Reference,
                report_path: Path | None = None, progress: Callable[[int], None] | None = None,
                now_us: Callable[[], int] = lambda: time.time_ns() // 1000,
                chunk_rows: int = CHUNK_ROWS) -> RegistryImportReport:
    if not conn.autocommit:
        raise ValueError("registry import needs an autocommit connection: each chunk is its own transaction")
    report = RegistryImportReport(str(uuid.uuid4()), registry, extract_date, source_name)
    started = time.perf_counter()
    conn.execute("INSERT INTO ledger.intake_batches (batch_id, source_name, started_at) VALUES (%s, %s, now())",
                 (report.batch_id, f"registry {registry} {extract_date}: {source_name}"))
    report_file = writer = None
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_file = open(report_path, "w", newline="", encoding="utf-8")
        writer = csv.writer(report_file)
        writer.writerow(["row_number", "field", "code", "message"])
        report.report_path = str(report_path)
    regencies = frozenset(reference.regencies)
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {SEEN_TABLE} (person_token text PRIMARY KEY)")
    conn.execute(f"TRUNCATE {SEEN_TABLE}")
    seen = SEEN_TABLE
    try:
        chunk: list[tuple[int, object]] = []
        for item in rows:
            chunk.append(item)
            if len(chunk) >= chunk_rows:
                _import_chunk(conn, chunk, report, writer, seen, registry_topic, token_key, regencies, now_us())
                chunk = []
                if progress:
                    progress(report.rows)
        if chunk:
            _import_chunk(conn, chunk, report, writer, seen, registry_topic, token_key, regencies, now_us())
            if progress:
                progress(report.rows)
    finally:
        if report_file is not None:
            report_file.close()
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.execute(f"DROP TABLE IF EXISTS {SEEN_TABLE}")
    conn.execute("UPDATE ledger.intake_batches SET finished_at = now(), accepted = %s, redelivered = %s, rejected = %s"
                 " WHERE batch_id = %s", (report.accepted, report.redelivered, report.rejected, report.batch_id))
    report.seconds = time.perf_counter() - started
    return report


def _import_chunk(conn, chunk, report: RegistryImportReport, writer, seen: str, topic: str, token_key: bytes,
                  regencies: frozenset[str], now_us: int) -> None:
    outcomes: list[tuple[int, RegistryRow | Rejection]] = []
    first_in_chunk: dict[str, int] = {}  # token -> its first row number in the chunk
    for number, raw in chunk:
        report.rows += 1
        if isinstance(raw, RowError):
            outcome = Rejection(raw.code, raw.field, raw.message)
        elif not isinstance(raw, dict):
            outcome = Rejection("record_must_be_an_object", None, "a registry row must be an object")
        else:
            outcome = validate_registry_row(raw, registry=report.registry, extract_date=report.extract_date,
                                            row_ref=f"{report.source_name}:{number}", regencies=regencies,
                                            token_key=token_key, now_us=now_us)
            if isinstance(outcome, RegistryRow):
                first_in_chunk.setdefault(outcome.record.person_token, number)
        outcomes.append((number, outcome))
    with conn.transaction(), conn.cursor() as cur:
        # the people of this chunk not met in an earlier one; they are met from now on
        cur.execute(f"INSERT INTO {seen} SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING person_token",
                    (list(first_in_chunk),))
        new = {t for (t,) in cur.fetchall()}
        rejections, accepted = [], []
        for number, outcome in outcomes:
            if isinstance(outcome, RegistryRow):
                token = outcome.record.person_token
                if token in new and first_in_chunk[token] == number:
                    accepted.append(outcome)
                    continue
                outcome = REPEATED
            row = (number, outcome.field, outcome.code, outcome.message)
            rejections.append(row)
            report.rejected += 1
            report.rejections_by_code[outcome.code] += 1
            if writer is not None:
                writer.writerow(row)
        inserted = write_outbox(cur, [_outbox_row(a, topic) for a in accepted], _identities(accepted),
                                {a.record.kk_token: (a.record.kk_token, a.kk) for a in accepted if a.kk})
        for a in accepted:
            if a.record.event_id in inserted:
                report.accepted += 1
                report.accepted_by_regency[a.record.regency_code] += 1
            else:
                report.redelivered += 1
        if rejections:
            cur.executemany(
                "INSERT INTO ledger.intake_rejections (batch_id, row_number, field, code, message)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(report.batch_id, *r) for r in rejections])


REPEATED = Rejection("person_repeated_in_extract", "nik", "this NIK has an earlier row in the extract; it is kept")


def _outbox_row(a: RegistryRow, topic: str) -> tuple:
    r = a.record
    return (r.event_id, topic, r.person_token.encode(), codec.encode_registry(r),
            datetime.fromtimestamp(r.recorded_at_us / 1_000_000, timezone.utc))


def _identities(accepted: list[RegistryRow]) -> dict:
    # a person first met in a registry: the vault learns the NIK (and the name, when the extract has one)
    return {a.record.person_token: (a.record.person_token, "NIK", a.nik, None, a.name) for a in accepted}
