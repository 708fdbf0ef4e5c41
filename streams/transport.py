"""A Faust transport whose consumer hands whole fetched batches to the ledger processor.

Why: Faust delivers every record through the conductor, a channel queue, the stream and its
processors, several awaits per record; measured on 2 cores that path alone caps a worker at about
3,000 events/s, whatever the agent does. This consumer keeps everything else of Faust (the
consumer group and partition assignment, rebalance handling, flow control, the periodic offset
commit, the producer) and replaces only the per-record dispatch of `_drain_messages`: each fetch
(`getmany` over the active partitions) goes to `LedgerApp.batch_handler` as one mapping, and the
offsets it covers become committable only after the handler returned, i.e. after its effects
were acknowledged by the broker (at-least-once, idempotent effects). A stop cancels the
fetcher; the batch in hand runs to its end first (`run_to_completion`), so a
graceful stop never abandons a persist half-way.

Also lowers the consumer's fetch_max_wait (Faust hardcodes 1500 ms): Tansu answers a fetch only
when that wait expires, even when records arrive sooner.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Awaitable, Callable, Mapping, Optional, TypeVar

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
# EX_TEMPFAIL: the worker cannot go on without committing past records it did not decide (a failed
# persist or rewind); the supervisor restarts it, and the restart reads from the committed offsets
EXIT_TEMPFAIL = 75
_exit = os._exit  # the process ends at once: no later fetch may be handled or committed
BatchHandler = Callable[[Mapping[Any, list]], Awaitable[bool | None]]  # False: the batch was refused


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.consumer.app.fetch_max_wait_ms
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._done: dict[Any, int] = {}

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def forget_progress(self) -> None:
        """After a rebalance Faust seeks every partition to its committed offset; progress
        recorded before it no longer describes what this worker will read next."""
        self._done.clear()

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        pending = set(super()._filter_tps_with_pending_acks(topics))
        pending.update(tp for tp in self._done if topics is None or tp in topics or tp.topic in topics)
        return iter(pending)

    def _new_offset(self, tp: Any) -> Optional[int]:
        done = self._done.get(tp)
        if done is None:
            return super()._new_offset(tp)
        committed = self._committed_offset.get(tp)
        return done if committed is None or done > committed else None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs inside the worker
        handler: BatchHandler = self.app.batch_handler
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                batch = {tp: recs for tp, recs in records.items() if recs}
                if not batch:
                    continue
                if not self.flow_active or (active is not None and not batch.keys() <= active):
                    # Records came that cannot be handled now: the flow stopped for a rebalance,
                    # or a partition is not active. The consumer's position is already past
                    # them, and the seek that ends a rebalance may have come before this fetch
                    # (a fetch waits through a rebalance), so they are rewound here; else the
                    # partition's later records would be handled and committed over them.
                    await self._rewind(batch.keys())
                    continue
                # handler(batch) is called here, with no await since the flow was seen active: a
                # batch handed over before a revocation began is told apart from one after it
                await run_to_completion(self._handle(handler(batch), batch, self.app.consumer_generation_id))
        except asyncio.CancelledError:
            if self.app.should_stop:
                # The app is stopping: the fetcher ends as finished, not as cancelled. Faust takes
                # a cancelled fetcher during a rebalance for a rebalance restart, and that path
                # crashes (the fetcher has no supervisor to wake), so a stop that came during a
                # rebalance would exit 1.
                if self.app.rebalancing:
                    log.info("stopping during a rebalance")
                return
            raise
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise

    async def _rewind(self, partitions: Any) -> None:
        """Set each of `partitions` still assigned here back to its committed offset (to the
        start of the log if none was committed), so that everything not committed is read again;
        the work is idempotent. A partition no longer assigned is read by its next owner from
        the committed offset."""
        thread = self._thread
        try:
            rewound = await thread.call_thread(_rewind_to_committed, thread._ensure_consumer(), set(partitions))
        except Exception as exc:
            if self.should_stop or self.app.should_stop:  # stopping: the next owner reads from the committed offset
                log.info("stopping; %d partitions not rewound: %r", len(partitions), exc)
                return
            # Left where it is, a partition's later records would be handled and committed over
            # the ones skipped; a restart reads every partition from its committed offset.
            log.exception("could not rewind %d partitions to their committed offsets; exiting so that no record"
                          " past them is committed", len(partitions))
            _exit(EXIT_TEMPFAIL)
            return
        metrics.REWINDS.inc(len(rewound))
        if rewound:
            log.info("fetched records not handled (flow stopped or partition inactive): %s rewound to their"
                     " committed offsets", ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(rewound.items())))

    async def _handle(self, work: Awaitable[bool | None], batch: Mapping[Any, list], generation: int) -> None:
        """Run the handler's work; a batch it did not refuse has its offsets marked done (also
        when a stop cancelled the fetcher meanwhile: the work runs to its end either way)."""
        if await work is not False:
            self._handled(batch, generation)

    def _handled(self, batch: Mapping[Any, list], generation: int) -> None:
        """The batch's effects are acknowledged: its offsets may be committed, unless the
        partitions were reassigned meanwhile (the new assignment re-reads them)."""
        if generation != self.app.consumer_generation_id:
            return
        for tp, recs in batch.items():
            last = recs[-1].offset
            self._done[tp] = last + 1
            self._read_offset[tp] = last


async def _rewind_to_committed(consumer: Any, partitions: set) -> dict:
    """In the consumer's own thread: seek each assigned partition of `partitions` to its
    committed offset, or to its beginning when nothing is committed (aiokafka's
    `seek_to_committed` leaves those where they are). Returns {partition: offset sought}."""
    rewound: dict = {}
    for tp in sorted(TopicPartition(t, p) for t, p in partitions):
        if tp not in consumer.assignment():
            continue
        committed = await consumer.committed(tp)
        if tp not in consumer.assignment():  # reassigned meanwhile: the assignment reset the position
            continue
        if committed is not None and committed > 0:
            consumer.seek(tp, committed)
            rewound[tp] = committed
        else:
            await consumer.seek_to_beginning(tp)
            rewound[tp] = 0
    return rewound


async def run_to_completion(work: Awaitable[T]) -> T:
    """Run `work` as its own task and let no cancellation interrupt it.

    A stop cancels the fetcher and the timers; a batch cancelled half-way through
    persisting could not tell which of its records reached the broker, and the worker would have
    to exit. So the caller's cancellation waits for the work to end (through any number of
    repeats: Faust's fetcher stop re-cancels every second while it waits) and is raised after it;
    a failure of the work is raised instead."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            log.info("cancelled while persisting: the work in hand is finished first")
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
        task.result()
        raise


class BatchGate:
    """One batch (or timer's work) at a time, and no batch that was handed over before a
    revocation began.

    A rebalance stops the flow, but a batch fetched just before can be handed over and then wait
    for the lock while the revocation handler settles. Run after it, that batch would decide and
    append to changelogs of partitions the group is giving to another worker, which may already
    have rebuilt their state. So `admit` takes a ticket when the batch is handed over, `revoke`
    voids every ticket taken before it (and waits for the batch in hand), and `run` refuses a
    batch whose ticket is void: its records are fetched again by their owner after the rebalance."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._revocations = 0

    def admit(self) -> int:
        return self._revocations

    async def revoke(self) -> None:
        self._revocations += 1
        async with self.lock:
            return

    async def run(self, ticket: int, work: Callable[[], Awaitable[None]]) -> bool:
        async with self.lock:
            if ticket != self._revocations:
                log.info("a batch handed over before a revocation is left to the partitions' owner")
                return False
            await work()
            return True


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class LedgerApp(faust.App):
    """A Faust app whose consumer delivers batches to `batch_handler`."""

    batch_handler: BatchHandler
    fetch_max_wait_ms: int = 25

    def _new_transport(self) -> BatchTransport:
        return BatchTransport(self.conf.broker_consumer, self)
