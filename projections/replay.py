"""`aidledger audit replay`: every projection rebuilt from offset zero of the log into a fresh
database, by the live projector's own code (`projections.projector.run_projector`, hence
`projections.writer.write_batch`), up to the offsets the live projection has reached, then
compared with the live projection row by row.

The live side is read in one REPEATABLE READ snapshot taken before the replay starts: its
tracking offsets and its rows belong to the same transactions (the projector writes both in one),
so the rebuild is of exactly the records the live rows were made from, while the live projector
goes on working.

The fresh projections live in a database of their own, migrated by the same migrations as the
live one: the writer's SQL names its tables (`ledger.events`, ...) and a second database gives
it those names without a second projection path. This module never writes to the live database.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from aidcore.settings import ProjectorSettings, StackSettings

# Every table the projector writes, with its key. The only columns left out of the comparison
# are those a replay cannot reproduce by design:
# - projected_at, chained_at, updated_at: the projector's wall clock when it wrote the row
#   (PostgreSQL's now() in its transaction); everything else in those rows is from the log;
# - deadletters.replayed_at: when an operator sent the dead letter back to the ledger
#   (`aidledger deadletters replay`), an action taken on the projection, not a record on the log;
# - alerts.change_seq: the dashboard's feed cursor, the next number of a sequence at every write
#   of the row, so it counts writes (which depend on where batches split), not content.
# An alert's `status` (the stream's: open, void_reversed) is compared. The case workflow
# (ledger.case_transitions) is what officers did, not a projection of the log, and is not rebuilt.
COMPARED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "events": (("event_id",), ("projected_at",)),
    "chain": (("partition", "position"), ("chained_at",)),
    "person_totals": (("person_token", "programme_code", "period"), ()),
    "alerts": (("alert_id",), ("change_seq",)),
    "registry_records": (("event_id",), ()),
    "deadletters": (("source_topic", "source_partition", "source_offset", "code"), ("projected_at", "replayed_at")),
    "budget_events": (("event_id",), ("projected_at",)),
    "reversal_events": (("event_id",), ("projected_at",)),
    "reversal_status": (("event_id",), ()),
    "postings": (("event_id", "leg"), ()),
    "balances": (("account",), ()),
    "tracking": (("projector", "topic", "partition"), ("updated_at",)),
}
EXAMPLES = 5
STREAM_ROWS = 5_000
IDLE_TIMEOUT_S = 120.0  # no batch for this long while offsets are still short: the log no longer holds them


@dataclass
class TableDiff:
    table: str
    live_rows: int = 0
    replay_rows: int = 0
    only_live: int = 0
    only_replay: int = 0
    differing: int = 0
    examples: list[dict] = field(default_factory=list)
    schema: str | None = None  # the two tables do not have the same columns

    @property
    def same(self) -> bool:
        return self.schema is None and not (self.only_live or self.only_replay or self.differing)

    def as_dict(self) -> dict:
        return {"table": f"ledger.{self.table}", "same": self.same, "live_rows": self.live_rows,
                "replay_rows": self.replay_rows, "only_live": self.only_live, "only_replay": self.only_replay,
                "differing": self.differing, "examples": self.examples, "schema": self.schema}


@dataclass
class ReplayReport:
    database: str
    kept: bool
    records: int
    replay_seconds: float
    compare_seconds: float
    offsets: dict[tuple[str, int], int]
    tables: list[TableDiff]

    @property
    def ok(self) -> bool:
        return all(t.same for t in self.tables)

    @property
    def records_per_s(self) -> float:
        return self.records / self.replay_seconds if self.replay_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "database": self.database, "kept": self.kept, "records": self.records,
                "replay_seconds": round(self.replay_seconds, 3), "records_per_s": round(self.records_per_s),
                "compare_seconds": round(self.compare_seconds, 3),
                "offsets": [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in sorted(self.offsets.items())],
                "ignored_columns": {f"ledger.{t}": list(ignored) for t, (_, ignored) in COMPARED.items() if ignored},
                "tables": [t.as_dict() for t in self.tables]}


def replay_database_name(now: datetime) -> str:
    return f"aidledger_replay_{now.astimezone(timezone.utc):%Y%m%dt%H%M%S%f}z"


def database_url(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


def replay(live_url: str, stack: StackSettings, *, keep: bool = False, progress: Callable[[int, int], None] | None = None,
           now: datetime | None = None) -> ReplayReport:
    """Rebuild into a fresh database and compare with the live projection. `progress` hears
    (records done, records to do) after every batch."""
    from projections.migrate import migrate
    from projections.projector import PROJECTOR_NAME

    name = replay_database_name(now or datetime.now(timezone.utc))
    live = psycopg.connect(live_url)
    try:
        live.execute("SET TIME ZONE 'UTC'")
        live.commit()
        live.isolation_level, live.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        # the snapshot: taken by this first query and held until the comparison is done
        until = {(t, p): o for t, p, o in live.execute(
            "SELECT topic, partition, next_offset FROM ledger.tracking WHERE projector = %s", (PROJECTOR_NAME,))}
        with psycopg.connect(live_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            # The rebuild is disposable: a server crash loses the run, not data, so its commits
            # need not wait for the WAL to reach the disk (one wait per batch on the live path).
            admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name)))
        replay_url = database_url(live_url, name)
        try:
            migrate(replay_url)
            total = sum(until.values())
            started = time.perf_counter()
            _run(replay_url, stack, until, total, progress)
            replay_s = time.perf_counter() - started
            started = time.perf_counter()
            with psycopg.connect(replay_url) as rebuilt:
                rebuilt.execute("SET TIME ZONE 'UTC'")
                rebuilt.commit()
                rebuilt.isolation_level, rebuilt.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
                tables = [compare_table(live, rebuilt, t, key, ignored) for t, (key, ignored) in COMPARED.items()]
            compare_s = time.perf_counter() - started
        finally:
            if not keep:
                with psycopg.connect(live_url, autocommit=True) as admin:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        live.close()
    return ReplayReport(name, keep, total, replay_s, compare_s, until, tables)


def _run(replay_url: str, stack: StackSettings, until: dict[tuple[str, int], int], total: int,
         progress: Callable[[int, int], None] | None) -> None:
    from projections.projector import run_projector

    done = 0
    last_batch = time.monotonic()

    def on_batch(n: int) -> None:
        nonlocal done, last_batch
        done += n
        last_batch = time.monotonic()
        if progress is not None:
            progress(done, total)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projector(replay_url, stack, ProjectorSettings.from_env({}), stop,
                                                 until=until, on_batch=on_batch))
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and time.monotonic() - last_batch > IDLE_TIMEOUT_S:
                stop.set()
                await task
                raise RuntimeError(f"the log gave nothing for {IDLE_TIMEOUT_S:.0f} s with {done:,} of {total:,} records"
                                   " replayed: it no longer holds what the live projection was made from")
        task.result()

    if progress is not None:
        progress(0, total)
    asyncio.run(main())


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [c for (c,) in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ledger' AND table_name = %s"
        " ORDER BY column_name", (table,))]


def _rows_sql(table: str, key: Sequence[str], columns: Sequence[str], typed: dict[str, str]) -> sql.Composed:
    """(key..., digest of every compared column) in key order. Text keys sort bytewise (COLLATE
    "C"), as Python compares str, whatever the two databases' collations."""
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) if typed[k] == "text" else sql.Identifier(k) for k in key)
    row = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL("SELECT {keys}, sha256(convert_to(ROW({row})::text, 'UTF8')) FROM ledger.{table} ORDER BY {order}").format(
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in key), row=row, table=sql.Identifier(table), order=order)


def _types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    return dict(conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'ledger' AND table_name = %s",
        (table,)).fetchall())


def _stream(conn: psycopg.Connection, query: sql.Composed, n: int) -> Iterator[tuple[tuple, bytes]]:
    with conn.cursor() as cur:
        for row in cur.stream(query, size=STREAM_ROWS):
            yield row[:n], bytes(row[n])


def compare_table(live: psycopg.Connection, rebuilt: psycopg.Connection, table: str, key: Sequence[str],
                  ignored: Sequence[str]) -> TableDiff:
    """Both tables walked in key order at once, each row reduced to its key and a digest of its
    compared columns (PostgreSQL computes it, so the rows' contents stay on the server)."""
    diff = TableDiff(table)
    live_columns, replay_columns = _columns(live, table), _columns(rebuilt, table)
    if live_columns != replay_columns:
        diff.schema = (f"columns differ: live only {sorted(set(live_columns) - set(replay_columns))},"
                       f" replay only {sorted(set(replay_columns) - set(live_columns))}")
        return diff
    columns = [c for c in live_columns if c not in ignored]
    query = _rows_sql(table, key, columns, _types(live, table))
    a, b = _stream(live, query, len(key)), _stream(rebuilt, query, len(key))
    differing: list[tuple] = []
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x[0] < y[0]):
            diff.live_rows += 1
            diff.only_live += 1
            _example(diff, "only_live", key, x[0])
            x = next(a, None)
        elif x is None or y[0] < x[0]:
            diff.replay_rows += 1
            diff.only_replay += 1
            _example(diff, "only_replay", key, y[0])
            y = next(b, None)
        else:
            diff.live_rows += 1
            diff.replay_rows += 1
            if x[1] != y[1]:
                diff.differing += 1
                if len(diff.examples) < EXAMPLES:
                    differing.append(x[0])
                    _example(diff, "differs", key, x[0], [])
            x, y = next(a, None), next(b, None)
    # each connection is free again once both walks are over
    named = iter(differing)
    for item in diff.examples:
        if item["kind"] == "differs":
            item["columns"] = _differing_columns(live, rebuilt, table, key, columns, next(named))
    return diff


def _example(diff: TableDiff, kind: str, key: Sequence[str], values: tuple, columns: list[str] | None = None) -> None:
    """Keys only: event ids, tokens, account names, positions. No projection table holds a NIK."""
    if len(diff.examples) >= EXAMPLES:
        return
    item = {"kind": kind, "key": {k: str(v) for k, v in zip(key, values)}}
    if columns is not None:
        item["columns"] = columns
    diff.examples.append(item)


def _differing_columns(live: psycopg.Connection, rebuilt: psycopg.Connection, table: str, key: Sequence[str],
                       columns: Sequence[str], values: tuple) -> list[str]:
    """The names of the columns that differ in one row (their values are not reported)."""
    query = sql.SQL("SELECT {cols} FROM ledger.{table} WHERE {where}").format(
        cols=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        table=sql.Identifier(table),
        where=sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key))
    with live.cursor() as lc, rebuilt.cursor() as rc:
        one, two = lc.execute(query, values).fetchone(), rc.execute(query, values).fetchone()
    return [c for c, u, v in zip(columns, one or (), two or ()) if u != v]


class ProgressBar:
    """A one-line progress bar on a terminal stream (a line every 10% when it is not a terminal)."""

    def __init__(self, what: str, stream=sys.stderr, width: int = 30):
        self.what, self.stream, self.width = what, stream, width
        self.started = time.perf_counter()
        self.tty = stream.isatty()
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (f"{self.what} [{'#' * int(share * self.width):<{self.width}}] {share:6.1%} {done:,}/{total:,}"
                f" records, {rate:,.0f}/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        elif int(share * 10) > self._last_tenth:
            self._last_tenth = int(share * 10)
            self.stream.write(line + "\n")
        self.stream.flush()
