"""The producer SDK for agency systems that write to Kafka themselves instead of calling the HTTP
gateway. An agency system imports `AgencyProducer`, hands it the same input records it would
POST to the gateway, and gets back either a `Sent` (the record is on its way) or the `Rejection`
the gateway would have answered, as a value: a bad record is never sent.

Validation is the gateway's (`aidcore.intake.validate_any`), so a record is refused with the same
code at either door. Records go to the submissions topic (`<prefix>.submissions.v1`), never to
the ledger topic itself: the door in the gateway process (`connectors.door`) decides them again
(the gateway's validation, scope against the agency registry, the global idempotency keys) and
writes them to the durable outbox, which is what makes them part of the ledger.

The SDK holds no NIK token key, only the ledger's public submissions key: each record's identity
fields (NIK, provisional id, KK, recipient name) are sealed to it (`schemas.submission`), so no
clear NIK reaches a topic and only the door can read them. The door tokenizes them and writes the
clear identity to the vault, as the gateway does. The SDK validates with a throwaway token key:
a token never leaves it, so which key does not matter, and the event id is the door's to make.

Retries are safe twice over: the producer is idempotent (`enable_idempotence`, `acks=all`), so a
retried produce is not written twice, and the door makes the event id from the content, so a
record sent again (after a crash of the agency system, say) is recognised as `exists`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from aidcore.intake import Accepted, AcceptedReversal, Rejection, validate_any
from aidcore.reference import Reference, default_reference
from aidcore.settings import StackSettings, topic_names
from schemas.sealing import parse_key
from schemas.submission import seal_record

DEFAULT_TOPIC = topic_names(StackSettings())["submissions"]  # under the default prefix; pass `topic` for another


@dataclass(frozen=True, slots=True)
class Sent:
    """A record handed to the producer: `future.get(timeout)` waits for the broker's ack."""

    source_system: str
    source_ref: str
    future: Any


def prepare(raw: Any, *, reference: Reference, public_key: bytes, now_us: int) -> tuple[bytes, bytes] | Rejection:
    """(key, value) of one input record for the submissions topic, or its Rejection: the SDK's
    whole decision, with no Kafka in it (what the unit tests compare with the gateway's)."""
    outcome = validate_any(raw, reference=reference, token_key=_CHECK_KEY, now_us=now_us)
    if isinstance(outcome, Rejection):
        return outcome
    if not isinstance(outcome, (Accepted, AcceptedReversal)):
        return Rejection("record_type_unknown", "record_type",
                         "the SDK sends disbursements and reversals; budget records go through the gateway")
    return seal_record(raw, public_key)


_CHECK_KEY = os.urandom(32)  # tokens made while validating are thrown away: the door tokenizes


class AgencyProducer:
    """Validate, seal and produce an agency's records to the submissions topic.

    `public_key` is the ledger's submissions key (64 hex characters, from `aidledger keys
    submissions-public`). `send` returns a `Sent` or a `Rejection`; `flush` waits until every
    sent record is acked.
    """

    def __init__(self, bootstrap: str, *, public_key: str | bytes, topic: str = DEFAULT_TOPIC,
                 reference: Reference | None = None, now_us: Callable[[], int] | None = None,
                 producer: Any = None, **producer_config: Any):
        self.topic = topic
        self.public_key = public_key if isinstance(public_key, bytes) else parse_key(public_key, "submissions public key")
        self.reference = reference or default_reference()
        self.now_us = now_us or (lambda: time.time_ns() // 1000)
        if producer is None:
            from kafka import KafkaProducer

            config = {"acks": "all", "enable_idempotence": True, "retries": 2_147_483_647,
                      "max_in_flight_requests_per_connection": 5, "linger_ms": 5, "compression_type": None,
                      "allow_auto_create_topics": False}  # topics are created with their partition count
            config.update(producer_config)
            producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
        self.producer = producer

    def send(self, raw: Mapping[str, Any]) -> Sent | Rejection:
        prepared = prepare(raw, reference=self.reference, public_key=self.public_key, now_us=self.now_us())
        if isinstance(prepared, Rejection):
            return prepared
        key, value = prepared
        future = self.producer.send(self.topic, key=key, value=value)
        return Sent(str(raw.get("source_system", "")).strip(), str(raw.get("source_ref", "")).strip(), future)

    def send_raw(self, key: bytes | None, value: bytes | None, headers: list | None = None) -> Any:
        """Bytes as they are, unvalidated (tests and tools that need to send what the SDK would refuse)."""
        return self.producer.send(self.topic, key=key, value=value, headers=headers)

    def flush(self, timeout_s: float | None = None) -> None:
        self.producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        self.producer.close(timeout=timeout_s)

    def __enter__(self) -> "AgencyProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
