"""The Faust app of the ledger worker: topics, the ledger agent, and the batch processor.

There is no per-event agent: the batch consumer (`streams.transport`) hands each fetch to
`LedgerProcessor.process_batch`, one batch at a time, so offsets are never committed past
unfinished work (the hazard of agent concurrency > 1, faust-streaming issue 606). If persisting a batch fails, the process exits at
once instead of letting the stream ack events whose effects were not written; the supervisor
restarts it and the events are read again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Mapping, NamedTuple

import faust

from aidcore import outcomes
from aidcore.household import decide_household_batch, slot_of
from aidcore.intake import BudgetAllocation, Disbursement, TreasuryRelease
from aidcore.ledger import decide_batch, idem_key, pending_reversals
from aidcore.rulebook import Rulebook, RulebookError, default_rulebook, parse_rulebook
from aidcore.reference import Reference, default_reference
from aidcore.settings import StackSettings, WorkerSettings, consumer_group
from schemas import codec
from schemas.topics import declared_topics
from streams import metrics
from streams.household import HouseholdState, household_partition
from streams.state import LedgerState, delta_records, removal, store, view
from streams.transport import EXIT_TEMPFAIL, BatchGate, LedgerApp, run_to_completion

log = logging.getLogger(__name__)

def group_id(stack: StackSettings) -> str:
    """The Faust app id, which is the consumer group of the ledger workers of one stack."""
    return consumer_group(stack)


DEAD_LETTER_MAX_BYTES = 256 * 1024

_DETAILS = {
    "": "same source reference, different content",
    "reversal_exceeds_original": "the reversal takes back more than what is left of its original",
    "reversal_of_a_reversal": "the named original is itself a reversal",
    "reversal_original_unknown": "the original payment did not arrive within the rulebook's wait",
}


class _Position(NamedTuple):
    """Where a ledger value sits, for a dead letter of a value that is not in the current batch."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


class _Step:
    """What one batch produced, gathered before anything is persisted."""

    def __init__(self, now_us: int):
        self.now_us = now_us
        self.sends: list = []
        self.deltas: list = []
        self.household_deltas: list[tuple[int, bytes]] = []
        self.household_changes: list = []
        self.household_postings = 0
        self.outcome_counts: Counter = Counter()
        self.accepted_by: Counter = Counter()
        self.idr_by: Counter = Counter()
        self.latencies: list[float] = []

    def report(self, state: LedgerState, households: HouseholdState) -> None:
        for outcome, n in self.outcome_counts.items():
            metrics.EVENTS_IN.labels(outcome).inc(n)
        for (source_type, programme), n in self.accepted_by.items():
            metrics.ACCEPTED_BY.labels(source_type, programme).inc(n)
        for programme, amount in self.idr_by.items():
            metrics.ACCEPTED_IDR.labels(programme).inc(amount)
        for seconds in self.latencies:
            metrics.INGEST_TO_DECISION.observe(max(0.0, seconds))
        if self.household_postings:
            metrics.HOUSEHOLD_POSTINGS.inc(self.household_postings)
        metrics.PERSONS.set(state.persons())
        metrics.HOUSEHOLDS.set(households.households())


STATE_BYTES_EVERY_S = 5.0


def _now_us() -> int:
    return time.time_ns() // 1000


class LedgerProcessor:
    """Decode, decide, persist one batch: the person stage on ledger partitions, the household
    stage on households partitions, in the same worker and the same persist sequence."""

    def __init__(self, app: faust.App, stack: StackSettings, reference: Reference, rulebook: Rulebook | None = None):
        topics = declared_topics(stack)
        self.app = app
        self.partitions = stack.partitions
        self.ledger_topic = topics["ledger"].name
        self.alerts_topic = topics["alerts"].name
        self.dead_topic = topics["deadletter"].name
        self.state_topic = topics["state"].name
        self.households_topic = topics["households"].name
        self.household_state_topic = topics["household_state"].name
        self.reference = reference
        self.default_rulebook = rulebook or default_rulebook(reference)
        self.state = LedgerState(bootstrap_of(stack), self.state_topic, stack.fetch_max_wait_ms)
        self._placeholders: set[tuple[str, str, str]] = set()  # subjects named in the log as placeholders
        self.households = HouseholdState(bootstrap_of(stack), self.household_state_topic, reference,
                                         self.default_rulebook, stack.fetch_max_wait_ms)
        self._books: dict[str, Rulebook] = {self.default_rulebook.digest: self.default_rulebook}
        self.gate = BatchGate()  # a batch and the expiry of waiting reversals never interleave
        self._state_bytes_due = 0.0  # when `_report` next reads the states' sizes
        self.persist_hold_s = 0.0  # fault injection only (AIDLEDGER_WORKER_PERSIST_HOLD_MS)

    def rulebook(self, partition: int) -> Rulebook:
        """The rulebook in force on a ledger partition: its latest activation, else the default."""
        activation = self.state.rulebooks.get(partition)
        if activation is None:
            return self.default_rulebook
        book = self._books.get(activation.digest)
        if book is None:
            book = self._books[activation.digest] = parse_rulebook(activation.text, self.reference)
        return book

    def process_batch(self, batch: Mapping[Any, list]) -> Awaitable[bool]:
        """One fetched batch: {TopicPartition: [ConsumerRecord, ...]} of the ledger and households
        topics. Its ticket is taken at this call, when the transport hands it over; the awaitable
        is False if a revocation began since (`BatchGate`)."""
        return self.gate.run(self.gate.admit(), lambda: self._process_batch(batch))

    async def _process_batch(self, batch: Mapping[Any, list]) -> None:
        started = time.perf_counter()
        ledger = {tp: r for tp, r in batch.items() if tp.topic == self.ledger_topic}
        households = {tp: r for tp, r in batch.items() if tp.topic == self.households_topic}
        await self.state.ensure_loaded(tp.partition for tp in ledger)
        await self.households.ensure_loaded(tp.partition for tp in households)
        step = _Step(_now_us())
        for tp, records in ledger.items():
            await self._person_partition(tp, records, step)
        for tp, records in households.items():
            await self._household_partition(tp, records, step)
        await self._persist(step)
        self.state.added(step.outcome_counts[outcomes.ACCEPTED])
        self._report(step)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def settle(self) -> None:
        """At a revocation: return once no batch (nor expiry) is being decided or persisted, and
        refuse any batch handed over before now."""
        await self.gate.revoke()

    async def expire_pending(self) -> int:
        """Reversals that waited longer than the rulebook's wait for their original: dead-lettered
        as reversal_original_unknown and removed from the state (through the changelog), so a
        replay of them after a fix is decided again. Returns how many. Not during a rebalance:
        the partitions may be on their way to another worker (the next tick does it)."""
        async with self.gate.lock:
            if getattr(self.app, "rebalancing", False):
                return 0
            step = _Step(_now_us())
            for partition, waiting in list(self.state.pending.items()):
                if partition not in self.state.partitions:
                    continue
                wait_us = self.rulebook(partition).reversal_wait_s * 1_000_000
                expired = [(token, key, value, offset) for (token, key), (value, offset) in waiting.items()
                           if codec.decode_reversal(value).recorded_at_us + wait_us <= step.now_us]
                if not expired:
                    continue
                changed, removed = {}, []
                people = view(self.state.partitions[partition], {t for t, _, _, _ in expired})
                for token, key, value, offset in expired:
                    person = changed.setdefault(token, dict(people.get(token, {})))
                    person.pop(key, None)
                    removed.append(removal(token, key))
                    step.sends.append(await self._dead_letter(
                        _Position(self.ledger_topic, partition, offset, token.encode(), value),
                        "reversal_original_unknown", "the original payment did not arrive within the rulebook's wait"))
                    step.outcome_counts["reversal_original_unknown"] += 1
                    del waiting[(token, key)]
                step.deltas.append((partition, delta_records(partition, -1, [], [], removed), changed))
            if step.deltas:
                await self._persist(step)
                self._report(step)
            return sum(step.outcome_counts.values())

    def _report(self, step: "_Step") -> None:
        step.report(self.state, self.households)
        now = time.monotonic()
        if now >= self._state_bytes_due:  # nbytes walks every bucket: every few seconds, not every batch
            self._state_bytes_due = now + STATE_BYTES_EVERY_S
            metrics.STATE_BYTES.labels("person").set(self.state.nbytes())
            metrics.STATE_BYTES.labels("household").set(self.households.nbytes())

    async def _persist(self, step: "_Step") -> None:
        """Sends first (alerts, dead letters, postings), then the changelogs; only then does the
        live state change. A failure exits the process: nothing unpersisted is ever acked."""
        try:
            if self.persist_hold_s:
                await asyncio.sleep(self.persist_hold_s)
            for fut in step.sends:
                await fut
            state_sends = []
            encoder = codec.codec(codec.STATE_DELTA)
            for partition, records, _ in step.deltas:
                for delta in records:
                    state_sends.append(
                        await self.app.producer.send(self.state_topic, str(partition).encode(), encoder.encode(delta),
                                                     partition, None, None)
                    )
            for partition, value in step.household_deltas:
                state_sends.append(await self.app.producer.send(self.household_state_topic, str(partition).encode(),
                                                                value, partition, None, None))
            for fut in state_sends:
                await fut
        except BaseException:
            log.exception("persisting a batch failed; exiting so that no unpersisted event is committed")
            os._exit(EXIT_TEMPFAIL)
        for partition, _, changed in step.deltas:
            store(self.state.partitions[partition], changed)
        for partition, changed in step.household_changes:
            self.households.update(partition, changed)

    async def _person_partition(self, tp, records: list, step: "_Step") -> None:
        partition = tp.partition
        offset_end = records[-1].offset + 1
        metrics.report_lag(self.app.consumer, tp, offset_end)
        accepted_values: list[bytes] = []
        offsets: list[int] = []
        removed: list[bytes] = []
        applied: list[bytes] = []
        changed: dict = {}
        run: list = []
        run_records: list = []
        for record, item in zip(records, codec.decode_ledger_values(r.value for r in records)):
            if isinstance(item, codec.CodecError):
                step.sends.append(await self._dead_letter(record, item.code, str(item)))
                step.outcome_counts[item.code] += 1
            elif isinstance(item, codec.RulebookActivation):
                await self._decide_run(partition, run, run_records, accepted_values, offsets, removed, applied, changed,
                                       step)
                run, run_records = [], []
                await self._activate(partition, record, item, accepted_values, step)
                offsets.append(record.offset)
            elif isinstance(item, (BudgetAllocation, TreasuryRelease)):
                # the budget side concerns no person: nothing here decides it, the projection posts it
                step.outcome_counts[outcomes.PASSED_BY] += 1
            else:
                run.append(item)
                run_records.append(record)
        await self._decide_run(partition, run, run_records, accepted_values, offsets, removed, applied, changed, step)
        if accepted_values or removed or applied:
            step.deltas.append((partition, delta_records(partition, offset_end, accepted_values, offsets, removed,
                                                         applied), changed))

    async def _activate(self, partition: int, record, activation: "codec.RulebookActivation", accepted_values: list,
                        step: "_Step") -> None:
        """A rulebook comes into force on this partition: kept in the changelog (so a rebuild knows
        it) and forwarded to every households partition before any posting decided under it."""
        try:
            book = parse_rulebook(activation.text, self.reference)
        except RulebookError as err:
            step.sends.append(await self._dead_letter(record, "rulebook_invalid", str(err)))
            step.outcome_counts["rulebook_invalid"] += 1
            return
        self._books[book.digest] = book
        self.state.rulebooks[partition] = activation
        accepted_values.append(record.value)
        value = codec.encode_postings(book.version, (), activation.text)
        for h in range(self.partitions):
            step.sends.append(await self.app.producer.send(self.households_topic, None, value, h, None, None))
        metrics.RULEBOOK_ACTIVATIONS.labels(book.version).inc()
        log.info("rulebook %s in force on ledger partition %d", book.version, partition)

    def note_unevaluated(self, stage: str, subjects: list[tuple[str, str]]) -> None:
        """Count payments left unevaluated, and name each placeholder subject once per process (a
        token, never a NIK or KK)."""
        metrics.UNEVALUATED.labels(stage).inc(len(subjects))
        for token, period in dict.fromkeys(subjects):
            if (stage, token, period) in self._placeholders:
                continue
            if len(self._placeholders) >= 10_000:
                self._placeholders.clear()
            self._placeholders.add((stage, token, period))
            log.warning("%s stage: %s holds more than %d payments in %s, so it is a placeholder identity, not a"
                        " recipient; its rules are no longer evaluated for that period", stage, token,
                        self.reference.period_payments_max, period)

    async def _decide_run(self, partition: int, events: list, records: list, accepted_values: list, offsets: list,
                          removed: list, applied: list, changed: dict, step: "_Step") -> None:
        if not events:
            return
        book = self.rulebook(partition)
        people = view(self.state.partitions[partition], {e.person_token for e in events} - changed.keys())
        people.update(changed)
        result = decide_batch(people, events, rulebook=book, reference=self.reference, now_us=step.now_us)
        changed.update(result.changed)
        applied.extend(result.applied)
        waiting = self.state.pending.setdefault(partition, {})
        for i, (record, event, outcome) in enumerate(zip(records, events, result.outcomes)):
            step.outcome_counts[outcome] += 1
            if outcome == outcomes.ACCEPTED or outcome == outcomes.REVERSAL_PENDING:
                accepted_values.append(record.value)
                offsets.append(record.offset)
                if outcome == outcomes.REVERSAL_PENDING:
                    waiting[(event.person_token, idem_key(event.source_system, event.source_ref))] = (record.value,
                                                                                                      record.offset)
                if isinstance(event, Disbursement):
                    step.accepted_by[(event.source_type, event.programme_code)] += 1
                    step.idr_by[event.programme_code] += event.amount_idr
                if i % 16 == 0:
                    step.latencies.append((step.now_us - event.recorded_at_us) / 1e6)
            elif outcome != outcomes.EXISTS:
                step.sends.append(await self._dead_letter(record, outcome, _DETAILS.get(outcome, _DETAILS[""])))
        for token, key, outcome in result.dropped:
            value, offset = waiting.pop((token, key), (None, -1))
            removed.append(removal(token, key))
            step.outcome_counts[outcome] += 1
            if value is not None:
                step.sends.append(await self._dead_letter(_Position(self.ledger_topic, partition, offset,
                                                                    token.encode(), value), outcome, _DETAILS[outcome]))
        if waiting:  # reversals that waited and now apply: no longer waiting
            for token in {t for t, _ in waiting} & result.changed.keys():
                still = pending_reversals(result.changed[token])
                for entry in [k for k in waiting if k[0] == token and k[1] not in still]:
                    del waiting[entry]
        for alert in result.alerts.values():
            step.sends.append(await self._send_alert(alert))
        if result.unevaluated:
            self.note_unevaluated("person", result.unevaluated)
        by_partition: dict[int, list] = {}
        for posting in result.postings:
            by_partition.setdefault(household_partition(posting.household, self.partitions), []).append(posting)
        for h, postings in by_partition.items():
            step.sends.append(await self.app.producer.send(
                self.households_topic, None, codec.encode_postings(book.version, postings), h, None, None))

    async def _household_partition(self, tp, records: list, step: "_Step") -> None:
        partition = tp.partition
        metrics.report_lag(self.app.consumer, tp, records[-1].offset + 1)
        changed: dict = {}
        for record in records:
            try:
                version, text, postings = codec.decode_postings(record.value)
            except codec.CodecError as err:  # only the person stage writes here: a bug, made visible
                step.sends.append(await self._dead_letter(record, err.code, str(err)))
                continue
            self.households.learn(version, text)
            if not postings:
                if text:
                    step.household_deltas.append((partition, record.value))
                continue
            slots = {slot_of(p) for p in postings}
            view_ = self.households.view(partition, slots - changed.keys())
            view_.update((slot, changed[slot]) for slot in slots & changed.keys())
            result = decide_household_batch(view_, postings, rulebook=self.households.book(version),
                                            reference=self.reference, now_us=step.now_us)
            if result.accepted:
                changed.update(result.changed)
                step.household_deltas.append((partition, record.value))
                step.household_postings += len(result.accepted)
            for alert in result.alerts.values():
                step.sends.append(await self._send_alert(alert))
            if result.unevaluated:
                self.note_unevaluated("household", result.unevaluated)
        if changed:
            step.household_changes.append((partition, changed))

    async def _send_alert(self, alert):
        metrics.ALERTS.labels(alert.rule_id, metrics.regency_of(alert.region_code, self.reference.regencies)).inc()
        return await self.app.producer.send(self.alerts_topic, alert.subject_token.encode(), codec.encode_alert(alert),
                                            None, None, None)

    async def _dead_letter(self, message: Any, code: str, detail: str):
        """`message` is a consumer record: topic, partition, offset, key, value. A value too large to
        be produced again is cut to DEAD_LETTER_MAX_BYTES (its full length in a header): otherwise
        the produce would fail, the worker would exit, and the partition would stall on it."""
        metrics.DEAD_LETTERS.labels(code).inc()
        value = message.value
        headers = [
            ("code", code.encode()),
            ("detail", detail.encode()[:500]),
            ("stage", b"stream"),
            ("source_topic", message.topic.encode()),
            ("source_partition", str(message.partition).encode()),
            ("source_offset", str(message.offset).encode()),
        ]
        if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
            headers.append(("value_truncated_from", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        key = message.key[:1024] if message.key else message.key
        return await self.app.producer.send(self.dead_topic, key, value, None, None, headers)


def bootstrap_of(stack: StackSettings) -> str:
    if not stack.kafka_bootstrap:
        raise ValueError("the worker needs AIDLEDGER_KAFKA_BOOTSTRAP (the launcher sets it for the embedded broker)")
    return stack.kafka_bootstrap


def create_app(stack: StackSettings, worker: WorkerSettings, reference: Reference | None = None,
               rulebook: Rulebook | None = None) -> tuple[faust.App, LedgerProcessor]:
    bootstrap = bootstrap_of(stack)
    app = LedgerApp(
        group_id(stack),
        broker=f"kafka://{bootstrap}",
        store="memory://",
        # the state lives in memory and its changelog; Faust's own directory goes under the stack's
        # home, not into whatever directory the stack was started from
        datadir=str(Path(stack.home).resolve() / "worker-data"),
        topic_partitions=stack.partitions,
        topic_replication_factor=stack.replication,
        topic_allow_declare=False,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=worker.session_timeout_s,
        broker_commit_interval=worker.commit_interval_s,
        broker_max_poll_records=worker.batch_max,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=2,
        processing_guarantee="at_least_once",
        web_enabled=False,
    )
    app.fetch_max_wait_ms = stack.fetch_max_wait_ms
    processor = LedgerProcessor(app, stack, reference or default_reference(), rulebook)
    processor.persist_hold_s = worker.persist_hold_ms / 1000
    app.batch_handler = processor.process_batch
    # Subscribed through the conductor, consumed by the batch consumer (streams.transport): no
    # agent, because Faust's per-event path is what this worker exists to avoid.
    for name in (processor.ledger_topic, processor.households_topic):
        app.topics.add(app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                                 partitions=stack.partitions))

    @app.timer(worker.expiry_interval_s)
    async def expire_pending() -> None:
        await run_to_completion(processor.expire_pending())

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs):
        # A rebalance pauses the flow but not a batch already being persisted. It finishes before
        # this worker rejoins the group: its changelog records are then in the log before another
        # worker can be given the partitions, and that worker's rebuild reads them. A batch handed
        # over before now but not yet started is refused (BatchGate), for the same reason.
        await processor.settle()

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs):
        # An eager rebalance revokes everything and then assigns; a partition that comes straight
        # back was processed by nobody else in between, so its state is kept. Others are dropped
        # and rebuilt from the changelog if they ever return.
        mine = {tp.partition for tp in assigned if tp.topic == processor.ledger_topic}
        homes = {tp.partition for tp in assigned if tp.topic == processor.households_topic}
        app.consumer.forget_progress()
        processor.state.revoke([p for p in list(processor.state.partitions) if p not in mine])
        processor.households.revoke([p for p in list(processor.households.partitions) if p not in homes])
        metrics.ASSIGNED.set(len(mine))
        log.info("assigned ledger partitions %s, households partitions %s", sorted(mine), sorted(homes))

    return app, processor
