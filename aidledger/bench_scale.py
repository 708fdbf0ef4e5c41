"""`make bench-scale`: the Lampung-scale replay. By default 10,000,000 ledger events over
1,500,000 people and 36 months are put on the ledger topic of a fresh embedded broker
(8 partitions), then replayed from offset zero into fresh projections by the real projector
(`projections.projector.run_projector`, its default settings) until its tracking offsets reach
the high watermarks. Target: the replay in at most 8 minutes.

Steps, each timed on its own (only the replay counts against the target):
1. generate: the population (people in households, villages, programme enrolments) and its
   events, built as intake builds them (tokens, never NIKs; event id and field digests from the
   content) but encoded directly, a few microseconds per event;
2. produce: the events go to the ledger topic in whole batches per partition, keyed by person
   token and partitioned as the relay's producer partitions them;
3. replay: a fresh database is migrated and the projector runs from offset zero; the clock
   stops when every partition's tracking offset is at its high watermark;
4. verify: the archive holds every distinct event, the accepted ones are exactly the first under
   each key, and the person totals add up to the accepted amounts.

The result goes to a JSON file with the date and the machine. With `--profile`, py-spy samples
the replay (py-spy comes with the bench extra) and the summary says where the projector's time
goes; the CPU seconds of the projector process, PostgreSQL and the broker are always reported.

The embedded broker keeps the log in memory, so the run first checks that the machine has the
memory the log needs and stops with a message if it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from zlib import crc32

import psycopg
import psycopg.sql

from aidcore.intake import DIGESTS_BYTES
from aidcore.settings import ProjectorSettings, StackSettings
from connectors.synthetic import REGENCIES
from infra import embedded, kafka
from schemas import codec, flat
from schemas.topics import declared_topics

EVENTS = 10_000_000
PEOPLE = 1_500_000
MONTHS = 36
FIRST_PERIOD = "2024-01"
PARTITIONS = 8
TARGET_SECONDS = 8 * 60
SMOKE_PEOPLE_PER_EVENT = PEOPLE / EVENTS

# What the embedded broker holds per record beyond its value (key, record and batch framing,
# the broker's own structures: ~45 bytes measured, 3.3 GB of RSS for 10M records of ~284
# bytes), with a margin; and what else the run needs at once (PostgreSQL's shared buffers, the
# projector's fetch buffers, this process, the page cache the replay leans on).
BROKER_BYTES_PER_RECORD = 100
HEADROOM_BYTES = 3 * 2**30

# Redelivered records (the same event again, as at-least-once delivery gives) and modified
# resubmissions (same source reference, other content: archived as not accepted).
REDELIVERY_RATE = 0.001
RESUBMISSION_RATE = 0.002


# --------------------------------------------------------------------------- Avro, by hand
#
# A DisbursementRecorded value is the single-object header and then the fields in schema order,
# each in Avro's binary encoding. Most of an event's fields are fixed per enrolment, so their
# encoded bytes are built once; `tests/unit/test_bench_scale.py` holds the result to
# `schemas.codec.encode_disbursement` byte for byte, and the ids and digests to intake's.

_HEADER = codec.codec(codec.DISBURSEMENT).header
assert [f["name"] for f in codec.codec(codec.DISBURSEMENT).schema["fields"]] == [
    "event_id", "source_system", "source_ref", "source_type", "agency_code", "programme_code", "person_token",
    "identity_kind", "kk_token", "amount_idr", "kind", "period", "disbursed_at_us", "disbursed_at_offset_min",
    "channel", "region_code", "funding_account", "recorded_at_us", "field_digests",
], "the DisbursementRecorded schema changed: update the encoder in aidledger/bench_scale.py"


_long = flat.long_bytes  # Avro long (and int): zigzag, then base-128 varint, low group first


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return _long(len(b)) + b


def _crc(s: str) -> int:
    """A field's digest as `aidcore.intake.field_digests` makes it: the low half of its CRC-32."""
    return crc32(s.encode("utf-8")) & 0xFFFF


_UTC_OFFSET_MIN = 420  # WIB
_OFFSET_ENC = _long(_UTC_OFFSET_MIN)
_OFFSET_TEXT = f"{_UTC_OFFSET_MIN:+d}"
_DIGESTS = struct.Struct(">12H")
_DIGESTS_ENC = _long(DIGESTS_BYTES)
assert _DIGESTS.size == DIGESTS_BYTES
_NIK_ENC = _str("NIK")
_PROVISIONAL_ENC = _str("PROVISIONAL")
_NONE_ENC = _long(0)  # union branch 0: null
_SOME_ENC = _long(1)  # union branch 1: string
_UUID_VARIANT_CLEAR = ~(0xC000 << 48)
_UUID_VARIANT = 0x8000 << 48
_UUID_VERSION_CLEAR = ~(0xF000 << 64)
_UUID_VERSION_5 = 5 << 76


def _event_id(source_system: str, source_ref: str, content_digest: bytes) -> str:
    """`aidcore.intake.make_event_id` without building a UUID object: the first 16 bytes of the
    SHA-256, with the RFC 4122 variant and version 5 set, in canonical text."""
    h = hashlib.sha256(f"{source_system}\x1f{source_ref}\x1f".encode() + content_digest).digest()
    n = int.from_bytes(h[:16], "big")
    n = (n & _UUID_VARIANT_CLEAR) | _UUID_VARIANT
    n = (n & _UUID_VERSION_CLEAR) | _UUID_VERSION_5
    x = f"{n:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# --------------------------------------------------------------------------- the population


@dataclass(slots=True)
class _Spec:
    """How one programme reaches its recipients in one place: the fields that do not change
    from payment to payment, pre-encoded."""

    programme: str
    source_system: str
    source_type: str
    agency: str
    kind: str
    channel: str
    funding: tuple[str, ...]  # per year of the window
    ref_prefix: str
    system_enc: bytes = b""
    mid_enc: bytes = b""  # source_type, agency, programme
    kind_enc: bytes = b""
    channel_enc: bytes = b""
    funding_enc: tuple[bytes, ...] = ()
    crcs: tuple[int, ...] = ()  # programme, kind, channel, agency, source_type
    funding_crc: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.system_enc = _str(self.source_system)
        self.mid_enc = _str(self.source_type) + _str(self.agency) + _str(self.programme)
        self.kind_enc = _str(self.kind)
        self.channel_enc = _str(self.channel)
        self.funding_enc = tuple(_str(f) for f in self.funding)
        self.crcs = tuple(_crc(s) for s in (self.programme, self.kind, self.channel, self.agency, self.source_type))
        self.funding_crc = tuple(_crc(f) for f in self.funding)


def _villages(rnd: random.Random) -> tuple[list[str], list[float]]:
    """Village codes of Lampung's regencies and districts (kelurahan 1xxx in the two cities,
    desa 2xxx elsewhere), weighted by the regency's residents."""
    codes: list[str] = []
    weights: list[float] = []
    for regency, (_name, residents_k, districts) in REGENCIES.items():
        city = regency[2] == "7"
        here = []
        for d in range(1, districts + 1):
            n = rnd.randint(5, 9) if city else rnd.randint(8, 16)
            here += [f"{regency}{d:02d}{(1000 if city else 2000) + v:04d}" for v in range(1, n + 1)]
        codes += here
        weights += [residents_k / len(here)] * len(here)
    return codes, weights


# household sizes 1..6 (share of households)
_SIZES = (0.08, 0.15, 0.22, 0.25, 0.18, 0.12)
# one household programme per household, with its cadence: (programme, share, months between payments)
_HOUSEHOLD_PROGRAMMES = (("BPNT", 0.45, 1), ("PKH", 0.25, 3), ("BLT_DD", 0.15, 1), ("PROV_SEMBAKO", 0.15, 1))
_PKH_COMPONENTS = (750_000, 600_000, 225_000, 375_000, 500_000)
_ZAKAT_SHARE = 0.2
_PIP_SHARE = 0.4
# base spell lengths in months (scaled to the number of events asked for)
_HOUSEHOLD_SPELL = (6, 24)
_PBI_SPELL = (1, 5)


class Population:
    """People in households, each household in a village, and their enrolments: who is paid
    what, by whom, how often, from which period for how long. Deterministic for a seed.

    Storage is flat (arrays and shared `_Spec`s), a few dozen bytes per person and per
    enrolment, so that 1.5 million people and 10 million events fit in a few hundred MB."""

    def __init__(self, people: int, months: int, seed: int, first_period: str = FIRST_PERIOD):
        rnd = random.Random(seed)
        self.months = months
        year0, month0 = (int(x) for x in first_period.split("-"))
        self.periods: list[str] = []
        self.month_us: list[int] = []
        for m in range(months):
            y, mo = divmod(month0 - 1 + m, 12)
            self.periods.append(f"{year0 + y}-{mo + 1:02d}")
            start = datetime(year0 + y, mo + 1, 1, tzinfo=timezone.utc)
            self.month_us.append(int(start.timestamp()) * 1_000_000)
        self.years = sorted({int(p[:4]) for p in self.periods})
        self.year_of = [self.years.index(int(p[:4])) for p in self.periods]
        self.period_enc = [_str(p) for p in self.periods]
        self.period_crc = [_crc(p) for p in self.periods]

        villages, weights = _villages(rnd)
        self.villages = villages
        self.village_enc = [_str(v) for v in villages]
        self.village_crc = [_crc(v) for v in villages]
        self.specs: list[_Spec] = []
        self._spec_index: dict[tuple, int] = {}

        self.tokens = bytearray()  # 16 bytes per person
        self.person_house = array("I")
        self.kk = bytearray()  # 16 bytes per household; zeros for a household without KK
        self.house_documented = bytearray()
        self.house_village = array("I")
        # enrolments: person, spec, amount, first period, last period (exclusive), cadence, time of month
        self.e_person = array("I")
        self.e_spec = array("I")
        self.e_amount = array("I")
        self.e_first = array("B")
        self.e_base_len = array("f")
        self.e_every = array("B")
        self.e_tod = array("I")  # seconds after the month's start

        cum_sizes = []
        acc = 0.0
        for s in _SIZES:
            acc += s
            cum_sizes.append(acc)
        vcum = []
        acc = 0.0
        for w in weights:
            acc += w
            vcum.append(acc)
        from bisect import bisect_right

        r = rnd.random
        person = 0
        house = 0
        while person < people:
            size = min(people - person, 1 + bisect_right(cum_sizes, r() * cum_sizes[-1]))
            village = min(len(villages) - 1, bisect_right(vcum, r() * vcum[-1]))
            documented = r() >= 0.015
            self.house_village.append(village)
            self.house_documented.append(documented)
            self.kk += rnd.getrandbits(128).to_bytes(16, "big") if documented else bytes(16)
            members = range(person, person + size)
            ages = [23 + int(r() * 48)] + [int(r() * 25) if i > 1 else 18 + int(r() * 50) for i in range(1, size)]
            for p in members:
                self.tokens += rnd.getrandbits(128).to_bytes(16, "big")
                self.person_house.append(house)
            regency = villages[village][:4]
            # the household programme: BPNT, BLT_DD and the provincial package to the head,
            # PKH to the mother (the second member when there is one)
            x = r()
            for programme, share, every in _HOUSEHOLD_PROGRAMMES:
                if x < share:
                    break
                x -= share
            member = person + (1 if programme == "PKH" and size > 1 else 0)
            if programme == "PKH":
                amount = sum(_PKH_COMPONENTS[int(r() * len(_PKH_COMPONENTS))] for _ in range(1 + int(r() * 3)))
            else:
                amount = {"BPNT": 200_000, "BLT_DD": 300_000, "PROV_SEMBAKO": 150_000}[programme]
            self._enrol(member, self._spec(programme, villages[village], regency, r), amount, every,
                        _HOUSEHOLD_SPELL, r)
            # everyone's health insurance premium (PBI_JK), for a spell
            central = r() < 0.8
            pbi = self._spec("PBI_JK" if central else "PBI_JK_KAB", villages[village], regency, r)
            for p in members:
                self._enrol(p, pbi, 42_000, 1, _PBI_SPELL, r)
            # school children: PIP once a year (in July), by school level
            for p, age in zip(members, ages):
                if 7 <= age <= 18 and r() < _PIP_SHARE:
                    amount = 450_000 if age <= 12 else 750_000 if age <= 15 else 1_800_000
                    self._enrol(p, self._spec("PIP", villages[village], regency, r), amount, 12, None, r, month=6)
            if r() < _ZAKAT_SHARE:  # zakat fitrah before Idul Fitri (in April here)
                self._enrol(person, self._spec("ZAKAT_FITRAH", villages[village], regency, r),
                            100_000 + 25_000 * int(r() * 13), 12, None, r, month=3)
            person += size
            house += 1
        self.people = person
        self.households = house
        # the order of payments within a month: enrolments shuffled once
        self.order = list(range(len(self.e_person)))
        rnd.shuffle(self.order)
        self._partition_of = bytearray(b"\xff") * people

    def _spec(self, programme: str, village: str, regency: str, r) -> int:
        if programme == "BPNT":
            c = r()
            channel = "BANK_TRANSFER" if c < 0.6 else "POS" if c < 0.9 else "E_WALLET"
            key = ("SIKS-NG", "APBN", "KEMENSOS", "BPNT", "CASH", channel, "APBN-{y}-KEMENSOS-BPNT", "BPNT-")
        elif programme == "PKH":
            channel = "BANK_TRANSFER" if r() < 0.85 else "POS"
            key = ("SIKS-NG", "APBN", "KEMENSOS", "PKH", "CASH", channel, "APBN-{y}-KEMENSOS-PKH", "PKH-")
        elif programme == "BLT_DD":
            key = (f"SISKEUDES-{village}", "APBDES", f"DESA-{village}", "BLT_DD", "CASH",
                   "CASH" if int(village) % 4 else "BANK_TRANSFER", f"APBDES-{{y}}-{village}", "BLT-")
        elif programme == "PROV_SEMBAKO":
            key = ("SIMBANSOS-1800", "APBD_PROV", "DINSOS-1800", "PROV_SEMBAKO", "IN_KIND", "GOODS",
                   "APBD-{y}-1800-DINSOS-SEMBAKO", "SMB-")
        elif programme == "PBI_JK":
            key = ("BPJS-PBI", "APBN", "KEMENKES", "PBI_JK", "PREMIUM", "BANK_TRANSFER", "APBN-{y}-KEMENKES-PBI_JK",
                   "PBI-")
        elif programme == "PBI_JK_KAB":  # premiums a regency pays itself
            key = ("BPJS-PBI", "APBD_KAB", f"DINKES-{regency}", "PBI_JK", "PREMIUM", "BANK_TRANSFER",
                   f"APBD-{{y}}-{regency}-DINKES-PBI_JK", "PBI-")
        elif programme == "PIP":
            key = ("SIPINTAR", "APBN", "KEMENDIKDASMEN", "PIP", "CASH", "BANK_TRANSFER",
                   "APBN-{y}-KEMENDIKDASMEN-PIP", "PIP-")
        elif programme == "ZAKAT_FITRAH":
            cash = r() < 0.6
            key = ("BAZNAS-LPG", "COMMUNITY", "BAZNAS-1800", "ZAKAT_FITRAH", "CASH" if cash else "IN_KIND",
                   "CASH" if cash else "GOODS", "ZIS-{y}-BAZNAS-LAMPUNG-FITRAH", "ZF-")
        else:  # pragma: no cover
            raise ValueError(programme)
        index = self._spec_index.get(key)
        if index is None:
            system, source_type, agency, prog, kind, channel, funding, prefix = key
            self.specs.append(_Spec(prog, system, source_type, agency, kind, channel,
                                    tuple(funding.replace("{y}", str(y)) for y in self.years), prefix))
            index = self._spec_index[key] = len(self.specs) - 1
        return index

    def _enrol(self, person: int, spec: int, amount: int, every: int, spell: tuple[int, int] | None, r,
               month: int | None = None) -> None:
        if spell is None:  # once a year, in `month`, for the whole window
            first, length = (month - self._month0()) % 12, float(self.months)
        else:
            length = spell[0] + r() * (spell[1] - spell[0])
            first = int(r() * self.months)
        self.e_person.append(person)
        self.e_spec.append(spec)
        self.e_amount.append(amount)
        self.e_first.append(first)
        self.e_base_len.append(length if spell is not None else -1.0)
        self.e_every.append(every)
        self.e_tod.append((int(r() * 27) * 86_400 + 3_600 + int(r() * 9 * 3_600)))  # day 1-28, 08:00-17:00 WIB

    def _month0(self) -> int:
        return int(self.periods[0][5:]) - 1

    def due(self, scale: float) -> list[array]:
        """Per period, the enrolments paid in it (in payment order), with spells `scale` times
        their base length (yearly payments are not scaled)."""
        months = self.months
        out = [array("I") for _ in range(months)]
        first, base, every = self.e_first, self.e_base_len, self.e_every
        for e in self.order:
            start = first[e]
            if base[e] < 0:
                end = months
            else:
                end = min(months, start + max(1, round(base[e] * scale)))
            for p in range(start, end, every[e]):
                out[p].append(e)
        return out

    def partition(self, person: int, partitions: int) -> int:
        """The partition the relay's producer sends a person's events to (the default
        partitioner: murmur2 of the key), cached per person."""
        got = self._partition_of[person]
        if got == 0xFF:
            from aiokafka.partitioner import murmur2

            key = self.tokens[person * 16 : person * 16 + 16].hex().encode()
            got = self._partition_of[person] = (murmur2(key) & 0x7FFFFFFF) % partitions
        return got


@dataclass
class Generated:
    """What the produced log holds, counted while it was made: the answers the replay must give."""

    records: int = 0
    distinct_events: int = 0
    accepted: int = 0
    accepted_amount_idr: int = 0
    redeliveries: int = 0
    resubmissions: int = 0
    people_paid: int = 0
    people: int = 0
    households: int = 0
    enrolments: int = 0
    periods: tuple[str, str] = ("", "")
    spell_scale: float = 1.0
    value_bytes: int = 0
    by_programme: Counter = field(default_factory=Counter)


def events(population: Population, n: int, seed: int, partitions: int = PARTITIONS,
           stats: Generated | None = None) -> Iterator[tuple[int, bytes, bytes]]:
    """Exactly `n` ledger records as (partition, key, value), month by month. Spells are scaled
    so that the payments due are just above `n - redeliveries - resubmissions`; the surplus is
    dropped evenly among payments that are not the first of their enrolment, so everyone paid
    once stays paid. Among them are redeliveries of recent records and modified resubmissions
    of recent events (same source reference, other amount), at the module's rates."""
    stats = stats if stats is not None else Generated()
    rnd = random.Random(seed + 1)
    extra_redeliver = int(n * REDELIVERY_RATE)
    extra_resubmit = int(n * RESUBMISSION_RATE)
    payments = n - extra_redeliver - extra_resubmit
    if population.people > payments:
        raise ValueError(f"{population.people:,} people cannot each be paid with {payments:,} payments:"
                         " give fewer people or more events")
    # spells scaled so that the due payments just cover the events asked for
    base = sum(len(d) for d in population.due(1.0))
    scale = payments / base * 1.02
    while True:
        due = population.due(scale)
        total = sum(len(d) for d in due)
        if total >= payments:
            break
        if scale > pop_months_cap(population):
            raise ValueError(f"{population.people:,} people in {population.months} months are not enough for"
                             f" {payments:,} payments: give more people, more months or fewer events")
        scale *= 1.05
    stats.spell_scale = scale
    stats.people, stats.households, stats.enrolments = population.people, population.households, len(population.e_person)
    stats.periods = (population.periods[0], population.periods[-1])
    started = bytearray(len(population.e_person))
    droppable = sum(1 for d in due for e in d if not _first_seen(started, e))
    started = bytearray(len(population.e_person))
    drop = total - payments
    if drop > droppable:
        raise ValueError("too few payments beyond each enrolment's first: give fewer people")
    droppable = max(droppable, 1)
    paid = bytearray(population.people)

    pop = population
    tokens, kk, house_of, documented = pop.tokens, pop.kk, pop.person_house, pop.house_documented
    village_of = pop.house_village
    specs = pop.specs
    e_person, e_spec, e_amount, e_tod = pop.e_person, pop.e_spec, pop.e_amount, pop.e_tod
    digests = _DIGESTS.pack
    sha256 = hashlib.sha256
    amount_crc: dict[int, int] = {}
    recent: list[tuple] = []  # (partition, key, value, enrolment, period, serial, time of month)
    RECENT = 10_000
    seen_droppable = 0
    serial = 0
    emitted = 0
    # when the extra records come: evenly spread over the log
    extra = extra_redeliver + extra_resubmit
    extra_every = payments // extra if extra else 0

    def encode(e: int, p: int, ref_serial: int, amount: int, tod: int) -> tuple[int, bytes, bytes, str]:
        person = e_person[e]
        spec = specs[e_spec[e]]
        h = house_of[person]
        token = tokens[person * 16 : person * 16 + 16].hex()
        if documented[h]:
            kk_token = kk[h * 16 : h * 16 + 16].hex()
            identity_enc, kk_enc = _NIK_ENC, _SOME_ENC + b"\x40" + kk_token.encode()
        else:
            kk_token, identity_enc, kk_enc = "", _PROVISIONAL_ENC, _NONE_ENC
        village = village_of[h]
        region = pop.villages[village]
        year = pop.year_of[p]
        funding = spec.funding[year]
        period = pop.periods[p]
        disbursed = pop.month_us[p] + tod * 1_000_000 - _UTC_OFFSET_MIN * 60_000_000
        recorded = disbursed + 26 * 3_600_000_000 + tod * 1_000  # the next day, at intake
        ref = f"{spec.ref_prefix}{period}-{ref_serial:010d}"  # ASCII, shorter than 64 characters
        when = f"{disbursed}{_OFFSET_TEXT}"
        content = (f"{token}\x1f{spec.programme}\x1f{period}\x1f{amount}\x1f{spec.kind}\x1f{spec.channel}\x1f{when}"
                   f"\x1f{spec.agency}\x1f{spec.source_type}\x1f{funding}\x1f{region}\x1f{kk_token}\x1f").encode()
        event_id = _event_id(spec.source_system, ref, sha256(content).digest())
        a_crc = amount_crc.get(amount)
        if a_crc is None:
            a_crc = amount_crc[amount] = _crc(str(amount))
        c_prog, c_kind, c_channel, c_agency, c_type = spec.crcs
        fd = digests(crc32(token.encode()) & 0xFFFF, c_prog, pop.period_crc[p], a_crc, c_kind, c_channel,
                     crc32(when.encode()) & 0xFFFF, c_agency, c_type, spec.funding_crc[year], pop.village_crc[village],
                     crc32(kk_token.encode()) & 0xFFFF)
        key = token.encode()
        value = b"".join((
            _HEADER, b"\x48", event_id.encode(), spec.system_enc, bytes((2 * len(ref),)), ref.encode(), spec.mid_enc,
            b"\x40", key, identity_enc, kk_enc, _long(amount), spec.kind_enc, pop.period_enc[p], _long(disbursed), _OFFSET_ENC,
            spec.channel_enc, pop.village_enc[village], spec.funding_enc[year], _long(recorded), _DIGESTS_ENC, fd,
        ))
        return pop.partition(person, partitions), key, value, spec.programme

    resubmitted: set[int] = set()

    def resubmission(pick) -> tuple[int, bytes, bytes]:
        """A modified resubmission of a recent event not resubmitted before: same source
        reference, another amount, so another event id."""
        while True:
            _, _, _, oe, op, oserial, otod = pick()
            if oserial not in resubmitted:
                break
        resubmitted.add(oserial)
        changed = e_amount[oe] + 25_000 * (1 + int(rnd.random() * 4))
        part, key, value, _ = encode(oe, op, oserial, changed, otod)
        stats.resubmissions += 1
        stats.distinct_events += 1
        stats.value_bytes += len(value)
        return part, key, value

    def redelivery(old: tuple) -> tuple[int, bytes, bytes]:
        stats.redeliveries += 1
        stats.value_bytes += len(old[2])
        return old[0], old[1], old[2]

    def recent_pick() -> tuple:
        window = min(len(recent), RECENT)
        return recent[int(rnd.random() * window) - window]

    share_redeliver = REDELIVERY_RATE / (REDELIVERY_RATE + RESUBMISSION_RATE)
    for p in range(pop.months):
        for e in due[p]:
            if not _first_seen(started, e):
                # drop `drop` of the `droppable` evenly (Bresenham), never a first payment
                k = seen_droppable
                seen_droppable += 1
                if (k + 1) * drop // droppable > k * drop // droppable:
                    continue
            serial += 1
            amount, tod = e_amount[e], e_tod[e]
            part, key, value, programme = encode(e, p, serial, amount, tod)
            stats.by_programme[programme] += 1
            stats.accepted += 1
            stats.accepted_amount_idr += amount
            stats.distinct_events += 1
            stats.value_bytes += len(value)
            paid[e_person[e]] = 1
            recent.append((part, key, value, e, p, serial, tod))
            if len(recent) > 2 * RECENT:
                del recent[:RECENT]
            emitted += 1
            yield part, key, value
            if extra_every and emitted % extra_every == 0 and (extra_redeliver or extra_resubmit):
                if extra_redeliver and (not extra_resubmit or rnd.random() < share_redeliver):
                    extra_redeliver -= 1
                    yield redelivery(recent_pick())
                else:
                    extra_resubmit -= 1
                    yield resubmission(recent_pick)
    assert emitted == payments, (emitted, payments)
    # whatever the even spread left over goes at the end
    for _ in range(extra_redeliver):
        yield redelivery(recent[-1])
    back = iter(range(len(recent) - 1, -1, -1))
    for _ in range(extra_resubmit):
        yield resubmission(lambda: recent[next(back)])
    stats.records = n
    stats.people_paid = sum(paid)


def pop_months_cap(population: Population) -> float:
    """Past this scale every spell already covers the whole window."""
    return float(population.months)


def _first_seen(started: bytearray, e: int) -> bool:
    if started[e]:
        return False
    started[e] = 1
    return True


# --------------------------------------------------------------------------- produce


async def produce(bootstrap: str, topic: str, records: Iterator[tuple[int, bytes, bytes]], partitions: int) -> dict:
    """Whole batches per partition (aiokafka's batch builder, ~1 MB each), a bounded number in
    flight. Returns the wall time and the share of it spent making the records."""
    from collections import deque

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1024 * 1024,
                                max_request_size=2 * 1024 * 1024, request_timeout_ms=120_000, linger_ms=0)
    await producer.start()
    started = time.perf_counter()
    making = 0.0
    n = 0
    try:
        builders = [producer.create_batch() for _ in range(partitions)]
        in_flight: deque = deque()
        step = iter(records)
        while True:
            t = time.perf_counter()
            item = next(step, None)
            making += time.perf_counter() - t
            if item is None:
                break
            part, key, value = item
            n += 1
            if builders[part].append(key=key, value=value, timestamp=None) is not None:
                continue
            in_flight.append(await producer.send_batch(builders[part], topic, partition=part))
            builders[part] = producer.create_batch()
            builders[part].append(key=key, value=value, timestamp=None)
            while len(in_flight) > 4 * partitions:
                await in_flight.popleft()
            await asyncio.sleep(0)  # let the sender move what is ready
        for part, builder in enumerate(builders):
            if builder.record_count():
                in_flight.append(await producer.send_batch(builder, topic, partition=part))
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    return {"records": n, "seconds": time.perf_counter() - started, "generate_seconds": making}


# --------------------------------------------------------------------------- measure


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and its descendants, the exited ones included (waited for by
    their parent: PostgreSQL's backends are)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    ticks = 0
    for pid in tree:
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == root:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: its waited-for children
    return ticks / _clock_ticks()


def _machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far: busy (any process), idle, and idle while
    waiting for I/O."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = _clock_ticks()
    return {"busy": (user + nice + system + irq + softirq + steal) / ticks, "idle": idle / ticks,
            "iowait": iowait / ticks}


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_needed(records: int, value_bytes: int = 290) -> int:
    """What the in-memory broker holds for `records` ledger records, plus the rest of the run."""
    return records * (value_bytes + BROKER_BYTES_PER_RECORD) + HEADROOM_BYTES


async def replay(database_url: str, stack: StackSettings, ledger_topic: str, marks: dict[int, int],
                 progress_every_s: float = 15.0) -> dict:
    """The real projector from offset zero (a fresh database has no tracking records) until
    every ledger partition's tracking offset is at its high watermark."""
    from projections.projector import run_projector

    settings = ProjectorSettings.from_env({})
    stop = asyncio.Event()
    target = sum(marks.values())
    progress: list[tuple[float, int]] = []
    with psycopg.connect(database_url, autocommit=True) as watch:
        started = time.perf_counter()
        task = asyncio.create_task(run_projector(database_url, stack, settings, stop))
        last_print = started
        while True:
            await asyncio.sleep(0.1)
            if task.done():
                task.result()
                raise RuntimeError("the projector stopped before it reached the end of the log")
            rows = watch.execute("SELECT partition, next_offset FROM ledger.tracking WHERE topic = %s",
                                 (ledger_topic,)).fetchall()
            at = dict(rows)
            now = time.perf_counter()
            done = sum(min(at.get(p, 0), m) for p, m in marks.items())
            if now - last_print >= progress_every_s:
                last_print = now
                rate = (done - progress[-1][1]) / (now - started - progress[-1][0]) if progress else done / (now - started)
                progress.append((now - started, done))
                print(f"  replay: {done:>12,} of {target:,} records, {now - started:6.0f} s,"
                      f" {rate:,.0f} records/s lately", flush=True)
            if all(at.get(p, 0) >= m for p, m in marks.items()):
                break
        seconds = time.perf_counter() - started
        progress.append((seconds, target))
        stop.set()
        await task
    return {"seconds": seconds, "records": target, "progress": progress,
            "batch_max": settings.batch_max}


def verify(database_url: str, expected: Generated, ledger_topic: str, marks: dict[int, int]) -> dict:
    """What the projections hold after the replay, against what was put on the log."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        events, accepted = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE accepted) FROM ledger.events").fetchone()
        amount, payments, people = conn.execute(
            "SELECT coalesce(sum(amount_idr_total), 0), coalesce(sum(payments), 0), count(DISTINCT person_token)"
            " FROM ledger.person_totals").fetchone()
        tracked = dict(conn.execute("SELECT partition, next_offset FROM ledger.tracking WHERE topic = %s",
                                    (ledger_topic,)).fetchall())
    found = {"events": events, "accepted": accepted, "amount_idr": int(amount), "payments": int(payments),
             "people": people, "tracked": tracked}
    return compare(found, expected, marks)


def compare(found: dict, expected: Generated, marks: dict[int, int]) -> dict:
    checks = {
        "archived events == distinct events produced": (found["events"], expected.distinct_events),
        "accepted events == first events under each key": (found["accepted"], expected.accepted),
        "sum of person totals == sum of accepted amounts": (found["amount_idr"], expected.accepted_amount_idr),
        "payments in person totals == accepted events": (found["payments"], expected.accepted),
        "people in person totals == people paid": (found["people"], expected.people_paid),
        "tracking offsets == high watermarks": (found["tracked"], dict(marks)),
    }
    failed = [name for name, (got, want) in checks.items() if got != want]
    return {"ok": not failed, "failed": failed,
            "checks": {name: {"got": got, "expected": want} for name, (got, want) in checks.items()
                       if not isinstance(got, dict)}}


def postgres_activity(database_url: str) -> dict:
    """PostgreSQL's cumulative WAL and checkpoint counters (differences of two readings tell
    what a step cost it beyond CPU)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        wal = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
        ckpt = conn.execute("SELECT num_timed, num_requested, buffers_written FROM pg_stat_checkpointer").fetchone()
    return {"wal_records": int(wal[0]), "wal_full_page_images": int(wal[1]), "wal_bytes": int(wal[2]),
            "checkpoints_timed": int(ckpt[0]), "checkpoints_requested": int(ckpt[1]),
            "checkpoint_buffers_written": int(ckpt[2])}


_SHOWN_SETTINGS = ("shared_buffers", "max_wal_size", "checkpoint_timeout", "fsync", "synchronous_commit",
                   "full_page_writes", "wal_level", "work_mem")


def postgres_settings(database_url: str, changes: dict[str, str]) -> dict[str, str]:
    """Apply `changes` (settings a reload can change and the embedded server does not set on
    its command line, such as max_wal_size) and return the settings that matter here."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, value in changes.items():
            conn.execute(f"ALTER SYSTEM SET {psycopg.sql.Identifier(name).as_string(conn)} = {psycopg.sql.Literal(value).as_string(conn)}")
        if changes:
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
        shown = {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
                 for name in dict.fromkeys((*_SHOWN_SETTINGS, *changes))}
        pending = conn.execute("SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)",
                               (list(changes),)).fetchall()
    if pending:
        raise SystemExit(f"bench-scale: {', '.join(n for (n,) in pending)} can only change with a restart; the"
                         " embedded server sets its own on its command line")
    return shown


def table_sizes(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ledger' AND c.relkind IN ('r', 'i') AND pg_relation_size(c.oid) > 0"
            " ORDER BY 2 DESC").fetchall()
    return {name: size for name, size in rows}


# --------------------------------------------------------------------------- profile


def _py_spy() -> str | None:
    import shutil

    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start_profile(path: Path, rate: int = 50) -> subprocess.Popen | None:
    exe = _py_spy()
    if exe is None:
        print("py-spy is not installed (make bench-scale installs it); no profile", file=sys.stderr)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(os.getpid()), "--rate", str(rate), "--format", "raw",
                             "--output", str(path), "--threads", "--idle", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_profile(proc: subprocess.Popen, path: Path) -> dict | None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    if not path.exists():
        print(f"py-spy wrote no profile: {proc.stderr.read().decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return summarize_profile(path.read_text())


# Where the projector's time goes: each sample goes to the category of its innermost frame
# that names one. (category, substrings of a frame)
_CATEGORIES = (
    ("the bench's own progress poll", ("replay (aidledger/bench_scale.py",)),
    (_WAITING := "waiting for PostgreSQL (psycopg waits, sends, receives)",
     ("Connection.wait (psycopg", "psycopg/generators.py", "psycopg/waiting.py", "wait_c")),
    ("Avro decode", ("schemas/codec.py", "fastavro")),
    ("psycopg dumping COPY rows and array parameters", ("psycopg/",)),
    ("deciding (idempotency, totals)", ("_decide_events", "_add_totals", "_lookup_results", "_send_lookups")),
    ("aiokafka fetch and record parsing", ("aiokafka/",)),
    ("event loop idle", ("select (selectors.py",)),
    ("thread pool idle (nothing to write)", ("_worker (concurrent/futures/thread.py",)),
)


def summarize_profile(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks: per thread, the share of samples per category, and the
    frames most often at the top of the stack."""
    threads: dict[str, Counter] = {}
    top: dict[str, Counter] = {}
    waits: dict[str, Counter] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        n = int(count)
        cat = "other"
        for frame in reversed(frames):
            hit = next((name for name, needles in _CATEGORIES if any(needle in frame for needle in needles)), None)
            if hit is not None:
                cat = hit
                break
        threads.setdefault(thread, Counter())[cat] += n
        if frames:
            top.setdefault(thread, Counter())[frames[-1]] += n
        if cat == _WAITING:  # which step of the write path was waiting: its innermost frame there
            step = next((f for f in reversed(frames) if "projections/" in f), "elsewhere")
            waits.setdefault(thread, Counter())[step] += n
    out = {}
    for thread, cats in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(cats.values())
        out[thread] = {
            "samples": total,
            "share_by_category": {k: round(v / total, 3) for k, v in cats.most_common()},
            "top_frames": [(f, round(v / total, 3)) for f, v in top[thread].most_common(12)],
        }
        if thread in waits:
            waited = sum(waits[thread].values())
            out[thread]["waiting_for_postgresql_by_step"] = [(f, round(v / waited, 3))
                                                            for f, v in waits[thread].most_common(6)]
    return out


# --------------------------------------------------------------------------- the run


def _machine() -> dict:
    from aidledger.bench import _machine as machine

    m = machine()
    m["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return m


def run(events_n: int = EVENTS, people: int | None = None, months: int = MONTHS, seed: int = 20261122,
        partitions: int = PARTITIONS, profile: Path | None = None, pg_settings: dict[str, str] | None = None,
        log=print) -> dict:
    people = people or max(1, round(events_n * PEOPLE / EVENTS))
    need, have = memory_needed(events_n), _available_bytes()
    if need > have:
        raise SystemExit(
            f"bench-scale: {events_n:,} events need about {need / 2**30:.1f} GiB of memory (the embedded broker keeps"
            f" the log in memory) and {have / 2**30:.1f} GiB is available; free memory or pass a smaller --events")
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
                    "events": events_n, "people": people, "months": months, "partitions": partitions, "seed": seed,
                    "target_seconds": TARGET_SECONDS}
    with tempfile.TemporaryDirectory(prefix="aidledger-scale-") as tmp:
        home = Path(tmp)
        broker = embedded.start_broker(home, embedded.free_port())
        postgres = None
        try:
            postgres = embedded.start_postgres(home, embedded.free_port())
            env = {"AIDLEDGER_KAFKA_BOOTSTRAP": broker.endpoint, "AIDLEDGER_DATABASE_URL": postgres.endpoint,
                   "AIDLEDGER_PARTITIONS": str(partitions)}
            stack = StackSettings.from_env(env)
            specs = declared_topics(stack)
            kafka.create_topics(broker.endpoint, list(specs.values()))
            ledger = specs["ledger"].name
            # fresh projections: a new database, migrated; nothing writes to it before the replay
            from projections.migrate import migrate

            migrate(postgres.endpoint)
            result["postgres_settings"] = postgres_settings(postgres.endpoint, pg_settings or {})
            result["postgres_settings_changed"] = dict(pg_settings or {})

            log(f"population: {people:,} people, {months} months")
            t = time.perf_counter()
            population = Population(people, months, seed)
            result["population_seconds"] = time.perf_counter() - t
            made = Generated()
            log(f"generate and produce: {events_n:,} events to {ledger} ({partitions} partitions)")
            rss_before = _rss_bytes(broker.pid)
            produced = asyncio.run(produce(broker.endpoint, ledger, events(population, events_n, seed, partitions, made),
                                           partitions))
            result["generate_seconds"] = produced["generate_seconds"]
            result["produce_seconds"] = produced["seconds"]
            result["produce_events_per_s"] = events_n / produced["seconds"]
            marks = asyncio.run(kafka.high_watermarks(broker.endpoint, ledger, partitions, timeout_s=60))
            if sum(marks.values()) != events_n:
                raise RuntimeError(f"the ledger topic holds {sum(marks.values()):,} records, not {events_n:,}")
            broker_rss = _rss_bytes(broker.pid)
            result["broker_rss_bytes"] = broker_rss
            result["broker_bytes_per_record"] = (broker_rss - rss_before) / events_n
            result["log"] = {k: v for k, v in made.__dict__.items() if k != "by_programme"}
            result["log"]["by_programme"] = dict(made.by_programme.most_common())
            result["log"]["value_bytes_mean"] = made.value_bytes / events_n
            log(f"  {result['generate_seconds']:.0f} s generating, {result['produce_seconds']:.0f} s in all"
                f" ({result['produce_events_per_s']:,.0f} events/s); broker RSS {broker_rss / 2**30:.2f} GiB")

            activity = postgres_activity(postgres.endpoint)
            log("replay from offset zero into fresh projections")
            cpu = {"projector_process": sum(os.times()[:2]), "postgresql": _tree_cpu_seconds(postgres.pid),
                   "broker": _tree_cpu_seconds(broker.pid)}
            machine = _machine_cpu()
            spy = start_profile(profile) if profile is not None else None
            try:
                replayed = asyncio.run(replay(postgres.endpoint, stack, ledger, marks))
            finally:
                summary = stop_profile(spy, profile) if spy is not None else None
            cpu_after = {"projector_process": sum(os.times()[:2]), "postgresql": _tree_cpu_seconds(postgres.pid),
                         "broker": _tree_cpu_seconds(broker.pid)}
            machine_after = _machine_cpu()
            ours = sum(cpu_after[k] - cpu[k] for k in cpu)
            machine_used = {k: round(machine_after[k] - machine[k], 1) for k in machine}
            # CPU the rest of the machine used meanwhile (other work on a shared machine)
            machine_used["busy_other_processes"] = round(machine_used["busy"] - ours, 1)
            activity_after = postgres_activity(postgres.endpoint)
            seconds = replayed["seconds"]
            result["replay"] = {
                "seconds": seconds,
                "records_per_s": events_n / seconds,
                "events_per_s": made.distinct_events / seconds,
                "target_seconds": TARGET_SECONDS,
                "target_records_per_s": EVENTS / TARGET_SECONDS,
                # above 1: faster than the target needs; at full size, the same as 480 s / seconds
                "rate_over_target_rate": events_n / seconds / (EVENTS / TARGET_SECONDS),
                "met": events_n >= EVENTS and seconds <= TARGET_SECONDS,
                "batch_max": replayed["batch_max"],
                "cpu_seconds": {k: round(cpu_after[k] - cpu[k], 1) for k in cpu},
                "machine_cpu_seconds": machine_used,
                "postgresql": {k: activity_after[k] - activity[k] for k in activity},
                "progress_seconds_records": [(round(s, 1), n) for s, n in replayed["progress"]],
            }
            if events_n < EVENTS:
                result["replay"]["extrapolated_seconds_for_10M_at_this_rate"] = EVENTS / (events_n / seconds)
            if summary is not None:
                result["replay"]["profile"] = summary
            log("verify")
            result["verify"] = verify(postgres.endpoint, made, ledger, marks)
            with psycopg.connect(postgres.endpoint, autocommit=True) as conn:
                result["database_bytes"] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            result["relation_bytes"] = table_sizes(postgres.endpoint)
        finally:
            if postgres is not None:
                postgres.stop(60)
            broker.stop()
    return result


def _print(result: dict) -> None:
    r = result["replay"]
    print(f"\nreplay of {result['events']:,} events ({result['people']:,} people, {result['months']} months)"
          f" into fresh projections: {r['seconds']:.1f} s, {r['records_per_s']:,.0f} events/s")
    verdict = "met" if r["met"] else "NOT MET" if result["events"] >= EVENTS else "(not the full size: no verdict)"
    print(f"  target: {EVENTS:,} events in {TARGET_SECONDS} s, {r['target_records_per_s']:,.0f} events/s;"
          f" rate / target rate = {r['rate_over_target_rate']:.2f} {verdict}")
    if "extrapolated_seconds_for_10M_at_this_rate" in r:
        print(f"  10,000,000 events at this rate: {r['extrapolated_seconds_for_10M_at_this_rate']:.0f} s"
              " (the rate falls as the tables grow: run the full size)")
    print(f"  CPU seconds during the replay: {r['cpu_seconds']}; whole machine: {r['machine_cpu_seconds']}")
    pgw = r["postgresql"]
    print(f"  PostgreSQL during the replay: {pgw['wal_bytes'] / 2**30:.1f} GiB of WAL ({pgw['wal_full_page_images']:,}"
          f" full-page images), {pgw['checkpoints_requested']} checkpoints requested, {pgw['checkpoints_timed']} timed;"
          f" settings {result['postgres_settings']}")
    print(f"  not timed: population {result['population_seconds']:.1f} s, generating {result['generate_seconds']:.1f} s,"
          f" generating and producing {result['produce_seconds']:.1f} s")
    for thread, p in r.get("profile", {}).items():
        print(f"  profile, {thread} ({p['samples']} samples):")
        for k, v in p["share_by_category"].items():
            print(f"    {v:6.1%}  {k}")
        for step, v in p.get("waiting_for_postgresql_by_step", ()) if p["samples"] > 100 else ():
            print(f"      of the wait, {v:6.1%} in {step}")
    v = result["verify"]
    print(f"  verification: {'ok' if v['ok'] else 'FAILED: ' + ', '.join(v['failed'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aidledger.bench_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=EVENTS, help="records on the ledger topic (default 10,000,000)")
    ap.add_argument("--people", type=int, default=None,
                    help=f"person tokens (default: {PEOPLE:,} per {EVENTS:,} events)")
    ap.add_argument("--months", type=int, default=MONTHS)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--profile", action="store_true", help="sample the replay with py-spy")
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a PostgreSQL setting for this run only, e.g. max_wal_size=8GB (an experiment: the"
                         " headline figure is for the stack's own settings)")
    ap.add_argument("--out", default=None,
                    help="result file (default bench/results/scale.json at full size, scale-<events>.json below it)")
    args = ap.parse_args(argv)
    out = Path(args.out or ("bench/results/scale.json" if args.events >= EVENTS
                            else f"bench/results/scale-{args.events}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = out.with_suffix(".pyspy.txt") if args.profile else None
    pg = dict(item.split("=", 1) for item in args.pg_setting)
    result = run(args.events, args.people, args.months, args.seed, profile=profile, pg_settings=pg)
    out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"results -> {out}")
    return 0 if result["verify"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
