"""Agencies at the HTTP door: who may submit what, and how an API key is made and checked.

An agency (OPD, ministry, village, CSR body) holds API keys and a scope: its own agency code, the
programmes it pays, and the source systems whose references it owns. It may submit only records
that carry its agency code, one of its programmes and one of its source systems, and read only
records under its source systems. Pure: no database, no clock, no environment.

An API key is `<key_id>.<secret>`. The key id is public (it names the key in listings and logs);
the secret is 32 random bytes, shown once when the key is issued. Only a salted scrypt digest of
the secret is stored, with a salt of its own per key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Iterable

from aidcore.intake import BudgetAllocation, Disbursement, Reversal, TreasuryRelease

# scrypt cost: 16 MiB and ~40 ms per check on the reference machine; a verified key is then
# remembered by its process-local digest, so the cost is paid once per key and process.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
DIGEST_BYTES = 32
SALT_BYTES = 16
KEY_ID_BYTES = 8
SECRET_BYTES = 32
MAX_KEY_CHARS = 128

AGENCY_OUT_OF_SCOPE = "agency_out_of_scope"


@dataclass(frozen=True, slots=True)
class Agency:
    code: str
    programmes: frozenset[str]
    source_systems: frozenset[str]


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    clear_key: str  # shown once to the operator, never stored
    salt: bytes
    digest: bytes


def digest_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=DIGEST_BYTES)


def issue_key(random_bytes=secrets.token_bytes) -> IssuedKey:
    key_id = random_bytes(KEY_ID_BYTES).hex()
    secret = base64.urlsafe_b64encode(random_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")
    salt = random_bytes(SALT_BYTES)
    return IssuedKey(key_id, f"{key_id}.{secret}", salt, digest_secret(secret, salt))


def split_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a presented key, or None when it cannot be a key of ours."""
    if not presented or len(presented) > MAX_KEY_CHARS or not presented.isascii():
        return None
    key_id, dot, secret = presented.partition(".")
    if not dot or len(key_id) != 2 * KEY_ID_BYTES or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def secret_matches(secret: str, salt: bytes, digest: bytes) -> bool:
    return hmac.compare_digest(digest_secret(secret, salt), digest)


def parse_codes(text: str) -> list[str]:
    """"PKH, BPNT" -> ["PKH", "BPNT"]: comma-separated, blanks dropped, order kept, no repeats."""
    return list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def scope_problem(agency: Agency, event: Disbursement | Reversal | BudgetAllocation | TreasuryRelease
                  ) -> tuple[str, str] | None:
    """(field, message) naming why `agency` may not submit `event`, or None when it may.
    The code is always `agency_out_of_scope`; the field says which part of the scope it left.
    An agency reports the budget records of its own money too: allocations for its programmes
    and releases to itself, under its source systems."""
    if event.agency_code != agency.code:
        return "agency_code", f"this key submits for agency {agency.code} only"
    if event.source_system not in agency.source_systems:
        return "source_system", f"agency {agency.code} may submit only under its source systems"
    if isinstance(event, Reversal):
        if event.original_source_system not in agency.source_systems:
            return "original_source_system", f"agency {agency.code} may reverse only its own payments"
        return None
    if isinstance(event, TreasuryRelease):
        return None
    if event.programme_code not in agency.programmes:
        return "programme_code", f"agency {agency.code} may not submit for programme {event.programme_code}"
    return None


def may_read(agency: Agency, source_system: str, agency_code: str | None) -> bool:
    """An agency reads records under its own source systems that carry its own agency code."""
    return source_system in agency.source_systems and (agency_code is None or agency_code == agency.code)


def check_codes(codes: Iterable[str], known: Iterable[str]) -> list[str]:
    """The codes not in `known`."""
    known = set(known)
    return [c for c in codes if c not in known]
