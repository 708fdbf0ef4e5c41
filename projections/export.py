"""`aidledger audit export`: one period's ledger lines, account movements and balances, and alerts
(with their case status) as CSV files for an auditor, with a manifest that names each file's
SHA-256 and row count, the filters, and the heads of the archive's hash chain the export was read
under, signed with the audit seal key when there is one.

Everything is read in one REPEATABLE READ snapshot, sorted by stable keys and written with fixed
formats (UTC timestamps, integer rupiah, "\\n" line ends), so the same data gives the same bytes.
People appear by token only: this module never reads the identity vault.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Sequence

import psycopg

from aidcore import chain

MANIFEST_FORMAT = "aidledger-audit-export-v1"
PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
REGENCY = re.compile(r"^[0-9]{4}$")


class ExportError(ValueError):
    pass


# The period's ledger lines: its disbursements (accepted or not, with the outcome) and the
# reversals archived that name its accepted payments, each with where it sits on the log. A
# reversal's status is the stream's (ledger.reversal_status): applied, pending, or the code of the
# dead letter that dropped or refused it (empty while that dead letter is not projected yet).
_LEDGER = (
    "ledger.csv",
    ("record_type", "event_id", "source_system", "source_ref", "agency_code", "programme_code", "person_token",
     "identity_kind", "kk_token", "amount_idr", "period", "effective_at", "region_code", "funding_account",
     "channel", "kind", "accepted", "outcome", "reversal_status", "original_event_id", "recorded_at",
     "partition", "offset", "value_sha256"),
    "SELECT * FROM ("
    " SELECT 'disbursement' AS record_type, e.event_id::text, e.source_system, e.source_ref, e.agency_code,"
    " e.programme_code, e.person_token, e.identity_kind, coalesce(e.kk_token, ''), e.amount_idr, e.period,"
    " e.disbursed_at, e.region_code, e.funding_account, e.channel, e.kind, e.accepted, e.outcome, '', '',"
    ' e.recorded_at, e.partition, e."offset", encode(sha256(e.value), \'hex\')'
    " FROM ledger.events e WHERE e.period = %(period)s AND e.region_code LIKE %(region)s"
    " UNION ALL"
    " SELECT 'reversal', r.event_id::text, r.source_system, r.source_ref, r.agency_code, o.programme_code,"
    " r.person_token, r.identity_kind, coalesce(o.kk_token, ''), r.amount_idr, o.period, r.reversed_at,"
    " o.region_code, o.funding_account, o.channel, o.kind, coalesce(s.status = 'applied', false), st.status,"
    ' st.status, o.event_id::text, r.recorded_at, r.partition, r."offset", encode(sha256(r.value), \'hex\')'
    " FROM ledger.reversal_events r JOIN ledger.events o ON o.accepted AND o.source_system = r.original_source_system"
    " AND o.source_ref = r.original_source_ref AND o.person_token = r.person_token"
    " LEFT JOIN ledger.reversal_status s ON s.event_id = r.event_id"
    " LEFT JOIN LATERAL (SELECT code FROM ledger.deadletters d WHERE d.source_topic = r.topic"
    ' AND d.source_partition = r.partition AND d.source_offset = r."offset" LIMIT 1) d ON true'
    " CROSS JOIN LATERAL (SELECT CASE WHEN s.status IN ('applied', 'pending') THEN s.status"
    " ELSE coalesce(d.code, s.status, '') END AS status) st"
    " WHERE o.period = %(period)s AND o.region_code LIKE %(region)s"
    ") lines ORDER BY 12, 2",
)

# Every account the period's lines move, with that movement (the legs of its accepted payments
# and applied reversals, as ledger.journal has them) and the account's balance over all periods
# and regions as of the export.
_BALANCES = (
    "balances.csv",
    ("account", "period_movement_idr", "period_legs", "balance_idr"),
    "WITH lines AS ("
    " SELECT event_id FROM ledger.events WHERE accepted AND period = %(period)s AND region_code LIKE %(region)s"
    " UNION ALL SELECT r.event_id FROM ledger.reversals r JOIN ledger.events o ON o.accepted"
    " AND o.source_system = r.original_source_system AND o.source_ref = r.original_source_ref"
    " AND o.person_token = r.person_token WHERE o.period = %(period)s AND o.region_code LIKE %(region)s),"
    " moved AS (SELECT j.account, sum(j.amount_idr)::bigint AS movement, count(*) AS legs"
    " FROM ledger.journal j JOIN lines USING (event_id) GROUP BY j.account)"
    " SELECT m.account, m.movement, m.legs, coalesce(b.balance_idr, 0)"
    " FROM moved m LEFT JOIN ledger.account_balances b USING (account) ORDER BY m.account COLLATE \"C\"",
)

# Each alert with the stream's status (open, or void_reversed when a reversal took back what
# raised it) and its case: the workflow status officers gave it (open when nobody acted), the
# step and when.
_ALERTS = (
    "alerts.csv",
    ("alert_id", "revision", "status", "case_status", "case_step", "case_changed_at", "rule_id", "rulebook_version",
     "outcome_code", "subject_kind", "subject_token", "programme_code", "period", "region_code",
     "amount_idr_at_stake", "amount_idr_total", "threshold", "first_raised_at", "raised_at", "trigger_event_id",
     "lines"),
    "SELECT a.alert_id, a.revision, a.status, coalesce(c.status, 'open'), coalesce(c.step, 0), c.at, a.rule_id,"
    " a.rulebook_version, a.outcome_code, a.subject_kind, a.subject_token, a.programme_code, a.period, a.region_code,"
    " a.amount_idr_at_stake, a.amount_idr_total, a.threshold, a.first_raised_at, a.raised_at, a.trigger_event_id,"
    " a.lines::text FROM ledger.alerts a LEFT JOIN ledger.case_status c USING (alert_id)"
    " WHERE a.period = %(period)s AND a.region_code LIKE %(region)s ORDER BY a.alert_id COLLATE \"C\"",
)
FILES = (_LEDGER, _BALANCES, _ALERTS)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "astimezone"):  # timestamptz, read in UTC
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _csv(header: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue().encode("utf-8")


def export(conn: psycopg.Connection, out: Path, *, period: str, regency: str | None, ledger_topic: str,
           private_key: bytes | None = None) -> dict:
    """Write the files and the manifest into `out`; returns the manifest document. `conn` must not
    be inside a transaction; it is left outside one."""
    if not PERIOD.match(period):
        raise ExportError(f"--period must be YYYY-MM, not {period!r}")
    if regency is not None and not REGENCY.match(regency):
        raise ExportError(f"--regency must be a 4-digit regency code, not {regency!r}")
    params = {"period": period, "region": (regency or "") + "%"}
    conn.rollback()
    saved = conn.autocommit, conn.isolation_level, conn.read_only
    conn.autocommit, conn.isolation_level, conn.read_only = False, psycopg.IsolationLevel.REPEATABLE_READ, True
    try:
        conn.execute("SET LOCAL TIME ZONE 'UTC'")
        contents = {name: (_csv(header, rows := conn.execute(query, params).fetchall()), len(rows))
                    for name, header, query in FILES}
        heads = {p: chain.Head(position, bytes(h)) for p, position, h in conn.execute(
            "SELECT DISTINCT ON (partition) partition, position, hash FROM ledger.chain"
            " ORDER BY partition, position DESC")}
        conn.rollback()
    finally:
        conn.autocommit, conn.isolation_level, conn.read_only = saved
    out.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in contents.items():
        (out / name).write_bytes(data)
    body = {
        "format": MANIFEST_FORMAT,
        "filters": {"period": period, "regency": regency},
        "ledger_topic": ledger_topic,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "rows": rows, "bytes": len(data)}
                  for name, (data, rows) in sorted(contents.items())},
        "chain": {"heads": {str(p): {"position": h.position, "hash": h.hash.hex()} for p, h in sorted(heads.items())},
                  "root": chain.root(heads).hex()},
        "public_key": None,
    }
    doc: dict = {"manifest": body, "signature": None}
    if private_key is not None:
        from projections.audit import public_key_of
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        body["public_key"] = public_key_of(private_key).hex()
        doc["signature"] = Ed25519PrivateKey.from_private_bytes(private_key).sign(chain.canonical(body)).hex()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def check(out: Path) -> list[str]:
    """What does not hold in an export folder: a file whose bytes or rows differ from the
    manifest, or a signature that does not hold. Empty when everything holds."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    doc = json.loads((out / "manifest.json").read_text())
    body, problems = doc["manifest"], []
    for name, want in body["files"].items():
        data = (out / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            problems.append(f"{name}: its SHA-256 is not the manifest's")
        rows = sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8")))) - 1
        if rows != want["rows"]:
            problems.append(f"{name}: {rows} rows, the manifest says {want['rows']}")
    if doc.get("signature"):
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(body["public_key"])).verify(
                bytes.fromhex(doc["signature"]), chain.canonical(body))
        except (InvalidSignature, ValueError, TypeError):
            problems.append("manifest.json: the signature does not hold")
    return problems
