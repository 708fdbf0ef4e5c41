"""The archive's hash chain, pure: how a chained record's hash is made, how newly archived records
extend a partition's chain, how a stored chain is checked and what went wrong where, and what a
seal commits to. No database, no clock, no keys: `projections.writer` writes the chain rows,
`projections.audit` reads them back and signs seals.

One chain per ledger partition, over the records archived from that partition in the order they
were archived, numbered 1, 2, 3, ... by position (not by broker offset: after the broker loses
its log the same events come back at new offsets, and only records archived for the first time
are chained):

    hash_0 = SHA-256("aidledger archive chain v1" || partition)
    hash_n = SHA-256(hash_{n-1} || partition || n || offset || SHA-256(value))

partition is 4 bytes, n and offset 8 bytes, all big-endian; offset is where the record was
archived from and value its canonical Avro bytes as archived (tokens, never a clear NIK, so
erasing a vault entry never touches the chain). A seal commits to every partition's head at
once through the root:

    root = SHA-256("aidledger archive root v1" || for each partition in order: partition || n || hash_n)
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

CHAIN_TAG = b"aidledger archive chain v1"
ROOT_TAG = b"aidledger archive root v1"
SEAL_FORMAT = "aidledger-seal/1"

_LINK = struct.Struct(">iqq")  # partition, position, offset
_HEAD = struct.Struct(">iq")  # partition, position
_PARTITION = struct.Struct(">i")

# What can be wrong, as reported by `aidledger audit verify` (one per partition: the first bad
# position, with the reason its neighbours point to).
VALUE_CHANGED = "value_changed"  # the archived record differs from what was chained (value, partition or offset)
MISSING = "missing"  # a position, or the archived record behind it, is gone (deleted)
OUT_OF_ORDER = "out_of_order"  # a chained record sits at another position than it was chained at (swapped)
INSERTED = "inserted"  # rows that were never chained sit inside the chain; the next genuine row skips them
FORGED = "forged"  # a chain row that does not hash to its own content, or stands outside the sequence
TRUNCATED = "truncated"  # the chain ends before the position a seal holds
REWRITTEN = "rewritten"  # the chain holds together but not with a seal: recomputed hashes
UNCHAINED = "unchained"  # an archived record without a chain row (added to the archive outside the projector)
SEAL_INVALID = "seal_invalid"  # a seal whose signature, root or key does not hold
PROBLEMS = (VALUE_CHANGED, MISSING, OUT_OF_ORDER, INSERTED, FORGED, TRUNCATED, REWRITTEN, UNCHAINED, SEAL_INVALID)

# How far around a bad position the diagnosis looks for where rows came from.
DIAGNOSIS_WINDOW = 1_000


class Head(NamedTuple):
    position: int  # 0 for a partition with nothing chained yet
    hash: bytes


def genesis(partition: int) -> bytes:
    return hashlib.sha256(CHAIN_TAG + _PARTITION.pack(partition)).digest()


def empty_head(partition: int) -> Head:
    return Head(0, genesis(partition))


def value_digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def link(prev: bytes, partition: int, position: int, offset: int, digest: bytes) -> bytes:
    """hash_n from hash_{n-1} and what position n holds (`digest` = SHA-256 of the value)."""
    return hashlib.sha256(prev + _LINK.pack(partition, position, offset) + digest).digest()


# A chain row as stored: partition, position, offset, event id, SHA-256 of the value, the previous
# row's hash, its own hash.
ChainRow = tuple[int, int, int, str, bytes, bytes, bytes]


def extend(heads: dict[int, Head], archived: Iterable[tuple[int, int, str, bytes]]) -> Iterator[ChainRow]:
    """Chain rows for records archived just now, given as (partition, offset, event id, value) in
    the order they were archived, one at a time (so that a writer can send each while the next
    is hashed). `heads` holds each partition's head before them (a partition missing from it
    starts from its genesis); once the rows are all taken, it holds the new heads."""
    sha = hashlib.sha256
    pack = _LINK.pack
    current = None
    position, prev = 0, b""
    for partition, offset, event_id, value in archived:
        if partition != current:  # a batch holds runs of one partition: switch heads per run
            if current is not None:
                heads[current] = Head(position, prev)
            current = partition
            position, prev = heads.get(partition) or empty_head(partition)
        position += 1
        digest = sha(value).digest()
        h = sha(prev + pack(partition, position, offset) + digest).digest()
        yield partition, position, offset, event_id, digest, prev, h
        prev = h
    if current is not None:
        heads[current] = Head(position, prev)


# --- checking a stored chain ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Scanned:
    """One partition's chain read in position order and recomputed from its archived records."""

    partition: int
    length: int  # positions that hold: 1..length recompute to their stored hashes
    head: bytes  # hash at `length` (the genesis for 0)
    first_bad: int | None  # the first position that does not hold (length + 1), None if all held
    rows: int  # chain rows read
    archived: int  # of those, the rows whose archived record was found


def scan(partition: int, rows: Iterable[tuple[int, int | None, int | None, bytes | None, bytes]]) -> Scanned:
    """Recompute a partition's chain from its rows, (position, archived partition, archived
    offset, archived value, stored hash) in position order, where the archived fields are None
    for a chain row whose record is not in the archive. The tight loop of `aidledger audit
    verify`: two SHA-256 per row, nothing else, and it only marks the first position that does
    not hold; `diagnose` says why."""
    sha = hashlib.sha256
    pack = _LINK.pack
    prev = genesis(partition)
    expect = 1
    bad = None
    n = 0
    found = 0
    for position, a_partition, a_offset, value, stored in rows:
        n += 1
        if value is None:
            if bad is None:
                bad = expect
            continue
        found += 1
        if bad is None:
            if position == expect:
                h = sha(prev + pack(a_partition, position, a_offset) + sha(value).digest()).digest()
                if h == stored:
                    prev = h
                    expect += 1
                    continue
            bad = expect
    return Scanned(partition, expect - 1, prev, bad, n, found)


@dataclass(frozen=True, slots=True)
class Finding:
    problem: str  # one of PROBLEMS
    partition: int | None
    position: int | None  # the first bad position (None for an unchained record or a whole seal)
    detail: str

    def as_dict(self) -> dict:
        return {"problem": self.problem, "partition": self.partition, "position": self.position, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Archived:
    """The archive's side of a chain row: where the record says it came from, and its value's digest."""

    partition: int
    offset: int
    value_sha256: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """A chain row with everything stored in it, and its archived record (None if absent)."""

    position: int
    offset: int
    event_id: str
    value_sha256: bytes
    prev_hash: bytes
    hash: bytes
    archive: Archived | None


def _holds_at(partition: int, e: Entry, position: int, prev: bytes) -> bool:
    return link(prev, partition, position, e.offset, e.value_sha256) == e.hash


def _self_position(partition: int, e: Entry, lo: int, hi: int) -> int | None:
    """The position in [lo, hi] at which the row hashes to itself from its own stored previous
    hash: where it was chained, if it is a genuine row."""
    for position in range(max(1, lo), hi + 1):
        if _holds_at(partition, e, position, e.prev_hash):
            return position
    return None


def diagnose(partition: int, bad: int, trusted: Mapping[int, bytes], window: Sequence[Entry]) -> Finding:
    """Why position `bad` does not hold. `trusted` maps positions before `bad` (at least the one
    just before, more for a longer look back) to their hashes, which held; `window` is the
    partition's chain rows from position `bad` on, in position order, as far as the caller read.
    The rows' own stored previous hashes tell a genuine row that moved from a forged one."""
    trusted = {0: genesis(partition), **trusted}
    prev = trusted.get(bad - 1)
    if prev is None:
        raise ValueError("diagnose needs the hash of the position before the bad one")
    if not window:
        raise ValueError("diagnose needs the row at or after the bad position")
    r = window[0]
    span = DIAGNOSIS_WINDOW
    if r.position != bad:
        last = r.position - 1
        if _self_position(partition, r, r.position, r.position) is not None:
            return Finding(MISSING, partition, bad, f"positions {bad}..{last} are not in the chain (deleted); "
                                                    f"position {r.position} follows them as chained")
        return Finding(FORGED, partition, r.position, f"position {r.position} stands outside the sequence "
                                                      f"(the chain stops at {bad - 1}) and does not hash to its content")
    if r.archive is None:
        return Finding(MISSING, partition, bad, f"the archived record of position {bad} (event {r.event_id}) "
                                                "is not in the archive (deleted)")
    a = r.archive
    if a.value_sha256 != r.value_sha256:
        return Finding(VALUE_CHANGED, partition, bad, f"the archived value of event {r.event_id} differs "
                                                      f"from the value chained at position {bad}")
    if (a.partition, a.offset) != (partition, r.offset):
        return Finding(VALUE_CHANGED, partition, bad, f"event {r.event_id} is archived as partition {a.partition} "
                                                      f"offset {a.offset}; it was chained from partition {partition} "
                                                      f"offset {r.offset}")
    # The row at `bad` was chained right after an earlier trusted position: the rows in between
    # were put in afterwards (a forged row given a hash that links, the rows after it renumbered).
    for before in range(bad - 2, max(0, bad - 1 - span) - 1, -1):
        if trusted.get(before) == r.prev_hash and _holds_at(partition, r, before + 1, r.prev_hash):
            return Finding(INSERTED, partition, before + 1,
                           f"positions {before + 1}..{bad - 1} were never chained: position {bad} (event {r.event_id}) "
                           f"was chained as position {before + 1}, right after {before}")
    # The row chained at `bad` is further on.
    for other in window[1:span]:
        if _holds_at(partition, other, bad, prev):
            moved_from = _self_position(partition, r, bad + 1, bad + span)
            if moved_from is not None:
                return Finding(OUT_OF_ORDER, partition, bad,
                               f"position {bad} holds event {r.event_id}, chained at position {moved_from}; "
                               f"the event chained at {bad} ({other.event_id}) is at position {other.position}")
            return Finding(INSERTED, partition, bad,
                           f"positions {bad}..{other.position - 1} were never chained: position {other.position} "
                           f"(event {other.event_id}) was chained as position {bad}")
    moved_from = _self_position(partition, r, bad - span, bad + span)
    if moved_from is not None and moved_from > bad:
        return Finding(MISSING, partition, bad, f"positions {bad}..{moved_from - 1} were deleted and the rows after "
                                                f"them renumbered: position {bad} (event {r.event_id}) was chained "
                                                f"as position {moved_from}")
    if moved_from is not None and moved_from < bad:
        return Finding(OUT_OF_ORDER, partition, bad, f"position {bad} holds event {r.event_id}, chained at "
                                                     f"position {moved_from}")
    if moved_from == bad and bad > 1:
        return Finding(FORGED, partition, bad - 1, f"position {bad} was chained after another row than the one now "
                                                   f"at position {bad - 1}: that row was replaced and given a new hash")
    return Finding(FORGED, partition, bad, f"the chain row at position {bad} (event {r.event_id}) does not hash "
                                           "to its content (a forged or altered chain row)")


# --- seals ---------------------------------------------------------------------------------------

def root(heads: Mapping[int, Head]) -> bytes:
    parts = [ROOT_TAG]
    for partition in sorted(heads):
        position, h = heads[partition]
        parts.append(_HEAD.pack(partition, position) + h)
    return hashlib.sha256(b"".join(parts)).digest()


def seal_body(*, ledger_topic: str, closed_at: str, period_from: str | None, previous_seal_sha256: str | None,
              heads: Mapping[int, Head], public_key: bytes) -> dict:
    """What a seal signs: the time it closes, every partition's head and the root over them."""
    return {
        "format": SEAL_FORMAT,
        "ledger_topic": ledger_topic,
        "closed_at": closed_at,
        "period_from": period_from,
        "previous_seal_sha256": previous_seal_sha256,
        "heads": [{"partition": p, "position": heads[p].position, "hash": heads[p].hash.hex()} for p in sorted(heads)],
        "events": sum(h.position for h in heads.values()),
        "root": root(heads).hex(),
        "public_key": public_key.hex(),
    }


def canonical(body: Mapping) -> bytes:
    """The bytes a seal's signature covers: its body as JSON with sorted keys and no spaces."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class SealFormatError(ValueError):
    pass


def sealed_heads(body: Mapping) -> dict[int, Head]:
    """The heads a seal body holds, checked against its own root."""
    if body.get("format") != SEAL_FORMAT:
        raise SealFormatError(f"not a seal of format {SEAL_FORMAT}")
    try:
        heads = {int(h["partition"]): Head(int(h["position"]), bytes.fromhex(h["hash"])) for h in body["heads"]}
        stated = bytes.fromhex(body["root"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SealFormatError(f"malformed heads or root: {exc}") from None
    if root(heads) != stated:
        raise SealFormatError("the root does not match the heads")
    return heads


def seal_finding(partition: int, sealed: Head, scanned: Scanned, hash_at_sealed: bytes | None,
                 last_matching: int, seal_name: str) -> Finding | None:
    """What a seal says about a partition that `scan` read. `hash_at_sealed` is the stored hash
    at the sealed position when that position held (None otherwise); `last_matching` is the
    highest position of this partition that an earlier seal confirmed (0 if none)."""
    if scanned.first_bad is not None and scanned.first_bad <= sealed.position:
        return None  # already wrong before the sealed head; that finding comes first
    if scanned.length < sealed.position:
        return Finding(TRUNCATED, partition, scanned.length + 1,
                       f"the chain ends at position {scanned.length}; {seal_name} holds position {sealed.position} "
                       f"(positions {scanned.length + 1}..{sealed.position} were removed)")
    if sealed.position == 0:
        return None
    if hash_at_sealed != sealed.hash:
        return Finding(REWRITTEN, partition, last_matching + 1,
                       f"positions {last_matching + 1}..{sealed.position} were rewritten with recomputed hashes: "
                       f"the hash at position {sealed.position} is not the one {seal_name} signed"
                       + (f" (position {last_matching} still matches an earlier seal)" if last_matching else ""))
    return None
