"""Every topic the ledger uses, declared once: name, partitions, key, value record, meaning.

Keyed topics share one partition count so a person's ledger events, their alerts and their state
changelog records sit on partitions with the same number. Retention is infinite: the log is the
truth (Tansu needs retention configs set explicitly, and ignores compaction).
"""

from __future__ import annotations

from dataclasses import dataclass

from aidcore.settings import StackSettings, topic_names
from schemas.codec import ALERT, DISBURSEMENT, POSTINGS, REGISTRY, STATE_DELTA, SUBMISSION


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    key: str
    value: str | None
    doc: str

    @property
    def configs(self) -> dict[str, str]:
        return {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def declared_topics(stack: StackSettings) -> dict[str, TopicSpec]:
    names = topic_names(stack)
    n = stack.partitions
    specs = [
        TopicSpec("ledger", names["ledger"], n, "person_token, or funding_account for budget records (utf-8)",
                  DISBURSEMENT,
                  "every accepted disbursement and reversal, keyed by the recipient's token; the rulebook"
                  " activations (on every partition); budget allocations and treasury releases, keyed by"
                  " funding account"),
        TopicSpec("alerts", names["alerts"], n, "subject_token (utf-8)", ALERT,
                  "cases raised or updated by the rules"),
        TopicSpec("registry", names["registry"], n, "person_token (utf-8)", REGISTRY,
                  "one record per person per imported registry extract (DTKS, P3KE, REGSOSEK), keyed by NIK token"),
        TopicSpec("deadletter", names["deadletter"], n, "original key", None,
                  "records the stream could not accept: original value, code and source position in headers"),
        TopicSpec("submissions", names["submissions"], n, "the payment's source_system, 0x1f, source_ref (utf-8)",
                  SUBMISSION,
                  "what agency systems produce directly (connectors.sdk): disbursements and reversals with their"
                  " identity sealed to the submissions key, opened and decided by the door (connectors.door) and"
                  " written to the outbox"),
        TopicSpec("state", names["state"], n, "source partition (utf-8)", STATE_DELTA,
                  "changelog of the ledger worker's per-person state; partition p holds the deltas of ledger partition p"),
        TopicSpec("households", names["households"], n, "household token (utf-8)", POSTINGS,
                  "what the person stage accepted, re-keyed by household (KK token, or the person's when none)"),
        TopicSpec("household_state", names["household_state"], n, "households partition (utf-8)", POSTINGS,
                  "changelog of the household stage; partition h holds the postings accepted from households partition h"),
    ]
    return {s.role: s for s in specs}
