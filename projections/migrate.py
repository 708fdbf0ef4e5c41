"""Apply migrations/NNN_*.sql in order, each once, under an advisory lock."""

from __future__ import annotations

from importlib import resources

import psycopg

_LOCK_ID = 0x41_49_44_4C  # "AIDL"


def migrations() -> list[tuple[str, str]]:
    folder = resources.files("projections").joinpath("migrations")
    items = sorted((e.name, e.read_text(encoding="utf-8")) for e in folder.iterdir() if e.name.endswith(".sql"))
    return items


def migrate(database_url: str) -> list[str]:
    """Returns the names applied now."""
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.aidledger_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM public.aidledger_migrations")}
            for name, sql in migrations():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO public.aidledger_migrations (name) VALUES (%s)", (name,))
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
