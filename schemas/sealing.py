"""Sealed identities: what a direct producer (`connectors.sdk`) sends instead of a person token.

A record's identity fields (NIK, provisional id, KK, recipient name) are sealed to the ledger's
public submissions key, so only the door (`connectors.door`, in the gateway process, which holds
the private key and the NIK token key) can read them; agencies hold the public key only, and so
cannot compute the token of any NIK.

The scheme: an ephemeral X25519 key per record, ECDH with the recipient's public key, HKDF-SHA256
over the shared secret (salt: both public keys) to a ChaCha20-Poly1305 key, a random 96-bit nonce.
The associated data is the rest of the record, so a sealed identity opens only on the record it
was sealed with. The key id (the first 8 bytes of the public key's SHA-256, hex) says which of
the door's keys opens it, so old and new keys can be used side by side during a rotation.

Pure: bytes in, bytes out; no files, no environment. Owns the scheme only, not where keys live.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
_INFO = b"aidledger submissions identity seal v1"
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str  # which recipient key: `key_id(public key)`
    ephemeral_key: bytes  # the sender's one-time X25519 public key
    nonce: bytes
    ciphertext: bytes  # plaintext plus the 16-byte Poly1305 tag


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:8].hex()


def new_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes(_RAW, serialization.PrivateFormat.Raw,
                                                     serialization.NoEncryption())


def public_key(private_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def parse_key(text: str, what: str = "key") -> bytes:
    """A 32-byte key from its 64 hex characters; ValueError names what is wrong, never the value."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"the {what} must be hex") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"the {what} must be {KEY_BYTES} bytes ({2 * KEY_BYTES} hex characters)")
    return key


def _aead(shared: bytes, ephemeral: bytes, recipient: bytes) -> ChaCha20Poly1305:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(shared)
    return ChaCha20Poly1305(key)


def seal(plaintext: bytes, recipient_public_key: bytes, associated_data: bytes) -> Sealed:
    """`plaintext` readable only with the private key of `recipient_public_key`, and only
    together with the same `associated_data`."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public_key))
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = _aead(shared, ephemeral_public, recipient_public_key).encrypt(nonce, plaintext, associated_data)
    return Sealed(key_id(recipient_public_key), ephemeral_public, nonce, ciphertext)


class Opener:
    """The private keys a door opens seals with, by key id (the current one and those still
    accepted during a rotation)."""

    def __init__(self, private_keys: Iterable[bytes]):
        self._keys: dict[str, tuple[X25519PrivateKey, bytes]] = {}
        for raw in private_keys:
            private = X25519PrivateKey.from_private_bytes(raw)
            public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
            self._keys[key_id(public)] = (private, public)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def open(self, sealed: Sealed, associated_data: bytes) -> bytes | None:
        """The plaintext, or None when no key of ours opens it: an unknown key id, a wrong key,
        changed bytes, or other associated data (which cannot be told apart, by design)."""
        entry = self._keys.get(sealed.key_id)
        if entry is None or len(sealed.ephemeral_key) != KEY_BYTES or len(sealed.nonce) != NONCE_BYTES:
            return None
        private, public = entry
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral_key))
            return _aead(shared, sealed.ephemeral_key, public).decrypt(sealed.nonce, sealed.ciphertext, associated_data)
        except (InvalidTag, ValueError):  # ValueError: a low-order ephemeral key gives an all-zero secret
            return None
