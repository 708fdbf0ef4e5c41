"""Projection of the registry topic into ledger.registry_records (one row per person per registry
extract), inside the projector's batch transaction; and the read that the registries report
compares. Rows are keyed by event id, so a re-read batch changes nothing. It touches no other table.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from typing import Sequence

import psycopg

from aidcore.registries import Entry
from schemas import codec

log = logging.getLogger(__name__)


def project_registry(cur: psycopg.Cursor, records: Sequence) -> tuple[int, int]:
    """(rows new to the table, records that could not be decoded and were skipped)."""
    rows, bad = [], 0
    for r in records:
        try:
            d = codec.decode_registry(r.value)
        except codec.CodecError as err:
            bad += 1
            log.warning("registry record %s[%d]@%d skipped: %s", r.topic, r.partition, r.offset, err.code)
            continue
        rows.append((d.event_id, d.registry, date.fromisoformat(d.extract_date), d.person_token, d.kk_token,
                     d.regency_code, d.village_code, d.decile, d.source_row_ref,
                     datetime.fromtimestamp(d.recorded_at_us / 1_000_000, timezone.utc), r.topic, r.partition, r.offset))
    if not rows:
        return 0, bad
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS stage_registry (LIKE ledger.registry_records) ON COMMIT DELETE ROWS")
    with cur.copy("COPY stage_registry FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute("INSERT INTO ledger.registry_records SELECT DISTINCT ON (event_id) * FROM stage_registry"
                " ORDER BY event_id ON CONFLICT DO NOTHING")
    return cur.rowcount, bad


def current_registries(conn: psycopg.Connection, regency: str | None = None) -> dict[str, dict[str, Entry]]:
    """registry -> person token -> entry, from ledger.registered_people; with `regency`, only the
    people some registry places there (with all their entries, wherever those are)."""
    sql = "SELECT registry, person_token, regency_code, village_code, decile FROM ledger.registered_people"
    params: tuple = ()
    if regency is not None:
        sql += (" WHERE person_token IN (SELECT person_token FROM ledger.registered_people"
                " WHERE regency_code = %s)")
        params = (regency,)
    out: dict[str, dict[str, Entry]] = {}
    with conn.cursor() as cur:
        cur.execute(sql, params)
        for registry, token, regency_code, village, decile in cur:
            out.setdefault(registry, {})[token] = Entry(regency_code, village, decile)
    return out


def extracts(conn: psycopg.Connection) -> list[dict]:
    """Every imported extract: registry, date, people, and whether it is the registry's current one."""
    rows = conn.execute(
        "SELECT registry, extract_date, count(*), extract_date = max(extract_date) OVER (PARTITION BY registry)"
        " FROM ledger.registry_records GROUP BY registry, extract_date ORDER BY registry, extract_date"
    ).fetchall()
    return [{"registry": r, "extract_date": d.isoformat(), "people": n, "current": cur} for r, d, n, cur in rows]
