"""aidcore.chain: the archive's hash chain as documented, and for each way of tampering with the
archive or the chain, the first bad position and the reason the verification gives.

`Model` holds an archive and its chain in memory the way the two tables do, and verifies them
the way `projections.audit.verify` does: scan, then diagnose the first bad position."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidcore import chain

PARTITION = 3


def event_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


class Model:
    """ledger.archived_records and ledger.chain of one partition, in memory."""

    def __init__(self, n: int = 20, partition: int = PARTITION, first_offset: int = 100):
        self.partition = partition
        self.archive: dict[str, list] = {}  # event id -> [partition, offset, value]
        self.rows: list[list] = []  # chain rows: partition, position, offset, event id, digest, prev, hash
        self.heads: dict[int, chain.Head] = {}
        self.append([(first_offset + i, event_id(i), f"event {i}".encode()) for i in range(n)])

    def append(self, items) -> None:
        for offset, eid, value in items:
            self.archive[eid] = [self.partition, offset, value]
        archived = [(self.partition, offset, eid, value) for offset, eid, value in items]
        self.rows += [list(r) for r in chain.extend(self.heads, archived)]

    def row(self, position: int) -> list:
        return next(r for r in self.rows if r[1] == position)

    def verify(self) -> tuple[chain.Scanned, chain.Finding | None]:
        rows = sorted(self.rows, key=lambda r: r[1])
        scan_rows = []
        for _, position, _, eid, _, _, h in rows:
            a = self.archive.get(eid)
            scan_rows.append((position, *(a if a else (None, None, None)), h))
        scanned = chain.scan(self.partition, scan_rows)
        if scanned.first_bad is None:
            return scanned, None
        bad = scanned.first_bad
        trusted = {r[1]: r[6] for r in rows if r[1] < bad}
        window = []
        for _, position, offset, eid, digest, prev, h in rows:
            if position < bad:
                continue
            a = self.archive.get(eid)
            archived = chain.Archived(a[0], a[1], chain.value_digest(a[2])) if a else None
            window.append(chain.Entry(position, offset, eid, digest, prev, h, archived))
        return scanned, chain.diagnose(self.partition, bad, trusted, window)

    # ways of tampering, as someone with the database owner's rights would
    def rehash_from(self, position: int) -> None:
        """Recompute every stored hash from `position` on, from the archive as it now is."""
        prev = self.row(position - 1)[6] if position > 1 else chain.genesis(self.partition)
        for r in sorted(self.rows, key=lambda r: r[1]):
            if r[1] < position:
                continue
            a = self.archive[r[3]]
            r[2], r[4], r[5] = a[1], chain.value_digest(a[2]), prev
            r[6] = prev = chain.link(prev, self.partition, r[1], r[2], r[4])


def test_the_hash_is_the_documented_formula():
    prev = hashlib.sha256(b"aidledger archive chain v1" + struct.pack(">i", 7)).digest()
    value = b"\xc3\x01canonical avro bytes"
    expected = hashlib.sha256(prev + struct.pack(">i", 7) + struct.pack(">q", 1) + struct.pack(">q", 4242)
                              + hashlib.sha256(value).digest()).digest()
    assert chain.genesis(7) == prev
    [row] = list(chain.extend({}, [(7, 4242, event_id(1), value)]))
    assert row == (7, 1, 4242, event_id(1), hashlib.sha256(value).digest(), prev, expected)


def test_each_partition_has_its_own_chain_and_heads_carry_across_batches():
    items = [(p, 10 + i, event_id(10 * p + i), f"v{p}.{i}".encode()) for i in range(3) for p in (0, 1)]
    at_once = list(chain.extend({}, items))
    heads: dict[int, chain.Head] = {}
    in_two = list(chain.extend(heads, items[:3])) + list(chain.extend(heads, items[3:]))
    assert in_two == at_once
    assert [r[1] for r in at_once if r[0] == 0] == [1, 2, 3]
    assert [r[1] for r in at_once if r[0] == 1] == [1, 2, 3]
    assert heads == {0: chain.Head(3, at_once[-2][6]), 1: chain.Head(3, at_once[-1][6])}
    assert chain.genesis(0) != chain.genesis(1)


def test_an_untouched_chain_holds():
    m = Model(50)
    scanned, finding = m.verify()
    assert finding is None
    assert (scanned.length, scanned.first_bad, scanned.rows, scanned.archived) == (50, None, 50, 50)
    assert scanned.head == m.heads[PARTITION].hash


def test_an_empty_partition_holds_at_its_genesis():
    scanned = chain.scan(5, [])
    assert (scanned.length, scanned.head, scanned.first_bad) == (0, chain.genesis(5), None)


def test_a_changed_byte_in_one_event():
    m = Model()
    value = bytearray(m.archive[event_id(6)][2])
    value[3] ^= 0x01
    m.archive[event_id(6)][2] = bytes(value)
    scanned, finding = m.verify()
    assert (scanned.length, finding.position, finding.problem) == (6, 7, chain.VALUE_CHANGED)
    assert event_id(6) in finding.detail


def test_a_changed_offset_in_the_archive():
    m = Model()
    m.archive[event_id(4)][1] += 1
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (5, chain.VALUE_CHANGED)
    assert "offset" in finding.detail


def test_a_deleted_row():
    m = Model()
    gone = m.row(9)
    m.rows.remove(gone)
    del m.archive[gone[3]]
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (9, chain.MISSING)
    assert "9..9" in finding.detail


def test_a_row_deleted_from_the_archive_only():
    m = Model()
    del m.archive[event_id(11)]
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (12, chain.MISSING)
    assert "not in the archive" in finding.detail


def test_a_deleted_row_with_the_rows_after_it_renumbered():
    m = Model()
    gone = m.row(9)
    m.rows.remove(gone)
    del m.archive[gone[3]]
    for r in m.rows:
        if r[1] > 9:
            r[1] -= 1
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (9, chain.MISSING)
    assert "renumbered" in finding.detail


@pytest.mark.parametrize("a, b", [(5, 6), (5, 12)])
def test_two_rows_swapped(a, b):
    m = Model()
    ra, rb = m.row(a), m.row(b)
    ra[1], rb[1] = b, a
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (a, chain.OUT_OF_ORDER)
    assert f"chained at position {b}" in finding.detail


def test_two_archived_values_swapped():
    m = Model()
    m.archive[event_id(3)][2], m.archive[event_id(4)][2] = m.archive[event_id(4)][2], m.archive[event_id(3)][2]
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (4, chain.VALUE_CHANGED)


def _insert_forged(m: Model, at: int, *, linked: bool) -> str:
    """A forged event put in at position `at`, the rows from there on moved one up; with
    `linked`, the forger gives it the hash that links it to position at - 1."""
    for r in m.rows:
        if r[1] >= at:
            r[1] += 1
    eid, value = event_id(999), b"forged event"
    offset = m.row(at - 1)[2] if at > 1 else 0
    m.archive[eid] = [m.partition, offset, value]
    prev = m.row(at - 1)[6] if at > 1 else chain.genesis(m.partition)
    digest = chain.value_digest(value)
    h = chain.link(prev, m.partition, at, offset, digest) if linked else hashlib.sha256(b"made up").digest()
    m.rows.append([m.partition, at, offset, eid, digest, prev, h])
    return eid


@pytest.mark.parametrize("linked", [True, False])
def test_an_inserted_forged_row(linked):
    m = Model()
    _insert_forged(m, 8, linked=linked)
    scanned, finding = m.verify()
    assert scanned.first_bad == (9 if linked else 8)  # a linked forgery holds; the row after it does not
    assert (finding.position, finding.problem) == (8, chain.INSERTED)


def test_a_forged_row_at_the_head_outside_the_sequence():
    m = Model()
    eid, value = event_id(998), b"forged event"
    m.archive[eid] = [m.partition, 5000, value]
    m.rows.append([m.partition, 40, 5000, eid, chain.value_digest(value), bytes(32), bytes(32)])
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (40, chain.FORGED)


def test_a_chain_row_with_a_changed_hash():
    m = Model()
    m.row(13)[6] = hashlib.sha256(b"other").digest()
    _, finding = m.verify()
    assert (finding.position, finding.problem) == (13, chain.FORGED)


def test_a_replaced_row_given_a_new_hash_of_its_own():
    m = Model()
    m.archive[event_id(9)][2] = b"replaced"
    r = m.row(10)  # event 9's row alone is recomputed: position 11 still links to its old hash
    r[4] = chain.value_digest(b"replaced")
    r[6] = chain.link(r[5], PARTITION, 10, r[2], r[4])
    scanned, finding = m.verify()
    assert scanned.first_bad == 11
    assert (finding.position, finding.problem) == (10, chain.FORGED)


def test_a_truncated_tail_is_seen_only_against_a_seal():
    m = Model(30)
    sealed = chain.Head(30, m.row(30)[6])
    for r in [r for r in m.rows if r[1] > 26]:
        m.rows.remove(r)
        del m.archive[r[3]]
    scanned, finding = m.verify()
    assert finding is None and scanned.length == 26
    f = chain.seal_finding(PARTITION, sealed, scanned, None, 0, "seal A")
    assert (f.position, f.problem) == (27, chain.TRUNCATED)
    assert "27..30" in f.detail


def test_a_chain_rewritten_with_recomputed_hashes_is_seen_only_against_a_seal():
    m = Model(40)
    early, late = chain.Head(15, m.row(15)[6]), chain.Head(40, m.row(40)[6])
    m.archive[event_id(20)][2] = b"a different payment"
    m.rehash_from(21)
    scanned, finding = m.verify()
    assert finding is None and scanned.length == 40
    assert chain.seal_finding(PARTITION, early, scanned, m.row(15)[6], 0, "seal A") is None
    f = chain.seal_finding(PARTITION, late, scanned, m.row(40)[6], 15, "seal B")
    assert (f.position, f.problem) == (16, chain.REWRITTEN)
    assert "16..40" in f.detail and "seal B" in f.detail


def test_a_seal_beyond_a_position_already_bad_adds_nothing():
    m = Model(10)
    sealed = chain.Head(10, m.row(10)[6])
    m.archive[event_id(2)][2] = b"changed"
    scanned, finding = m.verify()
    assert finding.position == 3
    assert chain.seal_finding(PARTITION, sealed, scanned, None, 0, "seal A") is None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_any_single_change_is_found_at_its_position(n, data):
    m = Model(n)
    position = data.draw(st.integers(1, n))
    eid = m.row(position)[3]
    value = bytearray(m.archive[eid][2])
    value[data.draw(st.integers(0, len(value) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    m.archive[eid][2] = bytes(value)
    scanned, finding = m.verify()
    assert scanned.length == position - 1
    assert (finding.position, finding.problem) == (position, chain.VALUE_CHANGED)


def test_the_root_commits_to_every_head():
    heads = {0: chain.Head(3, b"\x01" * 32), 1: chain.Head(0, chain.genesis(1))}
    r = chain.root(heads)
    assert r == hashlib.sha256(b"aidledger archive root v1" + struct.pack(">iq", 0, 3) + b"\x01" * 32
                               + struct.pack(">iq", 1, 0) + chain.genesis(1)).digest()
    assert chain.root({**heads, 0: chain.Head(3, b"\x02" * 32)}) != r
    assert chain.root({**heads, 0: chain.Head(4, b"\x01" * 32)}) != r


def test_a_seal_body_round_trips_and_its_root_is_checked():
    heads = {0: chain.Head(3, b"\x01" * 32), 1: chain.Head(5, b"\x02" * 32)}
    body = chain.seal_body(ledger_topic="aid.ledger.v1", closed_at="2026-11-22T17:00:00+00:00", period_from=None,
                           previous_seal_sha256=None, heads=heads, public_key=b"\x09" * 32)
    assert body["events"] == 8
    assert chain.sealed_heads(body) == heads
    assert chain.canonical(body) == chain.canonical(dict(reversed(list(body.items()))))
    tampered = dict(body, heads=[dict(body["heads"][0], position=2), body["heads"][1]])
    with pytest.raises(chain.SealFormatError, match="root"):
        chain.sealed_heads(tampered)
