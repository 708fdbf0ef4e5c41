"""Projection of the registry topic into ledger.registry_records (one row per person per registry
extract), inside the projector's batch transaction; and the registries report, computed in
PostgreSQL. Rows are keyed by event id, so a re-read batch changes nothing. It touches no other table.

The report (`disagreement_report`) is the same as `aidcore.registries.disagreements` over the
registries' current contents, which stays its specification: PostgreSQL counts per person and
per regency and picks the first example tokens of each kind; only those few people's entries come
back to Python, where `person_disagreements` says what each example is.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from collections import Counter
from typing import Sequence

import psycopg

from aidcore.registries import (
    ABSENT,
    DECILE_DIFFERS,
    KINDS,
    VILLAGE_DIFFERS,
    DisagreementReport,
    Entry,
    compared_order,
    person_disagreements,
)
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


# Per person: in fewer registries than are compared; two deciles given that differ; two villages
# that differ. min <> max is "more than one distinct value" without a DISTINCT aggregate, so the
# grouping can hash; min and max skip a missing decile. A person counts under each distinct
# regency of their entries (or only under the regency asked for).
_REPORT_SQL = """
WITH per_person AS MATERIALIZED (
    SELECT person_token,
           count(*) < %(compared)s AS absent,
           coalesce(min(decile) <> max(decile), false) AS decile_differs,
           min(village_code) <> max(village_code) AS village_differs,
           array_agg(regency_code) AS regencies
    FROM ledger.registered_people
    GROUP BY person_token
    HAVING %(regency)s::text IS NULL OR bool_or(regency_code = %(regency)s::text)
), flagged AS MATERIALIZED (
    SELECT * FROM per_person WHERE absent OR decile_differs OR village_differs
), by_regency AS (
    SELECT u.regency, count(*) FILTER (WHERE absent) AS absent, count(*) FILTER (WHERE decile_differs) AS decile,
           count(*) FILTER (WHERE village_differs) AS village
    FROM flagged f CROSS JOIN LATERAL (SELECT DISTINCT x FROM unnest(f.regencies) x
                                       WHERE %(regency)s::text IS NULL OR x = %(regency)s::text) u(regency)
    GROUP BY u.regency
)
SELECT (SELECT count(*) FROM per_person),
       (SELECT ARRAY[count(*) FILTER (WHERE absent), count(*) FILTER (WHERE decile_differs),
                     count(*) FILTER (WHERE village_differs)] FROM flagged),
       ARRAY(SELECT ARRAY[regency, absent::text, decile::text, village::text] FROM by_regency),
       ARRAY(SELECT person_token FROM flagged WHERE absent ORDER BY person_token COLLATE "C" LIMIT %(n)s),
       ARRAY(SELECT person_token FROM flagged WHERE decile_differs ORDER BY person_token COLLATE "C" LIMIT %(n)s),
       ARRAY(SELECT person_token FROM flagged WHERE village_differs ORDER BY person_token COLLATE "C" LIMIT %(n)s)
"""
_KIND_COLUMNS = (ABSENT, DECILE_DIFFERS, VILLAGE_DIFFERS)  # the order of the counts and example lists above
assert set(_KIND_COLUMNS) == set(KINDS)


def current_extracts(conn: psycopg.Connection) -> dict[str, date]:
    """registry -> the date of its current (latest) extract."""
    return dict(conn.execute("SELECT registry, extract_date FROM ledger.registry_current_extracts").fetchall())


def disagreement_report(conn: psycopg.Connection, regency: str | None = None,
                        examples_per_kind: int = 10) -> DisagreementReport:
    """`disagreements(current contents, regency=..., examples_per_kind=...)`, computed in PostgreSQL.
    Every registry with a current extract is compared, with or without `regency`."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:  # one snapshot for the counts and the examples' entries
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        registries = compared_order(current_extracts(conn))
        people, counts, regencies, *example_tokens = conn.execute(
            _REPORT_SQL, {"compared": len(registries), "regency": regency, "n": max(0, examples_per_kind)}).fetchone()
        report = DisagreementReport(registries, people)
        report.by_kind = Counter(dict(zip(_KIND_COLUMNS, counts)))
        report.by_regency = {code: Counter(dict(zip(_KIND_COLUMNS, map(int, n)))) for code, *n in regencies}
        wanted = sorted({t for tokens in example_tokens for t in tokens})
        entries = current_entries(conn, wanted)
    for kind, tokens in zip(_KIND_COLUMNS, example_tokens):
        if tokens:
            report.examples[kind] = [next(d for d in person_disagreements(t, entries[t], registries) if d.kind == kind)
                                     for t in tokens]
    return report


def current_entries(conn: psycopg.Connection, tokens: list[str]) -> dict[str, dict[str, Entry]]:
    """person token -> registry -> entry, for a few people."""
    out: dict[str, dict[str, Entry]] = {}
    rows = conn.execute("SELECT person_token, registry, regency_code, village_code, decile FROM ledger.registered_people"
                        " WHERE person_token = ANY(%s)", (tokens,)).fetchall()
    for token, registry, regency_code, village, decile in rows:
        out.setdefault(token, {})[registry] = Entry(regency_code, village, decile)
    return out


def current_registries(conn: psycopg.Connection) -> dict[str, dict[str, Entry]]:
    """registry -> person token -> entry: the registries' whole current contents, in memory (for
    small stores and tests; the report itself is `disagreement_report`)."""
    out: dict[str, dict[str, Entry]] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT registry, person_token, regency_code, village_code, decile FROM ledger.registered_people")
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
