"""schemas.sealing and schemas.submission: a sealed identity opens only with the right private key,
unchanged, on the record it was sealed with; the door's opener takes any of its keys (rotation)."""

from __future__ import annotations

import json

import pytest
from builders import raw_record, raw_reversal

from schemas import codec, sealing, submission

PRIVATE = sealing.new_private_key()
PUBLIC = sealing.public_key(PRIVATE)
AAD = b"SIKS-NG\x1fPKH-2026-04-000001"


def test_a_seal_opens_with_its_key_and_hides_the_plaintext():
    sealed = sealing.seal(b"1871014504850001", PUBLIC, AAD)
    assert b"1871014504850001" not in sealed.ciphertext + sealed.ephemeral_key + sealed.nonce
    assert sealed.key_id == sealing.key_id(PUBLIC) and len(sealed.nonce) == 12 and len(sealed.ephemeral_key) == 32
    assert sealing.Opener([PRIVATE]).open(sealed, AAD) == b"1871014504850001"
    again = sealing.seal(b"1871014504850001", PUBLIC, AAD)
    assert again.ephemeral_key != sealed.ephemeral_key and again.ciphertext != sealed.ciphertext  # one key per record


def test_a_seal_does_not_open_with_another_key_even_under_its_id():
    sealed = sealing.seal(b"x", PUBLIC, AAD)
    other = sealing.new_private_key()
    assert sealing.Opener([other]).open(sealed, AAD) is None  # unknown key id
    # the other key claimed under our id: the exchange gives another secret, the tag fails
    forged = sealing.Opener([other])
    forged._keys = {sealed.key_id: forged._keys[sealing.key_id(sealing.public_key(other))]}
    assert forged.open(sealed, AAD) is None


@pytest.mark.parametrize("part", ["ciphertext", "nonce", "ephemeral_key"])
def test_a_changed_byte_anywhere_fails(part):
    sealed = sealing.seal(b"1871014504850001", PUBLIC, AAD)
    data = bytearray(getattr(sealed, part))
    data[len(data) // 2] ^= 1
    changed = sealing.Sealed(**{**{f: getattr(sealed, f) for f in sealed.__slots__}, part: bytes(data)})
    assert sealing.Opener([PRIVATE]).open(changed, AAD) is None


def test_a_seal_does_not_open_on_another_record():
    sealed = sealing.seal(b"x", PUBLIC, AAD)
    assert sealing.Opener([PRIVATE]).open(sealed, AAD + b"2") is None
    assert sealing.Opener([PRIVATE]).open(sealed, b"") is None


def test_rotation_opens_seals_made_with_the_old_and_the_new_key():
    new = sealing.new_private_key()
    opener = sealing.Opener([new, PRIVATE])
    assert opener.open(sealing.seal(b"old", PUBLIC, AAD), AAD) == b"old"
    assert opener.open(sealing.seal(b"new", sealing.public_key(new), AAD), AAD) == b"new"
    assert sealing.Opener([new]).open(sealing.seal(b"old", PUBLIC, AAD), AAD) is None  # once the old key is retired


def test_keys_parse_from_hex_only():
    assert sealing.parse_key(PUBLIC.hex()) == PUBLIC
    for bad in ("zz" * 32, "ab" * 31):
        with pytest.raises(ValueError):
            sealing.parse_key(bad)


# --- the submission record --------------------------------------------------------------------------


def _decoded(raw, public=PUBLIC):
    key, value = submission.seal_record(raw, public)
    return key, value, codec.codec(codec.SUBMISSION).decode(value)


@pytest.mark.parametrize("raw", [raw_record(), raw_record(kk="", nik="", provisional_id="DESA-0001"), raw_reversal()])
def test_a_record_round_trips_with_its_identity_sealed(raw):
    key, value, decoded = _decoded(raw)
    for field in submission.IDENTITY_FIELDS:
        if raw.get(field):
            assert str(raw[field]).encode() not in value and field not in json.loads(decoded["record"])
    assert submission.open_record(decoded, sealing.Opener([PRIVATE])) == raw
    assert b"1871014504850001" not in key


def test_a_reversal_is_keyed_by_its_original():
    key, _, _ = _decoded(raw_reversal())
    assert key == _decoded(raw_record())[0] == b"SIKS-NG\x1fPKH-2026-04-000001"


def test_a_sealed_identity_moved_to_another_record_or_key_is_refused():
    _, _, mine = _decoded(raw_record())
    _, _, theirs = _decoded(raw_record(source_ref="OTHER-1", nik="1807020101900002"))
    moved = {**theirs, **{k: mine[k] for k in ("key_id", "ephemeral_key", "nonce", "sealed_identity")}}
    opener = sealing.Opener([PRIVATE])
    assert submission.open_record(moved, opener).code == submission.IDENTITY_SEAL_INVALID
    changed = {**mine, "record": mine["record"].replace("750000", "750001")}
    assert submission.open_record(changed, opener).code == submission.IDENTITY_SEAL_INVALID
    _, _, elsewhere = _decoded(raw_record(), sealing.public_key(sealing.new_private_key()))
    assert submission.open_record(elsewhere, opener).code == submission.IDENTITY_SEAL_INVALID


def test_identity_in_the_clear_part_is_refused_and_so_is_a_record_that_is_not_an_object():
    _, _, decoded = _decoded(raw_record())
    opener = sealing.Opener([PRIVATE])
    leaky = {**decoded, "record": json.dumps({**json.loads(decoded["record"]), "nik": "1871014504850001"})}
    assert submission.open_record(leaky, opener).code == submission.IDENTITY_NOT_SEALED
    for text in ("[1]", "not json"):
        assert submission.open_record({**decoded, "record": text}, opener).code == "record_must_be_an_object"
