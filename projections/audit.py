"""The archive's hash chain read back: `aidledger audit verify` recomputes every partition's chain
from the archived records, checks it against seals, and names the first bad position of each
partition; `aidledger audit seal` signs the verified heads with an Ed25519 key.

The hashing and the diagnosis are `aidcore.chain`'s; this module only reads rows in one snapshot
and signs. It never writes the chain (the projector does, in `projections.writer`) and it never
changes the archive.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aidcore import chain

# The chain is read in position order from its primary key and each archived record is found by
# one index probe: a plan that streams from the first row and costs the same whatever the
# statistics say (a hash join would read the whole archive once per partition).
_PLAN = (
    "SET LOCAL max_parallel_workers_per_gather = 0", "SET LOCAL enable_hashjoin = off",
    "SET LOCAL enable_mergejoin = off", "SET LOCAL enable_sort = off", "SET LOCAL enable_bitmapscan = off",
)
_SCAN_SQL = (
    'SELECT c.position, a.partition, a."offset", a.value, c.hash FROM ledger.chain c'
    " LEFT JOIN ledger.archived_records a ON a.event_id = c.event_id"
    " WHERE c.partition = %s ORDER BY c.position"
)
_ENTRIES_SQL = (
    'SELECT c.position, c."offset", c.event_id::text, c.value_sha256, c.prev_hash, c.hash,'
    ' a.partition, a."offset", sha256(a.value) FROM ledger.chain c'
    " LEFT JOIN ledger.archived_records a ON a.event_id = c.event_id"
    " WHERE c.partition = %s AND c.position >= %s ORDER BY c.position LIMIT %s"
)
_PARTITIONS_SQL = (  # the distinct partitions, one index probe each
    "WITH RECURSIVE p AS (SELECT min(partition) AS p FROM ledger.chain"
    " UNION ALL SELECT (SELECT min(partition) FROM ledger.chain WHERE partition > p.p) FROM p WHERE p.p IS NOT NULL)"
    " SELECT p FROM p WHERE p IS NOT NULL"
)
_UNCHAINED_SQL = (
    'SELECT a.partition, a."offset", a.event_id::text FROM ledger.archived_records a'
    " WHERE NOT EXISTS (SELECT 1 FROM ledger.chain c WHERE c.event_id = a.event_id)"
    ' ORDER BY a.partition, a."offset" LIMIT %s'
)
UNCHAINED_LISTED = 1_000
STREAM_ROWS = 2_000


class SealError(ValueError):
    pass


@dataclass(frozen=True)
class Seal:
    """A seal file as read: its signed body, and whether its signature and root hold."""

    name: str
    body: dict
    signature: bytes
    heads: dict[int, chain.Head]
    problem: str | None  # why it cannot be trusted (None: signature and root hold)

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.body.get("public_key", ""))

    def describe(self) -> dict:
        return {"name": self.name, "closed_at": self.body.get("closed_at"), "events": self.body.get("events"),
                "root": self.body.get("root"), "public_key": self.body.get("public_key"),
                "valid": self.problem is None, "problem": self.problem}


def read_seal(path: Path, name: str | None = None) -> Seal:
    try:
        doc = json.loads(Path(path).read_text())
        body, signature = doc["seal"], bytes.fromhex(doc["signature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SealError(f"{path}: not a seal file ({exc})") from None
    return check_seal(body, signature, name or Path(path).name)


def check_seal(body: dict, signature: bytes, name: str) -> Seal:
    problem = None
    heads: dict[int, chain.Head] = {}
    try:
        heads = chain.sealed_heads(body)
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(body["public_key"])).verify(signature, chain.canonical(body))
    except chain.SealFormatError as exc:
        problem = str(exc)
    except (InvalidSignature, ValueError, KeyError, TypeError):
        problem = "the signature does not hold for the seal's content and public key"
    return Seal(name, body, signature, heads, problem)


@dataclass
class Report:
    ok: bool
    partitions: dict[int, chain.Scanned]
    first_bad: dict[int, chain.Finding]  # per partition, the finding at the lowest position
    findings: list[chain.Finding]
    seals: list[Seal]
    events: int
    seconds: float
    unchained_total: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def heads(self) -> dict[int, chain.Head]:
        return {p: chain.Head(s.length, s.head) for p, s in self.partitions.items()}

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s),
            "partitions": [
                {"partition": p, "positions": s.rows, "verified": s.length, "head": s.head.hex(),
                 "first_bad": self.first_bad[p].as_dict() if p in self.first_bad else None}
                for p, s in sorted(self.partitions.items())
            ],
            "findings": [f.as_dict() for f in self.findings],
            "unchained": self.unchained_total,
            "seals": [s.describe() for s in self.seals],
            "root": chain.root(self.heads()).hex(),
        }


def verify(conn: psycopg.Connection, *, partitions: Iterable[int] = (), seals: Sequence[Seal] = (),
           public_key: bytes | None = None) -> Report:
    """Check every partition's chain (those of `partitions`, of the chain table and of the seals)
    in one snapshot. `conn` must not be inside a transaction; it is left outside one."""
    started = time.perf_counter()
    findings: list[chain.Finding] = []
    scanned: dict[int, chain.Scanned] = {}
    conn.rollback()
    saved = conn.autocommit, conn.isolation_level, conn.read_only
    conn.autocommit, conn.isolation_level, conn.read_only = False, psycopg.IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.cursor(binary=True) as cur:
            for setting in _PLAN:
                cur.execute(setting)
            wanted = set(partitions) | {p for (p,) in cur.execute(_PARTITIONS_SQL)}
            for seal in seals:
                wanted |= set(seal.heads)
            for p in sorted(wanted):
                scanned[p] = s = chain.scan(p, cur.stream(_SCAN_SQL, (p,), size=STREAM_ROWS))
                if s.first_bad is not None:
                    findings.append(_diagnose(cur, p, s.first_bad))
            for setting in _PLAN:  # the anti-join is best as a hash join over both tables
                cur.execute("RESET " + setting.split()[2])
            unchained = cur.execute(_UNCHAINED_SQL, (UNCHAINED_LISTED + 1,)).fetchall()
            findings += [chain.Finding(chain.UNCHAINED, p, None, f"event {event_id} is archived from offset {offset} "
                                                                 "but has no chain row (added outside the projector)")
                         for p, offset, event_id in unchained[:UNCHAINED_LISTED]]
            findings += _check_seals(cur, scanned, seals, public_key)
        conn.rollback()
    finally:
        conn.autocommit, conn.isolation_level, conn.read_only = saved
    first_bad: dict[int, chain.Finding] = {}
    for f in findings:
        if f.partition is None or f.position is None:
            continue
        held = first_bad.get(f.partition)
        if held is None or f.position < held.position:  # type: ignore[operator]
            first_bad[f.partition] = f
    return Report(
        ok=not findings, partitions=scanned, first_bad=first_bad, findings=findings, seals=list(seals),
        events=sum(s.rows for s in scanned.values()), seconds=time.perf_counter() - started,
        unchained_total=len(unchained),
    )


def _diagnose(cur: psycopg.Cursor, partition: int, bad: int) -> chain.Finding:
    window = chain.DIAGNOSIS_WINDOW
    trusted = dict(cur.execute(
        "SELECT position, hash FROM ledger.chain WHERE partition = %s AND position BETWEEN %s AND %s",
        (partition, max(1, bad - 1 - window), bad - 1)).fetchall())
    entries = [
        chain.Entry(position, offset, event_id, digest, prev, h,
                    None if a_digest is None else chain.Archived(a_partition, a_offset, a_digest))
        for position, offset, event_id, digest, prev, h, a_partition, a_offset, a_digest
        in cur.execute(_ENTRIES_SQL, (partition, bad, window)).fetchall()
    ]
    return chain.diagnose(partition, bad, trusted, entries)


def _check_seals(cur: psycopg.Cursor, scanned: dict[int, chain.Scanned], seals: Sequence[Seal],
                 public_key: bytes | None) -> list[chain.Finding]:
    findings: list[chain.Finding] = []
    confirmed: dict[int, int] = {}  # per partition, the highest position a seal confirmed
    for seal in sorted(seals, key=lambda s: (s.body.get("closed_at") or "", s.name)):
        if seal.problem is None and public_key is not None and seal.public_key != public_key:
            seal = Seal(seal.name, seal.body, seal.signature, seal.heads, "signed by another key than the one given")
        if seal.problem is not None:
            findings.append(chain.Finding(chain.SEAL_INVALID, None, None, f"{seal.name}: {seal.problem}"))
            continue
        for p, head in sorted(seal.heads.items()):
            s = scanned[p]
            held = None
            if head.position and head.position <= s.length:
                row = cur.execute("SELECT hash FROM ledger.chain WHERE partition = %s AND position = %s",
                                  (p, head.position)).fetchone()
                held = bytes(row[0]) if row else None
            finding = chain.seal_finding(p, head, s, held, confirmed.get(p, 0), f"seal {seal.name}")
            if finding is not None:
                findings.append(finding)
            elif head.position <= s.length:
                confirmed[p] = max(confirmed.get(p, 0), head.position)
    return findings


# --- sealing ---------------------------------------------------------------------------------------

def new_private_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal(conn: psycopg.Connection, *, private_key: bytes, ledger_topic: str, partitions: Iterable[int],
         closed_at: str) -> tuple[Report, dict | None]:
    """Verify the chain and, if it holds, sign every partition's head as of the verification's
    snapshot and record the seal. Returns the verification and the seal document (None when the
    chain did not verify: a seal must never bless a tampered archive)."""
    report = verify(conn, partitions=partitions)
    if not report.ok:
        return report, None
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    public_key = public_key_of(private_key)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ledger.seals'))")
        previous = conn.execute("SELECT closed_at, body FROM ledger.seals ORDER BY seal_no DESC LIMIT 1").fetchone()
        body = chain.seal_body(
            ledger_topic=ledger_topic, closed_at=closed_at,
            period_from=json.loads(bytes(previous[1]))["closed_at"] if previous else None,
            previous_seal_sha256=chain.value_digest(bytes(previous[1])).hex() if previous else None,
            heads=report.heads(), public_key=public_key,
        )
        signed = chain.canonical(body)
        signature = key.sign(signed)
        conn.execute(
            "INSERT INTO ledger.seals (closed_at, root, public_key, body, signature) VALUES (%s, %s, %s, %s, %s)",
            (closed_at, bytes.fromhex(body["root"]), public_key, signed, signature),
        )
    return report, {"seal": body, "signature": signature.hex()}


def write_seal(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
