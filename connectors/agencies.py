"""Agencies and their API keys in PostgreSQL (ledger.agencies, ledger.agency_keys): add an agency,
issue and revoke keys, list them, and authenticate a presented key.

A clear key exists only in the return value of `add_agency` / `add_key`, for the operator to hand
over once; it is never stored or logged. Authentication looks the key's row up on every request
(so a revocation takes effect at once) and pays the scrypt check once per key and process: a key
that verified is remembered by an HMAC under a process-local secret, in memory only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

import psycopg

from aidcore.agencies import Agency, IssuedKey, issue_key, secret_matches, split_key


class AgencyError(ValueError):
    """An agency operation that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class AgencyRow:
    code: str
    programmes: list[str]
    source_systems: list[str]
    created_at: str
    revoked_at: str | None
    keys: list[dict]

    def as_dict(self) -> dict:
        return {"agency_code": self.code, "programmes": self.programmes, "source_systems": self.source_systems,
                "created_at": self.created_at, "revoked_at": self.revoked_at, "keys": self.keys}


def add_agency(conn: psycopg.Connection, code: str, programmes: list[str], source_systems: list[str]) -> IssuedKey:
    """A new agency and its first key."""
    if not code or not programmes or not source_systems:
        raise AgencyError("an agency needs a code, at least one programme and at least one source system")
    key = issue_key()
    with conn.transaction():
        inserted = conn.execute(
            "INSERT INTO ledger.agencies (agency_code, programmes, source_systems) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING agency_code", (code, programmes, source_systems),
        ).fetchone()
        if inserted is None:
            raise AgencyError(f"agency {code} exists already; `aidledger agencies key {code}` issues another key")
        _store_key(conn, code, key)
    return key


def add_key(conn: psycopg.Connection, code: str) -> IssuedKey:
    """Another key for an agency (rotation: issue the new one, then revoke the old one)."""
    key = issue_key()
    with conn.transaction():
        row = conn.execute("SELECT revoked_at FROM ledger.agencies WHERE agency_code = %s FOR UPDATE", (code,)).fetchone()
        if row is None:
            raise AgencyError(f"no agency {code}")
        if row[0] is not None:
            raise AgencyError(f"agency {code} is revoked")
        _store_key(conn, code, key)
    return key


def _store_key(conn: psycopg.Connection, code: str, key: IssuedKey) -> None:
    conn.execute("INSERT INTO ledger.agency_keys (key_id, agency_code, salt, digest) VALUES (%s, %s, %s, %s)",
                 (key.key_id, code, key.salt, key.digest))


def revoke(conn: psycopg.Connection, code: str | None = None, key_id: str | None = None) -> int:
    """Revoke an agency with all its keys, or one key; returns how many keys were revoked now."""
    with conn.transaction():
        if key_id:
            cur = conn.execute("UPDATE ledger.agency_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
                               + (" AND agency_code = %s" if code else ""), (key_id, code) if code else (key_id,))
            return cur.rowcount
        found = conn.execute("UPDATE ledger.agencies SET revoked_at = coalesce(revoked_at, now()) WHERE agency_code = %s"
                             " RETURNING agency_code", (code,)).fetchone()
        if found is None:
            raise AgencyError(f"no agency {code}")
        return conn.execute("UPDATE ledger.agency_keys SET revoked_at = now() WHERE agency_code = %s AND revoked_at IS NULL",
                            (code,)).rowcount


def listing(conn: psycopg.Connection) -> list[AgencyRow]:
    keys: dict[str, list[dict]] = {}
    for key_id, code, created, revoked in conn.execute(
            "SELECT key_id, agency_code, created_at, revoked_at FROM ledger.agency_keys ORDER BY created_at, key_id"):
        keys.setdefault(code, []).append({"key_id": key_id, "created_at": created.isoformat(),
                                          "revoked_at": revoked.isoformat() if revoked else None})
    return [AgencyRow(code, list(programmes), list(systems), created.isoformat(), revoked.isoformat() if revoked else None,
                      keys.get(code, []))
            for code, programmes, systems, created, revoked in conn.execute(
                "SELECT agency_code, programmes, source_systems, created_at, revoked_at FROM ledger.agencies"
                " ORDER BY agency_code")]


class Authenticator:
    """Presented API key -> Agency, or None. Thread-safe; one per process."""

    def __init__(self) -> None:
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}  # key id -> HMAC(pepper, secret) of the secret that verified
        self._lock = threading.Lock()

    def authenticate(self, conn: psycopg.Connection, presented: str | None) -> tuple[Agency, str] | None:
        """(agency, key id) when the key is ours and neither it nor its agency is revoked."""
        parts = split_key(presented or "")
        if parts is None:
            return None
        key_id, secret = parts
        row = conn.execute(
            "SELECT k.salt, k.digest, a.agency_code, a.programmes, a.source_systems FROM ledger.agency_keys k"
            " JOIN ledger.agencies a USING (agency_code)"
            " WHERE k.key_id = %s AND k.revoked_at IS NULL AND a.revoked_at IS NULL", (key_id,),
        ).fetchone()
        if row is None:
            return None
        salt, digest, code, programmes, systems = row
        tag = hmac.new(self._pepper, secret.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(key_id)
        if known is None or not hmac.compare_digest(known, tag):
            if not secret_matches(secret, bytes(salt), bytes(digest)):
                return None
            with self._lock:
                self._verified[key_id] = tag
        return Agency(code, frozenset(programmes), frozenset(systems)), key_id
