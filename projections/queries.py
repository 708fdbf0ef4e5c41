"""Read queries behind the CLI and, later, the HTTP API. Results are plain dicts with stable,
documented field names (those of the input record where one exists); see docs/json-output.md.
Reads of the identity vault are logged with who and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from aidcore import explain
from aidcore.ledger import RULE_MODIFIED_RESUBMISSION, AlertLine
from aidcore.reference import Reference


def _iso(moment: datetime | None, offset_min: int = 420) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone(timedelta(minutes=offset_min))).isoformat()


def _alert_dict(row: tuple, reference: Reference) -> dict[str, Any]:
    (alert_id, revision, rule_id, rulebook_version, outcome_code, subject_kind, subject_token, programme_code,
     period, region_code, lines, at_stake, total, message, first_raised_at, raised_at, latency_ms, status,
     threshold) = row
    return {
        "alert_id": alert_id,
        "revision": revision,
        "rule_id": rule_id,
        "rulebook_version": rulebook_version,
        "status": status,
        "outcome_code": outcome_code,
        "subject_kind": subject_kind,
        "subject_token": subject_token,
        "programme_code": programme_code,
        "period": period,
        "region_code": region_code,
        "regency_code": region_code[:4],
        "regency_name": reference.regency_name(region_code),
        "amount_idr_at_stake": at_stake,
        "amount_idr_total": total,
        "threshold": threshold,
        "message": message,
        "events": [
            {
                "event_id": ln["event_id"],
                "source_system": ln["source_system"],
                "source_ref": ln["source_ref"],
                "programme_code": ln.get("programme_code", ""),
                "source_type": ln.get("source_type", ""),
                "member_token": ln.get("person_token", ""),
                "amount_idr": ln["amount_idr"],
                "disbursed_at": _iso(datetime.fromtimestamp(ln["disbursed_at_us"] / 1e6, timezone.utc)),
            }
            for ln in lines
        ],
        "first_raised_at": _iso(first_raised_at),
        "raised_at": _iso(raised_at),
        "latency_ms": round(latency_ms, 3),
    }


_ALERT_COLUMNS = (
    "alert_id, revision, rule_id, rulebook_version, outcome_code, subject_kind, subject_token, programme_code,"
    " period, region_code, lines, amount_idr_at_stake, amount_idr_total, message, first_raised_at, raised_at, latency_ms,"
    " status, threshold"
)


def alerts(conn: psycopg.Connection, reference: Reference, *, rule_id: str | None = None,
           subject_token: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    where, params = [], []
    if rule_id:
        where.append("rule_id = %s")
        params.append(rule_id)
    if subject_token:
        where.append("subject_token = %s")
        params.append(subject_token)
    sql = f"SELECT {_ALERT_COLUMNS} FROM ledger.alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY first_raised_at, alert_id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = conn.execute(sql, params).fetchall()
    return [_alert_dict(r, reference) for r in _with_references(conn, rows, reference)]


def _with_references(conn: psycopg.Connection, rows: list[tuple], reference: Reference) -> list[tuple]:
    """The worker's state keeps no source references, so an alert names earlier payments by event
    id only; fill their references in from the archive and render the words again."""
    missing = {ln["event_id"] for row in rows for ln in row[10] if not ln["source_system"]}
    if not missing:
        return rows
    found = {
        event_id: (system, ref)
        for event_id, system, ref in conn.execute(
            "SELECT event_id::text, source_system, source_ref FROM ledger.events WHERE event_id = ANY(%s::uuid[])",
            (list(missing),),
        )
    }
    out = []
    for row in rows:
        lines = [dict(ln) for ln in row[10]]
        for ln in lines:
            if not ln["source_system"] and ln["event_id"] in found:
                ln["source_system"], ln["source_ref"] = found[ln["event_id"]]
        row = list(row)
        row[10] = lines
        if row[2] != RULE_MODIFIED_RESUBMISSION and all(ln["source_system"] for ln in lines):
            row[13] = explain.message(row[2], row[5], row[9], row[7], row[8], [AlertLine(**ln) for ln in lines],
                                      row[11], row[18], row[17], reference)
        out.append(tuple(row))
    return out


def trail(conn: psycopg.Connection, reference: Reference, person_token: str, *, who: str, why: str,
          reveal_name: bool = True) -> dict[str, Any]:
    events = conn.execute(
        "SELECT event_id::text, source_system, source_ref, source_type, agency_code, programme_code, amount_idr, kind,"
        " period, disbursed_at, disbursed_at_offset_min, channel, region_code, funding_account, recorded_at, accepted, outcome"
        " FROM ledger.events WHERE person_token = %s ORDER BY disbursed_at, source_system, source_ref",
        (person_token,),
    ).fetchall()
    totals = conn.execute(
        "SELECT programme_code, period, amount_idr_total, payments FROM ledger.person_totals"
        " WHERE person_token = %s ORDER BY period, programme_code",
        (person_token,),
    ).fetchall()
    name = None
    kind = None
    if reveal_name:
        with conn.transaction():
            row = conn.execute(
                "SELECT identity_kind, recipient_name FROM vault.identity WHERE person_token = %s", (person_token,)
            ).fetchone()
            conn.execute(
                "INSERT INTO vault.access_log (who, why, person_token) VALUES (%s, %s, %s)", (who, why, person_token)
            )
        if row:
            kind, name = row
    return {
        "person_token": person_token,
        "identity_kind": kind,
        "recipient_name": name,
        "events": [
            {
                "event_id": e[0], "source_system": e[1], "source_ref": e[2], "source_type": e[3], "agency_code": e[4],
                "programme_code": e[5], "amount_idr": e[6], "kind": e[7], "period": e[8],
                "disbursed_at": _iso(e[9], e[10]), "channel": e[11], "region_code": e[12],
                "funding_account": e[13], "recorded_at": _iso(e[14]), "accepted": e[15], "outcome": e[16],
            }
            for e in events
        ],
        "totals": [
            {"programme_code": t[0], "period": t[1], "amount_idr_total": t[2], "payments": t[3]} for t in totals
        ],
        "alerts": alerts(conn, reference, subject_token=person_token),
    }


def summary(conn: psycopg.Connection, reference: Reference) -> dict[str, Any]:
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    by = lambda sql: {str(k): v for k, v in conn.execute(sql).fetchall()}  # noqa: E731
    regency = by(
        "SELECT left(region_code, 4), sum(amount_idr)::bigint FROM ledger.events WHERE accepted GROUP BY 1 ORDER BY 1"
    )
    return {
        "intake": {
            "rows": one("SELECT coalesce(sum(accepted + redelivered + rejected), 0)::bigint FROM ledger.intake_batches"),
            "accepted": one("SELECT coalesce(sum(accepted)::bigint, 0) FROM ledger.intake_batches"),
            "redelivered": one("SELECT coalesce(sum(redelivered)::bigint, 0) FROM ledger.intake_batches"),
            "rejected": one("SELECT coalesce(sum(rejected)::bigint, 0) FROM ledger.intake_batches"),
            "rejected_by_code": by("SELECT code, count(*) FROM ledger.intake_rejections GROUP BY 1 ORDER BY 2 DESC"),
        },
        "ledger": {
            "events": one("SELECT count(*) FROM ledger.events"),
            "accepted": one("SELECT count(*) FROM ledger.events WHERE accepted"),
            "not_accepted": by("SELECT outcome, count(*) FROM ledger.events WHERE NOT accepted GROUP BY 1"),
            "amount_idr_total": one("SELECT coalesce(sum(amount_idr)::bigint, 0) FROM ledger.events WHERE accepted"),
            "persons": one("SELECT count(DISTINCT person_token) FROM ledger.person_totals"),
        },
        "amount_idr_by_programme": by(
            "SELECT programme_code, sum(amount_idr)::bigint FROM ledger.events WHERE accepted GROUP BY 1 ORDER BY 2 DESC"
        ),
        "amount_idr_by_regency": {f"{k} {reference.regency_name(k + '000000')}": v for k, v in regency.items()},
        "alerts_by_rule": by("SELECT rule_id, count(*) FROM ledger.alerts GROUP BY 1 ORDER BY 1"),
        "amount_idr_at_stake_by_rule": by(
            "SELECT rule_id, sum(amount_idr_at_stake)::bigint FROM ledger.alerts GROUP BY 1 ORDER BY 1"
        ),
        "deadletters_by_code": by("SELECT code, count(*) FROM ledger.deadletters GROUP BY 1 ORDER BY 2 DESC"),
    }


def progress(conn: psycopg.Connection) -> dict[str, Any]:
    """What `aidledger wait` compares: outbox vs relay cursor, relay offsets vs projector tracking."""
    max_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger.outbox").fetchone()[0]
    row = conn.execute("SELECT last_seq FROM ledger.relay_cursor WHERE relay = 'main'").fetchone()
    relay_offsets = {(t, p): o for t, p, o in conn.execute("SELECT topic, partition, next_offset FROM ledger.relay_offsets")}
    tracking = {
        (t, p): o
        for t, p, o in conn.execute("SELECT topic, partition, next_offset FROM ledger.tracking WHERE projector = 'main'")
    }
    return {"outbox_max_seq": max_seq, "relay_seq": row[0] if row else 0, "relay_offsets": relay_offsets, "tracking": tracking}
