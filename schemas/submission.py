"""The submissions topic's record: an agency's input record with its identity sealed.

`seal_record` splits a JSON-shaped input record (the gateway's shape) into the clear part and the
identity fields, seals the identity to the ledger's public submissions key with the clear part as
associated data, and encodes both as one `SealedSubmission`. `open_record` is the inverse at the
door: the input record again, whole, or the code of why not. Neither decides anything about the
record's content: the door runs the gateway's validation on what `open_record` returns.

The record key on the topic is the payment's source reference (a reversal's original's), so a
payment and its reversals keep their order on one partition; it holds no identity.

Pure: no Kafka, no files, no environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from schemas import codec
from schemas.sealing import Opener, Sealed, seal

IDENTITY_FIELDS = ("nik", "provisional_id", "kk", "recipient_name")  # what the gateway writes to the vault
_AAD_PREFIX = b"aidledger.submissions.SealedSubmission\x00"

IDENTITY_SEAL_INVALID = "identity_seal_invalid"
IDENTITY_NOT_SEALED = "identity_not_sealed"
RECORD_NOT_AN_OBJECT = "record_must_be_an_object"


@dataclass(frozen=True, slots=True)
class Unopened:
    """A submission the door cannot turn back into an input record: its code and a message that
    holds no value."""

    code: str
    detail: str


def _aad(record_text: str) -> bytes:
    return _AAD_PREFIX + record_text.encode("utf-8")


def record_key(record: Mapping[str, Any]) -> bytes:
    """The Kafka key of a submission: its payment's source reference (no identity in it)."""
    if str(record.get("record_type", "")).strip() == "reversal":
        ref = str(record.get("original_source_ref", "")).strip()
        system = str(record.get("original_source_system", "")).strip() or str(record.get("source_system", "")).strip()
    else:
        system, ref = str(record.get("source_system", "")).strip(), str(record.get("source_ref", "")).strip()
    return f"{system}\x1f{ref}".encode("utf-8", "replace")


def seal_record(raw: Mapping[str, Any], public_key: bytes) -> tuple[bytes, bytes]:
    """(key, value) of an input record for the submissions topic, its identity sealed to
    `public_key`. No check of the content: that is the caller's (the SDK validates first)."""
    clear = {k: v for k, v in raw.items() if k not in IDENTITY_FIELDS}
    identity = {k: raw[k] for k in IDENTITY_FIELDS if k in raw}
    text = json.dumps(clear, ensure_ascii=False, separators=(",", ":"))
    sealed = seal(json.dumps(identity, separators=(",", ":")).encode(), public_key, _aad(text))
    return record_key(clear), codec.codec(codec.SUBMISSION).encode(
        {"record": text, "key_id": sealed.key_id, "ephemeral_key": sealed.ephemeral_key, "nonce": sealed.nonce,
         "sealed_identity": sealed.ciphertext})


def clear_record(decoded: Mapping[str, Any]) -> dict | Unopened:
    """The clear part of a decoded submission (no identity, nothing opened)."""
    try:
        record = json.loads(decoded["record"])
    except ValueError:
        return Unopened(RECORD_NOT_AN_OBJECT, "the submission's record is not JSON")
    if not isinstance(record, dict):
        return Unopened(RECORD_NOT_AN_OBJECT, "the submission's record is not a JSON object")
    return record


def open_record(decoded: Mapping[str, Any], opener: Opener) -> dict | Unopened:
    """The whole input record of a decoded submission, identity included, or why not."""
    record = clear_record(decoded)
    if isinstance(record, Unopened):
        return record
    if any(k in record for k in IDENTITY_FIELDS):
        return Unopened(IDENTITY_NOT_SEALED, "identity fields in the clear part of the submission")
    opened = opener.open(Sealed(decoded["key_id"], decoded["ephemeral_key"], decoded["nonce"],
                                decoded["sealed_identity"]), _aad(decoded["record"]))
    if opened is None:
        which = repr(decoded["key_id"][:16])
        why = (f"the sealed identity does not open with submissions key {which} (wrong key, changed bytes, or"
               " moved from another record)" if decoded["key_id"] in opener.key_ids
               else f"no submissions key of the door has id {which}")
        return Unopened(IDENTITY_SEAL_INVALID, why)
    try:
        identity = json.loads(opened)
    except ValueError:
        identity = None
    if not isinstance(identity, dict) or not set(identity) <= set(IDENTITY_FIELDS):
        return Unopened(IDENTITY_SEAL_INVALID, "the sealed identity is not an object of identity fields")
    return {**record, **identity}
