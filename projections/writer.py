"""The projector's batch write: one PostgreSQL transaction per batch of consumed records, holding
the rows they produce and the next offsets to read (tracking records). A replayed batch is a
no-op: events are keyed by event_id, alerts by alert_id with a revision guard, dead letters by
their source position. Correctness rests on those identities, not on offsets alone, so a log that
was re-published from offset zero projects to the same rows.

The idempotency decision for the archive is the core's (`aidcore.ledger.first_difference`): the
first event under a (source_system, source_ref) is accepted; a later one with other content is
archived as not accepted, with the named outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

import orjson
import psycopg

from aidcore import outcomes
from aidcore.intake import Disbursement
from aidcore.ledger import resubmission_outcome
from schemas import codec


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


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, timezone.utc)


_EVENT_COLUMNS = (
    "event_id", "topic", "partition", "offset", "source_system", "source_ref", "source_type", "agency_code",
    "programme_code", "person_token", "identity_kind", "kk_token", "amount_idr", "kind", "period",
    "disbursed_at", "disbursed_at_offset_min", "channel", "region_code", "funding_account", "recorded_at",
    "accepted", "outcome", "value",
)
_EVENTS_COPY = "COPY ledger.events ({}) FROM STDIN".format(", ".join(f'"{c}"' for c in _EVENT_COLUMNS))


def prepare(conn: psycopg.Connection) -> None:
    """The connection must be in autocommit mode, so that each `conn.transaction()` is a real
    BEGIN/COMMIT and never a savepoint inside a transaction that is not committed."""
    if not conn.autocommit:
        raise ValueError("the projector's connection must be in autocommit mode")
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_totals (person_token text, programme_code text, period text,"
        " amount_idr_total bigint, payments int, region_code text) ON COMMIT DELETE ROWS"
    )


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
    with conn.transaction():
        with conn.cursor() as cur:
            if ledger_records:
                _project_events(cur, ledger_records, stats)
            if alert_records:
                _project_alerts(cur, alert_records, stats)
            if dead_records:
                _project_deadletters(cur, dead_records, stats)
            cur.executemany(
                "INSERT INTO ledger.tracking (projector, topic, partition, next_offset, updated_at)"
                " VALUES (%s, %s, %s, %s, now())"
                " ON CONFLICT (projector, topic, partition) DO UPDATE"
                " SET next_offset = excluded.next_offset, updated_at = now()",
                [(projector, t, p, o) for (t, p), o in next_offsets.items()],
            )
    return stats


# Rulebook activations are kept in ledger.rulebooks by whoever activates them; reversals are
# decided by the stream and are not yet archived by the projector.
_NOT_ARCHIVED_HERE = (codec.RULEBOOK, codec.REVERSAL)


def _project_events(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats) -> None:
    decoded: list[tuple[Record, Disbursement]] = []
    seen_ids: set[str] = set()
    for r in records:
        if codec.kind_of(r.value) in _NOT_ARCHIVED_HERE:
            continue
        try:
            d = codec.decode_disbursement(r.value)
        except codec.CodecError:
            stats.events_undecodable += 1  # the worker dead-letters it; the dead letter is projected
            continue
        if d.event_id in seen_ids:
            continue
        seen_ids.add(d.event_id)
        decoded.append((r, d))
    if not decoded:
        return
    ids = [d.event_id for _, d in decoded]
    cur.execute("SELECT event_id::text FROM ledger.events WHERE event_id = ANY(%s::uuid[])", (ids,))
    known = {row[0] for row in cur.fetchall()}
    fresh = [(r, d) for r, d in decoded if d.event_id not in known]
    if not fresh:
        return
    cur.execute(
        "SELECT e.source_system, e.source_ref, e.value FROM ledger.events e"
        " JOIN unnest(%s::text[], %s::text[]) AS k(s, r) ON e.source_system = k.s AND e.source_ref = k.r"
        " WHERE e.accepted",
        ([d.source_system for _, d in fresh], [d.source_ref for _, d in fresh]),
    )
    originals: dict[tuple[str, str], tuple[str, bytes]] = {}
    for s, ref, v in cur.fetchall():
        original = codec.decode_disbursement(bytes(v))
        originals[(s, ref)] = (original.event_id, original.digests())
    rows = []
    totals: dict[tuple[str, str, str], list] = {}
    for r, d in fresh:
        key = (d.source_system, d.source_ref)
        digests = d.digests()
        original = originals.get(key)
        if original is None:
            accepted, outcome = True, outcomes.ACCEPTED
            originals[key] = (d.event_id, digests)
            t = totals.setdefault((d.person_token, d.programme_code, d.period), [0, 0, d.region_code])
            t[0] += d.amount_idr
            t[1] += 1
            stats.events_accepted += 1
        else:
            accepted, outcome = False, resubmission_outcome(original[0], original[1], d, digests)
            stats.events_conflicting += 1
        rows.append(
            (
                d.event_id, r.topic, r.partition, r.offset, d.source_system, d.source_ref, d.source_type,
                d.agency_code, d.programme_code, d.person_token, d.identity_kind, d.kk_token, d.amount_idr,
                d.kind, d.period, _ts(d.disbursed_at_us), d.disbursed_at_offset_min, d.channel, d.region_code,
                d.funding_account, _ts(d.recorded_at_us), accepted, outcome, r.value,
            )
        )
    with cur.copy(_EVENTS_COPY) as copy:
        for row in rows:
            copy.write_row(row)
    stats.events_new += len(rows)
    if totals:
        with cur.copy("COPY stage_totals FROM STDIN") as copy:
            for (token, programme, period), (amount, count, region) in totals.items():
                copy.write_row((token, programme, period, amount, count, region))
        cur.execute(
            "INSERT INTO ledger.person_totals SELECT * FROM stage_totals"
            " ON CONFLICT (person_token, programme_code, period) DO UPDATE SET"
            " amount_idr_total = ledger.person_totals.amount_idr_total + excluded.amount_idr_total,"
            " payments = ledger.person_totals.payments + excluded.payments"
        )


def _project_alerts(cur: psycopg.Cursor, records: Sequence[Record], stats: BatchStats) -> None:
    latest: dict[str, object] = {}
    for r in records:
        try:
            a = codec.decode_alert(r.value)
        except codec.CodecError:
            stats.alerts_undecodable += 1  # only the worker and intake write alerts: a bug, made visible
            continue
        held = latest.get(a.alert_id)
        if held is None or (a.revision, a.raised_at_us) >= (held.revision, held.raised_at_us):  # type: ignore[attr-defined]
            latest[a.alert_id] = a
        stats.alert_latencies_ms.append((a.raised_at_us - a.trigger_recorded_at_us) / 1000.0)
    params = []
    for a in latest.values():
        lines = orjson.dumps(
            [
                {"event_id": ln.event_id, "source_system": ln.source_system, "source_ref": ln.source_ref,
                 "amount_idr": ln.amount_idr, "disbursed_at_us": ln.disbursed_at_us,
                 "programme_code": ln.programme_code, "person_token": ln.person_token, "source_type": ln.source_type}
                for ln in a.lines  # type: ignore[attr-defined]
            ]
        ).decode()
        params.append(
            (
                a.alert_id, a.revision, a.rule_id, a.rulebook_version, a.outcome_code, a.subject_kind,  # type: ignore[attr-defined]
                a.subject_token, a.programme_code, a.period, a.region_code, lines, a.amount_idr_at_stake,  # type: ignore[attr-defined]
                a.amount_idr_total, a.message, _ts(a.raised_at_us), _ts(a.raised_at_us), a.trigger_event_id,  # type: ignore[attr-defined]
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
        " outcome_code = excluded.outcome_code, lines = excluded.lines, amount_idr_at_stake = excluded.amount_idr_at_stake,"
        " amount_idr_total = excluded.amount_idr_total, message = excluded.message, raised_at = excluded.raised_at,"
        " trigger_event_id = excluded.trigger_event_id, latency_ms = excluded.latency_ms,"
        " status = excluded.status, threshold = excluded.threshold"
        " WHERE excluded.revision > ledger.alerts.revision",
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
