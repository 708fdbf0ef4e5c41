"""The projector's batch write: one PostgreSQL transaction per batch of consumed records, holding
the rows they produce and the next offsets to read (tracking records). A replayed batch is a
no-op: events are keyed by event_id, alerts by alert_id with a revision guard, dead letters by
their source position. Correctness rests on those identities, not on offsets alone, so a log that
was re-published from offset zero projects to the same rows.

Every record archived for the first time is also hash-chained (`ledger.chain`, one chain per
ledger partition, `aidcore.chain`) in the same transaction, so the chain never lags the archive.

The idempotency decision for the archive is the core's (`aidcore.ledger.first_difference`): the
first event under a (source_system, source_ref) is accepted; a later one with other content is
archived as not accepted, with the named outcome.

The money trail (`_project_money`, at the end of this module) rides the same transaction: budget
records and reversals archived (and chained) as read from the ledger topic, what the person
stage's changelog says it decided about each reversal (a projection, kept apart from the archive
and never hashed), their legs (`aidcore.postings`) and the balances of the treasury, budget-line,
agency and programme accounts.
"""

from __future__ import annotations

import gc
import logging
import struct
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Sequence

import orjson
import psycopg
from psycopg import postgres, pq
from psycopg.adapt import Dumper

from aidcore import chain, outcomes
from aidcore import postings as money
from aidcore.intake import BudgetAllocation, Disbursement, record_type_of
from aidcore.ledger import event_id_text, idem_key, key_outcome, resubmission_outcome
from projections.registries import project_registry
from schemas import codec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class BatchStats:
    events_new: int = 0
    events_accepted: int = 0
    events_conflicting: int = 0
    events_undecodable: int = 0
    alerts_undecodable: int = 0
    alerts: int = 0
    deadletters: int = 0
    alert_latencies_ms: list[float] = field(default_factory=list)
    budget_events: int = 0  # allocations and releases archived
    reversals: int = 0  # reversals archived, and reversals whose status the stream's changelog set or changed
    reversals_posted: int = 0
    changelog_undecodable: int = 0
    registry_records: int = 0  # people of registry extracts projected
    registry_undecodable: int = 0


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, timezone.utc)


# The archive's columns that come from the event, in `Disbursement` field order (the decoded
# values are copied positionally), then the log position and the decision.
_EVENT_FIELD_COLUMNS = (
    "event_id", "source_system", "source_ref", "source_type", "agency_code", "programme_code", "person_token",
    "identity_kind", "kk_token", "amount_idr", "kind", "period", "disbursed_at", "disbursed_at_offset_min",
    "channel", "region_code", "funding_account", "recorded_at",
)
_EVENT_COLUMNS = _EVENT_FIELD_COLUMNS + ("topic", "partition", "offset", "accepted", "outcome", "value")
_EVENT_TYPES = (
    "uuid", "text", "text", "text", "text", "text", "text",
    "text", "text", "int8", "text", "text", "timestamptz", "int4",
    "text", "text", "text", "timestamptz",
    "text", "int4", "int8", "bool", "text", "bytea",
)
_FIELDS = len(_EVENT_FIELD_COLUMNS)
assert tuple(Disbursement.__dataclass_fields__)[:_FIELDS] == tuple(
    c + "_us" if c in ("disbursed_at", "recorded_at") else c for c in _EVENT_FIELD_COLUMNS
)
assert len(_EVENT_TYPES) == len(_EVENT_COLUMNS)
_EVENT_ID, _SOURCE_SYSTEM, _SOURCE_REF = 0, 1, 2
_AGENCY, _PROGRAMME, _PERSON, _AMOUNT, _PERIOD, _REGION, _FUNDING = 4, 5, 6, 9, 11, 15, 16
_ACCEPTED = _FIELDS + 3  # in an archive row
_EVENTS_COPY = "COPY ledger.events ({}) FROM STDIN (FORMAT BINARY)".format(
    ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)
)

_INT8 = struct.Struct(">q").pack
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, where binary timestamptz counts from


class _UuidTextDumper(Dumper):
    """Binary COPY of a uuid wants its 16 bytes; the event carries the canonical text."""

    format = pq.Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: str) -> bytes:
        return bytes.fromhex(obj.replace("-", ""))


class _MicrosDumper(Dumper):
    """Binary timestamptz is microseconds since 2000-01-01 UTC; the event carries microseconds
    since 1970. Shifting the integer avoids building a datetime per value (two per event)."""

    format = pq.Format.BINARY
    oid = postgres.types["timestamptz"].oid

    def dump(self, obj: int) -> bytes:
        return _INT8(obj - _PG_EPOCH_US)


def prepare(conn: psycopg.Connection) -> None:
    """The connection must be in autocommit mode, so that each `conn.transaction()` is a real
    BEGIN/COMMIT and never a savepoint inside a transaction that is not committed."""
    if not conn.autocommit:
        raise ValueError("the projector's connection must be in autocommit mode")


def write_batch(
    conn: psycopg.Connection,
    projector: str,
    topics: dict[str, str],
    records: Sequence[Record],
    next_offsets: dict[tuple[str, int], int],
) -> BatchStats:
    """Project `records` and advance tracking to `next_offsets`, atomically."""
    stats = BatchStats()
    ledger_records = [r for r in records if r.topic == topics["ledger"]]
    alert_records = [r for r in records if r.topic == topics["alerts"]]
    dead_records = [r for r in records if r.topic == topics["deadletter"]]
    state_records = [r for r in records if r.topic == topics.get("state")]
    registry_records = [r for r in records if r.topic == topics.get("registry")]
    with _cyclic_gc_paused(), conn.transaction():
        with conn.cursor() as cur:
            trail = None
            if ledger_records:
                chaining = _Chaining(cur, {r.partition for r in ledger_records})
                trail = _project_events(cur, ledger_records, stats, chaining.add_events)
            if alert_records:
                _project_alerts(cur, alert_records, stats)
            if dead_records:
                _project_deadletters(cur, dead_records, stats)
            if trail is not None or state_records:
                _project_money(cur, trail, state_records, stats)
            if registry_records:
                stats.registry_records, stats.registry_undecodable = project_registry(cur, registry_records)
            if trail is not None:
                chaining.add_late(trail.archived)  # the budget records and reversals archived just now
                chaining.write(cur)
            cur.executemany(
                "INSERT INTO ledger.tracking (projector, topic, partition, next_offset, updated_at)"
                " VALUES (%s, %s, %s, %s, now())"
                " ON CONFLICT (projector, topic, partition) DO UPDATE"
                " SET next_offset = excluded.next_offset, updated_at = now()",
                [(projector, t, p, o) for (t, p), o in next_offsets.items()],
            )
    return stats


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A batch allocates several containers per event (values, rows, keys), none of them in a
    reference cycle, and frees them when it ends. Left on, the cyclic collector would walk
    them, and everything else alive, many times per batch: a fifth of the batch's Python time.
    Whatever cyclic garbage a batch makes is collected once the collector is back on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# (accepted event id, its field digests) per idempotency key
Originals = dict[tuple[str, str], tuple[str, bytes]]
Totals = dict[tuple[str, str, str], list]


def _project_events(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats,
                    archived: Callable[[Sequence[tuple]], None]) -> "_MoneyOfBatch":
    """Slice by slice, so that both cores work: decoding is Python's largest cost and the writes
    are PostgreSQL's, and Python decodes the next slice while PostgreSQL works on this one.
    A round has two steps: in pipeline mode PostgreSQL adds the previous slice's totals and
    looks up this slice's events; then this slice is decided and its archive rows go in by
    COPY, which pipeline mode cannot carry. Half of the next slice decodes during each step.
    `archived` gets each slice's archive rows while PostgreSQL inserts them. Returns what the
    batch adds to the money trail: the new payments summed by the accounts they leave, and the
    budget records the decoding set aside."""
    conn = cur.connection
    decoding = _Decoding(records, stats)
    trail = _MoneyOfBatch({}, decoding.budget, decoding.reversals)
    decoding.more(_SLICE)
    decoded = decoding.take()
    originals: Originals = {}
    totals: Totals = {}
    while decoded or not decoding.exhausted:
        with conn.pipeline():
            if totals:
                _add_totals(cur, totals)
            lookups = _send_lookups(conn, decoded) if decoded else None
            decoding.more(_SLICE // 2)
        rows: list[tuple] = []
        totals = {}
        if lookups is not None:
            known = _lookup_results(*lookups, originals)
            fresh = [(r, v) for r, v in decoded if v[_EVENT_ID] not in known]
            rows, totals = _decide_events(fresh, originals, stats)
            stats.events_new += len(rows)
            _add_spent(rows, trail.spent)
        _copy_events(conn, rows, meanwhile=lambda: (archived(rows), decoding.more(_SLICE // 2)))
        decoded = decoding.take()
    if totals:
        _add_totals(cur, totals)
    return trail


# The one place ledger records are told apart. Rulebook activations are kept in ledger.rulebooks
# by whoever activates them; budget records are set aside for `_project_budget`, reversals for
# `_archive_reversals`. Everything else is a payment for the archive.
_NOT_ARCHIVED_HERE = (codec.RULEBOOK, codec.REVERSAL, *codec.BUDGET_RECORDS)

# Events per slice: small enough that the first slice, decoded with nothing to overlap, is a
# small share of a batch; large enough that each round trip and COPY costs little.
_SLICE = 4_000


class _Decoding:
    """A batch's ledger records decoded a part at a time, each event once (the first copy in
    the batch), as its field values."""

    def __init__(self, records: Sequence[Record], stats: BatchStats):
        self._records = records
        self._next = 0
        self._stats = stats
        self._seen_ids: set[str] = set()
        self._ready: list[tuple[Record, tuple]] = []
        self.budget: list[Record] = []  # allocations and releases, in log order
        self.reversals: list[Record] = []  # in log order

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._records)

    def more(self, n: int) -> None:
        part = self._records[self._next : self._next + n]
        self._next += len(part)
        for r in part:
            kind = codec.kind_of(r.value)
            if kind in _NOT_ARCHIVED_HERE:
                if kind in codec.BUDGET_RECORDS:
                    self.budget.append(r)
                elif kind == codec.REVERSAL:
                    self.reversals.append(r)
                continue
            try:
                values = codec.decode_disbursement_values(r.value)
            except codec.CodecError:
                self._stats.events_undecodable += 1  # the worker dead-letters it; the dead letter is projected
                continue
            if values[_EVENT_ID] in self._seen_ids:
                continue
            self._seen_ids.add(values[_EVENT_ID])
            self._ready.append((r, values))

    def take(self) -> list[tuple[Record, tuple]]:
        ready, self._ready = self._ready, []
        return ready


def _send_lookups(conn: psycopg.Connection, part: Sequence[tuple[Record, tuple]]) -> tuple[psycopg.Cursor, psycopg.Cursor]:
    """Which events are archived, and the accepted event under each key. The key lookup is one
    index probe per key: `LIMIT 1` (the partial unique index allows one row at most) keeps the
    planner from joining the whole archive, which it did by sorting every row, a cost that grew
    with the table. Parameters go in binary: the text form of an array costs a regex per element.
    Keys of events that turn out to be archived are looked up too; their originals are the
    archive's all the same."""
    known_cur, originals_cur = conn.cursor(), conn.cursor()
    known_cur.execute(KNOWN_EVENTS_SQL, ([v[_EVENT_ID] for _, v in part],))
    originals_cur.execute(ORIGINALS_SQL, ([v[_SOURCE_SYSTEM] for _, v in part], [v[_SOURCE_REF] for _, v in part]))
    return known_cur, originals_cur


KNOWN_EVENTS_SQL = "SELECT event_id::text FROM ledger.events WHERE event_id = ANY(%b::uuid[])"
ORIGINALS_SQL = (
    "SELECT o.value FROM unnest(%b::text[], %b::text[]) AS k(source_system, source_ref)"
    " CROSS JOIN LATERAL (SELECT e.value FROM ledger.events e WHERE e.accepted"
    " AND e.source_system = k.source_system AND e.source_ref = k.source_ref LIMIT 1) o"
)


def _lookup_results(known_cur: psycopg.Cursor, originals_cur: psycopg.Cursor, originals: Originals) -> set[str]:
    """The archived event ids; `originals` gains the accepted events found under the keys."""
    with known_cur, originals_cur:
        known = {event_id for (event_id,) in known_cur.fetchall()}
        for (value,) in originals_cur.fetchall():
            original = codec.decode_disbursement(bytes(value))
            originals[original.idempotency_key] = (original.event_id, original.digests())
    return known


def _decide_events(fresh: Sequence[tuple[Record, tuple]], originals: Originals,
                  stats: BatchStats) -> tuple[list[tuple], Totals]:
    """The archive rows of events not archived yet, in log order, and what the accepted ones add
    to each person's totals. The first event under a key is accepted; a later one with other
    content is kept as not accepted, with the core's named outcome. `originals` gains this
    batch's accepted events."""
    rows: list[tuple] = []
    totals: Totals = {}
    accepted = 0
    for r, v in fresh:
        key = v[_SOURCE_SYSTEM : _SOURCE_REF + 1]
        original = originals.get(key)
        if original is None:
            # events written before v2 carry no digests; only then are they computed here
            originals[key] = (v[_EVENT_ID], v[_FIELDS] or Disbursement(*v).digests())
            person_key = (v[_PERSON], v[_PROGRAMME], v[_PERIOD])
            t = totals.get(person_key)
            if t is None:
                totals[person_key] = [v[_AMOUNT], 1, v[_REGION]]
            else:
                t[0] += v[_AMOUNT]
                t[1] += 1
            accepted += 1
            rows.append(v[:_FIELDS] + (r.topic, r.partition, r.offset, True, outcomes.ACCEPTED, r.value))
        else:
            outcome = resubmission_outcome(original[0], original[1], Disbursement(*v))
            rows.append(v[:_FIELDS] + (r.topic, r.partition, r.offset, False, outcome, r.value))
    stats.events_accepted += accepted
    stats.events_conflicting += len(rows) - accepted
    return rows, totals


def _copy_events(conn: psycopg.Connection, rows: Sequence[tuple], meanwhile: Callable[[], None]) -> None:
    """Binary COPY: PostgreSQL parses binary timestamps and bytea faster than their text forms,
    and the integer microseconds and UUID text go out without building Python objects.
    `meanwhile` runs once the rows are sent, while PostgreSQL is still inserting them."""
    if not rows:
        meanwhile()
        return
    with conn.cursor() as cur:
        cur.adapters.register_dumper(None, _UuidTextDumper)  # by oid only: used with set_types
        cur.adapters.register_dumper(None, _MicrosDumper)
        with cur.copy(_EVENTS_COPY) as copy:
            copy.set_types(_EVENT_TYPES)
            for row in rows:
                copy.write_row(row)
            meanwhile()


# The archive's hash chain (`aidcore.chain`): a batch's chain rows go in its transaction, so
# the chain can neither lag nor disagree with the archive, and a replayed batch, which archives
# nothing, chains nothing. Besides the `archived` hook of `_project_events`, only these lines of
# the event path know about it.
_CHAIN_COPY = ('COPY ledger.chain (partition, position, "offset", event_id, value_sha256, prev_hash, hash)'
               " FROM STDIN (FORMAT BINARY)")
_CHAIN_HEADS_SQL = (
    "SELECT p, c.position, c.hash FROM unnest(%b::int4[]) AS p CROSS JOIN LATERAL"
    " (SELECT position, hash FROM ledger.chain WHERE partition = p ORDER BY position DESC LIMIT 1) c"
)
_PARTITION, _OFFSET = _FIELDS + 1, _FIELDS + 2  # in an archive row
# binary COPY of one chain row: 7 fields, each length-prefixed
_CHAIN_ROW = struct.Struct(">h ii iq iq i16s i32s i32s i32s").pack
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"


class _Chaining:
    """Chains a batch's archived records in the order archived, one slice at a time while
    PostgreSQL inserts the slice into the archive (hashing is Python's share, and PostgreSQL's
    COPY leaves Python time to spare), then writes the rows with one COPY."""

    def __init__(self, cur: psycopg.Cursor, partitions: Iterable[int]):
        self._heads = {p: chain.Head(position, bytes(h))
                       for p, position, h in cur.execute(_CHAIN_HEADS_SQL, (sorted(partitions),))}
        for p, head in self._heads.items():
            if len(head.hash) != 32:  # never extend a chain whose head is not a hash: someone edited it
                raise ValueError(f"the head of partition {p}'s chain is not a SHA-256 hash; see `aidledger audit verify`")
        self._start = dict(self._heads)
        self._archived: list[tuple[int, int, str, bytes]] = []
        self._rows: list[bytes] = []

    def add(self, archived: Sequence[tuple[int, int, str, bytes]]) -> None:
        """Records just archived, as (partition, offset, event id, value), in log order per
        partition and after everything added before."""
        self._archived += archived
        self._rows += self._packed(archived)

    def _packed(self, archived: Iterable[tuple[int, int, str, bytes]]) -> list[bytes]:
        fromhex = bytes.fromhex
        return [
            _CHAIN_ROW(7, 4, p, 8, position, 8, offset, 16, fromhex(event_id.replace("-", "")), 32, digest, 32, prev, 32, h)
            for p, position, offset, event_id, digest, prev, h in chain.extend(self._heads, archived)
        ]

    def add_events(self, rows: Sequence[tuple]) -> None:
        """`ledger.events` rows as `_decide_events` makes them."""
        self.add([(r[_PARTITION], r[_OFFSET], r[_EVENT_ID], r[-1]) for r in rows])

    def add_late(self, archived: Sequence[tuple[int, int, str, bytes]]) -> None:
        """Records of another archive table, archived after the batch's payments (budget records):
        the batch's chain is made again in offset order per partition, so that the chain is the
        log's order whatever way the log was cut into batches (`aidledger audit replay` compares
        chains). They are few; rehashing a batch that holds one costs ~2 µs per row."""
        if not archived:
            return
        self._archived += archived
        self._archived.sort(key=lambda a: (a[0], a[1]))
        self._heads = dict(self._start)
        self._rows = self._packed(self._archived)

    def write(self, cur: psycopg.Cursor) -> None:
        if not self._rows:
            return
        with cur.copy(_CHAIN_COPY) as copy:
            copy.write(_COPY_HEADER)
            copy.write(b"".join(self._rows))
            copy.write(_COPY_TRAILER)


def _add_totals(cur: psycopg.Cursor, totals: Totals) -> None:
    """Upserted in key order: person tokens are random, and in their order consecutive rows
    land on the same index pages (about half the time of an unordered upsert). Array
    parameters, not a staging table, so that it can go out in pipeline mode."""
    tokens, programmes, periods = zip(*totals)
    amounts, counts, regions = zip(*totals.values())
    cur.execute(
        "INSERT INTO ledger.person_totals"
        " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int8[], %b::int4[], %b::text[])"
        " ORDER BY 1, 2, 3"
        " ON CONFLICT (person_token, programme_code, period) DO UPDATE SET"
        " amount_idr_total = ledger.person_totals.amount_idr_total + excluded.amount_idr_total,"
        " payments = ledger.person_totals.payments + excluded.payments",
        (list(tokens), list(programmes), list(periods), list(amounts), list(counts), list(regions)),
    )


def _project_alerts(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats) -> None:
    latest: dict[str, object] = {}
    # when each alert was first raised, as far as this batch knows: its earliest revision's time,
    # whichever revision the batch ends with (so the row does not depend on where batches split)
    first_us: dict[str, int] = {}
    for r in records:
        try:
            a = codec.decode_alert(r.value)
        except codec.CodecError:
            stats.alerts_undecodable += 1  # only the worker and intake write alerts: a bug, made visible
            continue
        first_us[a.alert_id] = min(first_us.get(a.alert_id, a.raised_at_us), a.raised_at_us)
        held = latest.get(a.alert_id)
        if held is None or (a.revision, a.raised_at_us) >= (held.revision, held.raised_at_us):  # type: ignore[attr-defined]
            if held is not None and not a.region_code:  # keep the village an earlier revision knew
                a = dataclasses.replace(a, region_code=held.region_code)  # type: ignore[attr-defined]
            latest[a.alert_id] = a
        elif not held.region_code and a.region_code:  # type: ignore[attr-defined]
            latest[a.alert_id] = dataclasses.replace(held, region_code=a.region_code)
        stats.alert_latencies_ms.append((a.raised_at_us - a.trigger_recorded_at_us) / 1000.0)
    params = []
    for a in latest.values():
        # orjson writes each AlertLine dataclass as an object of its fields, in their order, with no
        # dict built per line: a case's lines grow with its payments, and a batch holds many cases
        lines = orjson.dumps(a.lines).decode()  # type: ignore[attr-defined]
        params.append(
            (
                a.alert_id, a.revision, a.rule_id, a.rulebook_version, a.outcome_code, a.subject_kind,  # type: ignore[attr-defined]
                a.subject_token, a.programme_code, a.period, a.region_code, lines, a.amount_idr_at_stake,  # type: ignore[attr-defined]
                a.amount_idr_total, a.message, _ts(first_us[a.alert_id]), _ts(a.raised_at_us), a.trigger_event_id,  # type: ignore[attr-defined]
                (a.raised_at_us - a.trigger_recorded_at_us) / 1000.0,  # type: ignore[attr-defined]
                a.status, a.threshold,  # type: ignore[attr-defined]
            )
        )
    cur.executemany(
        "INSERT INTO ledger.alerts (alert_id, revision, rule_id, rulebook_version, outcome_code, subject_kind,"
        " subject_token, programme_code, period, region_code, lines, amount_idr_at_stake, amount_idr_total,"
        " message, first_raised_at, raised_at, trigger_event_id, latency_ms, status, threshold)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (alert_id) DO UPDATE SET revision = excluded.revision, rulebook_version = excluded.rulebook_version,"
        # a revision a reversal made in the person stage knows no village: the case's is kept
        " region_code = CASE WHEN excluded.region_code = '' THEN ledger.alerts.region_code"
        " ELSE excluded.region_code END,"
        " outcome_code = excluded.outcome_code, lines = excluded.lines, amount_idr_at_stake = excluded.amount_idr_at_stake,"
        " amount_idr_total = excluded.amount_idr_total, message = excluded.message, raised_at = excluded.raised_at,"
        " trigger_event_id = excluded.trigger_event_id, latency_ms = excluded.latency_ms,"
        " status = excluded.status, threshold = excluded.threshold"
        # the batch's own rule (above): the latest revision, and of two with the same number the one
        # raised last, so that the row does not depend on where batches split
        " WHERE (excluded.revision, excluded.raised_at) > (ledger.alerts.revision, ledger.alerts.raised_at)",
        params,
    )
    stats.alerts += len(params)


def _header(headers: Iterable[tuple[str, bytes]], name: str, default: str = "") -> str:
    for k, v in headers:
        if k == name:
            return v.decode("utf-8", "replace")
    return default


def _project_deadletters(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats) -> None:
    params = []
    for r in records:
        h = r.headers
        params.append(
            (
                _header(h, "source_topic", r.topic), int(_header(h, "source_partition", "-1")),
                int(_header(h, "source_offset", "-1")), _header(h, "code", "unknown"), _header(h, "detail"),
                _header(h, "stage", "stream"), r.topic, r.partition, r.offset, r.value,
            )
        )
    cur.executemany(
        "INSERT INTO ledger.deadletters (source_topic, source_partition, source_offset, code, detail, stage,"
        " topic, partition, \"offset\", value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        params,
    )
    stats.deadletters += len(params)


def tracked_offsets(conn: psycopg.Connection, projector: str) -> dict[tuple[str, int], int]:
    rows = conn.execute(
        "SELECT topic, partition, next_offset FROM ledger.tracking WHERE projector = %s", (projector,)
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


def forget_offsets(conn: psycopg.Connection, projector: str) -> int:
    """Drop a projector's tracking records, so it reads every partition again from offset zero:
    for a log that was re-published into a broker that lost it, where old offsets mean nothing.
    Re-reading is a no-op for what was projected before (rows are keyed by their identities)."""
    return conn.execute("DELETE FROM ledger.tracking WHERE projector = %s", (projector,)).rowcount


# --- the money trail -------------------------------------------------------------------------------
# Every leg comes from aidcore.postings. A payment's legs are not stored (ledger.journal derives
# them from its archive row); what they do to the treasury, budget-line, agency and programme
# balances is summed per batch by the accounts it leaves, and to its recipient by person_totals.

Spent = dict[tuple[str, str, str], int]  # (agency, programme, funding account) -> rupiah of new payments


@dataclass(slots=True)
class _MoneyOfBatch:
    """What a batch's ledger records add to the money trail, gathered on the event path."""

    spent: Spent
    budget: list[Record]
    reversals: list[Record]
    archived: list[tuple[int, int, str, bytes]] = field(default_factory=list)  # budget records and reversals, to chain


def _add_spent(rows: Sequence[tuple], spent: Spent) -> None:
    for row in rows:
        if row[_ACCEPTED]:
            key = (row[_AGENCY], row[_PROGRAMME], row[_FUNDING])
            spent[key] = spent.get(key, 0) + row[_AMOUNT]


def _project_money(cur: psycopg.Cursor, trail: _MoneyOfBatch | None, state_records: Sequence[Record],
                   stats: BatchStats) -> None:
    """The batch's budget records and reversals, the reversal decisions in its changelog records,
    the legs of reversals that can now be posted, and the balances all of them change."""
    deltas: dict[str, int] = {}
    if trail is not None:
        for (agency, programme, line), amount in trail.spent.items():
            _add_legs(deltas, money.disbursement_legs(agency, programme, line, "", amount))
        if trail.budget:
            trail.archived += _project_budget(cur, trail.budget, deltas, stats)
        if trail.reversals:
            trail.archived += _archive_reversals(cur, trail.reversals, stats)
    if state_records:
        _project_reversal_decisions(cur, state_records, stats)
    _post_applied_reversals(cur, deltas, stats)
    if deltas:
        _add_balances(cur, deltas)


def _add_legs(deltas: dict[str, int], legs: Iterable[money.Leg]) -> None:
    """Recipient legs are left out: a recipient's balance is its person_totals."""
    for account, amount in legs:
        if money.account_kind(account) != money.RECIPIENT:
            deltas[account] = deltas.get(account, 0) + amount


_POSTINGS_INSERT = ("INSERT INTO ledger.postings (event_id, leg, account, amount_idr, at, record_type, topic, partition,"
                    " \"offset\") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def _project_budget(cur: psycopg.Cursor, records: Sequence[Record], deltas: dict[str, int],
                    stats: BatchStats) -> list[tuple[int, int, str, bytes]]:
    """Allocations and releases: archived keyed by event id, the first version under a key
    accepted (a later one with other content kept as not accepted, with the core's named
    outcome), and the accepted ones posted. Intake refuses other versions already; this is the
    second line, for a log written some other way. Returns what it archived, for the chain."""
    fresh: dict[str, tuple[Record, object]] = {}
    for r in records:
        [item] = codec.decode_ledger_values([r.value])
        if isinstance(item, codec.CodecError):
            stats.events_undecodable += 1  # the worker dead-letters nothing of these: count it here
            continue
        fresh.setdefault(item.event_id, (r, item))
    if not fresh:
        return []
    known = {row[0] for row in cur.execute(
        "SELECT event_id::text FROM ledger.budget_events WHERE event_id = ANY(%s::uuid[])", (list(fresh),))}
    todo = [(r, e) for event_id, (r, e) in fresh.items() if event_id not in known]
    if not todo:
        return []
    originals = {(system, ref): (record_type, event_id, codec.decode_ledger_values([bytes(value)])[0].digests())
                 for system, ref, record_type, event_id, value in cur.execute(
                     "SELECT b.source_system, b.source_ref, b.record_type, b.event_id::text, b.value"
                     " FROM unnest(%s::text[], %s::text[]) AS k(s, r)"
                     " JOIN ledger.budget_events b ON b.accepted AND b.source_system = k.s AND b.source_ref = k.r",
                     ([e.source_system for _, e in todo], [e.source_ref for _, e in todo]))}
    rows, legs = [], []
    for r, e in todo:
        key = (e.source_system, e.source_ref)
        kind = record_type_of(e)
        original = originals.get(key)
        if original is None:
            originals[key] = (kind, e.event_id, e.digests())
            accepted, outcome = True, outcomes.ACCEPTED
            for i, (account, amount) in enumerate(money.legs_of(e)):
                legs.append((e.event_id, i, account, amount, _ts(e.recorded_at_us), kind, r.topic, r.partition, r.offset))
            _add_legs(deltas, money.legs_of(e))
        else:
            accepted, outcome = False, key_outcome(original[0], original[1], original[2], e)
        allocation = isinstance(e, BudgetAllocation)
        at_us, offset_min = ((e.allocated_at_us, e.allocated_at_offset_min) if allocation
                             else (e.released_at_us, e.released_at_offset_min))
        rows.append((e.event_id, kind, e.source_system, e.source_ref, e.source_type, e.funding_account, e.agency_code,
                     e.programme_code if allocation else None, e.fiscal_year if allocation else None, e.amount_idr,
                     _ts(at_us), offset_min, _ts(e.recorded_at_us), accepted, outcome, r.topic, r.partition, r.offset,
                     r.value))
    cur.executemany(
        "INSERT INTO ledger.budget_events (event_id, record_type, source_system, source_ref, source_type,"
        " funding_account, agency_code, programme_code, fiscal_year, amount_idr, effective_at, effective_at_offset_min,"
        " recorded_at, accepted, outcome, topic, partition, \"offset\", value)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    if legs:
        cur.executemany(_POSTINGS_INSERT, legs)
    stats.budget_events += len(rows)
    return [(r.partition, r.offset, e.event_id, r.value) for r, e in todo]


# The archive's columns of a reversal, in `Reversal` field order up to recorded_at, then its log
# position and bytes; each goes to PostgreSQL as one array.
_REVERSAL_ARCHIVE_SQL = (
    "INSERT INTO ledger.reversal_events (event_id, source_system, source_ref, original_source_system,"
    " original_source_ref, agency_code, person_token, identity_kind, amount_idr, reason, reversed_at,"
    " reversed_at_offset_min, recorded_at, topic, partition, \"offset\", value)"
    " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::int8[], %s::text[], %s::timestamptz[], %s::int4[], %s::timestamptz[], %s::text[], %s::int4[],"
    " %s::int8[], %s::bytea[])"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id::text"
)


def _archive_reversals(cur: psycopg.Cursor, records: Sequence[Record],
                       stats: BatchStats) -> list[tuple[int, int, str, bytes]]:
    """Every reversal on the ledger topic, archived once (keyed by event id) as read, whatever the
    stream decides about it: the event is immutable, its status is `_project_reversal_decisions`'.
    One statement for the batch, which also tells the ones archived before. Returns what it
    archived, for the chain."""
    fresh: dict[str, tuple[Record, tuple]] = {}
    for r in records:
        try:
            v = codec.decode_reversal(r.value)
        except codec.CodecError:
            stats.events_undecodable += 1  # the worker dead-letters it; the dead letter is projected
            continue
        fresh.setdefault(v.event_id, (r, (
            v.event_id, v.source_system, v.source_ref, v.original_source_system, v.original_source_ref,
            v.agency_code, v.person_token, v.identity_kind, v.amount_idr, v.reason, _ts(v.reversed_at_us),
            v.reversed_at_offset_min, _ts(v.recorded_at_us), r.topic, r.partition, r.offset, r.value)))
    if not fresh:
        return []
    columns = [list(c) for c in zip(*(row for _, row in fresh.values()))]
    new = {event_id for (event_id,) in cur.execute(_REVERSAL_ARCHIVE_SQL, columns).fetchall()}
    stats.reversals += len(new)
    return [(r.partition, r.offset, event_id, r.value) for event_id, (r, _) in fresh.items() if event_id in new]


def _project_reversal_decisions(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats) -> None:
    """Follow the person stage's changelog, in its order per partition: a reversal among a
    record's values was taken into the stream's state (`pending`); one the record names applied
    took effect (`applied`, never undone); an entry it removes left the state (`removed`, unless
    it was applied). A reversal taken in again after it was removed (a replayed dead letter) is
    pending again. Reading the state's own changelog is what keeps the projection equal to the
    stream: the wait for an original is timed by the worker's clock, so no rule over the log
    alone could say which reversals the stream applied. Only ledger.reversal_status changes: the
    reversal itself is archived from the ledger topic (`_archive_reversals`)."""
    decoder = codec.codec(codec.STATE_DELTA)
    steps: list[tuple[str, object]] = []  # ("take", key row) | ("apply", event id) | ("remove", (token, key))
    for r in records:
        try:
            delta = decoder.decode(r.value)
        except codec.CodecError:
            stats.changelog_undecodable += 1  # only the worker writes here: a bug, made visible
            continue
        for value in delta["events"]:
            if codec.kind_of(value) == codec.REVERSAL:
                v = codec.decode_reversal(value)
                steps.append(("take", (v.event_id, v.person_token, v.source_system, v.source_ref)))
        for raw_id in delta["applied"]:
            steps.append(("apply", event_id_text(raw_id)))
        for entry in delta["removed"]:
            steps.append(("remove", (entry[:16].hex(), int.from_bytes(entry[16:24], "big"))))
    if not steps:
        return
    ids = [s[1][0] for s in steps if s[0] == "take"] + [s[1] for s in steps if s[0] == "apply"]
    tokens = list({s[1][0] for s in steps if s[0] == "remove"})
    status: dict[str, str] = {}  # event id -> status, as stored and then as the steps change it
    keys: dict[tuple[str, int], str] = {}  # (person token, idempotency key) -> event id
    for event_id, state, token, system, ref in cur.execute(
            "SELECT event_id::text, status, person_token, source_system, source_ref FROM ledger.reversal_status"
            " WHERE event_id = ANY(%s::uuid[]) OR person_token = ANY(%s::text[])", (ids, tokens)):
        status[event_id] = state
        keys[(token, idem_key(system, ref))] = event_id
    stored = dict(status)
    new_rows: dict[str, tuple] = {}
    for step, item in steps:
        if step == "take":
            event_id = item[0]
            if event_id not in status:
                new_rows[event_id] = item
                keys[(item[1], idem_key(item[2], item[3]))] = event_id
            if status.get(event_id) in (None, "removed"):
                status[event_id] = "pending"
        elif step == "apply":
            if item in status:
                status[item] = "applied"
            else:  # the worker names only reversals its changelog holds: a bug, made visible
                log.error("the changelog names reversal %s applied, but never took it in", item)
        else:
            event_id = keys.get(item)
            if event_id is not None and status.get(event_id) == "pending":
                status[event_id] = "removed"
    if new_rows:
        cur.executemany(
            "INSERT INTO ledger.reversal_status (event_id, person_token, source_system, source_ref, status)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(*row, status[event_id]) for event_id, row in new_rows.items()])
    changed = [(state, event_id) for event_id, state in status.items()
               if event_id not in new_rows and stored.get(event_id) != state]
    if changed:
        cur.executemany("UPDATE ledger.reversal_status SET status = %s WHERE event_id = %s", changed)
    stats.reversals += len(new_rows) + len(changed)


def _post_applied_reversals(cur: psycopg.Cursor, deltas: dict[str, int], stats: BatchStats) -> None:
    """Applied reversals that are archived and whose original is archived: their legs (the
    original's, negated, for the amount taken back), the original's person totals made net, and
    `applied_at`, the later of the two intake times. One the projector has not archived yet, or
    whose original it has not, waits for it: the ledger partition can be behind the changelog's."""
    ready = cur.execute(
        "SELECT r.event_id::text, r.amount_idr, greatest(r.recorded_at, o.recorded_at), r.topic, r.partition,"
        " r.\"offset\", o.value FROM ledger.reversal_status s JOIN ledger.reversal_events r USING (event_id)"
        " JOIN ledger.events o ON o.accepted"
        " AND o.source_system = r.original_source_system AND o.source_ref = r.original_source_ref"
        " AND o.person_token = r.person_token"
        " WHERE s.status = 'applied' AND s.applied_at IS NULL ORDER BY r.recorded_at, r.event_id").fetchall()
    if not ready:
        return
    legs, net, done = [], [], []
    for event_id, amount, at, topic, partition, offset, value in ready:
        original = codec.decode_disbursement(bytes(value))
        reversal_legs = money.reversal_legs(original, amount)
        legs += [(event_id, i, account, leg, at, "reversal", topic, partition, offset)
                 for i, (account, leg) in enumerate(reversal_legs)]
        _add_legs(deltas, reversal_legs)
        net.append((amount, original.person_token, original.programme_code, original.period))
        done.append((at, original.event_id, event_id))
    cur.executemany(_POSTINGS_INSERT, legs)
    cur.executemany("UPDATE ledger.person_totals SET amount_idr_total = amount_idr_total - %s"
                    " WHERE person_token = %s AND programme_code = %s AND period = %s", net)
    cur.executemany("UPDATE ledger.reversal_status SET applied_at = %s, original_event_id = %s WHERE event_id = %s",
                    done)
    stats.reversals_posted += len(ready)


def _add_balances(cur: psycopg.Cursor, deltas: dict[str, int]) -> None:
    accounts = sorted(deltas)
    cur.execute(
        "INSERT INTO ledger.balances (account, balance_idr) SELECT * FROM unnest(%s::text[], %s::int8[])"
        " ON CONFLICT (account) DO UPDATE SET balance_idr = ledger.balances.balance_idr + excluded.balance_idr",
        (accounts, [deltas[a] for a in accounts]))
