"""`make bench-registries`: the registries at Lampung scale. A measurement, not a test.

Three synthetic extracts (DTKS, P3KE, REGSOSEK) of 1,000,000 people each, drawn from one
population of 1,250,000 (so people are missing from some registries), with some deciles and
villages that differ between registries, are written as CSV files and then:

1. import: each file goes through `connectors.registries.import_rows`, the path of
   `aidledger registries import` (CSV read, rows validated and tokenised, outbox and vault
   written per chunk); rows/s per extract, and the process's peak memory after each one (flat
   across the three when the import holds no more than a chunk);
2. project: the outbox rows are projected into ledger.registry_records by the projector's own
   `project_registry`, read from the outbox directly (no broker: this step only fills the table
   the report reads, and is not what is measured), then ANALYZE;
3. report: `projections.registries.disagreement_report`, for all of Lampung and for one regency,
   in seconds; with `--compare`, also the former in-memory report (every entry loaded into
   Python, then `aidcore.registries.disagreements`) and a check that both give the same report.

Everything runs in a fresh embedded PostgreSQL in a temporary folder; the result goes to a JSON
file. `--people N` sets the people per extract for a quicker run.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import psycopg

from aidcore.reference import default_reference
from aidcore.registries import REGISTRIES, disagreements
from connectors.files import read_rows
from connectors.registries import import_rows
from connectors.synthetic import REGENCIES
from infra import embedded

PEOPLE_PER_EXTRACT = 1_000_000
POPULATION_PER_EXTRACT = 1.25  # the population is this many times an extract
TOKEN_KEY = b"b" * 32
EXTRACT_DATE = "2026-10-01"
PROJECT_ROWS = 20_000


def _mix(*parts: int) -> int:
    """A cheap deterministic hash of small integers (the same draw on every run)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ p) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


def _person(p: int) -> tuple[str, str, int]:
    """Person p's NIK (structurally valid, one per person), home village and decile."""
    codes = list(REGENCIES)
    regency = codes[_mix(p, 1) % len(codes)]
    district = 1 + _mix(p, 2) % 12
    n = p  # the birth date and serial spell p out, so NIKs are distinct
    serial, n = 1 + n % 9999, n // 9999
    day, n = 1 + n % 28, n // 28
    month, year = 1 + n % 12, (n // 12) % 100
    nik = f"{regency}{district:02d}{day + 40 * (p % 2):02d}{month:02d}{year:02d}{serial:04d}"
    village = f"{regency}{district:02d}{1001 + _mix(p, 3) % 12:04d}"
    return nik, village, 1 + _mix(p, 4) % 10


def write_extract(path: Path, index: int, people: int, population: int) -> None:
    """Registry `index` holds `people` consecutive people of the population, from its own offset;
    2% of its people in another village, 10% with a decile one off, 5% without one."""
    start = index * (population - people) // 2
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["nik", "village_code", "decile", "name"])
        for i in range(people):
            p = (start + i) % population
            nik, village, decile = _person(p)
            draw = _mix(p, 10 + index) % 100
            if draw < 2:
                village = village[:6] + f"{1001 + (_mix(p, 20 + index) % 12):04d}"
            if 2 <= draw < 12:
                decile = decile % 10 + 1
            w.writerow([nik, village, "" if 12 <= draw < 17 else decile, f"Penduduk {p}"])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def project_outbox(conn: psycopg.Connection) -> int:
    from projections.registries import project_registry

    done, last = 0, 0
    while True:
        rows = conn.execute("SELECT seq, topic, value FROM ledger.outbox WHERE seq > %s ORDER BY seq LIMIT %s",
                            (last, PROJECT_ROWS)).fetchall()
        if not rows:
            return done
        with conn.transaction(), conn.cursor() as cur:
            new, bad = project_registry(cur, [SimpleNamespace(topic=t, partition=0, offset=s, value=v)
                                              for s, t, v in rows])
        assert bad == 0
        done += new
        last = rows[-1][0]


def run(people: int, compare: bool, log=print) -> dict:
    from projections.migrate import migrate
    from projections.registries import current_registries, disagreement_report

    population = round(people * POPULATION_PER_EXTRACT)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "people_per_extract": people,
                    "population": population, "extracts": {}}
    with tempfile.TemporaryDirectory(prefix="aidledger-registries-") as tmp:
        home = Path(tmp)
        postgres = embedded.start_postgres(home, embedded.free_port())
        try:
            migrate(postgres.endpoint)
            reference = default_reference()
            for index, registry in enumerate(REGISTRIES):
                path = home / f"{registry.lower()}.csv"
                t = time.perf_counter()
                write_extract(path, index, people, population)
                log(f"{registry}: extract written in {time.perf_counter() - t:.1f}s")
                with psycopg.connect(postgres.endpoint, autocommit=True) as conn:
                    t = time.perf_counter()
                    report = import_rows(conn, read_rows(path), registry=registry, extract_date=EXTRACT_DATE,
                                         source_name=path.name, registry_topic="aid.registry.v1",
                                         token_key=TOKEN_KEY, reference=reference)
                    seconds = time.perf_counter() - t
                path.unlink()
                item = {"rows": report.rows, "accepted": report.accepted, "rejected": report.rejected,
                        "seconds": round(seconds, 1), "rows_per_s": round(report.rows / seconds),
                        "peak_rss_mib_after": round(_peak_rss_mib())}
                result["extracts"][registry] = item
                log(f"{registry}: imported {report.rows:,} rows in {seconds:.1f}s ({item['rows_per_s']:,} rows/s),"
                    f" {report.rejected:,} rejected; peak memory so far {item['peak_rss_mib_after']} MiB")
            with psycopg.connect(postgres.endpoint, autocommit=True) as conn:
                t = time.perf_counter()
                projected = project_outbox(conn)
                conn.execute("VACUUM ANALYZE ledger.registry_records")
                result["projected"] = projected
                log(f"projected {projected:,} registry rows in {time.perf_counter() - t:.1f}s (not measured)")
            with psycopg.connect(postgres.endpoint) as conn:
                for name, regency in (("report_seconds", None), ("report_one_regency_seconds", "1871")):
                    t = time.perf_counter()
                    report = disagreement_report(conn, regency)
                    result[name] = round(time.perf_counter() - t, 2)
                    log(f"report{' --regency ' + regency if regency else ''}: {result[name]}s;"
                        f" {report.people:,} people, {dict(report.by_kind)}")
                    if regency is None:
                        result["by_kind"] = dict(report.by_kind)
                        in_sql = report.as_dict()
                if compare:
                    t = time.perf_counter()
                    in_python = disagreements(current_registries(conn)).as_dict()
                    result["in_memory_report_seconds"] = round(time.perf_counter() - t, 2)
                    result["in_memory_report_peak_rss_mib"] = round(_peak_rss_mib())
                    result["same_report"] = in_python == in_sql
                    log(f"in-memory report: {result['in_memory_report_seconds']}s, the same: {result['same_report']};"
                        f" peak memory {result['in_memory_report_peak_rss_mib']} MiB")
        finally:
            postgres.stop()
    total_rows = sum(e["rows"] for e in result["extracts"].values())
    total_seconds = sum(e["seconds"] for e in result["extracts"].values())
    result["import_rows_per_s"] = round(total_rows / total_seconds)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aidledger.bench_registries", description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=PEOPLE_PER_EXTRACT, help="people per extract (default 1,000,000)")
    ap.add_argument("--compare", action="store_true", help="also time the in-memory report and compare the two")
    ap.add_argument("--out", default=None, help="result file (default bench/results/registries[-N].json)")
    args = ap.parse_args(argv)
    out = Path(args.out or ("bench/results/registries.json" if args.people >= PEOPLE_PER_EXTRACT
                            else f"bench/results/registries-{args.people}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args.people, args.compare)
    out.write_text(json.dumps(result, indent=2))
    print(f"import {result['import_rows_per_s']:,} rows/s; report {result['report_seconds']}s"
          f" ({result['report_one_regency_seconds']}s for one regency); results -> {out}")
    return 0 if result.get("same_report", True) else 1


if __name__ == "__main__":
    sys.exit(main())
