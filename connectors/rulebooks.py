"""Putting a rulebook in force: a RulebookActivated event on every ledger partition, through the
outbox like every other record (durable before the broker has it), and a row in
ledger.rulebooks so intake and operators can tell which version is in force without reading the log.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg

from aidcore.reference import Reference
from aidcore.rulebook import Rulebook, default_rulebook, parse_rulebook
from schemas import codec


def active_rulebook(conn: psycopg.Connection, reference: Reference) -> Rulebook:
    """The latest activated rulebook; the packaged default before any activation."""
    row = conn.execute("SELECT text FROM ledger.rulebooks ORDER BY seq DESC LIMIT 1").fetchone()
    return parse_rulebook(row[0], reference) if row else default_rulebook(reference)


def activation_history(conn: psycopg.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT seq, version, digest, activated_at, activated_by FROM ledger.rulebooks ORDER BY seq").fetchall()
    return [{"seq": s, "version": v, "digest": d, "activated_at": a.isoformat(), "activated_by": b}
            for s, v, d, a, b in rows]


def activate(conn: psycopg.Connection, book: Rulebook, *, ledger_topic: str, partitions: int, by: str) -> bool:
    """Activate `book` unless it is already the rulebook in force; returns whether it did."""
    with conn.transaction():
        conn.execute("LOCK TABLE ledger.rulebooks IN EXCLUSIVE MODE")
        row = conn.execute("SELECT digest FROM ledger.rulebooks ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None and row[0] == book.digest:
            return False
        now = datetime.now(timezone.utc)
        seq = conn.execute(
            "INSERT INTO ledger.rulebooks (version, digest, text, activated_at, activated_by)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING seq", (book.version, book.digest, book.text, now, by)).fetchone()[0]
        value = codec.encode_rulebook(codec.RulebookActivation(
            book.version, book.digest, book.text, int(now.timestamp() * 1_000_000), by))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ledger.outbox (event_id, topic, key, value, recorded_at, partition)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(uuid.uuid5(uuid.NAMESPACE_URL, f"aidledger-rulebook:{seq}:{p}"), ledger_topic, b"rulebook", value, now, p)
                 for p in range(partitions)],
            )
            cur.execute("NOTIFY aid_outbox")
    return True
