"""Users of the PMO dashboard in PostgreSQL (ledger.dashboard_users): add one, issue a new
password, disable, list, check a password, load a user.

A password is generated, shown once in the return value of `add_user` / `reset_password` for the
operator to hand over, and never stored or logged: only a salted scrypt digest is kept, made the
way agency keys are (`aidcore.agencies.digest_secret`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import psycopg

from aidcore.agencies import SALT_BYTES, digest_secret, secret_matches
from aidcore.cases import User, user_problem
from aidcore.sessions import username_problem

PASSWORD_BYTES = 15  # 20 URL-safe characters


class UserError(ValueError):
    """A user operation that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Issued:
    user: User
    password: str  # shown once, never stored


def _new_password() -> tuple[str, bytes, bytes]:
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    salt = secrets.token_bytes(SALT_BYTES)
    return password, salt, digest_secret(password, salt)


def add_user(conn: psycopg.Connection, username: str, role: str, regency_code: str | None = None,
             agency_code: str | None = None) -> Issued:
    problem = username_problem(username) or user_problem(role, regency_code, agency_code)
    if problem:
        raise UserError(problem)
    password, salt, digest = _new_password()
    inserted = conn.execute(
        "INSERT INTO ledger.dashboard_users (username, role, regency_code, agency_code, salt, digest)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING username",
        (username, role, regency_code, agency_code, salt, digest)).fetchone()
    if inserted is None:
        raise UserError(f"user {username} exists already; `aidledger users reset {username}` issues a new password")
    return Issued(User(username, role, regency_code, agency_code), password)


def reset_password(conn: psycopg.Connection, username: str) -> Issued:
    password, salt, digest = _new_password()
    row = conn.execute("UPDATE ledger.dashboard_users SET salt = %s, digest = %s, disabled_at = NULL"
                       " WHERE username = %s RETURNING role, regency_code, agency_code",
                       (salt, digest, username)).fetchone()
    if row is None:
        raise UserError(f"no user {username}")
    return Issued(User(username, *row), password)


def disable(conn: psycopg.Connection, username: str) -> None:
    row = conn.execute("UPDATE ledger.dashboard_users SET disabled_at = coalesce(disabled_at, now())"
                       " WHERE username = %s RETURNING username", (username,)).fetchone()
    if row is None:
        raise UserError(f"no user {username}")


def listing(conn: psycopg.Connection) -> list[dict]:
    return [{"username": u, "role": r, "regency_code": reg, "agency_code": ag, "created_at": c.isoformat(),
             "disabled_at": d.isoformat() if d else None}
            for u, r, reg, ag, c, d in conn.execute(
                "SELECT username, role, regency_code, agency_code, created_at, disabled_at"
                " FROM ledger.dashboard_users ORDER BY username")]


def load(conn: psycopg.Connection, username: str) -> User | None:
    """The user as stored now, or None when unknown or disabled."""
    row = conn.execute("SELECT role, regency_code, agency_code FROM ledger.dashboard_users"
                       " WHERE username = %s AND disabled_at IS NULL", (username,)).fetchone()
    return None if row is None else User(username, *row)


def check_password(conn: psycopg.Connection, username: str, password: str) -> User | None:
    """The user when the password is theirs and they are not disabled. An unknown name costs the
    same scrypt check, so timing does not tell which names exist."""
    row = conn.execute("SELECT role, regency_code, agency_code, salt, digest FROM ledger.dashboard_users"
                       " WHERE username = %s AND disabled_at IS NULL", (username,)).fetchone()
    if row is None:
        secret_matches(password, bytes(SALT_BYTES), bytes(32))
        return None
    role, regency, agency, salt, digest = row
    if not secret_matches(password, bytes(salt), bytes(digest)):
        return None
    return User(username, role, regency, agency)
