"""The household stage's live state and its batch step, inside the ledger worker.

Partition h of the households topic is decided against the state of partition h, a dict
{household token: {event id: HouseholdEntry}} rebuilt on assignment from partition h of the
household changelog, which holds the HouseholdPostings values this stage accepted, verbatim.
Re-applying a value is harmless (the state is a set keyed by event id), so a record is appended
whole when any of its postings was new.

Rulebooks: postings say which rulebook version decided them; the person stage forwards each
activation's text to every households partition before any posting decided under it, and those
records are in the changelog too, so a rebuilt partition knows every version it will meet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

from aidcore.household import HouseholdEntry, entry_of, slot_of
from aidcore.reference import Reference
from aidcore.rulebook import Rulebook, RulebookError, parse_rulebook
from schemas import codec
from streams import metrics
from streams.changelog import replay_partition

log = logging.getLogger(__name__)

HouseholdPartition = dict[str, dict[bytes, HouseholdEntry]]  # by household and period (`slot_of`)


def household_partition(household_token: str, partitions: int) -> int:
    """Where a household's postings go: a stable function of the token, the same in every process."""
    return int(household_token[:8], 16) % partitions


class HouseholdState:
    def __init__(self, bootstrap: str, topic: str, reference: Reference, default: Rulebook,
                 fetch_max_wait_ms: int = 25):
        self.bootstrap = bootstrap
        self.topic = topic
        self.reference = reference
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.partitions: dict[int, HouseholdPartition] = {}
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

    def apply(self, partition: HouseholdPartition, value: bytes) -> None:
        version, text, postings = codec.decode_postings(value)
        self.learn(version, text)
        for p in postings:
            partition.setdefault(slot_of(p), {})[p.event_id] = entry_of(p)

    def households(self) -> int:
        """Household-periods held (the state's unit)."""
        return sum(len(s) for s in self.partitions.values())

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
        state: HouseholdPartition = {}
        records = await replay_partition(self.bootstrap, self.topic, partition, lambda v: self.apply(state, v),
                                         self.fetch_max_wait_ms)
        self.partitions[partition] = state
        self._loading.pop(partition, None)
        elapsed = time.perf_counter() - started
        metrics.RECOVERY_SECONDS.observe(elapsed)
        log.info("household state of partition %d rebuilt: %d households from %d records in %.2fs", partition,
                 len(state), records, elapsed)
