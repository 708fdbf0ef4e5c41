"""The ledger worker's live state, backed by its own changelog topic.

Why not a Faust Table: every table write is its own changelog record, sent one by one, which
caps a worker at a few hundred events per second. Here the state of ledger partition p is a
plain dict {person token: packed payments} (see `pack`), unpacked only for the people a batch
touches, and each batch appends ONE changelog record to
partition p of the state topic holding the ledger values it accepted there, verbatim (payments
are only ever added, so those values are the exact change, and copying bytes costs next to
nothing on the hot path). On assignment a partition's dict is rebuilt by replaying
its changelog partition from the start to the high watermark read from fetch responses.

Ordering contract with the agent (at-least-once, idempotent effects): alerts and dead letters
are acknowledged by the broker first, then the state delta, and only then are the source events
acked for commit. A crash anywhere re-reads events that the restored state either does not know
(so they are decided again, re-emitting the same alert identities) or knows (so they are
recognised as redeliveries and change nothing).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import time
from sys import intern
from typing import Iterable, Mapping


from aidcore.intake import Reversal
from aidcore.ledger import Payment, idem_key, payment_of, reversal_entry
from schemas import codec
from streams import metrics
from streams.changelog import replay_partition

log = logging.getLogger(__name__)

# A person's payments packed into one bytes record, 90 bytes each: key hash, event id, slot
# (programme, period, source type) index, amount, time, field digests, household (KK token
# bytes, zeros when none), original key (of the payment a reversal reverses, 0 for a payment). A Python object per
# payment cost ~620 bytes; packed, a person costs one dict entry and one bytes object.
_PAYMENT = struct.Struct(">Q16sHqq24s16sQ")
_SLOTS: dict[tuple[str, str, str], int] = {}
_SLOT_VALUES: list[tuple[str, str, str]] = []

_NO_HOUSEHOLD = bytes(16)
PartitionState = dict[bytes, bytes]  # 16-byte person token -> packed payments


def _slot(programme: str, period: str, source_type: str) -> int:
    key = (programme, period, source_type)
    index = _SLOTS.get(key)
    if index is None:
        index = _SLOTS[key] = len(_SLOT_VALUES)
        if index > 0xFFFF:  # pragma: no cover - 65,536 programme x period x source combinations
            raise OverflowError("too many programme/period/source combinations for the packed state")
        _SLOT_VALUES.append((intern(programme), intern(period), intern(source_type)))
    return index


def pack(person: Mapping[int, Payment]) -> bytes:
    out = bytearray()
    for key, p in person.items():
        out += _PAYMENT.pack(key, p.event_id, _slot(p.programme_code, p.period, p.source_type), p.amount_idr,
                             p.disbursed_at_us, p.digests, p.household, p.original_key)
    return bytes(out)


def unpack(blob: bytes) -> dict[int, Payment]:
    person = {}
    values = _SLOT_VALUES
    for key, event_id, slot, amount, at_us, digests, household, original in _PAYMENT.iter_unpack(blob):
        programme, period, source_type = values[slot]
        if household == _NO_HOUSEHOLD:
            household = b""
        person[key] = Payment(event_id, programme, period, amount, digests, at_us, source_type, household, original)
    return person


def token_key(token: str) -> bytes:
    return bytes.fromhex(token)


def view(state: PartitionState, tokens) -> dict[str, dict[int, Payment]]:
    """The unpacked states of the given people, for one batch."""
    out = {}
    for token in tokens:
        blob = state.get(token_key(token))
        if blob is not None:
            out[token] = unpack(blob)
    return out


def store(state: PartitionState, changed: Mapping[str, Mapping[int, Payment]]) -> None:
    for token, person in changed.items():
        state[token_key(token)] = pack(person)


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
    of those still waiting for their original."""
    values = codec.decode_ledger_values(record["events"])
    offsets = record.get("offsets") or [-1] * len(values)
    added: dict[bytes, bytearray] = {}

    def blob_of(key: bytes) -> bytearray:
        blob = added.get(key)
        if blob is None:
            blob = added[key] = bytearray(state.get(key, b""))
        return blob

    for d, value, offset in zip(values, record["events"], offsets):
        if isinstance(d, codec.CodecError):  # pragma: no cover - the worker wrote only values it decoded
            raise d
        if isinstance(d, codec.RulebookActivation):
            if rulebooks is not None:
                rulebooks.append(d)
            continue
        key = token_key(d.person_token)
        blob = blob_of(key)
        if isinstance(d, Reversal):
            original = unpack(bytes(blob)).get(idem_key(d.original_source_system, d.original_source_ref))
            own = idem_key(d.source_system, d.source_ref)
            blob += pack({own: reversal_entry(d, d.digests(), original)})
            if reversals is not None:
                reversals[(d.person_token, own)] = (value, offset)
        else:
            blob += pack({idem_key(d.source_system, d.source_ref): payment_of(d, d.digests())})
    for removed in record.get("removed", ()):
        key, idem = removed[:16], int.from_bytes(removed[16:24], "big")
        person = unpack(bytes(blob_of(key)))
        person.pop(idem, None)
        added[key] = bytearray(pack(person))
    for key, blob in added.items():
        if blob:
            state[key] = bytes(blob)
        else:
            state.pop(key, None)
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


FREEZE_EVERY = 50_000


class LedgerState:
    """Why the freezing: the state is millions of long-lived objects, and CPython's full
    collection walks every tracked object: with a million payments a pause of several hundred
    milliseconds, straight into the alert latency. Every FREEZE_EVERY new payments the young
    objects are collected once and then moved to the permanent generation (`gc.freeze`), which
    later collections skip. Only that delta is ever walked, and nothing cyclic leaks past it."""

    def __init__(self, bootstrap: str, state_topic: str, fetch_max_wait_ms: int = 25):
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
        state: PartitionState = {}
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
        elapsed = time.perf_counter() - started
        metrics.RECOVERY_SECONDS.observe(elapsed)
        metrics.PERSONS.set(self.persons())
        log.info("state of partition %d rebuilt: %d persons from %d deltas in %.2fs", partition, len(state), deltas, elapsed)
