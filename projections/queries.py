"""Read queries behind the CLI and, later, the HTTP API. Results are plain dicts with stable,
documented field names (those of the input record where one exists); see docs/json-output.md.
Reads of the identity vault are logged with who and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from aidcore import explain, outcomes, postings
from aidcore.ledger import RULE_MODIFIED_RESUBMISSION, AlertLine
from aidcore.reference import Reference
from schemas import codec


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


_EVENT_COLUMNS = (
    "event_id::text, source_system, source_ref, source_type, agency_code, programme_code, amount_idr, kind, period,"
    " disbursed_at, disbursed_at_offset_min, channel, region_code, funding_account, recorded_at, accepted, outcome,"
    " person_token"
)


def trail(conn: psycopg.Connection, reference: Reference, person_token: str, *, who: str, why: str,
          reveal_name: bool = True, as_of: datetime | None = None) -> dict[str, Any]:
    """A person's history: every payment with the path of its money (treasury and budget line,
    agency, programme, channel, recipient), its legs and its reversals; totals net of reversals;
    alerts. With `as_of`, as the ledger stood then: only what intake had recorded by that moment,
    and reversals that had taken effect by then."""
    where, params = "person_token = %s", [person_token]
    if as_of is not None:
        where += " AND recorded_at <= %s"
        params.append(as_of)
    events = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM ledger.events WHERE {where} ORDER BY disbursed_at, source_system, source_ref",
        params,
    ).fetchall()
    reversals = _reversals_of(conn, person_token, as_of)
    if as_of is None:
        totals = conn.execute(
            "SELECT programme_code, period, amount_idr_total, payments FROM ledger.person_totals"
            " WHERE person_token = %s ORDER BY period, programme_code",
            (person_token,),
        ).fetchall()
    else:
        totals = _totals_as_of(events, reversals)
    kind, name = _identity(conn, person_token, who, why) if reveal_name else (None, None)
    budget = _budget_of(conn, {(e[13], e[4]) for e in events}, as_of)
    items = [_payment(e, reversals, budget) for e in events]
    mine = {(e[1], e[2]) for e in events}
    first_raised = alerts(conn, reference, subject_token=person_token)
    if as_of is not None:
        first_raised = [a for a in first_raised if datetime.fromisoformat(a["first_raised_at"]) <= as_of]
    return {
        "person_token": person_token,
        "identity_kind": kind,
        "recipient_name": name,
        "as_of": _iso(as_of),
        "events": items,
        "totals": [
            {"programme_code": t[0], "period": t[1], "amount_idr_total": t[2], "payments": t[3]} for t in totals
        ],
        "balance_idr": sum(t[2] for t in totals),
        "reversals_without_payment": [r for r in reversals if (r["original_source_system"],
                                                               r["original_source_ref"]) not in mine],
        "alerts": first_raised,
    }


def _identity(conn: psycopg.Connection, person_token: str, who: str, why: str) -> tuple[str | None, str | None]:
    """The vault's identity kind and name of a person; every read is logged with who and why."""
    with conn.transaction():
        row = conn.execute(
            "SELECT identity_kind, recipient_name FROM vault.identity WHERE person_token = %s", (person_token,)
        ).fetchone()
        conn.execute(
            "INSERT INTO vault.access_log (who, why, person_token) VALUES (%s, %s, %s)", (who, why, person_token)
        )
    return (row[0], row[1]) if row else (None, None)


def _reversals_of(conn: psycopg.Connection, person_token: str, as_of: datetime | None) -> list[dict[str, Any]]:
    """A person's reversals: those the stream took in (applied, pending, or dropped later), and
    those it refused on arrival (only their dead letters hold them), oldest first. `status` is
    `applied`, `pending`, or the code of the dead letter that dropped or refused it."""
    out: dict[str, dict[str, Any]] = {}
    for (event_id, system, ref, o_system, o_ref, amount, reason, reversed_at, offset_min, recorded_at, status,
         applied_at, code) in conn.execute(
            "SELECT r.event_id::text, r.source_system, r.source_ref, r.original_source_system, r.original_source_ref,"
            " r.amount_idr, r.reason, r.reversed_at, r.reversed_at_offset_min, r.recorded_at, r.status, r.applied_at,"
            " d.code FROM ledger.reversals r LEFT JOIN LATERAL (SELECT code FROM ledger.deadletters d"
            " WHERE d.source_topic = r.topic AND d.source_partition = r.partition AND d.source_offset = r.\"offset\""
            " LIMIT 1) d ON true WHERE r.person_token = %s", (person_token,)):
        if as_of is not None and recorded_at > as_of:
            continue
        if status == "applied" and (applied_at is None or (as_of is not None and applied_at > as_of)):
            status = "pending"  # not in effect yet (or its original not archived yet)
        elif status == "removed":
            status = code or "removed"
        out[event_id] = _reversal_dict(event_id, system, ref, o_system, o_ref, amount, reason, reversed_at, offset_min,
                                       recorded_at, status, applied_at if status == "applied" else None)
    for code, value in conn.execute(
            "SELECT code, value FROM ledger.deadletters WHERE code = ANY(%s) AND value IS NOT NULL",
            (list(outcomes.REVERSAL_CODES),)):
        [item] = codec.decode_ledger_values([bytes(value)])
        if getattr(item, "person_token", None) != person_token or not hasattr(item, "original_source_ref"):
            continue
        recorded_at = datetime.fromtimestamp(item.recorded_at_us / 1e6, timezone.utc)
        if item.event_id in out or (as_of is not None and recorded_at > as_of):
            continue
        out[item.event_id] = _reversal_dict(
            item.event_id, item.source_system, item.source_ref, item.original_source_system, item.original_source_ref,
            item.amount_idr, item.reason, datetime.fromtimestamp(item.reversed_at_us / 1e6, timezone.utc),
            item.reversed_at_offset_min, recorded_at, code, None)
    return sorted(out.values(), key=lambda r: (r["recorded_at"], r["event_id"]))


def _reversal_dict(event_id, system, ref, o_system, o_ref, amount, reason, reversed_at, offset_min, recorded_at,
                   status, applied_at) -> dict[str, Any]:
    return {"event_id": event_id, "source_system": system, "source_ref": ref, "original_source_system": o_system,
            "original_source_ref": o_ref, "amount_idr": amount, "reason": reason,
            "reversed_at": _iso(reversed_at, offset_min), "recorded_at": _iso(recorded_at), "status": status,
            "applied_at": _iso(applied_at)}


def _totals_as_of(events: list[tuple], reversals: list[dict[str, Any]]) -> list[tuple]:
    """person_totals as they stood: accepted payments by then, less the reversals in effect by then."""
    taken: dict[tuple[str, str], int] = {}
    for r in reversals:
        if r["status"] == "applied":
            key = (r["original_source_system"], r["original_source_ref"])
            taken[key] = taken.get(key, 0) + r["amount_idr"]
    out: dict[tuple[str, str], list[int]] = {}
    for e in events:
        if e[15]:
            t = out.setdefault((e[5], e[8]), [0, 0])
            t[0] += e[6] - taken.get((e[1], e[2]), 0)
            t[1] += 1
    return [(programme, period, amount, n) for (programme, period), (amount, n) in
            sorted(out.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def _budget_of(conn: psycopg.Connection, lines: set[tuple[str, str]], as_of: datetime | None) -> list[tuple]:
    """The accepted allocations and releases of the given (budget line, agency) pairs."""
    if not lines:
        return []
    sql = ("SELECT b.record_type, b.source_system, b.source_ref, b.source_type, b.funding_account, b.agency_code,"
           " b.programme_code, b.fiscal_year, b.amount_idr, b.effective_at, b.effective_at_offset_min, b.recorded_at"
           " FROM unnest(%s::text[], %s::text[]) AS l(line, agency) JOIN ledger.budget_events b ON b.accepted"
           " AND b.funding_account = l.line AND b.agency_code = l.agency")
    params: list = [[line for line, _ in lines], [agency for _, agency in lines]]
    if as_of is not None:
        sql += " WHERE b.recorded_at <= %s"
        params.append(as_of)
    return conn.execute(sql + " ORDER BY b.effective_at, b.source_system, b.source_ref", params).fetchall()


def _payment(e: tuple, reversals: list[dict[str, Any]], budget: list[tuple]) -> dict[str, Any]:
    """One payment as the trail shows it: the archive's fields (stable), then the path of its money."""
    (event_id, system, ref, source_type, agency, programme, amount, kind, period, disbursed_at, offset_min, channel,
     region, line, recorded_at, accepted, outcome, person) = e
    own = [r for r in reversals if (r["original_source_system"], r["original_source_ref"]) == (system, ref)]
    taken = sum(r["amount_idr"] for r in own if r["status"] == "applied")
    allocations = [b for b in budget if b[0] == "allocation" and (b[4], b[5], b[6]) == (line, agency, programme)]
    releases = [b for b in budget if b[0] == "release" and (b[4], b[5]) == (line, agency)]
    legs = postings.disbursement_legs(agency, programme, line, person, amount) if accepted else ()
    return {
        "event_id": event_id, "source_system": system, "source_ref": ref, "source_type": source_type,
        "agency_code": agency, "programme_code": programme, "amount_idr": amount, "kind": kind, "period": period,
        "disbursed_at": _iso(disbursed_at, offset_min), "channel": channel, "region_code": region,
        "funding_account": line, "recorded_at": _iso(recorded_at), "accepted": accepted, "outcome": outcome,
        "net_amount_idr": amount - taken if accepted else 0,
        "path": {
            "treasury": sorted({b[3] for b in releases}),
            "budget_line": {
                "funding_account": line,
                "allocated_idr": sum(b[8] for b in allocations),
                "allocations": [_budget_dict(b) for b in allocations],
                "released_to_agency_idr": sum(b[8] for b in releases),
                "releases": [_budget_dict(b) for b in releases],
            },
            "agency": {"agency_code": agency, "account": postings.agency_account(agency)},
            "programme": {"programme_code": programme, "account": postings.programme_account(agency, programme)},
            "channel": channel,
            "recipient": {"person_token": person, "account": postings.recipient_account(person)},
        },
        "postings": [{"account": a, "amount_idr": x} for a, x in legs],
        "reversals": own,
    }


def _budget_dict(b: tuple) -> dict[str, Any]:
    (record_type, system, ref, source_type, line, agency, programme, year, amount, at, offset_min, recorded_at) = b
    out = {"record_type": record_type, "source_system": system, "source_ref": ref, "source_type": source_type,
           "funding_account": line, "agency_code": agency, "amount_idr": amount}
    if record_type == "allocation":
        out.update(programme_code=programme, fiscal_year=year, allocated_at=_iso(at, offset_min))
    else:
        out["released_at"] = _iso(at, offset_min)
    out["recorded_at"] = _iso(recorded_at)
    return out


def record_trail(conn: psycopg.Connection, reference: Reference, source_system: str, source_ref: str, *, who: str,
                 why: str, as_of: datetime | None = None) -> dict[str, Any] | None:
    """The path of the money of one record, by its source reference: a payment (or the payment a
    reversal takes back) with its person, or a budget record with its budget line. None when
    nothing was recorded under the reference (by `as_of`)."""
    found = _recorded_under(conn, source_system, source_ref)
    if found is None or (as_of is not None and found[3] > as_of):
        return None
    record_type, person, paid, _ = found
    head = {"source_system": source_system, "source_ref": source_ref, "record_type": record_type, "as_of": _iso(as_of)}
    if record_type in ("allocation", "release"):
        return {**head, **_budget_record(conn, source_system, source_ref, as_of)}
    whole = trail(conn, reference, person, who=who, why=why, as_of=as_of)
    versions = sorted((e for e in whole["events"] if (e["source_system"], e["source_ref"]) == paid),
                      key=lambda e: not e["accepted"])
    out = {**head, "person_token": person, "identity_kind": whole["identity_kind"],
           "recipient_name": whole["recipient_name"], "payment": versions[0] if versions else None,
           "other_versions": versions[1:]}
    if record_type == "reversal":
        mine = [r for r in [*whole["reversals_without_payment"], *(r for e in versions for r in e["reversals"])]
                if (r["source_system"], r["source_ref"]) == (source_system, source_ref)]
        out["reversal"] = mine[0] if mine else None
    return out


def _recorded_under(conn: psycopg.Connection, source_system: str, source_ref: str):
    """(record type, person token, the paid key it concerns, intake time) of the record under a
    key, from intake's keys (so a reversal the stream refused is found too), else from the
    projection (a log written some other way)."""
    row = conn.execute(
        "SELECT coalesce(k.record_type, CASE WHEN k.programme_code = '' THEN 'reversal' ELSE 'disbursement' END),"
        " k.person_token, o.value, o.recorded_at FROM ledger.intake_keys k JOIN ledger.outbox o ON o.event_id = k.event_id"
        " WHERE k.source_system = %s AND k.source_ref = %s", (source_system, source_ref)).fetchone()
    if row is not None:
        record_type, person, value, recorded_at = row
        paid = (source_system, source_ref)
        if record_type == "reversal":
            [item] = codec.decode_ledger_values([bytes(value)])
            paid = (item.original_source_system, item.original_source_ref)
        return record_type, person or None, paid, recorded_at
    row = conn.execute(
        "SELECT 'disbursement', person_token, source_system, source_ref, recorded_at FROM ledger.events"
        " WHERE source_system = %s AND source_ref = %s"
        " UNION ALL SELECT 'reversal', person_token, original_source_system, original_source_ref, recorded_at"
        " FROM ledger.reversals WHERE source_system = %s AND source_ref = %s"
        " UNION ALL SELECT record_type, NULL, source_system, source_ref, recorded_at FROM ledger.budget_events"
        " WHERE source_system = %s AND source_ref = %s ORDER BY 5 LIMIT 1",
        (source_system, source_ref) * 3,
    ).fetchone()
    return None if row is None else (row[0], row[1], (row[2], row[3]), row[4])


def _budget_record(conn: psycopg.Connection, source_system: str, source_ref: str,
                   as_of: datetime | None) -> dict[str, Any]:
    """A budget record, the legs it posted and the totals of its budget line for its agency."""
    rows = conn.execute(
        "SELECT record_type, source_system, source_ref, source_type, funding_account, agency_code, programme_code,"
        " fiscal_year, amount_idr, effective_at, effective_at_offset_min, recorded_at, accepted, outcome, event_id::text"
        " FROM ledger.budget_events WHERE source_system = %s AND source_ref = %s ORDER BY accepted DESC, recorded_at",
        (source_system, source_ref)).fetchall()
    if not rows:
        return {"budget_record": None, "postings": [], "budget_line": None}  # recorded, not projected yet
    b = rows[0]
    line = _budget_of(conn, {(b[4], b[5])}, as_of)
    legs = conn.execute("SELECT account, amount_idr FROM ledger.postings WHERE event_id = %s ORDER BY leg",
                        (b[14],)).fetchall()
    return {
        "budget_record": {**_budget_dict(b[:12]), "event_id": b[14], "accepted": b[12], "outcome": b[13]},
        "postings": [{"account": a, "amount_idr": x} for a, x in legs],
        "budget_line": {
            "funding_account": b[4], "agency_code": b[5],
            "allocated_idr": sum(x[8] for x in line if x[0] == "allocation"),
            "released_to_agency_idr": sum(x[8] for x in line if x[0] == "release"),
            "records": [_budget_dict(x) for x in line],
        },
    }


# --- balances and the audit of the money ------------------------------------------------------------


def balances(conn: psycopg.Connection, as_of: datetime | None = None) -> dict[str, int]:
    """Every account's balance (non-zero ones): now, from the balances the projector keeps; as of a
    moment, summed from the journal up to it (a scan of the archive: an audit-time cost)."""
    if as_of is None:
        rows = conn.execute("SELECT account, balance_idr FROM ledger.account_balances")
    else:
        rows = conn.execute("SELECT account, sum(amount_idr)::bigint FROM ledger.journal WHERE at <= %s"
                            " GROUP BY account", (as_of,))
    return {account: balance for account, balance in rows if balance}


def _budget_sums(conn: psycopg.Connection, as_of: datetime | None):
    sql = ("SELECT record_type, agency_code, coalesce(programme_code, ''), funding_account, sum(amount_idr)::bigint"
           " FROM ledger.budget_events WHERE accepted")
    params: list = []
    if as_of is not None:
        sql += " AND recorded_at <= %s"
        params.append(as_of)
    allocated: dict[tuple[str, str], int] = {}
    received: dict[str, int] = {}
    by_line: dict[str, int] = {}
    for record_type, agency, programme, line, amount in conn.execute(sql + " GROUP BY 1, 2, 3, 4", params):
        if record_type == "allocation":
            allocated[(agency, programme)] = allocated.get((agency, programme), 0) + amount
            by_line[line] = by_line.get(line, 0) + amount
        else:
            received[agency] = received.get(agency, 0) + amount
    return allocated, received, by_line


def money_audit(conn: psycopg.Connection, as_of: datetime | None = None) -> dict[str, Any]:
    """`aidledger audit`: who paid beyond the money allocated or released to them, and whether the
    books reconcile (aidcore.postings decides both from the balances and the budget records)."""
    held = balances(conn, as_of)
    allocated, received, by_line = _budget_sums(conn, as_of)
    report = postings.overspending(held, allocated, received, by_line)
    check = postings.reconcile(held, allocated, received)
    return {
        "as_of": _iso(as_of),
        "overspending": report,
        "reconciliation": {
            "holds": check.holds,
            "sum_of_balances_idr": check.sum_of_balances_idr,
            "treasury_outflow_idr": check.treasury_outflow_idr,
            "agency_inflow_idr": check.agency_inflow_idr,
            "agencies": [{"agency_code": a, "received_idr": got, "disbursed_idr": spent, "balance_idr": balance}
                         for a, (got, spent, balance) in check.agencies.items()],
        },
        "balances": held,
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
        "money": {
            "allocated_idr": one("SELECT coalesce(sum(amount_idr), 0)::bigint FROM ledger.budget_events"
                                 " WHERE accepted AND record_type = 'allocation'"),
            "released_idr": one("SELECT coalesce(sum(amount_idr), 0)::bigint FROM ledger.budget_events"
                                " WHERE accepted AND record_type = 'release'"),
            "disbursed_net_idr": one("SELECT coalesce(sum(amount_idr_total), 0)::bigint FROM ledger.person_totals"),
            "reversed_idr": one("SELECT coalesce(sum(amount_idr), 0)::bigint FROM ledger.reversals"
                                " WHERE applied_at IS NOT NULL"),
            "reversals_by_status": by("SELECT status, count(*) FROM ledger.reversals GROUP BY 1 ORDER BY 1"),
        },
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
