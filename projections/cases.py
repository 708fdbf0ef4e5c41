"""Reads and writes behind the PMO dashboard: alerts with their case status, the live feed's
changes, a case's history and its transitions (ledger.case_transitions, append-only), the
per-regency summary, and a person's identity, masked or (logged) in clear.

The clear NIK leaves the database only through `unmask`, which writes the vault's access log in
the same transaction. A masked NIK is cut in SQL, so a page that shows it never holds the NIK.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from aidcore.cases import Transition
from aidcore.reference import Reference
from projections.queries import _ALERT_COLUMNS, _alert_dict, _iso, _with_references

CASE_COLUMNS = (
    "coalesce(cs.status, 'open'), coalesce(cs.step, 0), a.change_seq,"
    " ARRAY(SELECT DISTINCT e.agency_code FROM jsonb_array_elements(a.lines) l"
    " JOIN ledger.events e ON e.event_id = (l->>'event_id')::uuid ORDER BY 1)"
)
_FROM = "FROM ledger.alerts a LEFT JOIN ledger.case_status cs USING (alert_id)"
CHANGES_MAX = 5000  # a burst beyond this reaches open feeds as its newest 5,000; a reload shows the rest
FILTERS = ("rule_id", "regency_code", "programme_code", "period", "case_status")


def _where(filters: dict[str, str | None], scope_regency: str | None, scope_agency: str | None) -> tuple[str, list]:
    where, params = [], []
    for name, sql in (("rule_id", "a.rule_id = %s"), ("regency_code", "left(a.region_code, 4) = %s"),
                      ("programme_code", "a.programme_code = %s"), ("period", "a.period = %s"),
                      ("case_status", "coalesce(cs.status, 'open') = %s")):
        if filters.get(name):
            where.append(sql)
            params.append(filters[name])
    if filters.get("person_token"):  # the subject, or a member of a household's case
        where.append("(a.subject_token = %s OR a.lines @> %s::jsonb)")
        params += [filters["person_token"], orjson.dumps([{"person_token": filters["person_token"]}]).decode()]
    if scope_regency is not None:
        where.append("left(a.region_code, 4) = %s")
        params.append(scope_regency)
    if scope_agency is not None:
        where.append("EXISTS (SELECT 1 FROM jsonb_array_elements(a.lines) l JOIN ledger.events e"
                     " ON e.event_id = (l->>'event_id')::uuid WHERE e.agency_code = %s)")
        params.append(scope_agency)
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _cases(conn: psycopg.Connection, reference: Reference, where: str, params: list, order: str,
           limit: int) -> list[dict[str, Any]]:
    """The alerts `where` picks, in `order`, at most `limit`: picked first, so the per-alert work
    (agencies, references, words) is done for the page only."""
    columns = ", ".join("a." + c.strip() for c in _ALERT_COLUMNS.split(","))
    rows = conn.execute(
        f"WITH picked AS (SELECT a.alert_id {_FROM}{where} ORDER BY {order} LIMIT {int(limit)})"
        f" SELECT {columns}, {CASE_COLUMNS} FROM picked JOIN ledger.alerts a USING (alert_id)"
        f" LEFT JOIN ledger.case_status cs USING (alert_id) ORDER BY {order}", params).fetchall()
    n = len(_ALERT_COLUMNS.split(","))
    alerts = _with_references(conn, [r[:n] for r in rows], reference)
    out = []
    for alert, extra in zip(alerts, (r[n:] for r in rows)):
        item = _alert_dict(alert, reference)
        item.update(case_status=extra[0], case_step=extra[1], change_seq=extra[2], agency_codes=list(extra[3]))
        out.append(item)
    return out


def cases(conn: psycopg.Connection, reference: Reference, filters: dict[str, str | None], *,
          scope_regency: str | None = None, scope_agency: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Alerts with their case status, newest first, filtered and confined to a scope."""
    where, params = _where(filters, scope_regency, scope_agency)
    return _cases(conn, reference, where, params, "a.raised_at DESC, a.alert_id", limit)


def case(conn: psycopg.Connection, reference: Reference, alert_id: str) -> dict[str, Any] | None:
    found = _cases(conn, reference, " WHERE a.alert_id = %s", [alert_id], "a.alert_id", 1)
    return found[0] if found else None


def change_marks(conn: psycopg.Connection) -> tuple[int, int]:
    """(the highest alert change_seq, the highest transition seq): where a feed starts."""
    return conn.execute("SELECT (SELECT coalesce(max(change_seq), 0) FROM ledger.alerts),"
                        " (SELECT coalesce(max(seq), 0) FROM ledger.case_transitions)").fetchone()


def changes(conn: psycopg.Connection, reference: Reference, marks: tuple[int, int]
            ) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """The alerts written, or whose case moved, after `marks`; and the marks after them."""
    latest = change_marks(conn)
    if latest == tuple(marks):
        return [], latest
    found = _cases(conn, reference, " WHERE (a.change_seq > %s AND a.change_seq <= %s) OR a.alert_id IN"
                   " (SELECT alert_id FROM ledger.case_transitions WHERE seq > %s AND seq <= %s)",
                   [marks[0], latest[0], marks[1], latest[1]], "a.change_seq DESC", CHANGES_MAX)
    found.reverse()  # oldest first, so a feed that adds each on top ends with the newest there
    return found, latest


def history(conn: psycopg.Connection, alert_id: str) -> list[dict[str, Any]]:
    return [{"step": step, "action": action, "from_status": from_status, "to_status": to_status, "actor": actor,
             "role": role, "reason": reason, "reversal_source_system": r_system, "reversal_source_ref": r_ref,
             "at": _iso(at)}
            for step, action, from_status, to_status, actor, role, reason, r_system, r_ref, at in conn.execute(
                "SELECT step, action, from_status, to_status, actor, role, reason, reversal_source_system,"
                " reversal_source_ref, at FROM ledger.case_transitions WHERE alert_id = %s ORDER BY step",
                (alert_id,))]


def record_transition(conn: psycopg.Connection, alert_id: str, step: int, t: Transition, actor: str,
                      role: str) -> bool:
    """Append transition number `step` of a case; False when that step was taken meanwhile."""
    cur = conn.execute(
        "INSERT INTO ledger.case_transitions (alert_id, step, action, from_status, to_status, actor, role, reason,"
        " reversal_source_system, reversal_source_ref) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (alert_id, step) DO NOTHING",
        (alert_id, step, t.action, t.from_status, t.to_status, actor, role, t.reason, t.reversal_source_system,
         t.reversal_source_ref))
    return cur.rowcount == 1


def reversal_recorded(conn: psycopg.Connection, source_system: str, source_ref: str) -> bool:
    """Whether a reversal is recorded under the key: archived, or taken in at intake."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM ledger.reversal_events WHERE source_system = %s AND source_ref = %s)"
        " OR EXISTS (SELECT 1 FROM ledger.intake_keys WHERE source_system = %s AND source_ref = %s"
        " AND coalesce(record_type, CASE WHEN programme_code = '' THEN 'reversal' END) = 'reversal')",
        (source_system, source_ref) * 2).fetchone()[0]


def regency_summary(conn: psycopg.Connection, reference: Reference, filters: dict[str, str | None], *,
                    scope_regency: str | None = None, scope_agency: str | None = None) -> dict[str, Any]:
    """Per regency: alerts, rupiah at stake, people reached (paid), and, where the registry view
    ledger.registered_people exists, people registered there but never paid (with the filters'
    programme and period)."""
    where, params = _where({k: v for k, v in filters.items() if k != "regency_code"}, scope_regency, scope_agency)
    rows: dict[str, dict[str, Any]] = {}

    def row(code: str) -> dict[str, Any]:
        return rows.setdefault(code, {"regency_code": code, "regency_name": reference.regency_name(code + "000000"),
                                      "alerts": 0, "amount_idr_at_stake": 0, "people_reached": 0,
                                      "people_never_paid": None})

    for code, n, at_stake in conn.execute(
            f"SELECT left(a.region_code, 4), count(*), coalesce(sum(a.amount_idr_at_stake), 0)::bigint {_FROM}{where}"
            " GROUP BY 1", params):
        row(code).update(alerts=n, amount_idr_at_stake=at_stake)
    paid_where, paid_params = ["amount_idr_total > 0"], []
    for name in ("programme_code", "period"):
        if filters.get(name):
            paid_where.append(f"{name} = %s")
            paid_params.append(filters[name])
    if scope_agency is not None:
        paid_where.append("person_token IN (SELECT person_token FROM ledger.events WHERE agency_code = %s)")
        paid_params.append(scope_agency)
    paid = " AND ".join(paid_where)
    for code, n in conn.execute(f"SELECT left(region_code, 4), count(DISTINCT person_token) FROM ledger.person_totals"
                                f" WHERE {paid} GROUP BY 1", paid_params):
        row(code)["people_reached"] = n
    registry = conn.execute("SELECT to_regclass('ledger.registered_people') IS NOT NULL").fetchone()[0]
    if registry and scope_agency is None:
        for code, n in conn.execute(
                "SELECT r.regency_code, count(DISTINCT r.person_token) FROM ledger.registered_people r"
                f" WHERE NOT EXISTS (SELECT 1 FROM ledger.person_totals t WHERE t.person_token = r.person_token"
                f" AND {paid}) GROUP BY 1", paid_params):
            row(code)["people_never_paid"] = n
        for r in rows.values():
            r["people_never_paid"] = r["people_never_paid"] or 0
    items = sorted((r for r in rows.values() if scope_regency is None or r["regency_code"] == scope_regency),
                   key=lambda r: r["regency_code"])
    return {"registry_available": bool(registry and scope_agency is None), "regencies": items}


def masked_identity(conn: psycopg.Connection, person_token: str) -> dict[str, Any]:
    """The identity kind and the NIK masked as `aidcore.nik.mask` masks it (first 5 and last 2
    digits), cut in SQL: no clear NIK, so no access-log entry."""
    row = conn.execute(
        "SELECT identity_kind, CASE WHEN length(nik) = 16 THEN left(nik, 5) || repeat('*', 9) || right(nik, 2)"
        " ELSE repeat('*', length(coalesce(nik, ''))) END FROM vault.identity WHERE person_token = %s",
        (person_token,)).fetchone()
    return {"identity_kind": row[0] if row else None, "masked_nik": (row[1] or None) if row else None}


def unmask(conn: psycopg.Connection, person_token: str, *, who: str, why: str) -> dict[str, Any]:
    """The clear identity of a person, and its read written to vault.access_log with who and why,
    in one transaction."""
    with conn.transaction():
        row = conn.execute("SELECT identity_kind, nik, provisional_id, recipient_name FROM vault.identity"
                           " WHERE person_token = %s", (person_token,)).fetchone()
        conn.execute("INSERT INTO vault.access_log (who, why, person_token) VALUES (%s, %s, %s)",
                     (who, why, person_token))
    if row is None:
        return {"identity_kind": None, "nik": None, "provisional_id": None, "recipient_name": None}
    return {"identity_kind": row[0], "nik": row[1], "provisional_id": row[2], "recipient_name": row[3]}
