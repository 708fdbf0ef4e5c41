"""Dead letters: list them, and send them back to the topic they came from (the ledger, or the
submissions topic of direct producers) once their cause is fixed.

A replay goes through the outbox like any record, so it is durable before it is published.
Each dead letter has one outbox identity for its replay (derived from its source position and
code), so replaying the same dead letters twice publishes them once; and the stream decides a
replayed record like any other (a record that was accepted meanwhile answers `exists`).
Values are never printed: a record that failed to decode could hold anything a sender put in it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg

from schemas import codec
from schemas.submission import clear_record
from schemas.submission import record_key as submission_key


def listing(conn: psycopg.Connection, *, code: str | None = None, limit: int | None = None) -> list[dict]:
    sql = ("SELECT source_topic, source_partition, source_offset, code, detail, stage, topic, partition, \"offset\","
           " length(value), value, projected_at, replayed_at FROM ledger.deadletters")
    params: list = []
    if code:
        sql += " WHERE code = %s"
        params.append(code)
    sql += " ORDER BY projected_at, source_topic, source_partition, source_offset"
    if limit:
        sql += f" LIMIT {int(limit)}"
    out = []
    for (topic, part, offset, code_, detail, stage, dl_topic, dl_part, dl_offset, size, value, projected,
         replayed) in conn.execute(sql, params).fetchall():
        out.append({
            "code": code_, "detail": detail, "stage": stage,
            "source": {"topic": topic, "partition": part, "offset": offset},
            "deadletter": {"topic": dl_topic, "partition": dl_part, "offset": dl_offset},
            "value_bytes": size, "record_kind": codec.kind_of(bytes(value)) if value is not None else None,
            "event_id": _event_id(value), "record": _submission_ref(value),
            "projected_at": projected.isoformat(), "replayed_at": replayed.isoformat() if replayed else None,
        })
    return out


def _event_id(value) -> str | None:
    try:
        items = codec.decode_ledger_values([bytes(value)]) if value is not None else []
    except Exception:  # noqa: BLE001 - listing must never fail on a bad value
        return None
    item = items[0] if items else None
    return getattr(item, "event_id", None)


def _submission(value) -> dict | None:
    """The clear part of a sealed submission (a direct producer's record), or None."""
    data = bytes(value) if value is not None else b""
    if data[2:codec.HEADER_LEN] not in codec.codec(codec.SUBMISSION)._writers:
        return None
    try:
        record = clear_record(codec.codec(codec.SUBMISSION).decode(data))
    except codec.CodecError:
        return None
    return record if isinstance(record, dict) else None


def _submission_ref(value) -> dict | None:
    """A submission's source reference: its event id is the door's to make (it needs the token key)."""
    record = _submission(value)
    if record is None:
        return None
    return {"source_system": str(record.get("source_system", ""))[:128], "source_ref": str(record.get("source_ref", ""))[:128]}


def counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT code, count(*) FROM ledger.deadletters GROUP BY code ORDER BY code").fetchall())


def _record_key(value) -> bytes | None:
    """The Kafka key a dead letter's value had: a ledger record's person token, a submission's
    source reference; None when the value cannot be read as either."""
    submission = _submission(value)
    if submission is not None:
        return submission_key(submission)
    kind = codec.kind_of(bytes(value)) if value is not None else None
    items = codec.decode_ledger_values([bytes(value)]) if kind is not None else []
    token = getattr(items[0] if items else None, "person_token", None)
    return token.encode() if token is not None else None


def replay(conn: psycopg.Connection, *, code: str, ledger_topic: str, submissions_topic: str | None = None) -> dict:
    """Send the dead letters of `code` back to the topic they came from, through the outbox: the
    ledger's to the ledger (the stream decides them again), the submissions topic's to it (the
    door decides them again, against the agency registry as it is now). Returns counts: queued,
    already queued before, skipped (value missing or cut)."""
    queued = skipped = 0
    now = datetime.now(timezone.utc)
    sources = [t for t in (ledger_topic, submissions_topic) if t]
    with conn.transaction():
        rows = conn.execute(
            "SELECT d.source_topic, d.source_partition, d.source_offset, d.value, d.replayed_at"
            " FROM ledger.deadletters d WHERE d.code = %s AND d.source_topic = ANY(%s)"
            " ORDER BY d.source_topic, d.source_partition, d.source_offset FOR UPDATE",
            (code, sources),
        ).fetchall()
        already = sum(1 for r in rows if r[4] is not None)
        todo = []
        for topic, part, offset, value, replayed in rows:
            if replayed is not None:
                continue
            record_key = _record_key(value)
            if record_key is None:  # undecodable or cut: nothing to send back as it was
                skipped += 1
                continue
            todo.append((uuid.uuid5(uuid.NAMESPACE_URL, f"aidledger-replay:{topic}:{part}:{offset}:{code}"),
                         topic, record_key, bytes(value), now, (topic, part, offset)))
        with conn.cursor() as cur:
            for outbox_id, topic, key, value, at, (src_topic, src_part, src_offset) in todo:
                cur.execute("INSERT INTO ledger.outbox (event_id, topic, key, value, recorded_at) VALUES"
                            " (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                            (outbox_id, topic, key, value, at))
                queued += cur.rowcount
                cur.execute("UPDATE ledger.deadletters SET replayed_at = %s WHERE source_topic = %s AND"
                            " source_partition = %s AND source_offset = %s AND code = %s",
                            (at, src_topic, src_part, src_offset, code))
            cur.execute("NOTIFY aid_outbox")
    return {"code": code, "queued": queued, "already_replayed": already, "skipped": skipped}
