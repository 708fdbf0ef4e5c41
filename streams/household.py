"""The household stage's live state and its batch step, inside the ledger worker.

Partition h of the households topic is decided against the state of partition h: per household
and period (`slot_of`), the postings seen, {event id: HouseholdEntry}, held packed (see `pack`)
and unpacked only for the slots a batch touches. It is rebuilt on assignment from partition h of
the household changelog, which holds the HouseholdPostings values this stage accepted, verbatim.
Re-applying a value is harmless (the state is a set keyed by event id), so a record is appended
whole when any of its postings was new.

Rulebooks: postings say which rulebook version decided them; the person stage forwards each
activation's text to every households partition before any posting decided under it, and those
records are in the changelog too, so a rebuilt partition knows every version it will meet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from sys import intern
from typing import Iterable, Mapping

from aidcore.household import HouseholdEntry, entry_of, slot_of
from aidcore.reference import Reference
from aidcore.rulebook import Rulebook, RulebookError, parse_rulebook
from schemas import codec
from streams import metrics
from streams.changelog import replay_partition
from streams.state import PartitionState

log = logging.getLogger(__name__)

Slot = dict[bytes, HouseholdEntry]  # one household and period: event id -> entry

# A slot's postings packed into one bytes record: a layout byte, then one fixed-width record per
# posting. As Python objects (a dict entry, a NamedTuple, the event id and person bytes, and a
# dict per slot) a posting cost 270-530 bytes; packed, 52. Programme, period, source type and region code repeat across
# millions of postings but take few values: each posting names its combination by an index into
# `_KIND_VALUES` (4 bytes: regions x periods x programmes x source types can pass 65,536).
_KINDS: dict[tuple[str, str, str, str], int] = {}
_KIND_VALUES: list[tuple[str, str, str, str]] = []
_PAYMENTS = 0  # no posting of the slot is a reversal: event id, person, kind, amount, time
_REVERSALS = 1  # as _PAYMENTS, then the original's event id (16 zero bytes for a payment)
_RECORDS = {_PAYMENTS: struct.Struct(">16s16sIqq"), _REVERSALS: struct.Struct(">16s16sIqq16s")}
_PAYMENT_BYTES = _RECORDS[_PAYMENTS].size  # the narrowest posting: a record holds at most len // this of them
_NONE = bytes(16)  # as on the households topic, 16 zero bytes name no original


def household_partition(household_token: str, partitions: int) -> int:
    """Where a household's postings go: a stable function of the token, the same in every process."""
    return int(household_token[:8], 16) % partitions


def _kind(programme: str, period: str, source_type: str, region_code: str) -> int:
    key = (programme, period, source_type, region_code)
    index = _KINDS.get(key)
    if index is None:
        index = _KINDS[key] = len(_KIND_VALUES)
        _KIND_VALUES.append((intern(programme), intern(period), intern(source_type), intern(region_code)))
    return index


def pack(slot: Mapping[bytes, HouseholdEntry]) -> bytes:
    """One slot's postings as bytes, in their order; `unpack` returns every field exactly. struct
    pads or cuts a bytes field silently, so a field of another width is refused instead. (The hot
    path of `update`: one pass for a slot without reversals, the usual case.)"""
    out = bytearray((_PAYMENTS,))
    fmt, kinds = _RECORDS[_PAYMENTS].pack, _KINDS
    for event_id, (person, programme, period, amount, source_type, at, region, original) in slot.items():
        if original:
            return _pack_reversals(slot)
        kind = kinds.get((programme, period, source_type, region))
        if kind is None:
            kind = _kind(programme, period, source_type, region)
        if len(event_id) != 16 or len(person) != 16:
            raise ValueError("an event id and a person token are 16 bytes")
        out += fmt(event_id, person, kind, amount, at)
    return bytes(out)


def _pack_reversals(slot: Mapping[bytes, HouseholdEntry]) -> bytes:
    out = bytearray((_REVERSALS,))
    fmt = _RECORDS[_REVERSALS].pack
    for event_id, (person, programme, period, amount, source_type, at, region, original) in slot.items():
        if len(event_id) != 16 or len(person) != 16 or original and (len(original) != 16 or original == _NONE):
            raise ValueError("an event id and a person token are 16 bytes, an original's event id 16 not all zero")
        out += fmt(event_id, person, _kind(programme, period, source_type, region), amount, at, original or _NONE)
    return bytes(out)


def unpack(blob: bytes) -> Slot:
    """The postings of a record made by `pack`, in the order they were packed."""
    out: Slot = {}
    if not blob:
        return out
    values, new = _KIND_VALUES, tuple.__new__  # what HouseholdEntry._make does, without its call overhead
    if blob[0] == _PAYMENTS:
        for event_id, person, kind, amount, at in _RECORDS[_PAYMENTS].iter_unpack(memoryview(blob)[1:]):
            programme, period, source_type, region = values[kind]
            out[event_id] = new(HouseholdEntry, (person, programme, period, amount, source_type, at, region, b""))
        return out
    for event_id, person, kind, amount, at, original in _RECORDS[_REVERSALS].iter_unpack(memoryview(blob)[1:]):
        programme, period, source_type, region = values[kind]
        out[event_id] = new(HouseholdEntry, (person, programme, period, amount, source_type, at, region,
                                             b"" if original == _NONE else original))
    return out


def _holds_any(blob: bytes, event_ids: Iterable[bytes]) -> bool:
    """Whether a _PAYMENTS record holds any of the event ids (a match must start a posting)."""
    size = _PAYMENT_BYTES
    for event_id in event_ids:
        i = blob.find(event_id, 1)
        while i > 0 and (i - 1) % size:
            i = blob.find(event_id, i + 1)
        if i > 0:
            return True
    return False


def slot_key(slot: str) -> bytes:
    """A slot's 16-byte key in its partition's `PartitionState`. A digest, not the household's own
    16 bytes, because the key must name the period too; at 128 bits two slots sharing one is as
    likely as two people sharing a token."""
    return hashlib.blake2b(slot.encode(), digest_size=16).digest()


class HouseholdState:
    def __init__(self, bootstrap: str, topic: str, reference: Reference, default: Rulebook,
                 fetch_max_wait_ms: int = 25):
        self.bootstrap = bootstrap
        self.topic = topic
        self.reference = reference
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.partitions: dict[int, PartitionState] = {}  # slot_key(slot) -> pack(slot)
        self.books: dict[str, Rulebook] = {default.version: default}
        self.default = default
        self._loading: dict[int, asyncio.Task] = {}

    def book(self, version: str) -> Rulebook:
        book = self.books.get(version)
        if book is None:  # pragma: no cover - the person stage forwards a text before its first use
            log.error("households: rulebook %s unknown here; deciding with %s", version, self.default.version)
            return self.default
        return book

    def learn(self, version: str, text: str) -> None:
        if text and version not in self.books:
            try:
                self.books[version] = parse_rulebook(text, self.reference)
            except RulebookError:  # the person stage only forwards texts it parsed
                log.exception("households: forwarded rulebook %s does not parse", version)

    def apply(self, partition: PartitionState, value: bytes) -> None:
        """Replay one changelog record into a partition's state."""
        version, text, postings = codec.decode_postings(value)
        self.learn(version, text)
        added: dict[str, Slot] = {}
        for p in postings:
            added.setdefault(slot_of(p), {})[p.event_id] = entry_of(p)
        get, put = partition.get, partition.put
        limit = self.reference.period_payments_max
        for slot, entries in added.items():
            key = slot_key(slot)
            blob = get(key)
            if len(entries) + (len(blob) // _PAYMENT_BYTES if blob else 0) >= limit:
                # near a placeholder's limit: keep exactly what deciding kept, the first new ones
                # in log order until the household-period is full (`aidcore.household.full`)
                kept = unpack(blob) if blob else {}
                for event_id, entry in entries.items():
                    if event_id not in kept and len(kept) < limit:
                        kept[event_id] = entry
                put(key, pack(kept))
                continue
            tail = pack(entries)
            if blob is None:
                put(key, tail)
            elif blob[0] == tail[0] == _PAYMENTS and not _holds_any(blob, entries):
                put(key, blob + memoryview(tail)[1:])  # the usual case: new payments appended as they are
            else:
                merged = unpack(blob)
                merged.update(entries)
                put(key, pack(merged))

    def view(self, partition: int, slots: Iterable[str]) -> dict[str, Slot]:
        """The unpacked postings of the given slots that hold any, for one batch."""
        state = self.partitions[partition]
        out = {}
        for slot in slots:
            blob = state.get(slot_key(slot))
            if blob is not None:
                out[slot] = unpack(blob)
        return out

    def update(self, partition: int, changed: Mapping[str, Slot]) -> None:
        """Store the slots a batch changed (once the changelog has them)."""
        put = self.partitions[partition].put
        for slot, entries in changed.items():
            put(slot_key(slot), pack(entries))

    def households(self) -> int:
        """Household-periods held (the state's unit): each partition counts its own."""
        return sum(len(s) for s in self.partitions.values())

    def nbytes(self) -> int:
        """The bytes the packed partitions' own objects take (see `PartitionState.nbytes`); it
        walks every bucket, so the worker reads it every few seconds, not per batch."""
        return sum(s.nbytes() for s in self.partitions.values())

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)
            task = self._loading.pop(p, None)
            if task is not None:
                task.cancel()

    async def ensure_loaded(self, partitions: Iterable[int]) -> None:
        waits = []
        for p in partitions:
            if p in self.partitions:
                continue
            task = self._loading.get(p)
            if task is None:
                task = self._loading[p] = asyncio.ensure_future(self._load(p))
            waits.append(task)
        if waits:
            await asyncio.gather(*waits)

    async def _load(self, partition: int) -> None:
        started = time.perf_counter()
        state = PartitionState()
        records = await replay_partition(self.bootstrap, self.topic, partition, lambda v: self.apply(state, v),
                                         self.fetch_max_wait_ms)
        self.partitions[partition] = state
        self._loading.pop(partition, None)
        elapsed = time.perf_counter() - started
        metrics.RECOVERY_SECONDS.observe(elapsed)
        log.info("household state of partition %d rebuilt: %d household-periods from %d records in %.2fs", partition,
                 len(state), records, elapsed)
