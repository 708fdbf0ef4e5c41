"""The ledger worker's live state, backed by its own changelog topic.

Why not a Faust Table: every table write is its own changelog record, sent one by one, which
caps a worker at a few hundred events per second. Here the state of ledger partition p is a
`PartitionState` mapping person token -> packed payments (see `pack`), unpacked only for the
people a batch touches, and each batch appends ONE changelog record to
partition p of the state topic holding the ledger values it accepted there, verbatim (payments
are only ever added, so those values are the exact change, and copying bytes costs next to
nothing on the hot path). On assignment a partition's state is rebuilt by replaying
its changelog partition from the start to the high watermark read from fetch responses.

Ordering contract with the agent (at-least-once, idempotent effects): alerts and dead letters
are acknowledged by the broker first, then the state delta, and only then are the source events
acked for commit. A crash anywhere re-reads events that the restored state either does not know
(so they are decided again, re-emitting the same alert identities) or knows (so they are
recognised as redeliveries and change nothing).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import struct
import sys
import time
from sys import intern
from typing import Callable, Iterable, Iterator, Mapping


from aidcore.intake import Reversal
from aidcore.ledger import Payment, idem_key, payment_of, reversal_entry
from schemas import codec
from streams import metrics
from streams.changelog import replay_partition

log = logging.getLogger(__name__)

# A person's payments packed into one bytes record (see `pack`). A Python object per payment cost
# ~620 bytes; packed, a payment costs 58 bytes in the common case.
_SLOTS: dict[tuple[str, str, str], int] = {}
_SLOT_VALUES: list[tuple[str, str, str]] = []

# The layout byte that opens a person's record. Why layouts: almost every person has one household
# and no reversal, every amount fits 32 bits (at most 500,000,000 rupiah by reference data) and
# every time is a whole second; that common case gets the narrow fixed-width record, and a person
# whose payments do not all fit it is packed in a wider layout, never rounded or truncated.
_WIDE = 1  # amount and time as 8-byte integers, time in microseconds
_REVERSAL = 2  # each payment carries the key of the payment it reverses (0 for a payment)
_SHARED = 0  # every payment names the same household (or none): it is written once, in the header
_INDEXED = 4  # one byte per payment: 0 for none, i for the header's i-th household
_INLINE = 8  # a presence byte and the 16 bytes per payment: more than 255 households
_HOUSEHOLDS = _SHARED | _INDEXED | _INLINE
_MAX_INDEXED = 255
_US_PER_S = 1_000_000


def _record_struct(layout: int) -> struct.Struct:
    household = {_SHARED: "", _INDEXED: "B", _INLINE: "B16s"}[layout & _HOUSEHOLDS]
    amount_time = "qq" if layout & _WIDE else "iI"
    original = "Q" if layout & _REVERSAL else ""
    return struct.Struct(f">{household}Q16sH{amount_time}24s{original}")


_RECORDS = {layout: _record_struct(layout) for mode in (_SHARED, _INDEXED, _INLINE)
            for layout in (mode, mode | _WIDE, mode | _REVERSAL, mode | _WIDE | _REVERSAL)}
_COMPACT = _RECORDS[_SHARED]  # 58 bytes: key, event id, slot, amount, second, field digests
_NO_HOUSEHOLD = b""


def _slot(programme: str, period: str, source_type: str) -> int:
    key = (programme, period, source_type)
    index = _SLOTS.get(key)
    if index is None:
        index = _SLOTS[key] = len(_SLOT_VALUES)
        if index > 0xFFFF:  # pragma: no cover - 65,536 programme x period x source combinations
            raise OverflowError("too many programme/period/source combinations for the packed state")
        _SLOT_VALUES.append((intern(programme), intern(period), intern(source_type)))
    return index


class _Uncommon(Exception):
    """A person the common layout cannot hold exactly."""


def pack(person: Mapping[int, Payment]) -> bytes:
    """One person's payments as bytes: a layout byte, a household count, the households, then one
    fixed-width record per payment in the layout's format. `unpack` returns every field exactly."""
    try:
        return _pack_common(person)
    except (_Uncommon, struct.error):
        return _pack_any(person)


def _pack_common(person: Mapping[int, Payment]) -> bytes:
    """The hot path of `store`: one pass, one struct call per payment, raising _Uncommon (or
    struct.error for a wide amount) as soon as a payment needs another layout."""
    records = bytearray()
    slots, fmt = _SLOTS, _COMPACT.pack
    shared = None
    for key, (event_id, programme, period, amount, digests, at_us, source_type, household, original) in person.items():
        if shared is None:
            shared = household
        elif household != shared:
            raise _Uncommon
        seconds, micro = divmod(at_us, _US_PER_S)
        if micro or original or len(event_id) != 16 or len(digests) != 24:
            raise _Uncommon
        slot = slots.get((programme, period, source_type))
        if slot is None:
            slot = _slot(programme, period, source_type)
        records += fmt(key, event_id, slot, amount, seconds, digests)
    if not shared:
        return b"\0\0" + records
    if len(shared) != 16:
        raise _Uncommon
    return b"\0\1" + shared + records


def _pack_any(person: Mapping[int, Payment]) -> bytes:
    """Any person, in the narrowest layout that holds all of its payments exactly."""
    for p in person.values():
        _check_widths(p)
    households, mode, reversal = _households(person.values())
    layout = mode | (_REVERSAL if reversal else 0)
    header = bytes((len(households),)) + b"".join(households)
    try:
        return bytes((layout,)) + header + _pack_records(layout, person, households)
    except (_Uncommon, struct.error):
        return bytes((layout | _WIDE,)) + header + _pack_records(layout | _WIDE, person, households)


def _households(payments: Iterable[Payment]) -> tuple[list[bytes], int, bool]:
    """The person's distinct households in first-seen order, the household mode, and whether any
    payment is a reversal."""
    seen: dict[bytes, None] = {}
    none = reversal = False
    for p in payments:
        if p.household:
            seen[p.household] = None
        else:
            none = True
        if p.original_key:
            reversal = True
    households = list(seen)
    if not households or (len(households) == 1 and not none):
        return households, _SHARED, reversal
    if len(households) <= _MAX_INDEXED:
        return households, _INDEXED, reversal
    return [], _INLINE, reversal


def _pack_records(layout: int, person: Mapping[int, Payment], households: list[bytes]) -> bytes:
    fmt = _RECORDS[layout]
    mode = layout & _HOUSEHOLDS
    index = {h: i + 1 for i, h in enumerate(households)}
    out = bytearray()
    for key, p in person.items():
        at = p.disbursed_at_us
        if not layout & _WIDE:
            at, micro = divmod(at, _US_PER_S)
            if micro:
                raise _Uncommon
        fields = [key, p.event_id, _slot(p.programme_code, p.period, p.source_type), p.amount_idr, at, p.digests]
        if layout & _REVERSAL:
            fields.append(p.original_key)
        if mode == _INDEXED:
            fields.insert(0, index.get(p.household, 0))
        elif mode == _INLINE:
            fields[0:0] = [1 if p.household else 0, p.household]
        out += fmt.pack(*fields)
    return bytes(out)


def _check_widths(p: Payment) -> None:
    """struct pads or cuts a short or long bytes field silently; a state that changed a value
    would decide wrongly, so refuse instead."""
    if len(p.event_id) != 16 or len(p.digests) != 24:
        raise ValueError("a payment's event id is 16 bytes and its field digests 24")
    if p.household and len(p.household) != 16:
        raise ValueError("a household is 16 bytes of KK token")


def unpack(blob: bytes) -> dict[int, Payment]:
    """The payments of a record made by `pack`, in the order they were packed (none for an
    empty record: a person not seen yet)."""
    if not blob:
        return {}
    layout, count = blob[0], blob[1]
    start = 2 + 16 * count
    values = _SLOT_VALUES
    if layout == _SHARED:  # the common case: one household (or none) for every payment
        household = blob[2:18] if count else _NO_HOUSEHOLD
        person = {}
        new, us_per_s = tuple.__new__, _US_PER_S  # what Payment._make does, without its call overhead
        for key, event_id, slot, amount, seconds, digests in _COMPACT.iter_unpack(blob[start:]):
            programme, period, source_type = values[slot]
            person[key] = new(Payment, (event_id, programme, period, amount, digests, seconds * us_per_s,
                                        source_type, household, 0))
        return person
    households = [blob[i : i + 16] for i in range(2, start, 16)]
    return _unpack_records(layout, households, blob[start:])


def _unpack_records(layout: int, households: list[bytes], records: bytes) -> dict[int, Payment]:
    mode = layout & _HOUSEHOLDS
    shared = households[0] if mode == _SHARED and households else _NO_HOUSEHOLD
    by_index = [_NO_HOUSEHOLD, *households]
    values = _SLOT_VALUES
    person = {}
    for fields in _RECORDS[layout].iter_unpack(records):
        if mode == _INDEXED:
            household, fields = by_index[fields[0]], fields[1:]
        elif mode == _INLINE:
            household, fields = (fields[1] if fields[0] else _NO_HOUSEHOLD), fields[2:]
        else:
            household = shared
        key, event_id, slot, amount, at, digests = fields[:6]
        original = fields[6] if layout & _REVERSAL else 0
        programme, period, source_type = values[slot]
        person[key] = Payment(event_id, programme, period, amount, digests,
                              at if layout & _WIDE else at * _US_PER_S, source_type, household, original)
    return person


BUCKET_LOAD = 16
_U32 = struct.Struct("<I")
_LENGTHS: list[struct.Struct] = []  # _LENGTHS[k] reads the first k record lengths of a bucket


def _lengths(k: int) -> struct.Struct:
    while len(_LENGTHS) <= k:
        _LENGTHS.append(struct.Struct(f"<{len(_LENGTHS)}I"))
    return _LENGTHS[k]


class PartitionState:
    """The packed persons of one ledger partition: person token -> `pack` record.

    Why buckets: as a dict entry per person, the 16-byte key object, the record's bytes header and
    the dict slot cost ~100 bytes a person, about as much as two payments. Here persons share
    buckets of BUCKET_LOAD on average, one bytes object each (see `_bucket`): a 4-byte length and
    the 16-byte token are all a person adds to its record. A lookup is a hash, one dict lookup, a
    C-speed search of the bucket's tokens and a sum of the lengths before the match; a store
    rewrites one bucket of a few KiB. The price is ~20 Python operations a lookup instead of one
    dict lookup: 1-2 us more CPU per decided event. Buckets grow by linear hashing: one bucket is
    split per BUCKET_LOAD new persons, so no store ever pays for rehashing the whole state."""

    __slots__ = ("_buckets", "_persons", "_level", "_split", "_load", "_mask", "_split_mask", "_held")

    def __init__(self, load: int = BUCKET_LOAD):
        self._buckets: dict[int, bytes] = {}
        self._held = 0  # sys.getsizeof of every bucket and its number, kept as buckets change (`nbytes`)
        self._persons = 0
        self._load = load
        self._level = 0  # 2**level buckets at the start of this round of splits,
        self._split = 0  # of which the first `split` are split already
        self._mask, self._split_mask = 0, 1

    def __len__(self) -> int:
        return self._persons

    def get(self, token: bytes) -> bytes | None:
        """The person's record, None when the person has none. (The hot path of `view`: one
        function, no calls but C ones.)"""
        # hash(), not the token's own bits: tokens are HMACs in production, but hash() keeps the
        # buckets even for whatever keys a test or a tool uses
        h = hash(token)
        b = h & self._mask
        if b < self._split:
            b = h & self._split_mask
        bucket = self._buckets.get(b)
        if bucket is None:
            return None
        n = _U32.unpack_from(bucket)[0]
        tokens_at = 4 * n + 4
        records_at = tokens_at + 16 * n
        i = bucket.find(token, tokens_at, records_at)
        while (i - tokens_at) & 15 and i >= 0:  # a match straddling two tokens
            i = bucket.find(token, i + 1, records_at)
        if i < 0:
            return None
        index = (i - tokens_at) >> 4
        lengths = _LENGTHS[index + 1].unpack_from(bucket, 4)
        end = records_at + sum(lengths)
        return bucket[end - lengths[index] : end]

    def put(self, token: bytes, record: bytes) -> None:
        """Set the person's record. (The hot path of `store`, written out like `get`.)"""
        h = hash(token)
        b = h & self._mask
        if b < self._split:
            b = h & self._split_mask
        buckets = self._buckets
        bucket = buckets.get(b)
        if bucket is None:
            buckets[b] = new = _bucket([(token, record)])
            self._held += sys.getsizeof(b) + sys.getsizeof(new)
        else:
            n = _U32.unpack_from(bucket)[0]
            tokens_at = 4 * n + 4
            records_at = tokens_at + 16 * n
            i = bucket.find(token, tokens_at, records_at)
            while (i - tokens_at) & 15 and i >= 0:
                i = bucket.find(token, i + 1, records_at)
            if i >= 0:
                index = (i - tokens_at) >> 4
                lengths = _LENGTHS[index + 1].unpack_from(bucket, 4)
                end = records_at + sum(lengths)
                at = 4 * index + 4
                buckets[b] = b"".join((bucket[:at], _U32.pack(len(record)), bucket[at + 4 : end - lengths[index]],
                                       record, bucket[end:]))
                self._held += len(record) - lengths[index]
                return
            _lengths(n + 1)
            buckets[b] = b"".join((_U32.pack(n + 1), bucket[4:tokens_at], _U32.pack(len(record)),
                                   bucket[tokens_at:records_at], token, bucket[records_at:], record))
            self._held += 4 + len(token) + len(record)
        self._persons += 1
        if self._persons > self._load * ((1 << self._level) + self._split):
            self._split_next()

    def _split_next(self) -> None:
        """Split the bucket at the split pointer between itself and its partner 2**level higher,
        by the next bit of each token's hash."""
        old, high_bit = self._split, 1 << self._level
        gone = self._buckets.pop(old, None)
        if gone is not None:
            self._held -= sys.getsizeof(old) + sys.getsizeof(gone)
        entries = _entries(gone)
        self._split += 1
        if self._split == high_bit:
            self._level, self._split = self._level + 1, 0
        self._mask = (1 << self._level) - 1
        self._split_mask = (2 << self._level) - 1
        for b, part in ((old, [e for e in entries if not hash(e[0]) & high_bit]),
                        (old + high_bit, [e for e in entries if hash(e[0]) & high_bit])):
            if part:
                self._buckets[b] = new = _bucket(part)
                self._held += sys.getsizeof(b) + sys.getsizeof(new)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (token, record), in no particular order."""
        for bucket in self._buckets.values():
            yield from _entries(bucket)

    def nbytes(self) -> int:
        """The bytes this state's own objects take (bucket numbers below 257 are shared ints, and
        counted anyway). Kept as the buckets change: walking a million persons' buckets took ~25 ms
        of the worker's loop, and the worker reports this every few seconds."""
        return sys.getsizeof(self) + sys.getsizeof(self._buckets) + self._held


def _entries(bucket: bytes | None) -> list[tuple[bytes, bytes]]:
    """The (token, record) pairs of a bucket made by `_bucket`."""
    if bucket is None:
        return []
    n = _U32.unpack_from(bucket)[0]
    tokens_at = 4 * n + 4
    at = tokens_at + 16 * n
    out = []
    for i, length in enumerate(_lengths(n).unpack_from(bucket, 4)):
        out.append((bucket[tokens_at + 16 * i : tokens_at + 16 * i + 16], bucket[at : at + length]))
        at += length
    return out


def _bucket(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A bucket: the person count n (u32), the n record lengths (u32 each), the n tokens (16 bytes
    each), then the n records. Tokens sit together so that one C-speed search finds a person."""
    lengths = _lengths(len(entries)).pack(*[len(record) for _, record in entries])
    return b"".join((_U32.pack(len(entries)), lengths, *[t for t, _ in entries], *[r for _, r in entries]))


def token_key(token: str) -> bytes:
    return bytes.fromhex(token)


def view(state: PartitionState, tokens) -> dict[str, dict[int, Payment]]:
    """The unpacked states of the given people, for one batch."""
    out = {}
    get, fromhex = state.get, bytes.fromhex
    for token in tokens:
        blob = get(fromhex(token))
        if blob is not None:
            out[token] = unpack(blob)
    return out


def store(state: PartitionState, changed: Mapping[str, Mapping[int, Payment]]) -> None:
    put, fromhex = state.put, bytes.fromhex
    for token, person in changed.items():
        put(fromhex(token), pack(person))


DELTA_MAX_BYTES = 512 * 1024  # well under the 1 MiB default message size of brokers and producers


def delta_records(partition: int, offset_end: int, accepted: list[bytes], offsets: list[int] | None = None,
                  removed: list[bytes] = (), applied: list[bytes] = ()) -> list[dict]:
    """AcceptedEvents changelog records holding the ledger values a batch accepted on a partition
    (with their ledger offsets), the entries it removed and the reversals that took effect, split
    so that no record comes near a broker's message-size limit. Removed and applied entries go in
    the last record, after every value they could name."""
    offsets = offsets if offsets is not None else [-1] * len(accepted)
    records, chunk, where, size = [], [], [], 0
    for value, offset in zip(accepted, offsets):
        if chunk and size + len(value) > DELTA_MAX_BYTES:
            records.append((chunk, where))
            chunk, where, size = [], [], 0
        chunk.append(value)
        where.append(offset)
        size += len(value) + 12
    if chunk or removed or applied:
        records.append((chunk, where))
    out = [{"source_partition": partition, "source_offset_end": offset_end, "events": c, "offsets": w, "removed": [],
            "applied": []} for c, w in records]
    if removed:
        out[-1]["removed"] = list(removed)
    if applied:
        out[-1]["applied"] = list(applied)
    return out


def removal(token: str, key: int) -> bytes:
    """A `removed` entry of a changelog record: person token bytes, then the 8-byte key."""
    return token_key(token) + key.to_bytes(8, "big")


def apply_delta(state: PartitionState, record: dict, rulebooks: list | None = None, reversals: dict | None = None) -> int:
    """Replay one changelog record into `state`; returns the ledger values applied. Rulebook
    activations in it are appended to `rulebooks` (the last one is the partition's rulebook);
    reversals go into `reversals` as {(token, key): (value, ledger offset)}, for the worker's index
    of those still waiting for their original. Payments, the usual case, are appended to a
    person's record without unpacking it (`_extended`)."""
    values = codec.decode_ledger_values(record["events"])
    offsets = record.get("offsets") or [-1] * len(values)
    added: dict[bytes, dict[int, Payment]] = {}

    def flush(key: bytes) -> None:
        payments = added.pop(key, None)
        if payments:
            blob = state.get(key)
            state.put(key, pack(payments) if blob is None else _extended(blob, payments))

    def person_of(key: bytes) -> dict[int, Payment]:
        flush(key)
        blob = state.get(key)
        return unpack(blob) if blob else {}

    for d, value, offset in zip(values, record["events"], offsets):
        if isinstance(d, codec.CodecError):  # pragma: no cover - the worker wrote only values it decoded
            raise d
        if isinstance(d, codec.RulebookActivation):
            if rulebooks is not None:
                rulebooks.append(d)
            continue
        key = token_key(d.person_token)
        if isinstance(d, Reversal):
            person = person_of(key)
            own = idem_key(d.source_system, d.source_ref)
            person[own] = reversal_entry(d, d.digests(), person.get(idem_key(d.original_source_system,
                                                                             d.original_source_ref)))
            state.put(key, pack(person))
            if reversals is not None:
                reversals[(d.person_token, own)] = (value, offset)
        else:
            added.setdefault(key, {})[idem_key(d.source_system, d.source_ref)] = payment_of(d, d.digests())
    for key in list(added):
        flush(key)
    for removed in record.get("removed", ()):
        key, idem = removed[:16], int.from_bytes(removed[16:24], "big")
        person = person_of(key)
        person.pop(idem, None)
        state.put(key, pack(person))
    return len(values)


def waiting_reversals(state: PartitionState, reversals: dict) -> dict:
    """Of the reversals a changelog held, those whose original is still not in the state."""
    out = {}
    people: dict[str, dict] = {}
    for (token, key), where in reversals.items():
        person = people.get(token)
        if person is None:
            blob = state.get(token_key(token))
            person = people[token] = unpack(blob) if blob else {}
        entry = person.get(key)
        if entry is not None and entry.original_key not in person:
            out[(token, key)] = where
    return out


_KEY = struct.Struct(">Q50x")  # the key at the start of a common-layout record


def _extended(blob: bytes, payments: dict[int, Payment]) -> bytes:
    """The record `blob` with `payments` added, as `pack` of the merged person would make it.
    The rebuild's usual case, new keys in the same common layout and household, appends their
    records without unpacking the person's earlier payments."""
    tail = pack(payments)
    header = 2 + 16 * blob[1]
    if blob[0] == tail[0] == _SHARED and blob[:header] == tail[:header] and not any(
            key in payments for (key,) in _KEY.iter_unpack(blob[header:])):
        return blob + tail[header:]
    person = unpack(blob)
    person.update(payments)
    return pack(person)


FREEZE_EVERY = 50_000


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the memory a rebuild freed back to the system. A rebuild's fetch buffers are freed
    between the long-lived buckets, and glibc keeps such holes mapped: measured, the process
    stayed ~140 MiB per million tokens above the state's own size. Called once no partition is
    loading; a no-op where malloc_trim does not exist."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


GC_THRESHOLDS = (50_000, 20, 100)


class LedgerState:
    """Why the freezing: the worker holds many long-lived objects, and CPython's full collection
    walks every tracked object, a pause straight into the alert latency. Every FREEZE_EVERY new
    payments the young objects are collected once and then moved to the permanent generation
    (`gc.freeze`), which later collections skip. Only that delta is ever walked, and nothing
    cyclic leaks past it.

    Why GC_THRESHOLDS: the packed state holds no tracked object; what the collector walks is each
    batch's short-lived events, payments and alerts. At CPython's default (a young collection
    every 700 allocations) the worker collected ~1,600 times in the 200,000-event detection
    bench, ~1 us per event; every 50,000 allocations, each collection finds most of them gone."""

    def __init__(self, bootstrap: str, state_topic: str, fetch_max_wait_ms: int = 25):
        gc.set_threshold(*GC_THRESHOLDS)
        self.bootstrap = bootstrap
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.state_topic = state_topic
        self.partitions: dict[int, PartitionState] = {}
        self.rulebooks: dict[int, codec.RulebookActivation] = {}  # the latest activation per partition
        # reversals waiting for their original, per partition: {(token, key): (value, ledger offset)}
        self.pending: dict[int, dict[tuple[str, int], tuple[bytes, int]]] = {}
        self._loading: dict[int, asyncio.Task] = {}
        self._since_freeze = 0

    def added(self, payments: int) -> None:
        self._since_freeze += payments
        if self._since_freeze >= FREEZE_EVERY:
            self._since_freeze = 0
            gc.collect()
            gc.freeze()

    def persons(self) -> int:
        return sum(len(s) for s in self.partitions.values())

    def nbytes(self) -> int:
        """The bytes the packed partitions' own objects take (see `PartitionState.nbytes`)."""
        return sum(s.nbytes() for s in self.partitions.values())

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)
            self.rulebooks.pop(p, None)
            self.pending.pop(p, None)
            task = self._loading.pop(p, None)
            if task is not None:
                task.cancel()
        metrics.PERSONS.set(self.persons())

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
        decoder = codec.codec(codec.STATE_DELTA)
        activations: list = []
        reversals: dict = {}
        deltas = await replay_partition(self.bootstrap, self.state_topic, partition,
                                        lambda value: apply_delta(state, decoder.decode(value), activations, reversals),
                                        self.fetch_max_wait_ms)
        self.partitions[partition] = state
        self.pending[partition] = waiting_reversals(state, reversals)
        if activations:
            self.rulebooks[partition] = activations[-1]
        self._loading.pop(partition, None)
        self.added(FREEZE_EVERY)
        if not self._loading:
            release_free_memory()
        elapsed = time.perf_counter() - started
        metrics.RECOVERY_SECONDS.observe(elapsed)
        metrics.PERSONS.set(self.persons())
        log.info("state of partition %d rebuilt: %d persons from %d deltas in %.2fs", partition, len(state), deltas, elapsed)
