"""The database connector: polls an agency's PostgreSQL table by a watermark column and submits
its new rows through `connectors.intake.submit`, the gateway's path, storing where it read up to
(`aidcore.watermark.Position`) in ledger.db_source_positions in the SAME transaction as the rows
it submitted. A crash before that commit leaves neither the rows nor the new position; after it,
both. So a restart reads on from exactly the committed position: no row is published twice and
none is skipped. Intake's idempotency by (source_system, source_ref) is a second guard.

A row is mapped to the input record column by column: the input field's own name, or the column
a mapping names. Columns that are no input field (the watermark, a surrogate id) are not sent.
A row that fails validation, or whose source reference was recorded before with other content,
is a rejection (ledger.intake_rejections), and the position moves past it: it is reported, not
retried. It only reads the agency database; it writes only the ledger's.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping

import psycopg
import psycopg.rows
from psycopg import sql

from aidcore.intake import (
    ALLOCATION_FIELDS,
    Accepted,
    AcceptedReversal,
    BudgetAllocation,
    INPUT_FIELDS,
    RELEASE_FIELDS,
    REVERSAL_FIELDS,
    Rejection,
    validate_any,
)
from aidcore.ledger import Rulebook
from aidcore.outcomes import ACCEPTED, EXISTS
from aidcore.reference import Reference
from aidcore.watermark import Position, advance
from connectors.intake import ALLOCATIONS, RELEASES, REVERSALS, IntakeReport, submit

RECORD_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(INPUT_FIELDS + REVERSAL_FIELDS + ALLOCATION_FIELDS
                                                      + RELEASE_FIELDS))
_WM, _KEY = "__aidledger_watermark", "__aidledger_key"


class SourceError(ValueError):
    """The table, its columns or the stored position do not fit the source as configured."""


@dataclass(frozen=True)
class TableSource:
    name: str  # the position's name in the ledger
    table: str  # schema.table (or table) in the agency database
    watermark: str  # column
    key: str  # a unique column: orders rows that share a watermark value
    mapping: Mapping[str, str] = field(default_factory=dict)  # input field -> column, where they differ


def parse_mapping(items: list[str]) -> dict[str, str]:
    """FIELD=COLUMN pairs; the field must be one of the input record's."""
    out = {}
    for item in items:
        name, eq, column = item.partition("=")
        if not eq or not name.strip() or not column.strip():
            raise SourceError(f"--map {item!r}: write FIELD=COLUMN")
        if name.strip() not in RECORD_FIELDS:
            raise SourceError(f"--map {item!r}: {name.strip()!r} is not an input field ({', '.join(RECORD_FIELDS)})")
        out[name.strip()] = column.strip()
    return out


def _table_ident(table: str) -> sql.Composable:
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise SourceError(f"--table {table!r}: write schema.table")
    return sql.Identifier(*parts)


def _column_types(agency: psycopg.Connection, source: TableSource) -> dict[str, str]:
    rows = agency.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (".".join(f'"{p}"' for p in source.table.split(".")),),
    ).fetchall()
    if not rows:
        raise SourceError(f"table {source.table} not found in the agency database")
    types = dict(rows)
    for role, column in (("watermark", source.watermark), ("key", source.key), *source.mapping.items()):
        if column not in types:
            raise SourceError(f"table {source.table} has no column {column!r} (the {role})")
    return types


def _fields_of(source: TableSource, columns: Mapping[str, str]) -> dict[str, str]:
    """input field -> column, for every input field the table can fill."""
    out = {f: f for f in RECORD_FIELDS if f in columns}
    out.update(source.mapping)
    return out


def _select(source: TableSource, types: Mapping[str, str], position: Position, limit: int):
    wm, key = sql.Identifier(source.watermark), sql.Identifier(source.key)
    wm_type = sql.SQL(types[source.watermark])  # from the catalog's format_type, not from input
    query = [sql.SQL("SELECT t.*, t.{wm}::text AS {wmt}, t.{key}::text AS {keyt} FROM {table} t").format(
        wm=wm, key=key, table=_table_ident(source.table), wmt=sql.Identifier(_WM), keyt=sql.Identifier(_KEY))]
    params: list = []
    if position.watermark is not None:
        query.append(sql.SQL(" WHERE t.{wm} > CAST(%s AS {ty}) OR (t.{wm} = CAST(%s AS {ty})"
                             " AND NOT (t.{key}::text = ANY(%s::text[])))").format(wm=wm, ty=wm_type, key=key))
        params += [position.watermark, position.watermark, list(position.seen_keys)]
    else:
        query.append(sql.SQL(" WHERE t.{wm} IS NOT NULL").format(wm=wm))
    query.append(sql.SQL(" ORDER BY t.{wm}, t.{key} LIMIT %s").format(wm=wm, key=key))
    params.append(limit)
    return sql.Composed(query), params


def _position(cur, source: TableSource) -> Position:
    cur.execute(
        "INSERT INTO ledger.db_source_positions (source_name, table_name, watermark_column, key_column)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (source_name) DO NOTHING",
        (source.name, source.table, source.watermark, source.key))
    table, wm_col, key_col, wm, seen = cur.execute(
        "SELECT table_name, watermark_column, key_column, watermark, seen_keys FROM ledger.db_source_positions"
        " WHERE source_name = %s FOR UPDATE", (source.name,)).fetchone()
    if (table, wm_col, key_col) != (source.table, source.watermark, source.key):
        raise SourceError(f"source {source.name!r} was read as {table} by ({wm_col}, {key_col}); its position does"
                          " not fit another table or order: give this source another --name")
    return Position(wm, tuple(seen))


def poll_batch(agency: psycopg.Connection, ledger: psycopg.Connection, source: TableSource, report: IntakeReport, *,
               batch_rows: int, ledger_topic: str, alerts_topic: str, token_key: bytes, reference: Reference,
               rulebook: Rulebook, now_us: int, types: Mapping[str, str]) -> int:
    """Read, submit and move the position on for at most `batch_rows` rows, in one ledger
    transaction; returns how many rows were read (0: the table has nothing new)."""
    fields = _fields_of(source, types)
    with ledger.transaction(), ledger.cursor() as cur:
        position = _position(cur, source)  # locked until commit: one poller per source at a time
        query, params = _select(source, types, position, batch_rows)
        with agency.cursor(row_factory=psycopg.rows.dict_row) as acur:
            rows = acur.execute(query, params).fetchall()
        if not rows:
            return 0
        first_row = report.rows
        candidates, rejections = [], []
        for i, row in enumerate(rows, start=first_row + 1):
            record = {f: row[c] for f, c in fields.items() if row.get(c) is not None}
            outcome = validate_any(record, reference=reference, token_key=token_key, now_us=now_us)
            if isinstance(outcome, Rejection):
                rejections.append((i, outcome.field, outcome.code, outcome.message, record))
            else:
                candidates.append((i, outcome, record))
        accepted, redelivered = _submit(ledger, candidates, rejections, report, ledger_topic=ledger_topic,
                                        alerts_topic=alerts_topic, reference=reference, rulebook=rulebook,
                                        now_us=now_us)
        report.rows += len(rows)
        _record_rejections(cur, report, rejections)
        moved = advance(position, [(r[_WM], r[_KEY]) for r in rows])
        cur.execute(
            "UPDATE ledger.db_source_positions SET watermark = %s, seen_keys = %s, rows_read = rows_read + %s,"
            " rows_accepted = rows_accepted + %s, rows_redelivered = rows_redelivered + %s,"
            " rows_rejected = rows_rejected + %s, updated_at = now() WHERE source_name = %s",
            (moved.watermark, list(moved.seen_keys), len(rows), accepted, redelivered, len(rejections), source.name))
    return len(rows)


def _submit(ledger, candidates, rejections, report: IntakeReport, **kwargs) -> tuple[int, int]:
    """Submit the valid rows; a row whose key was recorded before with other content becomes a
    rejection and the others are submitted again without it (`submit` takes a batch whole or not
    at all, writing only the modified-resubmission alerts). Returns (accepted, redelivered)."""
    accepted = redelivered = 0
    pending = candidates
    while pending:
        results = submit(ledger, [acc for _, acc, _ in pending], **kwargs)
        conflicts = [(p, r) for p, r in zip(pending, results) if r.conflict]
        if not conflicts:
            for (_, acc, _), r in zip(pending, results):
                if r.outcome == ACCEPTED:
                    accepted += 1
                    line, amount = _line(acc)
                    report.accepted_by_programme[line] += 1
                    report.accepted_idr_by_programme[line] += amount
                elif r.outcome == EXISTS:
                    redelivered += 1
            break
        for (number, _, record), r in conflicts:
            rejections.append((number, r.outcome.removeprefix("exists_with_different_"), r.outcome,
                               f"{r.source_system} reference {r.source_ref} was already recorded with other content",
                               record))
        pending = [p for p, r in zip(pending, results) if not r.conflict]
    report.accepted += accepted
    report.redelivered += redelivered
    return accepted, redelivered


def _line(acc) -> tuple[str, int]:
    """The report line a record counts in, and its rupiah, as a file's intake report counts them."""
    if isinstance(acc, Accepted):
        return acc.disbursement.programme_code, acc.disbursement.amount_idr
    if isinstance(acc, AcceptedReversal):
        return REVERSALS, -acc.reversal.amount_idr
    return (ALLOCATIONS if isinstance(acc.record, BudgetAllocation) else RELEASES), acc.record.amount_idr


def _record_rejections(cur, report: IntakeReport, rejections: list) -> None:
    for number, field_, code, _, _ in rejections:
        report.rejected += 1
        report.rejections_by_code[code] += 1
    if rejections:
        cur.executemany(
            "INSERT INTO ledger.intake_rejections (batch_id, row_number, field, code, message, source_system, source_ref)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(report.batch_id, number, field_, code, message, _short(record.get("source_system")),
              _short(record.get("source_ref"))) for number, field_, code, message, record in rejections])


def _short(value) -> str | None:
    return None if value is None else str(value)[:128]


def start_run(ledger: psycopg.Connection, source: TableSource) -> IntakeReport:
    """One run of the poller: its intake batch, under which its rejections are recorded (row
    numbers count the rows this run read)."""
    report = IntakeReport(batch_id=str(uuid.uuid4()), source_name=f"db:{source.name}")
    ledger.execute("INSERT INTO ledger.intake_batches (batch_id, source_name, started_at) VALUES (%s, %s, now())",
                   (report.batch_id, report.source_name))
    return report


def finish_run(ledger: psycopg.Connection, report: IntakeReport) -> None:
    ledger.execute("UPDATE ledger.intake_batches SET finished_at = now(), accepted = %s, redelivered = %s,"
                   " rejected = %s WHERE batch_id = %s",
                   (report.accepted, report.redelivered, report.rejected, report.batch_id))


def poll(agency: psycopg.Connection, ledger: psycopg.Connection, source: TableSource, *, batch_rows: int,
         poll_interval_s: float, once: bool, should_stop: Callable[[], bool], wait: Callable[[float], None],
         ledger_topic: str, alerts_topic: str, token_key: bytes, reference: Reference,
         rulebook_of: Callable[[], Rulebook], on_batch: Callable[[IntakeReport], None] = lambda r: None,
         now_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> IntakeReport:
    """Read batches until the table has nothing new; then, unless `once`, wait `poll_interval_s`
    and read again, until `should_stop()`. The rulebook in force is looked up per pass."""
    if not (ledger.autocommit and agency.autocommit):
        raise ValueError("the poller needs autocommit connections: each batch is its own transaction")
    types = _column_types(agency, source)
    report = start_run(ledger, source)
    started = time.perf_counter()
    try:
        while not should_stop():
            rulebook = rulebook_of()
            while not should_stop():
                n = poll_batch(agency, ledger, source, report, batch_rows=batch_rows, ledger_topic=ledger_topic,
                               alerts_topic=alerts_topic, token_key=token_key, reference=reference,
                               rulebook=rulebook, now_us=now_us(), types=types)
                if n == 0:
                    break
                on_batch(report)
            finish_run(ledger, report)
            if once:
                break
            wait(poll_interval_s)
    finally:
        report.seconds = time.perf_counter() - started
    finish_run(ledger, report)
    return report


def positions(ledger: psycopg.Connection) -> list[dict]:
    rows = ledger.execute(
        "SELECT source_name, table_name, watermark_column, key_column, watermark, cardinality(seen_keys), rows_read,"
        " rows_accepted, rows_redelivered, rows_rejected, updated_at FROM ledger.db_source_positions"
        " ORDER BY source_name").fetchall()
    names = ("source", "table", "watermark_column", "key_column", "watermark", "keys_at_watermark", "rows_read",
             "rows_accepted", "rows_redelivered", "rows_rejected", "updated_at")
    return [dict(zip(names, (*r[:-1], r[-1].isoformat()))) for r in rows]
