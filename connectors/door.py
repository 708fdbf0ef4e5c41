"""The door of the submissions topic: what agency systems produce directly (`connectors.sdk`)
is decided here like a gateway request, then written to the same outbox. Runs in the gateway
process (`aidledger gateway`), one consumer group across gateways.

A direct producer is trusted with nothing and holds no NIK token key: its records arrive as
`SealedSubmission`s whose identity fields are sealed to the ledger's submissions key
(`schemas.submission`). Every record is decoded, its identity opened with the door's private
keys (a seal that does not open is `identity_seal_invalid`), and the whole input record is
then decided by the gateway's own validation (`aidcore.intake.validate_any`, which tokenizes with
the token key the gateway process holds), checked for scope against the agency registry (the
record's agency must be registered and not revoked, and its programme and source systems must be
the agency's: `aidcore.agencies.scope_problem`, as at the gateway), and decided against the
global idempotency keys (`connectors.intake.submit`, which writes the clear identity to the vault
as for a gateway request). What fails goes to the dead-letter topic with its code, the source
topic, partition and offset in its headers, and is counted by code; nothing stops the partition.
The consumed offsets are committed after the batch's outbox transaction and dead letters are
acknowledged, so a crash re-reads the batch, which the keys then answer as `exists` (and the dead
letters' rows are keyed by source position).

Owns the door only. An opened identity lives only in memory on its way to the vault: values are
never logged, and the dead letter keeps the record as it came, sealed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import psycopg
from prometheus_client import Counter

from aidcore import outcomes
from aidcore.agencies import AGENCY_OUT_OF_SCOPE, Agency, scope_problem
from aidcore.intake import Accepted, AcceptedReversal, Rejection, validate_any
from aidcore.reference import Reference
from connectors.intake import BATCH_HAS_CONFLICTS, Submitted, submit
from schemas import codec
from schemas.sealing import Opener
from schemas.submission import Unopened, open_record

log = logging.getLogger(__name__)

DOOR_RECORDS = Counter("aidledger_door_records_total",
                       "Records read from the submissions topic by the door, by outcome (accepted, exists, or the"
                       " dead-letter code)", ["outcome"])

MAX_VALUE_BYTES = 64 * 1024  # an encoded disbursement is ~400 bytes; anything this large is not one
DEAD_LETTER_MAX_BYTES = 256 * 1024


@lru_cache(maxsize=1)
def group_id(stack) -> str:
    """The consumer group of every gateway's door: `aidledger wait` reads its committed offsets."""
    return f"aidledger-{stack.topic_prefix}-door"


def _other_schemas() -> frozenset[bytes]:
    """Fingerprints of every schema the project knows that the submissions topic does not carry."""
    accepted = set(codec.codec(codec.SUBMISSION)._writers)
    return frozenset(fp for name in codec.RECORD_NAMES for fp in codec.codec(name)._writers) - accepted


@dataclass(frozen=True, slots=True)
class Refused:
    """A record the door does not pass on: its code and a message that holds no value."""

    code: str
    detail: str


def decide(values: Sequence[bytes | None], *, reference: Reference, agencies: Mapping[str, Agency], opener: Opener,
           token_key: bytes, now_us: int) -> list[Accepted | AcceptedReversal | Refused]:
    """Each value of a batch: the record to submit (recorded now, its clear identity for the
    vault), or why it is refused. Pure: opening a seal is deterministic."""
    out: list[Accepted | AcceptedReversal | Refused] = []
    others = _other_schemas()
    decode = codec.codec(codec.SUBMISSION).decode
    for value in values:
        if value is not None and len(value) > MAX_VALUE_BYTES:
            out.append(Refused("value_too_large", f"{len(value)} bytes; at most {MAX_VALUE_BYTES} are read"))
        elif value is not None and value[:2] == codec.MARKER and value[2:codec.HEADER_LEN] in others:
            out.append(Refused("schema_mismatch", "a record of a schema this topic does not carry"))
        else:
            try:
                decoded = decode(value)
            except codec.CodecError as err:
                out.append(Refused(err.code, str(err)))
                continue
            out.append(_checked(open_record(decoded, opener), reference, agencies, token_key, now_us))
    return out


def _checked(raw: dict | Unopened, reference: Reference, agencies: Mapping[str, Agency], token_key: bytes,
             now_us: int) -> Accepted | AcceptedReversal | Refused:
    if isinstance(raw, Unopened):
        return Refused(raw.code, raw.detail)
    outcome = validate_any(raw, reference=reference, token_key=token_key, now_us=now_us)  # the gateway's decision
    if isinstance(outcome, Rejection):
        return Refused(outcome.code, outcome.message)
    if not isinstance(outcome, (Accepted, AcceptedReversal)):
        return Refused("record_type_unknown", "budget records go through the gateway")
    event = outcome.disbursement if isinstance(outcome, Accepted) else outcome.reversal
    agency = agencies.get(event.agency_code)
    if agency is None:
        return Refused(AGENCY_OUT_OF_SCOPE, "the record's agency is not registered (or is revoked)")
    scope = scope_problem(agency, event)
    if scope is not None:
        return Refused(AGENCY_OUT_OF_SCOPE, scope[1])
    return outcome


def registry(conn: psycopg.Connection) -> dict[str, Agency]:
    """The agencies that may submit: registered and not revoked."""
    return {code: Agency(code, frozenset(programmes), frozenset(systems)) for code, programmes, systems in
            conn.execute("SELECT agency_code, programmes, source_systems FROM ledger.agencies WHERE revoked_at IS NULL")}


def submit_each(conn: psycopg.Connection, items: list, **kwargs) -> list[Submitted]:
    """`submit`, record by record in effect: a conflict refuses that record only, and the rest of
    the batch is submitted again without it (submit rejects a request with a conflict whole)."""
    results: list[Submitted | None] = [None] * len(items)
    todo = list(range(len(items)))
    while todo:
        got = submit(conn, [items[i] for i in todo], **kwargs)
        retry = []
        for i, s in zip(todo, got):
            if s.outcome == BATCH_HAS_CONFLICTS:
                retry.append(i)
            else:
                results[i] = s
        if len(retry) == len(todo):  # cannot happen: a batch without conflicts is written
            raise RuntimeError("the outbox refused a batch without conflicts")
        todo = retry
    return results  # type: ignore[return-value]


class Door:
    """The shell: consume the submissions topic, decide, write, dead-letter, commit."""

    def __init__(self, *, bootstrap: str, database_url: str, reference: Reference, topics: Mapping[str, str],
                 group: str, token_key: bytes, opener: Opener, fetch_max_wait_ms: int = 25,
                 now_us: Callable[[], int] = lambda: time.time_ns() // 1000):
        self.bootstrap, self.database_url, self.reference = bootstrap, database_url, reference
        self.token_key, self.opener = token_key, opener
        self.topics, self.group, self.fetch_max_wait_ms, self.now_us = topics, group, fetch_max_wait_ms, now_us
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="submissions-door", daemon=True)
        self.thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _run(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        while not self.stop.is_set():
            consumer = producer = conn = None
            try:
                consumer = KafkaConsumer(
                    self.topics["submissions"], bootstrap_servers=self.bootstrap, group_id=self.group,
                    enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_max_wait_ms,
                    max_poll_records=2000, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                    max_partition_fetch_bytes=4 * 1024 * 1024,
                    # after a broker lost its log, the stack creates the topic with its partition
                    # count: never let this consumer's metadata request create it with the default
                    allow_auto_create_topics=False)
                producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2,
                                         allow_auto_create_topics=False)
                conn = psycopg.connect(self.database_url, autocommit=True)
                log.info("door reading %s", self.topics["submissions"])
                while not self.stop.is_set():
                    batch = consumer.poll(timeout_ms=200)
                    if not batch:
                        continue
                    records = [r for tp in sorted(batch, key=lambda tp: tp.partition) for r in batch[tp]]
                    self._batch(conn, producer, records)
                    consumer.commit()
            except Exception as err:  # noqa: BLE001 - the door must outlive a broker or database hiccup
                # only the class: a database error's message can hold row values
                log.error("door batch failed (%s); reading again from the last commit", type(err).__name__)
                self.stop.wait(1.0)
            finally:
                for closeable in (consumer, producer, conn):
                    if closeable is not None:
                        try:
                            closeable.close()
                        except Exception:  # noqa: BLE001
                            pass

    def _batch(self, conn: psycopg.Connection, producer, records: list) -> None:
        from connectors.rulebooks import active_rulebook

        now_us = self.now_us()
        decided = decide([r.value for r in records], reference=self.reference, agencies=registry(conn),
                         opener=self.opener, token_key=self.token_key, now_us=now_us)
        good = [(r, d) for r, d in zip(records, decided) if not isinstance(d, Refused)]
        refused = [(r, d) for r, d in zip(records, decided) if isinstance(d, Refused)]
        if good:
            results = submit_each(conn, [d for _, d in good], ledger_topic=self.topics["ledger"],
                                  alerts_topic=self.topics["alerts"], reference=self.reference,
                                  rulebook=active_rulebook(conn, self.reference), now_us=now_us)
            for (record, _), s in zip(good, results):
                if s.conflict:
                    refused.append((record, Refused(s.outcome, "same source reference, different content")))
                else:
                    DOOR_RECORDS.labels(s.outcome).inc()
        futures = [producer.send(self.topics["deadletter"], key=_cut(r.key, 1024), value=_cut(r.value, DEAD_LETTER_MAX_BYTES),
                                 headers=_headers(r, why)) for r, why in refused]
        for future in futures:
            future.get(timeout=30)
        for _, why in refused:
            DOOR_RECORDS.labels(why.code).inc()


def _cut(data: bytes | None, limit: int) -> bytes | None:
    return data[:limit] if data is not None and len(data) > limit else data


def _headers(record: Any, why: Refused) -> list[tuple[str, bytes]]:
    headers = [("code", why.code.encode()), ("detail", why.detail.encode()[:500]), ("stage", b"door"),
               ("source_topic", record.topic.encode()), ("source_partition", str(record.partition).encode()),
               ("source_offset", str(record.offset).encode())]
    if record.value is not None and len(record.value) > DEAD_LETTER_MAX_BYTES:
        headers.append(("value_truncated_from", str(len(record.value)).encode()))
    return headers


assert set(outcomes.DOOR_CODES) <= set(outcomes.ALL_CODES)
