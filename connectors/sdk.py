"""The producer SDK for agency systems that write to Kafka themselves instead of calling the HTTP
gateway. An agency system imports `AgencyProducer`, hands it the same input records it would
POST to the gateway, and gets back either a `Sent` (the record is on its way, under its event id)
or the `Rejection` the gateway would have answered, as a value: a bad record is never sent.

Validation is the gateway's (`aidcore.intake.validate_any`), encoding is the codec's, so a record
means the same whichever door it used. Records go to the submissions topic
(`<prefix>.submissions.v1`), keyed by person token like the ledger, never to the ledger topic
itself: the door in the gateway process (`connectors.door`) decides them again (scope against the
agency registry, the global idempotency keys) and writes them to the durable outbox, which is
what makes them part of the ledger.

Retries are safe twice over: the producer is idempotent (`enable_idempotence`, `acks=all`), so a
retried produce is not written twice, and the event id is a digest of the content, so a record
sent again (after a crash of the agency system, say) is recognised by the door as `exists`.

The SDK holds the stack's NIK token key: tokens are made on the agency's side, so no clear NIK
ever reaches a topic. Only systems trusted with that key may use it; the others use the gateway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from aidcore.intake import Accepted, AcceptedReversal, Rejection, validate_any
from aidcore.reference import Reference, default_reference
from aidcore.settings import StackSettings, topic_names
from schemas import codec

DEFAULT_TOPIC = topic_names(StackSettings())["submissions"]  # under the default prefix; pass `topic` for another


@dataclass(frozen=True, slots=True)
class Sent:
    """A record handed to the producer: `future.get(timeout)` waits for the broker's ack."""

    event_id: str
    source_system: str
    source_ref: str
    future: Any


def prepare(raw: Any, *, reference: Reference, token_key: bytes,
            now_us: int) -> tuple[str, bytes, bytes] | Rejection:
    """(event id, key, value) for one input record, or its Rejection: the SDK's whole decision,
    with no Kafka in it (what the unit tests compare with the gateway's)."""
    outcome = validate_any(raw, reference=reference, token_key=token_key, now_us=now_us)
    if isinstance(outcome, Rejection):
        return outcome
    if isinstance(outcome, Accepted):
        d = outcome.disbursement
        return d.event_id, d.person_token.encode(), codec.encode_disbursement(d)
    if isinstance(outcome, AcceptedReversal):
        r = outcome.reversal
        return r.event_id, r.person_token.encode(), codec.encode_reversal(r)
    return Rejection("record_type_unknown", "record_type",
                     "the SDK sends disbursements and reversals; budget records go through the gateway")


class AgencyProducer:
    """Validate, encode and produce an agency's records to the submissions topic.

    `send` returns a `Sent` or a `Rejection`; `flush` waits until every sent record is acked.
    """

    def __init__(self, bootstrap: str, *, token_key: bytes, topic: str = DEFAULT_TOPIC,
                 reference: Reference | None = None, now_us: Callable[[], int] | None = None,
                 producer: Any = None, **producer_config: Any):
        self.topic = topic
        self.token_key = token_key
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
        prepared = prepare(raw, reference=self.reference, token_key=self.token_key, now_us=self.now_us())
        if isinstance(prepared, Rejection):
            return prepared
        event_id, key, value = prepared
        future = self.producer.send(self.topic, key=key, value=value)
        return Sent(event_id, str(raw.get("source_system", "")).strip(), str(raw.get("source_ref", "")).strip(), future)

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
