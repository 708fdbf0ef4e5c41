"""Synthetic disbursement input records for Lampung, with planted cases and an exact answer key.

Owns: a deterministic generator of realistic input records (the field set of DOMAIN.md's input
record table, and reversal rows) for a population of Lampung households, and the answer key of
what is planted in them: for every detection rule of the shipped rulebook the cases the ledger
must raise (rule, subject, period, rupiah at stake), and redelivered messages, modified
resubmissions, reversals and rows the intake must reject. Also owns writing records as JSON
Lines or CSV.

Must not touch: the ledger, the broker, the database, the clock or the network. It reads the
core's input-record fields and its shipped reference data and rulebook (the limits the clean data
stays within) and nothing else of the project; orjson is used for writing when importable. The
caller passes everything: seed, first period, number of months, rates; the same arguments always
give the same records, in the same order.

How the data is built, so that the answer key is exact:
- Households are drawn village by village (weighted by regency population). A household has a KK
  (16 digits built like a NIK: district, issue date DDMMYY, serial) and typically 3-5 members, the
  first the head. About 1.5% are undocumented: no KK and provisional ids instead of NIKs, so each
  member is a household of one for the rules; a few people in documented households lack a NIK.
- Each household is enrolled in programmes with a payment plan (which periods, which member, which
  amount) that breaks no rule of the shipped rulebook: a per-household programme is paid to one
  member per period (BPNT and BLT_DD to the head, PKH to the mother, as PKH does); BLT_DD only
  where there is no PKH or BPNT; the provincial food package only where there is no BPNT, and CSR
  or zakat food aid only where there is no government food aid; a PKH tranche is sized so the
  household stays under the cap. Where a rare mix of programmes would still break a limit in some
  month, the least essential payments of that month are left out. `_broken` is this module's
  reading of the rules; the unit tests hold it to the real core.
- RTLH house repair is one payment of Rp 17.5 or 20 million, far above the monthly cap, so it is
  never part of clean data: every RTLH grant is a planted household_monthly_cap case (the other cap
  cases are a PIP tranche landing in a month that was already near the cap).
- Each planted rule case adds payments to one household in one period that no other planted case
  or reversal touches, and is kept only if that household-period then breaks exactly the rule it
  is planted for. The rupiah at stake follow from the plan: the amounts, and the payment times
  where a rule depends on order (stacking puts at stake the programmes paid after the limit).
- Payments are emitted month by month and merged into exact disbursement-time order. A planted
  duplicate follows its original by a few days to weeks; exact copies and amount-changed copies
  of a record come some way later in the stream; invalid rows are for fresh people (new NIK, new
  KK) so an invalid row is never also another case.
- Reversals are off unless reversal_rate > 0: full reversals of planted duplicates (the case must
  end void_reversed), partial reversals of clean payments (no case changes) and a few reversals of
  a payment from the year before the window, which is not in the data (they wait for their
  original: pending). They are opt-in because a CSV file holds one record type, and because the
  event archive (ledger.events) holds payments only (reversals are in ledger.reversal_events), so
  callers that compare archive counts with their records need them off.
"""

from __future__ import annotations

import csv
import gc
import heapq
import json
import random
from bisect import bisect_left, bisect_right
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, combinations, count
from typing import Any, Iterable, Iterator, NamedTuple

from aidcore import rulebook as rb
from aidcore.intake import INPUT_FIELDS, REVERSAL_FIELDS
from aidcore.reference import default_reference

try:  # optional speed-up for writing; the generator itself never needs it
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "FIELDS",
    "REVERSAL_FIELDS",
    "REGENCIES",
    "PROGRAMMES",
    "INVALID_VARIANTS",
    "RULE_KINDS",
    "PlantedCase",
    "Dataset",
    "generate",
    "iter_records",
    "write_jsonl",
    "write_csv",
]

# The input record, in DOMAIN.md order; a reversal row has REVERSAL_FIELDS instead.
FIELDS: tuple[str, ...] = INPUT_FIELDS

# code: (name, residents in thousands (2020 census, rounded), districts (kecamatan))
REGENCIES: dict[str, tuple[str, int, int]] = {
    "1801": ("Kab. Lampung Selatan", 1064, 17),
    "1802": ("Kab. Lampung Tengah", 1461, 28),
    "1803": ("Kab. Lampung Utara", 633, 23),
    "1804": ("Kab. Lampung Barat", 302, 15),
    "1805": ("Kab. Tulang Bawang", 430, 15),
    "1806": ("Kab. Tanggamus", 640, 20),
    "1807": ("Kab. Lampung Timur", 1110, 24),
    "1808": ("Kab. Way Kanan", 473, 14),
    "1809": ("Kab. Pesawaran", 477, 11),
    "1810": ("Kab. Pringsewu", 405, 9),
    "1811": ("Kab. Mesuji", 227, 7),
    "1812": ("Kab. Tulang Bawang Barat", 286, 9),
    "1813": ("Kab. Pesisir Barat", 162, 11),
    "1871": ("Kota Bandar Lampung", 1185, 20),
    "1872": ("Kota Metro", 168, 5),
}

# code: (source_type, paid per, what)
PROGRAMMES: dict[str, tuple[str, str, str]] = {
    "PKH": ("APBN", "household", "conditional cash transfer, quarterly, amount by family components"),
    "BPNT": ("APBN", "household", "food assistance, Rp 200,000 a month, sometimes two months at once"),
    "BLT_DD": ("APBDES", "household", "village-fund cash, Rp 300,000 a month, never with PKH/BPNT"),
    "PIP": ("APBN", "person", "student assistance, once a year, Rp 450,000-1,800,000 by school level"),
    "PBI_JK": ("APBN", "person", "health insurance premium Rp 42,000 a month, paid to BPJS (APBD for some)"),
    "PROV_SEMBAKO": ("APBD_PROV", "household", "provincial monthly food package, for households without BPNT"),
    "RTLH": ("APBD_KAB", "household", "house repair materials, once, Rp 17.5-20 million: always above the cap"),
    "CSR_PANGAN": ("CSR", "household", "PT Bukit Asam food packages near its operations"),
    "ZAKAT_FITRAH": ("COMMUNITY", "household", "BAZNAS zakat fitrah before Idul Fitri"),
}

# variant: expected intake rejection code. Each invalid row has exactly one defect.
INVALID_VARIANTS: dict[str, str] = {
    "nik_non_ascii_digit": "nik_must_be_16_ascii_digits",
    "nik_15_digits": "nik_must_be_16_ascii_digits",
    "nik_day_32": "nik_birth_date_invalid",
    "nik_month_13": "nik_birth_date_invalid",
    "amount_fraction": "amount_idr_must_be_whole_rupiah",
    "amount_zero": "amount_idr_must_be_positive",
    "amount_negative": "amount_idr_must_be_positive",
    "programme_unknown": "programme_code_unknown",
    "period_month_13": "period_must_be_yyyy_mm",
}

# Planted rule cases: their kind in the answer key -> the rule the ledger must raise for them.
RULE_KINDS: dict[str, str] = {
    "duplicate_person": rb.DUPLICATE_PERSON,
    "duplicate_household": rb.DUPLICATE_HOUSEHOLD,
    "exclusive_household": rb.EXCLUSIVE_HOUSEHOLD,
    "stacking_person": rb.STACKING_PERSON,
    "stacking_household": rb.STACKING_HOUSEHOLD,
    "household_cap": rb.HOUSEHOLD_CAP,
    "non_government_same_kind": rb.NON_GOVERNMENT_SAME_KIND,
}
DUPLICATE_RULE = rb.DUPLICATE_PERSON
MODIFIED_RULE = "exists_with_different_amount_idr"


@dataclass(frozen=True)
class PlantedCase:
    """One planted thing and what the ledger must make of it.

    kind: a key of RULE_KINDS; "redelivery", "modified_resubmission" or "invalid"; or a reversal
      row: "reversal_void" (takes back a planted duplicate), "reversal_partial" (part of a clean
      payment) or "reversal_unknown" (names a payment that is not in the data).
    rule_id: the rule the case raises; for an invalid row the intake's code, for a modified
      resubmission the outcome code; None when nothing is raised.
    source_refs: the records planted: a duplicate's original and copy, a rule case's added
      payments, a reversal and the original it names, or the one record otherwise.
    nik: the person as sent (NIK, or provisional id when there is none): the subject of a person
      rule; for a household rule the member paid by the planted record.
    kk: for a household rule the household's KK, "" when the household is that person alone.
    amount_idr_at_stake: the rupiah the alert must put at stake, where it is known.
    status: how the case must end: "open", or "void_reversed" for a duplicate a planted reversal
      takes back; for a reversal row the ledger's answer, "accepted" or "pending".
    """

    kind: str
    rule_id: str | None
    source_refs: tuple[tuple[str, str], ...]
    nik: str | None
    programme_code: str | None
    period: str | None
    kk: str | None = None
    amount_idr_at_stake: int | None = None
    status: str = "open"

    @property
    def subject_kind(self) -> str:
        return "HOUSEHOLD" if self.rule_id in rb.HOUSEHOLD_RULES else "PERSON"


@dataclass(frozen=True)
class Dataset:
    records: list[dict]
    answer_key: list[PlantedCase]


# --------------------------------------------------------------------------- reference tables

# Migrants' NIKs: (province code, weight, regency codes that exist there). Lampung took in many
# transmigrants from Java and Bali; neighbours Sumatera Selatan and Bengkulu send many too.
_OTHER_PROVINCES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("33", 30, tuple(f"{i:02d}" for i in range(1, 30)) + ("71", "72", "73", "74", "75", "76")),
    ("35", 25, tuple(f"{i:02d}" for i in range(1, 30)) + ("71", "72", "73", "74", "75", "76", "77", "78", "79")),
    ("32", 15, tuple(f"{i:02d}" for i in range(1, 19)) + ("71", "72", "73", "74", "75", "76", "77", "78", "79")),
    ("16", 12, tuple(f"{i:02d}" for i in range(1, 18)) + ("71", "72", "73", "74")),
    ("31", 6, ("01", "71", "72", "73", "74", "75")),
    ("36", 5, ("01", "02", "03", "04", "71", "72", "73", "74")),
    ("17", 4, tuple(f"{i:02d}" for i in range(1, 10)) + ("71",)),
    ("51", 3, tuple(f"{i:02d}" for i in range(1, 9)) + ("71",)),
)

_MALE_FIRST = (
    "Agus", "Ahmad", "Andi", "Anton", "Arif", "Asep", "Bambang", "Budi", "Dadang", "Darwis", "Dedi",
    "Dwi", "Edi", "Eko", "Fahrizal", "Fajar", "Firman", "Gunawan", "Hadi", "Hasan", "Hendra",
    "Herman", "Hermansyah", "Heru", "Ilham", "Irfan", "Iwan", "Joko", "Ketut", "Komang", "Kusnadi",
    "Lukman", "Made", "Marjono", "Muhammad", "Mulyadi", "Nyoman", "Paiman", "Parman", "Rahmat",
    "Ridwan", "Rizky", "Rudi", "Rusdi", "Sabar", "Samsul", "Sarno", "Slamet", "Sugeng", "Sugianto",
    "Sukardi", "Sumarno", "Supriyadi", "Suryadi", "Sutrisno", "Syahrial", "Teguh", "Tri",
    "Tukiran", "Ujang", "Wagiman", "Wahyu", "Wayan", "Yanto", "Yusuf", "Zulkifli",
)
_FEMALE_FIRST = (
    "Aisyah", "Aminah", "Ani", "Ayu", "Desi", "Dewi", "Ela", "Endang", "Eni", "Erna", "Euis",
    "Fatimah", "Fitri", "Herawati", "Ika", "Indah", "Intan", "Kartini", "Khadijah", "Lestari",
    "Lina", "Mardiana", "Marni", "Maya", "Neng", "Ni Ketut", "Ni Made", "Ni Wayan", "Nia", "Nining",
    "Novi", "Nur", "Nurhayati", "Painem", "Puji", "Putri", "Rahma", "Ratna", "Rina", "Rohmah",
    "Rosmiati", "Rusmini", "Sari", "Siti", "Sri", "Suharti", "Sukinah", "Sulastri", "Sumiati",
    "Suparmi", "Tumini", "Wati", "Wulan", "Yanti", "Yuliana",
)
_MALE_SECOND = (
    "Effendi", "Firmansyah", "Gunawan", "Hakim", "Hartono", "Hidayat", "Irawan", "Kurniawan",
    "Mahendra", "Nugroho", "Pratama", "Prasetyo", "Purnomo", "Ramadhan", "Santoso", "Saputra",
    "Setiawan", "Sulistyo", "Susanto", "Syahputra", "Wibowo", "Wijaya",
)
_FEMALE_SECOND = (
    "Anggraini", "Astuti", "Fitriani", "Handayani", "Kurniasih", "Lestari", "Maharani", "Ningsih",
    "Pertiwi", "Purnamasari", "Rahayu", "Rahmawati", "Safitri", "Saputri", "Sari", "Susanti",
    "Utami", "Wati", "Wulandari", "Yulianti",
)

# Systems that keep names in capitals (as the national registries do).
_UPPER_NAME_SYSTEMS = frozenset({"SIKS-NG", "POSIND-BANSOS", "SIPINTAR", "EMIS-KEMENAG", "BPJS-PBI"})

_HOUSEHOLD_SIZE_CUM = tuple(accumulate((0.08, 0.15, 0.22, 0.25, 0.18, 0.12)))
_ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"
_EID_AL_FITR_2026 = date(2026, 3, 20)  # later years approximated by the lunar year of 354.367 days
_OFFICE_SECONDS = 9 * 3600  # payments happen 08:00:00-16:59:59 WIB


def _geography() -> tuple[list[tuple[str, str, str]], list[float], dict[str, list[str]]]:
    """Villages as (village code, regency code, district code), cumulative weights, villages per
    district. Fixed for every seed, so codes stay comparable across datasets."""
    rng = random.Random("aidledger:lampung-geography:v1")
    villages: list[tuple[str, str, str]] = []
    weights: list[float] = []
    by_district: dict[str, list[str]] = {}
    for regency, (_name, residents_k, n_districts) in REGENCIES.items():
        city = regency[2] == "7"
        here: list[tuple[str, str, str]] = []
        for d in range(1, n_districts + 1):
            district = f"{regency}{d:02d}"
            n_villages = rng.randint(5, 9) if city else rng.randint(8, 16)
            first = 1000 if city else 2000  # kelurahan 1xxx, desa 2xxx
            codes = [f"{district}{first + v:04d}" for v in range(1, n_villages + 1)]
            by_district[district] = codes
            here.extend((code, regency, district) for code in codes)
        per_village = residents_k / len(here)
        for village in here:
            villages.append(village)
            weights.append(per_village * (0.5 + rng.random()))
    return villages, list(accumulate(weights)), by_district


_GEO = _geography()


@contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while building millions of acyclic dicts: it finds
    nothing to free and, at a million records, costs about 40% of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Fixed monthly amounts (PKH, PIP, zakat and RTLH vary: see _World.amount).
_FIXED_IDR = {"BPNT": 200_000, "BLT_DD": 300_000, "PBI_JK": 42_000, "PROV_SEMBAKO": 150_000, "CSR_PANGAN": 250_000}
_CSR_REGENCIES = frozenset({"1801", "1809", "1871"})  # where PT Bukit Asam hands out food
_NEEDS_NIK = frozenset({"PKH", "BPNT", "PIP", "PBI_JK"})  # central registers list people by NIK
# Most essential first: when a month would break a limit, payments go from the end of this list.
_ESSENTIAL = {p: i for i, p in enumerate(
    ("PKH", "BLT_DD", "BPNT", "PBI_JK", "PIP", "PROV_SEMBAKO", "CSR_PANGAN", "ZAKAT_FITRAH", "RTLH"))}
# What a plant may add to a person (PIP only to students, see _Planter.offered).
_PLANT_POOL = ("PBI_JK", "PROV_SEMBAKO", "BPNT", "PKH", "BLT_DD", "CSR_PANGAN", "ZAKAT_FITRAH")

_VOID_REASON = "paid twice for the same period; the second payment was returned"
_PARTIAL_REASONS = {
    "BPNT": "part of the food assistance was not collected",
    "PKH": "a PKH component ended during the quarter",
    "BLT_DD": "part of the transfer was returned to the village treasury",
    "PIP": "the student left school during the year",
}
_PARTIAL_REASON = "amount corrected after field verification"
_UNKNOWN_REASON = "a payment of {year} returned by the bank: the account was closed"


# --------------------------------------------------------------------------- the rules, as the generator reads them


class _Limits(NamedTuple):
    """The shipped rulebook's limits and the reference data's kinds: what clean data stays within."""

    enabled: frozenset[str]
    person_max: int
    household_max: int
    cap_idr: int
    household_programmes: frozenset[str]
    exclusions: tuple[tuple[str, frozenset[str]], ...]
    non_government: frozenset[str]
    kind_group: dict[str, str]


@lru_cache(maxsize=1)
def _limits() -> _Limits:
    reference = default_reference()
    book = rb.default_rulebook(reference)
    return _Limits(book.enabled, book.person_max_programmes, book.household_max_programmes,
                   book.household_cap_idr, book.household_programmes, book.exclusions,
                   book.non_government_sources, {code: p.kind_group for code, p in reference.programmes.items()})


def _broken(rows, lim: _Limits) -> set[tuple[str, int | None]]:
    """The rules one household's payments of one period break (for a person without KK, that
    person's), as (rule id, member) for person rules and (rule id, None) for household rules.
    Rows are (member, programme, amount, source type). The generator's own reading of
    aidcore.rules; it only needs to say whether a rule fires, not what the case holds."""
    on = lim.enabled
    out: set[tuple[str, int | None]] = set()
    by_member: dict[int, list[str]] = {}
    total = 0
    for m, programme, amount, _source in rows:
        by_member.setdefault(m, []).append(programme)
        total += amount
    for m, programmes in by_member.items():
        distinct = len(set(programmes))
        if distinct < len(programmes) and rb.DUPLICATE_PERSON in on:
            out.add((rb.DUPLICATE_PERSON, m))
        if distinct > lim.person_max and rb.STACKING_PERSON in on:
            out.add((rb.STACKING_PERSON, m))
    programmes = {r[1] for r in rows}
    if total > lim.cap_idr and rb.HOUSEHOLD_CAP in on:
        out.add((rb.HOUSEHOLD_CAP, None))
    if len(programmes) > lim.household_max and rb.STACKING_HOUSEHOLD in on:
        out.add((rb.STACKING_HOUSEHOLD, None))
    if rb.DUPLICATE_HOUSEHOLD in on:
        for programme in programmes & lim.household_programmes:
            if len({r[0] for r in rows if r[1] == programme}) > 1:
                out.add((rb.DUPLICATE_HOUSEHOLD, None))
    if rb.EXCLUSIVE_HOUSEHOLD in on:
        if any(p in programmes and not excludes.isdisjoint(programmes) for p, excludes in lim.exclusions):
            out.add((rb.EXCLUSIVE_HOUSEHOLD, None))
    if rb.NON_GOVERNMENT_SAME_KIND in on:
        kind, outside = lim.kind_group, lim.non_government
        government = {kind[r[1]] for r in rows if r[3] not in outside}
        if any(r[3] in outside and kind[r[1]] in government for r in rows):
            out.add((rb.NON_GOVERNMENT_SAME_KIND, None))
    return out


def _at_stake(rule: str, rows, member: int | None, lim: _Limits) -> int | None:
    """The rupiah aidcore.rules puts at stake for `rule` over one unit's rows (member, programme,
    amount, source type, time), `member` being the subject of a person rule. None when two first
    payments share one second, so the ledger would decide by event id."""
    if rule == rb.HOUSEHOLD_CAP:
        return sum(r[2] for r in rows) - lim.cap_idr
    if rule == rb.EXCLUSIVE_HOUSEHOLD:
        programmes = {r[1] for r in rows}
        hit = {p for p, excludes in lim.exclusions if p in programmes and not excludes.isdisjoint(programmes)}
        return sum(r[2] for r in rows if r[1] in hit)
    if rule == rb.NON_GOVERNMENT_SAME_KIND:
        kind, outside = lim.kind_group, lim.non_government
        government = {kind[r[1]] for r in rows if r[3] not in outside}
        return sum(r[2] for r in rows if r[3] in outside and kind[r[1]] in government)
    if rule in (rb.STACKING_PERSON, rb.STACKING_HOUSEHOLD):
        mine = [r for r in rows if rule == rb.STACKING_HOUSEHOLD or r[0] == member]
        limit = lim.person_max if rule == rb.STACKING_PERSON else lim.household_max
        first: dict[str, str] = {}
        for r in mine:
            if r[1] not in first or r[4] < first[r[1]]:
                first[r[1]] = r[4]
        order = sorted(first, key=first.__getitem__)
        if first[order[limit - 1]] == first[order[limit]]:
            return None
        excess = set(order[limit:])
        return sum(r[2] for r in mine if r[1] in excess)
    if rule == rb.DUPLICATE_HOUSEHOLD:
        total = 0
        for programme in {r[1] for r in rows} & lim.household_programmes:
            group = [r for r in rows if r[1] == programme]
            earliest = min(r[4] for r in group)
            keepers = {r[0] for r in group if r[4] == earliest}
            options = {sum(r[2] for r in group if r[0] != k) for k in keepers}
            if len({r[0] for r in group}) > 1:
                if len(options) > 1:
                    return None
                total += options.pop()
        return total
    raise ValueError(rule)  # pragma: no cover


# --------------------------------------------------------------------------- the world


class _Person(NamedTuple):
    nik: str  # "" when the person has none
    prv: str  # the provisional id, when there is no NIK
    name: str
    age: int
    female: bool


class _Ent:
    """One enrolment: a programme paid to one member of a household in some periods."""

    __slots__ = ("bases", "sched", "amount", "tod", "periods", "member", "programme", "source_type", "marks")

    def __init__(self, bases, sched, amount, tod, periods, member, programme, source_type):
        self.bases = bases  # per window year: (base record, source_ref prefix)
        self.sched = sched  # schedule key: (programme, area)
        self.amount = amount
        self.tod = tod  # second of the office day
        self.periods = periods  # period indexes
        self.member = member  # index into the household's persons
        self.programme = programme
        self.source_type = source_type
        self.marks: dict[int, list] | None = None  # period -> what was planted on that payment


class _Household:
    __slots__ = ("village", "regency", "district", "kk", "persons", "tod", "ents", "busy")

    def __init__(self, village, regency, district, kk, persons, tod):
        self.village, self.regency, self.district = village, regency, district
        self.kk = kk  # "" for an undocumented household
        self.persons: list[_Person] = persons  # the head first
        self.tod = tod  # when its village office usually pays it
        self.ents: list[_Ent] = []
        self.busy: set[int] = set()  # periods something was planted in


class _World:
    def __init__(self, seed: int, first_period: str, months: int):
        if not isinstance(months, int) or months < 1:
            raise ValueError("months must be a positive integer")
        try:
            y0, m0 = int(first_period[:4]), int(first_period[5:7])
            ok = len(first_period) == 7 and first_period[4] == "-" and 1 <= m0 <= 12
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"first_period must be YYYY-MM, got {first_period!r}")
        self.rng = random.Random(seed)
        self.rnd = self.rng.random
        self.villages, self.cum, self.by_district = _GEO
        self.total_weight = self.cum[-1]
        self.months = months

        start = date(y0, m0, 1)
        self.start = start
        self.p_year: list[int] = []
        self.p_month: list[int] = []
        self.p_str: list[str] = []
        self.p_start: list[int] = []  # day offset of the period's first day
        self.p_days: list[int] = []
        y, m = y0, m0
        for _ in range(months):
            first = date(y, m, 1)
            nxt = date(y + (m == 12), m % 12 + 1, 1)
            self.p_year.append(y)
            self.p_month.append(m)
            self.p_str.append(f"{y:04d}-{m:02d}")
            self.p_start.append((first - start).days)
            self.p_days.append((nxt - first).days)
            y, m = nxt.year, nxt.month
        self.end_day = self.p_start[-1] + self.p_days[-1]  # first day after the window
        # the first day two months after each period starts: nothing of period p is paid that late
        self.p_late: list[int] = []
        for p in range(months):
            y, m = self.p_year[p], self.p_month[p] + 2
            y, m = y + (m - 1) // 12, (m - 1) % 12 + 1
            self.p_late.append((date(y, m, 1) - start).days)
        self.years = sorted(set(self.p_year))
        self.p_yi = [self.years.index(yy) for yy in self.p_year]
        self.p_index = {s: i for i, s in enumerate(self.p_str)}
        n_days = self.end_day + 70
        self.day_str = [(start + timedelta(days=i)).isoformat() for i in range(n_days)]
        # Monday-Friday, not New Year's Day (the one holiday at a fixed date that falls in every year)
        self.working = [
            (start + timedelta(days=i)).weekday() < 5 and (start + timedelta(days=i)).strftime("%m-%d") != "01-01"
            for i in range(n_days)
        ]
        self.tod_str = [
            f"T{8 + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+07:00" for s in range(_OFFICE_SECONDS)
        ]
        # the first day of the month after each period, as a sortable timestamp prefix
        self.p_cutoff = [self.day_str[self.p_start[p] + self.p_days[p]] for p in range(months)]
        self.quarter_ps = [p for p in range(months) if self.p_month[p] in (1, 4, 7, 10)]
        self._zakat_window()

        self.nik_serial: dict[str, int] = {}
        self.kk_serial: dict[str, int] = {}
        self.prv_serial: dict[str, int] = {}
        self.village_channel: dict[str, str] = {}
        self.sched_cache: list[dict] = [{} for _ in range(months)]
        self.pair_cache: dict[tuple, int | None] = {}
        self.prov_cum = list(accumulate(w for _, w, _ in _OTHER_PROVINCES))
        self.quarter_set = frozenset(self.quarter_ps)
        self.lim = _limits()

    def _zakat_window(self) -> None:
        """Zakat fitrah is handed out in the last three days of Ramadan; Idul Fitri moves ~11 days
        earlier each year. Per period index: the (first, last) day offsets of distribution."""
        self.zakat_days: dict[int, tuple[int, int]] = {}
        first_year, last_year = self.years[0], self.years[-1]
        k = round((date(first_year, 1, 1) - _EID_AL_FITR_2026).days / 354.367) - 1
        while True:
            eid = _EID_AL_FITR_2026 + timedelta(days=round(k * 354.367))
            k += 1
            if eid.year > last_year + 1:
                break
            lo, hi = eid - timedelta(days=3), eid - timedelta(days=1)
            if lo.month != hi.month:  # keep one period: the month most of it falls in
                lo = hi.replace(day=1)
            key = f"{hi.year:04d}-{hi.month:02d}"
            if key in self.p_index:
                self.zakat_days[self.p_index[key]] = ((lo - self.start).days, (hi - self.start).days)
        self.zakat_ps = sorted(self.zakat_days)

    # ------------------------------------------------------------------ identities

    def nik(self, issue6: str, age: int, female: bool) -> str:
        rnd = self.rnd
        year = self.p_year[0] - age
        born = date(year, 1, 1) + timedelta(days=int(rnd() * 365))
        while True:
            prefix = f"{issue6}{born.day + 40 * female:02d}{born.month:02d}{born.year % 100:02d}"
            serial = self.nik_serial.get(prefix, 0) + 1
            if serial <= 9999:
                self.nik_serial[prefix] = serial
                return f"{prefix}{serial:04d}"
            born += timedelta(days=1)  # pragma: no cover - 9,999 people born one day in one district

    def kk(self, district: str) -> str:
        issued = date(2005, 1, 1) + timedelta(days=int(self.rnd() * 365 * (self.p_year[0] - 2005)))
        while True:
            prefix = f"{district}{issued.day:02d}{issued.month:02d}{issued.year % 100:02d}"
            serial = self.kk_serial.get(prefix, 0) + 1
            if serial <= 9999:
                self.kk_serial[prefix] = serial
                return f"{prefix}{serial:04d}"
            issued += timedelta(days=1)  # pragma: no cover

    def provisional(self, village: str) -> str:
        serial = self.prv_serial.get(village, 0) + 1
        self.prv_serial[village] = serial
        return f"PRV-{village}-{serial:06d}"

    def other_province_district(self) -> str:
        rnd = self.rnd
        i = bisect_right(self.prov_cum, rnd() * self.prov_cum[-1])
        prov, _w, regencies = _OTHER_PROVINCES[i]
        return f"{prov}{regencies[int(rnd() * len(regencies))]}{1 + int(rnd() * 20):02d}"

    def name(self, female: bool) -> str:
        rnd = self.rnd
        if female:
            first, second = _FEMALE_FIRST, _FEMALE_SECOND
        else:
            first, second = _MALE_FIRST, _MALE_SECOND
        given = first[int(rnd() * len(first))]
        if rnd() < 0.35:
            return given
        return f"{given} {second[int(rnd() * len(second))]}"

    def fresh_person(self, village: str) -> tuple[str, str, str]:
        """A new person in a new household (for invalid rows): NIK, KK, name."""
        rnd = self.rnd
        female = rnd() < 0.5
        district = village[:6]
        return self.nik(district, 20 + int(rnd() * 50), female), self.kk(district), self.name(female)

    # ------------------------------------------------------------------ enrolment

    def bases(self, system, source_type, agency, programme, person, kk, kind, channel, region,
              funding, prefix) -> tuple:
        nik, prv, name = person[0], person[1], person[2]
        if system in _UPPER_NAME_SYSTEMS:
            name = name.upper()
        out = []
        for year in self.years:
            y = str(year)
            out.append(
                (
                    {
                        "source_system": system,
                        "source_ref": "",
                        "source_type": source_type,
                        "agency_code": agency,
                        "programme_code": programme,
                        "nik": nik,
                        "provisional_id": prv,
                        "kk": kk,
                        "recipient_name": name,
                        "amount_idr": 0,
                        "kind": kind,
                        "period": "",
                        "disbursed_at": "",
                        "channel": channel,
                        "region_code": region,
                        "funding_account": funding.replace("{y}", y),
                    },
                    prefix.replace("{y}", y),
                )
            )
        return tuple(out)

    def spec(self, h: _Household, programme: str, rnd) -> tuple:
        """How `programme` reaches household h: (system, source type, agency, kind, channel,
        funding account, source_ref prefix, schedule key). Channels are drawn with `rnd`."""
        village, regency = h.village, h.regency
        if programme == "PKH":
            channel = "BANK_TRANSFER" if rnd() < 0.85 else "POS"
            return ("SIKS-NG", "APBN", "KEMENSOS", "CASH", channel, "APBN-{y}-KEMENSOS-PKH", "PKH-{y}-",
                    ("PKH", regency))
        if programme == "BPNT":
            c = rnd()
            channel = "BANK_TRANSFER" if c < 0.6 else "POS" if c < 0.9 else "E_WALLET"
            return ("SIKS-NG", "APBN", "KEMENSOS", "CASH", channel, "APBN-{y}-KEMENSOS-BPNT", "BPNT-{y}-",
                    ("BPNT", regency))
        if programme == "BLT_DD":
            channel = self.village_channel.get(village)
            if channel is None:
                channel = self.village_channel[village] = "CASH" if rnd() < 0.75 else "BANK_TRANSFER"
            return (f"SISKEUDES-{village}", "APBDES", f"DESA-{village}", "CASH", channel, f"APBDES-{{y}}-{village}",
                    "BLT-{y}-", ("BLT_DD", village))
        if programme == "PIP":
            return ("SIPINTAR", "APBN", "KEMENDIKDASMEN", "CASH", "BANK_TRANSFER", "APBN-{y}-KEMENDIKDASMEN-PIP",
                    "PIP-{y}-", ("PIP", regency))
        if programme == "PBI_JK":  # most premiums central, some regency-paid; one payer per household
            known = next((e.source_type for e in h.ents if e.programme == "PBI_JK"), None)
            if known == "APBN" or (known is None and rnd() < 0.8):
                agency, source, funding = "KEMENKES", "APBN", "APBN-{y}-KEMENKES-PBI_JK"
            else:
                agency, source, funding = f"DINKES-{regency}", "APBD_KAB", f"APBD-{{y}}-{regency}-DINKES-PBI_JK"
            return ("BPJS-PBI", source, agency, "PREMIUM", "BANK_TRANSFER", funding, "PBI-{y}-", ("PBI_JK", regency))
        if programme == "PROV_SEMBAKO":
            return ("SIMBANSOS-1800", "APBD_PROV", "DINSOS-1800", "IN_KIND", "GOODS", "APBD-{y}-1800-DINSOS-SEMBAKO",
                    "SMB-{y}-", ("PROV_SEMBAKO", regency))
        if programme == "RTLH":
            return (f"SIMBANSOS-{regency}", "APBD_KAB", f"DISPERKIM-{regency}", "IN_KIND", "GOODS",
                    f"APBD-{{y}}-{regency}-DISPERKIM-RTLH", "RTLH-{y}-", ("RTLH", regency))
        if programme == "CSR_PANGAN":
            return ("CSR-PTBA", "CSR", "PTBA", "IN_KIND", "GOODS", "CSR-{y}-PTBA-PANGAN", "PTBA-{y}-",
                    ("CSR_PANGAN", regency))
        if programme == "ZAKAT_FITRAH":
            cash = rnd() < 0.6
            return ("BAZNAS-LPG", "COMMUNITY", "BAZNAS-1800", "CASH" if cash else "IN_KIND", "CASH" if cash else "GOODS",
                    "ZIS-{y}-BAZNAS-LAMPUNG-FITRAH", "ZF-{y}-", ("ZAKAT_FITRAH", village))
        raise ValueError(programme)  # pragma: no cover

    def enrol(self, h: _Household, spec: tuple, programme: str, member: int, amount: int, periods: Iterable[int],
              tod: int) -> _Ent:
        """Add an enrolment; it gets its own list of periods, which settling and trimming shorten."""
        system, source_type, agency, kind, channel, funding, prefix, sched = spec
        ent = _Ent(self.bases(system, source_type, agency, programme, h.persons[member], h.kk, kind, channel,
                              h.village, funding, prefix),
                   sched, amount, tod, list(periods), member, programme, source_type)
        h.ents.append(ent)
        return ent

    def amount(self, h: _Household, programme: str, member: int, rnd) -> int:
        if programme == "PKH":
            return _pkh_amount(h.persons, rnd, self.lim.cap_idr)
        if programme == "PIP":
            return _pip_amount(h.persons[member].age)
        if programme == "ZAKAT_FITRAH":
            return 100_000 + 25_000 * int(rnd() * 13)
        if programme == "RTLH":
            return 17_500_000 if rnd() < 0.6 else 20_000_000
        return _FIXED_IDR[programme]

    def household(self) -> _Household:
        """Draw one household and its enrolments, clean by construction (see the module docstring)."""
        rnd = self.rnd
        village, regency, district = self.villages[bisect_right(self.cum, rnd() * self.total_weight)]
        undocumented = rnd() < 0.015
        size = 1 + bisect_right(_HOUSEHOLD_SIZE_CUM, rnd() * _HOUSEHOLD_SIZE_CUM[-1])

        # members as (age, female); the first is the head
        if size == 1:
            members = [(45 + int(rnd() * 40), rnd() < 0.65)]
        else:
            head_age = 23 + int(rnd() * 48)
            head_female = rnd() < 0.12
            members = [(head_age, head_female)]
            slots = size - 1
            if not head_female and rnd() < 0.92:
                members.append((max(18, head_age - 6 + int(rnd() * 9)), True))
                slots -= 1
            if slots and head_age < 55 and rnd() < 0.15:
                members.append((60 + int(rnd() * 28), rnd() < 0.6))
                slots -= 1
            child_max = min(25, head_age - 17)
            for _ in range(slots):
                members.append((int(rnd() * child_max), rnd() < 0.5))

        migrant_from = self.other_province_district() if not undocumented and rnd() < 0.07 else None
        kk = "" if undocumented else self.kk(district)
        persons = []
        for age, female in members:
            if undocumented or rnd() < 0.0035:
                nik, prv = "", self.provisional(village)
            else:
                if migrant_from is not None and age >= 20:
                    issue = migrant_from
                elif rnd() < 0.06:  # moved within the province
                    issue = self.villages[int(rnd() * len(self.villages))][2]
                else:
                    issue = district
                nik, prv = self.nik(issue, age, female), ""
            persons.append(_Person(nik, prv, self.name(female), age, female))
        h = _Household(village, regency, district, kk, persons, int(rnd() * _OFFICE_SECONDS))
        self._enrol_all(h, undocumented)
        self.settle(h)
        return h

    def _enrol_all(self, h: _Household, undocumented: bool) -> None:
        rnd = self.rnd
        every = range(self.months)
        persons, tod = h.persons, h.tod
        with_nik = [i for i, p in enumerate(persons) if p.nik]
        adults_nik = [i for i in with_nik if persons[i].age >= 17]
        g = rnd()
        if undocumented:
            central, blt = False, g < 0.6
        else:
            central, blt = g < 0.52, 0.52 <= g < 0.69
        bpnt = pkh = False
        if central and adults_nik:
            bpnt, pkh = rnd() < 0.88, rnd() < 0.42
            if not (bpnt or pkh):
                bpnt = True
            pkh = pkh and bool(self.quarter_ps)
            if pkh:  # paid to the mother, the programme's usual recipient
                mothers = [i for i in adults_nik if persons[i].female]
                who = mothers[0] if mothers else adults_nik[0]
                budget = self.lim.cap_idr - _FIXED_IDR["BPNT"] * bpnt - _FIXED_IDR["PBI_JK"] * len(with_nik)
                self.enrol(h, self.spec(h, "PKH", rnd), "PKH", who, _pkh_amount(persons, rnd, budget),
                           list(self.quarter_ps), tod)
            if bpnt:
                who = 0 if persons[0].nik else adults_nik[0]
                self.enrol(h, self.spec(h, "BPNT", rnd), "BPNT", who, _FIXED_IDR["BPNT"], every, tod)
        elif blt:
            self.enrol(h, self.spec(h, "BLT_DD", rnd), "BLT_DD", 0, _FIXED_IDR["BLT_DD"], every, tod)
        food = bpnt
        # the province fills gaps the central food list leaves, above all for people it cannot list
        if not bpnt and rnd() < (0.4 if undocumented else 0.12):
            self.enrol(h, self.spec(h, "PROV_SEMBAKO", rnd), "PROV_SEMBAKO", 0, _FIXED_IDR["PROV_SEMBAKO"], every, tod)
            food = True
        if not undocumented:
            if rnd() < (0.45 if central else 0.2):
                self._enrol_students(h, with_nik, pkh)
            # PBI JK: every member with a NIK, every month
            if with_nik and rnd() < (0.16 if central else 0.07):
                for i in with_nik:
                    self.enrol(h, self.spec(h, "PBI_JK", rnd), "PBI_JK", i, _FIXED_IDR["PBI_JK"], every,
                               int(rnd() * _OFFICE_SECONDS))
        if not food:  # companies and zakat committees keep to families the government does not feed
            if h.regency in _CSR_REGENCIES and rnd() < 0.25:
                periods = [p for p in range(self.months) if rnd() < 0.5]
                if periods:
                    self.enrol(h, self.spec(h, "CSR_PANGAN", rnd), "CSR_PANGAN", 0, _FIXED_IDR["CSR_PANGAN"], periods,
                               tod)
            if self.zakat_ps and rnd() < 0.4:
                self.enrol(h, self.spec(h, "ZAKAT_FITRAH", rnd), "ZAKAT_FITRAH", 0,
                           self.amount(h, "ZAKAT_FITRAH", 0, rnd), list(self.zakat_ps), tod)

    def _enrol_students(self, h: _Household, with_nik: list[int], pkh: bool) -> None:
        """PIP: each enrolled student once a calendar year, in the month their tranche is paid;
        for a PKH family not in a PKH month, which would take it near the cap."""
        rnd = self.rnd
        months = [m for m in range(1, 13) if not (pkh and m in (1, 4, 7, 10))]
        for i in with_nik:
            age = h.persons[i].age
            if 7 <= age <= 18 and rnd() < 0.75:
                periods = []
                for year in self.years:
                    key = f"{year:04d}-{months[int(rnd() * len(months))]:02d}"
                    if key in self.p_index:
                        periods.append(self.p_index[key])
                if periods:
                    self.enrol(h, self.spec(h, "PIP", rnd), "PIP", i, _pip_amount(age), periods,
                               int(rnd() * _OFFICE_SECONDS))

    def settle(self, h: _Household) -> None:
        """Leave out, month by month, the least essential payments of any period in which the
        household would break a rule: clean data never does."""
        ents = h.ents
        lim = self.lim
        if len(ents) < 2 or (sum(e.amount for e in ents) <= lim.cap_idr
                             and len({e.programme for e in ents}) <= min(lim.person_max, lim.household_max)):
            return  # under every limit in any month; the rest holds by how households are enrolled
        for p in range(self.months):
            while True:
                broken = self.broken(h, p)
                if not broken:
                    break
                who = min(broken, key=lambda b: (b[0], -1 if b[1] is None else b[1]))[1]
                paid = [e for e in ents if p in e.periods and (who is None or e.member == who)]
                max(paid, key=lambda e: _ESSENTIAL[e.programme]).periods.remove(p)

    def broken(self, h: _Household, p: int, adds=()) -> set[tuple[str, int | None]]:
        """The rules household h breaks in period p with `adds` ((member, programme, amount,
        source type, ...)) paid too. Without a KK each member is a household of one, and a
        household rule names that member."""
        rows = [(e.member, e.programme, e.amount, e.source_type) for e in h.ents if p in e.periods]
        rows += [a[:4] for a in adds]
        if h.kk:
            return _broken(rows, self.lim)
        out = set()
        for m in {r[0] for r in rows}:
            out |= {(rule, m if who is None else who) for rule, who in _broken([r for r in rows if r[0] == m], self.lim)}
        return out

    def when(self, sched: tuple, p: int, tod: int) -> str:
        """The disbursement time of a payment, exactly as `_clean` will emit it."""
        cache = self.sched_cache[p]
        d = cache.get(sched)
        if d is None:
            d = cache[sched] = self.day(sched, p)
        return self.day_str[d] + self.tod_str[tod]


    def _paired_day(self, area_key: tuple, p: int, prob: float, lo: int, span: int) -> int | None:
        """Two calendar months (Jan+Feb, Mar+Apr, ...) sometimes paid together, in the second."""
        y, m = self.p_year[p], self.p_month[p]
        pair = (area_key, y, (m - 1) // 2)
        if pair not in self.pair_cache:
            rnd = self.rnd
            if rnd() < prob:
                second_start = self.p_start[p] + (self.p_days[p] if m % 2 == 1 else 0)
                self.pair_cache[pair] = second_start + lo + int(rnd() * span)
            else:
                self.pair_cache[pair] = None
        return self.pair_cache[pair]

    def day(self, sched: tuple, p: int) -> int:
        """Day offset of a payment batch; offices pay on working days, zakat committees any day."""
        d = self._day(sched, p)
        if sched[0] != "ZAKAT_FITRAH":
            while not self.working[d]:
                d += 1
        return d

    def _day(self, sched: tuple, p: int) -> int:
        rnd = self.rnd
        start = self.p_start[p]
        prog = sched[0]
        if prog == "BPNT":
            d = self._paired_day(sched, p, 0.4, 4, 20)
            return d if d is not None else start + 4 + int(rnd() * 20)
        if prog == "BLT_DD":
            d = self._paired_day(sched, p, 0.25, 4, 21)
            return d if d is not None else start + 4 + int(rnd() * 21)
        if prog == "PKH":  # some tranches slip into the quarter's second month
            if rnd() < 0.7:
                return start + 9 + int(rnd() * 19)
            return start + self.p_days[p] + int(rnd() * 20)
        if prog == "PBI_JK":  # premiums are due by the 10th
            return start + 7 + int(rnd() * 5)
        if prog == "ZAKAT_FITRAH":
            lo, hi = self.zakat_days[p]
            return lo + int(rnd() * (hi - lo + 1))
        if prog == "CSR_PANGAN":
            return start + 9 + int(rnd() * 11)
        return start + int(rnd() * 28)  # PIP, PROV_SEMBAKO, RTLH



def _pip_amount(age: int) -> int:
    return 450_000 if age <= 12 else 750_000 if age <= 15 else 1_800_000


def _pkh_amount(persons, rnd, budget: int) -> int:
    """A quarterly PKH tranche: a quarter of each yearly component (young child Rp 3,000,000,
    elderly or disabled Rp 2,400,000, school children by level), at most four components, largest
    first while the tranche fits `budget` (what keeps the household under the cap)."""
    components = []
    for p in persons:
        a = p.age
        if a <= 6:
            components.append(750_000)
        elif a >= 60:
            components.append(600_000)
        elif 7 <= a <= 12:
            components.append(225_000)
        elif 13 <= a <= 15:
            components.append(375_000)
        elif 16 <= a <= 18:
            components.append(500_000)
    if rnd() < 0.05:
        components.append(750_000)  # pregnancy
    if rnd() < 0.04:
        components.append(600_000)  # disability
    if not components:
        components.append(600_000)
    total = taken = 0
    for c in sorted(components, reverse=True):
        if taken < 4 and total + c <= budget:
            total += c
            taken += 1
    return total or min(components)


# --------------------------------------------------------------------------- planting


class _Pending:
    """A planted case whose records are not all emitted yet: references are numbered on emission."""

    __slots__ = ("case", "refs", "left")

    def __init__(self, case: PlantedCase, left: int):
        self.case, self.refs, self.left = case, [], left


def _ident(person: _Person) -> str:
    return person.nik or person.prv


def _case_programme(rule: str, rows, adds, lim: _Limits) -> str | None:
    """The programme an alert of `rule` names: the one paid twice, or the one another excludes."""
    if rule == rb.DUPLICATE_HOUSEHOLD:
        return adds[0][1]
    if rule == rb.EXCLUSIVE_HOUSEHOLD:
        programmes = {r[1] for r in rows}
        return next(p for p, excludes in lim.exclusions if p in programmes and not excludes.isdisjoint(programmes))
    return None


class _Planter:
    """Plants rule cases, duplicates and reversals into the payment plan. Each goes to a
    household-period nothing else was planted in, and a rule case is kept only if that
    household-period then breaks exactly the rule intended (`_World.broken`). Tries are bounded:
    a small or odd population may hold fewer cases than asked for, never a wrong one."""

    NO_KK_SHARE = 0.08  # the share of tries for duplicates and non-government cases on undocumented households

    def __init__(self, world: _World, prng: random.Random, households: list[_Household]):
        self.world, self.rng, self.rnd = world, prng, prng.random
        self.households = households
        self.undocumented = [h for h in households if not h.kk]
        self.extra = 0  # payments added to the plan
        self.records = 0  # planted records outside the plan (duplicates, reversals)

    # ------------------------------------------------------------------ where

    def spot(self, no_kk_share: float = 0.0, pool: list[_Household] | None = None) -> tuple[_Household, int] | None:
        """A random household-period (of `pool`, or of undocumented households for a share of
        tries) that nothing was planted in yet."""
        rnd = self.rnd
        if pool is None:
            pool = self.undocumented if self.undocumented and rnd() < no_kk_share else self.households
        if not pool:
            return None
        h = pool[int(rnd() * len(pool))]
        p = int(rnd() * self.world.months)
        return None if p in h.busy else (h, p)

    def paid(self, h: _Household, p: int) -> list[_Ent]:
        return [e for e in h.ents if p in e.periods]

    def offered(self, h: _Household, programme: str, m: int, p: int) -> bool:
        """Whether `programme` could plausibly reach member m in period p at all."""
        person, w = h.persons[m], self.world
        if programme in _NEEDS_NIK and not person.nik:
            return False
        if programme == "PIP":
            return 7 <= person.age <= 18
        if person.age < 17 and programme != "PBI_JK":
            return False
        if programme == "PKH":
            return p in w.quarter_set
        if programme == "ZAKAT_FITRAH":
            return p in w.zakat_days
        if programme == "CSR_PANGAN":
            return h.regency in _CSR_REGENCIES
        if programme == "RTLH":  # a house repair needs the family card and land papers
            return bool(h.kk)
        return True

    def add(self, h: _Household, m: int, programme: str, amount: int | None = None) -> tuple:
        """A planned extra payment: (member, programme, amount, source type, spec, time of day)."""
        rnd = self.rnd
        spec = self.world.spec(h, programme, rnd)
        if amount is None:
            amount = self.world.amount(h, programme, m, rnd)
        return (m, programme, amount, spec[1], spec, int(rnd() * _OFFICE_SECONDS))

    # ------------------------------------------------------------------ rule cases

    def rules(self, counts: dict[str, int]) -> None:
        self.plant("duplicate_household", counts.get("duplicate_household", 0), self.duplicate_household)
        self.plant("exclusive_household", counts.get("exclusive_household", 0), self.exclusive_household)
        self.plant("stacking_person", counts.get("stacking_person", 0), self.stacking_person)
        several = [h for h in self.households if h.kk and len({e.programme for e in h.ents}) >= 2]
        self.plant("stacking_household", counts.get("stacking_household", 0), self.stacking_household, pool=several)
        # about 40% of cap cases layered (a PIP tranche on a PKH month), the rest RTLH grants
        cap = counts.get("household_cap", 0)
        layered = [h for h in self.households
                   if any(e.programme == "PKH" for e in h.ents) and any(p.nik and 7 <= p.age <= 18 for p in h.persons)]
        cap -= self.plant("household_cap", round(cap * 0.4), self.cap_layered, pool=layered)
        self.plant("household_cap", cap, self.cap_rtlh)
        self.plant("non_government_same_kind", counts.get("non_government_same_kind", 0), self.non_government,
                   self.NO_KK_SHARE)

    def plant(self, kind: str, n: int, recipe, no_kk_share: float = 0.0, pool: list[_Household] | None = None) -> int:
        """Up to n cases of `kind`, each made by `recipe(h, p)` -> (payments to add, member the
        case is about) or None; returns how many were planted."""
        rule = RULE_KINDS[kind]
        w, lim = self.world, self.world.lim
        done = tries = 0
        while done < n and tries < 200 * n:
            tries += 1
            spot = self.spot(no_kk_share, pool)
            if spot is None:
                continue
            h, p = spot
            planned = recipe(h, p)
            if planned is None:
                continue
            adds, member = planned
            person_rule = rule in rb.PERSON_RULES
            subject = member if person_rule or not h.kk else None
            if w.broken(h, p, adds) != {(rule, subject)}:
                continue
            rows = [(e.member, e.programme, e.amount, e.source_type, w.when(e.sched, p, e.tod)) for e in self.paid(h, p)]
            rows += [(a[0], a[1], a[2], a[3], w.when(a[4][7], p, a[5])) for a in adds]
            if not h.kk:
                rows = [r for r in rows if r[0] == member]
            at_stake = _at_stake(rule, rows, member, lim)
            if at_stake is None:
                continue
            person = h.persons[member if subject is not None else adds[0][0]]
            case = PlantedCase(kind, rule, (), _ident(person), _case_programme(rule, rows, adds, lim), w.p_str[p],
                               None if person_rule else h.kk, at_stake)
            pending = _Pending(case, len(adds))
            for m, programme, amount, _source, spec, tod in adds:
                ent = w.enrol(h, spec, programme, m, amount, [p], tod)
                ent.marks = {p: [("case", pending)]}
            h.busy.add(p)
            self.extra += len(adds)
            done += 1
        return done

    def duplicate_household(self, h: _Household, p: int):
        """A second member paid a per-household programme: the spouse listed again, or a grown child."""
        if not h.kk:
            return None
        paid = [e for e in self.paid(h, p) if e.programme in self.world.lim.household_programmes]
        if not paid:
            return None
        e = paid[int(self.rnd() * len(paid))]
        others = [m for m in range(len(h.persons))
                  if m != e.member and h.persons[m].age >= 17 and self.offered(h, e.programme, m, p)]
        if not others:
            return None
        m = others[int(self.rnd() * len(others))]
        return [self.add(h, m, e.programme, e.amount)], m

    def exclusive_household(self, h: _Household, p: int):
        """BLT_DD for a household that gets PKH or BPNT: the village lists it too, or the central
        list takes in a BLT_DD household while the village keeps paying."""
        paid = {e.programme: e for e in self.paid(h, p)}
        if "BLT_DD" not in paid and ("BPNT" in paid or "PKH" in paid):
            return [self.add(h, 0, "BLT_DD")], 0
        if "BLT_DD" in paid:
            m = paid["BLT_DD"].member
            if self.offered(h, "BPNT", m, p):
                return [self.add(h, m, "BPNT")], m
        return None

    def _combos(self, pool: list[str], need: int) -> list[tuple[str, ...]]:
        combos = list(combinations(pool, need))
        self.rng.shuffle(combos)
        return combos[:12]

    def compatible(self, programme: str, have: set[str]) -> bool:
        """Whether `programme` can join a household paid `have` without another rule firing: not
        excluded, not aid of a kind the other side (government or not) already gives. Only
        narrows the search; `_World.broken` decides."""
        lim = self.world.lim
        for p, excludes in lim.exclusions:
            if (programme == p and not excludes.isdisjoint(have)) or (programme in excludes and p in have):
                return False
        outside = PROGRAMMES[programme][0] in lim.non_government
        kind = lim.kind_group[programme]
        return not any(lim.kind_group[other] == kind and (PROGRAMMES[other][0] in lim.non_government) != outside
                       for other in have)

    def stacking_person(self, h: _Household, p: int):
        """One person paid more programmes than the limit: the member with the most, topped up."""
        lim = self.world.lim
        have: dict[int, set[str]] = {}
        for e in self.paid(h, p):
            have.setdefault(e.member, set()).add(e.programme)
        adults = [m for m in range(len(h.persons)) if h.persons[m].age >= 17]
        m = max(adults, key=lambda m: (len(have.get(m, ())), -m))
        mine = have.get(m, set())
        need = lim.person_max + 1 - len(mine)
        if not 1 <= need <= 3:
            return None
        household = set().union(*have.values()) if have else set()
        pool = [prog for prog in _PLANT_POOL
                if prog not in mine and self.compatible(prog, household) and self.offered(h, prog, m, p)]
        for combo in self._combos(pool, need):
            adds = [self.add(h, m, prog) for prog in combo]
            if self.world.broken(h, p, adds) == {(rb.STACKING_PERSON, m)}:
                return adds, m
        return None

    def stacking_household(self, h: _Household, p: int):
        """One household paid more programmes than the limit, spread over its members."""
        if not h.kk:
            return None
        paid = self.paid(h, p)
        have = {e.programme for e in paid}
        need = self.world.lim.household_max + 1 - len(have)
        if not 1 <= need <= 3:
            return None
        pool = [prog for prog in _PLANT_POOL + ("PIP",) if prog not in have and self.compatible(prog, have)]
        for combo in self._combos(pool, need):
            load: dict[int, int] = {}
            for e in paid:
                load[e.member] = load.get(e.member, 0) + 1
            adds = []
            for prog in combo:
                members = [m for m in range(len(h.persons)) if self.offered(h, prog, m, p)]
                if not members:
                    break
                m = min(members, key=lambda m: (load.get(m, 0), m))
                load[m] = load.get(m, 0) + 1
                adds.append(self.add(h, m, prog))
            else:
                if self.world.broken(h, p, adds) == {(rb.STACKING_HOUSEHOLD, None)}:
                    return adds, 0
        return None

    def cap_rtlh(self, h: _Household, p: int):
        """Above the monthly cap: an RTLH house-repair grant, which alone is far above it."""
        return ([self.add(h, 0, "RTLH")], 0) if self.offered(h, "RTLH", 0, p) else None

    def cap_layered(self, h: _Household, p: int):
        """Above the monthly cap by layering: a PIP tranche in a month the household was already
        near the cap (a PKH month)."""
        have = {e.member for e in self.paid(h, p) if e.programme == "PIP"}
        students = [m for m in range(len(h.persons)) if m not in have and self.offered(h, "PIP", m, p)]
        if not students:
            return None
        m = students[int(self.rnd() * len(students))]
        return [self.add(h, m, "PIP")], m

    def non_government(self, h: _Household, p: int):
        """CSR or zakat food aid for a household the government already feeds that month."""
        lim = self.world.lim
        kind = lim.kind_group
        government = [e for e in self.paid(h, p) if e.source_type not in lim.non_government]
        for e in government:
            options = [prog for prog in ("ZAKAT_FITRAH", "CSR_PANGAN")
                       if kind[prog] == kind[e.programme] and self.offered(h, prog, e.member, p)]
            if options:
                return [self.add(h, e.member, options[int(self.rnd() * len(options))])], e.member
        return None

    # ------------------------------------------------------------------ duplicates and reversals

    def duplicates(self, n: int, void: int) -> None:
        """Person duplicates: a payment sent again for the same person, programme and period (the
        copy is made on emission, see `_weave`); `void` of them are taken back by a reversal."""
        w = self.world
        voided = set(self.rng.sample(range(n), min(void, n)))
        done = tries = 0
        while done < n and tries < 50 * n:
            tries += 1
            spot = self.spot(self.NO_KK_SHARE)
            if spot is None:
                continue
            h, p = spot
            paid = self.paid(h, p)
            if not paid:
                continue
            e = paid[int(self.rnd() * len(paid))]
            if w.broken(h, p, [(e.member, e.programme, e.amount, e.source_type)]) != {(rb.DUPLICATE_PERSON, e.member)}:
                continue
            status = "void_reversed" if done in voided else "open"
            case = PlantedCase("duplicate_person", rb.DUPLICATE_PERSON, (), _ident(h.persons[e.member]), e.programme,
                               w.p_str[p], None, e.amount, status)
            self.mark(h, p, e, ("dup", case))
            self.records += 1 + (status == "void_reversed")
            done += 1

    def reversals(self, partial: int, unknown: int) -> None:
        """Partial reversals of clean payments, and reversals naming a payment of the year before
        the window (never in the data, so they wait for it)."""
        for n, what in ((partial, "partial"), (unknown, "unknown")):
            done = tries = 0
            while done < n and tries < 50 * n:
                tries += 1
                spot = self.spot()
                if spot is None:
                    continue
                h, p = spot
                paid = [e for e in self.paid(h, p) if e.amount >= 100_000]
                if not paid:
                    continue
                e = paid[int(self.rnd() * len(paid))]
                if what == "partial":
                    self.mark(h, p, e, ("partial", e.amount // 2000 * 1000))
                else:
                    self.mark(h, p, e, ("unknown",))
                self.records += 1
                done += 1

    def mark(self, h: _Household, p: int, e: _Ent, action: tuple) -> None:
        if e.marks is None:
            e.marks = {}
        e.marks.setdefault(p, []).append(action)
        h.busy.add(p)


# --------------------------------------------------------------------------- streams


def _draw(world: _World, households: list[_Household], payments: int) -> int:
    """Draw households until their payments add up to exactly `payments` (the last one trimmed:
    dropping a payment never breaks a rule). Returns how many were added."""
    planned = 0
    while planned < payments:
        h = world.household()
        n = sum(len(e.periods) for e in h.ents)
        excess = planned + n - payments
        for e in reversed(h.ents):
            while excess > 0 and e.periods:
                e.periods.pop()
                excess -= 1
                n -= 1
        households.append(h)
        planned += n
    return planned


def _trim(households: list[_Household], excess: int) -> None:
    """Leave out `excess` payments of the last households drawn that nothing was planted in."""
    for h in reversed(households):
        if excess == 0:
            return
        if h.busy:
            continue
        for e in reversed(h.ents):
            while excess > 0 and e.periods:
                e.periods.pop()
                excess -= 1
    if excess:  # pragma: no cover - only if nearly every household holds a planted case
        raise ValueError("too few records for the planted cases")


def _buckets(world: _World, households: list[_Household]) -> list[list[_Ent]]:
    buckets: list[list[_Ent]] = [[] for _ in range(world.months)]
    for h in households:
        for e in h.ents:
            for p in e.periods:
                buckets[p].append(e)
    return buckets


def _clean(world: _World, buckets: list[list[_Ent]]) -> Iterator[tuple]:
    """The plan's payments in exact disbursement-time order, as (ts, seq, record, ref prefix, day,
    p, enrolment). No payment is disbursed before its period's month starts, so after month p is
    generated every pending payment earlier than month p+1 is final."""
    day_str, tod_str, p_str, p_yi = world.day_str, world.tod_str, world.p_str, world.p_yi
    day_of = world.day
    seq = 0
    pending: list[tuple] = []
    for p in range(world.months):
        cache = world.sched_cache[p]
        pstr, yi = p_str[p], p_yi[p]
        items = []
        append = items.append
        with _no_gc():
            for ent in buckets[p]:
                d = cache.get(ent.sched)
                if d is None:
                    d = cache[ent.sched] = day_of(ent.sched, p)
                ts = day_str[d] + tod_str[ent.tod]
                base, prefix = ent.bases[yi]
                append((ts, seq, {**base, "amount_idr": ent.amount, "period": pstr, "disbursed_at": ts},
                        prefix, d, p, ent))
                seq += 1
            buckets[p] = []  # free as we go
            items.sort()
            if pending:
                pending.extend(items)
                pending.sort()  # two sorted runs: a merge
            else:
                pending = items
            cut = bisect_left(pending, (world.p_cutoff[p],))
            if p == world.months - 1:
                cut = len(pending)
        yield from pending[:cut]
        pending = pending[cut:]


def _stream(n_records: int, seed: int, first_period: str, months: int, duplicate_rate: float,
            redelivery_rate: float, modified_rate: float, invalid_rate: float, case_rate: float,
            reversal_rate: float, answer_key: list[PlantedCase] | None) -> Iterator[dict]:
    """Check the arguments now (not at the first next()), plan and plant, then return the record
    iterator."""
    if not isinstance(n_records, int) or n_records < 0:
        raise ValueError("n_records must be a non-negative integer")
    rates = (duplicate_rate, redelivery_rate, modified_rate, invalid_rate, case_rate, reversal_rate)
    if any(not 0 <= r < 1 for r in rates) or sum(rates) + 5 * case_rate > 0.5:
        raise ValueError("each rate must be in [0, 1) and together (case_rate once per rule) at most 0.5")
    world = _World(seed, first_period, months)
    k_dup, k_red, k_mod, k_inv, k_case, k_rev = (round(n_records * r) for r in rates)
    k_unknown = round(k_rev * 0.1)
    k_void = min(k_dup, round(k_rev * 0.5))
    k_partial = k_rev - k_unknown - k_void
    k_rules = {kind: k_case if rule in world.lim.enabled else 0
               for kind, rule in RULE_KINDS.items() if kind != "duplicate_person"}
    payments = n_records - k_dup - k_red - k_mod - k_inv - k_rev
    if payments < k_dup + k_red + k_mod or (k_inv and payments < 1):
        raise ValueError("too few records for the planted cases")

    # Plan, plant, then draw or trim clean payments so the records add up to exactly n_records.
    # Planting has its own generator; where it goes is keyed by the plan, and what is resent or
    # spoilt by the index of a payment in delivery order.
    prng = random.Random(f"{seed}:plant")
    households: list[_Household] = []
    with _no_gc():
        drawn = _draw(world, households, max(0, payments - 2 * sum(k_rules.values())))
        planter = _Planter(world, prng, households)
        planter.rules(k_rules)
        planter.duplicates(k_dup, k_void)
        planter.reversals(k_partial, k_unknown)
        payments = n_records - k_red - k_mod - k_inv - planter.records
        have = drawn + planter.extra
        if have < payments:
            _draw(world, households, payments - have)
        else:
            _trim(households, have - payments)
        buckets = _buckets(world, households)
    del households, planter

    prnd = prng.random
    sources = prng.sample(range(payments), k_red + k_mod) if payments >= k_red + k_mod else []
    triggers: dict[int, list[tuple]] = {}
    for n, i in enumerate(sources):
        # a resend usually follows soon, sometimes after a large part of the stream
        distance = 1 + int(prnd() ** 2 * max(1, payments // 20))
        triggers.setdefault(i, []).append(("red" if n < k_red else "mod", min(i + distance, payments - 1)))
    variants = list(INVALID_VARIANTS)
    prng.shuffle(variants)
    for n, i in enumerate(sorted(prng.sample(range(payments), k_inv))):
        triggers.setdefault(i, []).append(("inv", variants[n % len(variants)]))
    return _weave(world, buckets, prng, triggers, answer_key)


def _weave(world: _World, buckets: list[list[_Ent]], prng: random.Random, triggers: dict[int, list[tuple]],
           answer_key: list[PlantedCase] | None) -> Iterator[dict]:
    """The plan's payments with the planted records woven in; refs are numbered in delivery
    order. Every copy is taken before the original is handed out, so a caller may mutate what it
    gets."""
    prnd = prng.random
    counters: dict[str, int] = {}
    later: dict[int, list[tuple[dict, PlantedCase]]] = {}  # payment index -> copies to emit after it
    heap: list[tuple] = []  # (ts, tick, what, payload): duplicates and reversals, by time
    tick = count().__next__
    keep = answer_key is not None
    unknown_refs: set[str] = set()

    def ref(rec: dict, prefix: str) -> None:
        system = rec["source_system"]
        c = counters.get(system, 0) + 1
        counters[system] = c
        rec["source_ref"] = f"{prefix}{c:08d}"

    def reverse(rec: dict, original_ref: str, amount: int, reason: str, day: int, kind: str, status: str) -> None:
        """A reversal of (rec's system, original_ref) on the first working day from `day`."""
        while not world.working[day]:
            day += 1
        at = world.day_str[day] + world.tod_str[int(prnd() * _OFFICE_SECONDS)]
        system = rec["source_system"]
        rev = {"record_type": "reversal", "source_system": system, "source_ref": f"REV-{original_ref}",
               "original_source_system": system, "original_source_ref": original_ref,
               "agency_code": rec["agency_code"], "nik": rec["nik"], "provisional_id": rec["provisional_id"],
               "amount_idr": amount, "reason": reason, "reversed_at": at}
        case = PlantedCase(kind, None, ((system, rev["source_ref"]), (system, original_ref)),
                           rec["nik"] or rec["provisional_id"], rec["programme_code"],
                           rec["period"] if kind != "reversal_unknown" else None, None, None, status)
        heapq.heappush(heap, (at, tick(), "rev", (rev, case)))

    def release(item: tuple) -> dict:
        _ts, _t, what, payload = item
        if what == "rev":
            rev, case = payload
            if keep:
                answer_key.append(case)
            return rev
        dup, prefix, original, case, day = payload
        ref(dup, prefix)
        if keep:
            answer_key.append(replace(case, source_refs=(original, (dup["source_system"], dup["source_ref"]))))
        if case.status == "void_reversed":
            reverse(dup, dup["source_ref"], dup["amount_idr"], _VOID_REASON, day + 2 + int(prnd() * 18),
                    "reversal_void", "accepted")
        return dup

    def plant(rec: dict, prefix: str, d: int, p: int, key: tuple, action: tuple) -> None:
        what = action[0]
        if what == "case":
            pending = action[1]
            pending.refs.append(key)
            pending.left -= 1
            if pending.left == 0 and keep:
                answer_key.append(replace(pending.case, source_refs=tuple(pending.refs)))
        elif what == "dup":
            dup, dprefix = _duplicate(world, prng, rec, prefix)
            # a few days to a few weeks later, still before the period is two months old
            last = min(max(d + 3, world.p_start[p] + world.p_days[p] + 20), world.p_late[p] - 1)
            dday = d + 1 + int(prnd() * min(30, last - d))
            dup["disbursed_at"] = world.day_str[dday] + world.tod_str[int(prnd() * _OFFICE_SECONDS)]
            heapq.heappush(heap, (dup["disbursed_at"], tick(), "dup", (dup, dprefix, key, action[1], dday)))
        elif what == "partial":
            reason = _PARTIAL_REASONS.get(rec["programme_code"], _PARTIAL_REASON)
            reverse(rec, rec["source_ref"], action[1], reason, d + 3 + int(prnd() * 20), "reversal_partial",
                    "accepted")
        else:  # "unknown": a payment of the year before the window, never in the data
            year = world.years[0] - 1
            original = ""
            while not original or original in unknown_refs:
                original = f"{prefix.replace(rec['period'][:4], str(year), 1)}{int(prnd() * 10**8):08d}"
            unknown_refs.add(original)
            reverse(rec, original, rec["amount_idr"], _UNKNOWN_REASON.format(year=year), d + 1 + int(prnd() * 10),
                    "reversal_unknown", "pending")

    index = -1
    for ts, _seq, rec, prefix, d, p, ent in _clean(world, buckets):
        while heap and heap[0][0] <= ts:
            yield release(heapq.heappop(heap))
        index += 1
        ref(rec, prefix)
        marks = ent.marks
        actions = triggers.get(index)
        if marks is None and actions is None:
            yield rec
        else:
            out = [rec]
            key = (rec["source_system"], rec["source_ref"])
            if marks is not None:
                for action in marks.get(p, ()):
                    plant(rec, prefix, d, p, key, action)
            for action in actions or ():
                what = action[0]
                if what == "inv":  # right after its template, same time
                    bad, code = _invalid(world, prng, rec, action[1])
                    ref(bad, prefix)
                    if keep:
                        answer_key.append(PlantedCase("invalid", code, ((bad["source_system"], bad["source_ref"]),),
                                                      bad["nik"], bad["programme_code"], bad["period"]))
                    out.append(bad)
                else:
                    copy = dict(rec)
                    ident = rec["nik"] or rec["provisional_id"]
                    if what == "red":
                        case = PlantedCase("redelivery", None, (key,), ident, rec["programme_code"], rec["period"])
                    else:
                        amount = rec["amount_idr"]
                        options = (amount + amount // 2, amount - amount // 4, amount + 50_000, amount * 2)
                        copy["amount_idr"] = options[int(prnd() * len(options))]
                        case = PlantedCase("modified_resubmission", MODIFIED_RULE, (key,), ident,
                                           rec["programme_code"], rec["period"], None,
                                           abs(copy["amount_idr"] - amount))
                    later.setdefault(action[1], []).append((copy, case))
            yield from out
        if later:
            scheduled = later.pop(index, None)
            if scheduled:
                for copy, case in scheduled:
                    if keep:
                        answer_key.append(case)
                    yield copy
    while heap:
        yield release(heapq.heappop(heap))

def _duplicate(world: _World, prng: random.Random, rec: dict, prefix: str) -> tuple[dict, str]:
    """The same person paid again for the same programme and period under a new source_ref;
    about half the time through another system that really pays the programme."""
    prnd = prng.random
    dup = dict(rec)
    prog = rec["programme_code"]
    year = rec["period"][:4]
    other = prnd() < 0.5
    if other and prog in ("PKH", "BPNT"):  # also on PT Pos's list
        dup["source_system"] = "POSIND-BANSOS"
        dup["channel"] = "POS"
        return dup, f"POS-{prog}-{year}-"
    if other and prog == "BLT_DD":  # listed by a neighbouring village too
        village = rec["region_code"]
        neighbours = [v for v in world.by_district[village[:6]] if v != village]
        if neighbours:
            v = neighbours[int(prnd() * len(neighbours))]
            dup.update(source_system=f"SISKEUDES-{v}", agency_code=f"DESA-{v}", region_code=v,
                       funding_account=f"APBDES-{year}-{v}")
            return dup, prefix
    if other and prog == "PIP":  # madrasah PIP through the Ministry of Religious Affairs
        dup.update(source_system="EMIS-KEMENAG", agency_code="KEMENAG", funding_account=f"APBN-{year}-KEMENAG-PIP")
        return dup, f"PIPM-{year}-"
    if other and prog == "PBI_JK":  # enrolled by both the centre and the regency
        regency = rec["region_code"][:4]
        if rec["agency_code"] == "KEMENKES":
            dup.update(agency_code=f"DINKES-{regency}", source_type="APBD_KAB",
                       funding_account=f"APBD-{year}-{regency}-DINKES-PBI_JK")
        else:
            dup.update(agency_code="KEMENKES", source_type="APBN", funding_account=f"APBN-{year}-KEMENKES-PBI_JK")
        return dup, prefix
    if rec["kind"] == "CASH" and prnd() < 0.4:
        channels = [c for c in ("BANK_TRANSFER", "POS", "E_WALLET", "CASH") if c != rec["channel"]]
        dup["channel"] = channels[int(prnd() * len(channels))]
    return dup, prefix


def _invalid(world: _World, prng: random.Random, template: dict, variant: str) -> tuple[dict, str]:
    """A row with exactly one defect, for a fresh person in a fresh household of the template's
    village, so that it can never also be a duplicate, redelivery or resubmission."""
    prnd = prng.random
    nik, kk, name = world.fresh_person(template["region_code"])
    if template["source_system"] in _UPPER_NAME_SYSTEMS:
        name = name.upper()
    bad = dict(template, nik=nik, provisional_id="", kk=kk, recipient_name=name)
    amount = template["amount_idr"]
    if variant == "nik_non_ascii_digit":
        i = 6 + int(prnd() * 10)  # in the birth date or serial, where it is hardest to see
        bad["nik"] = nik[:i] + _ARABIC_INDIC[int(nik[i])] + nik[i + 1:]
    elif variant == "nik_15_digits":
        i = int(prnd() * 16)
        bad["nik"] = nik[:i] + nik[i + 1:]
    elif variant == "nik_day_32":
        bad["nik"] = nik[:6] + "32" + nik[8:]
    elif variant == "nik_month_13":
        bad["nik"] = nik[:8] + "13" + nik[10:]
    elif variant == "amount_fraction":
        bad["amount_idr"] = amount + 0.5
    elif variant == "amount_zero":
        bad["amount_idr"] = 0
    elif variant == "amount_negative":
        bad["amount_idr"] = -amount
    elif variant == "programme_unknown":
        bad["programme_code"] = "XYZ"
    elif variant == "period_month_13":
        bad["period"] = template["period"][:4] + "-13"
    else:  # pragma: no cover
        raise ValueError(variant)
    return bad, INVALID_VARIANTS[variant]



# --------------------------------------------------------------------------- public API


def generate(n_records: int, *, seed: int = 20261122, first_period: str = "2026-01", months: int = 6,
             duplicate_rate: float = 0.01, redelivery_rate: float = 0.005,
             modified_rate: float = 0.002, invalid_rate: float = 0.002, case_rate: float = 0.002,
             reversal_rate: float = 0.0) -> Dataset:
    """Exactly n_records records in delivery order, and the answer key of what is planted.

    Planted counts are round(n_records * rate) each: duplicates, redeliveries, modified
    resubmissions, invalid rows, reversals, and case_rate for each of the six rules besides the
    person duplicate. Reversals are half full reversals of planted duplicates, a tenth of unknown
    originals and the rest partial. A population too small to hold a case holds fewer; the rest
    of the records are clean payments."""
    answer_key: list[PlantedCase] = []
    with _no_gc():
        records = list(_stream(n_records, seed, first_period, months, duplicate_rate, redelivery_rate,
                               modified_rate, invalid_rate, case_rate, reversal_rate, answer_key))
    return Dataset(records, answer_key)


def budget_records(records: Iterable[dict], *, headroom: float = 1.25, short_lines: int = 1,
                   short_share: float = 0.8) -> tuple[list[dict], list[str]]:
    """The budget side of a dataset: for every budget line the payments name (funding account,
    agency, programme), an allocation of `headroom` times what the records pay from it and a
    treasury release of the same, dated before the line's first payment. The `short_lines`
    largest lines get only `short_share` of what they pay: the overspend an audit must find.
    Returns the records and the funding accounts planted short."""
    paid: dict[tuple[str, str, str, str], list[int]] = {}
    programmes = default_reference().programmes
    for rec in records:
        amount = rec.get("amount_idr")
        if (rec.get("record_type", "disbursement") != "disbursement" or type(amount) is not int or amount <= 0
                or rec.get("programme_code") not in programmes):  # a planted invalid row names no budget line
            continue
        line = paid.setdefault((rec["source_type"], rec["funding_account"], rec["agency_code"], rec["programme_code"]),
                               [0, 0])
        line[0] += amount
        if rec["disbursed_at"] and (not line[1] or rec["disbursed_at"] < line[1]):
            line[1] = rec["disbursed_at"]
    short = {key for key, _ in sorted(paid.items(), key=lambda kv: (-kv[1][0], kv[0]))[:short_lines]}
    out: list[dict] = []
    for i, (key, (total, first)) in enumerate(sorted(paid.items())):
        source_type, funding, agency, programme = key
        amount = -(-int(total * (short_share if key in short else headroom)) // 1_000_000) * 1_000_000
        day = (datetime.fromisoformat(first) - timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
        out.append({"record_type": "allocation", "source_system": "SYNTH-BUDGET", "source_ref": f"ALLOC-{i:06d}",
                    "source_type": source_type, "funding_account": funding, "agency_code": agency,
                    "programme_code": programme, "fiscal_year": day.year, "amount_idr": amount,
                    "allocated_at": day.isoformat()})
        out.append({"record_type": "release", "source_system": "SYNTH-TREASURY", "source_ref": f"REL-{i:06d}",
                    "source_type": source_type, "funding_account": funding, "agency_code": agency,
                    "amount_idr": amount, "released_at": (day + timedelta(hours=2)).isoformat()})
    return out, sorted(key[1] for key in short)


def iter_records(n_records: int, *, seed: int = 20261122, first_period: str = "2026-01", months: int = 6,
                 duplicate_rate: float = 0.01, redelivery_rate: float = 0.005,
                 modified_rate: float = 0.002, invalid_rate: float = 0.002, case_rate: float = 0.002,
                 reversal_rate: float = 0.0) -> Iterator[dict]:
    """The same records as `generate(...)`, one at a time and without the answer key. Holds the
    payment plan and about one month of records in memory, not the whole set."""
    return _stream(n_records, seed, first_period, months, duplicate_rate, redelivery_rate,
                   modified_rate, invalid_rate, case_rate, reversal_rate, None)


def write_jsonl(path, records: Iterable[dict]) -> None:
    """One JSON object per line, UTF-8, keys in FIELDS order (REVERSAL_FIELDS for a reversal)."""
    with open(path, "wb") as f:
        batch: list[bytes] = []
        if _orjson is not None:
            dumps = _orjson.dumps
        else:
            def dumps(rec: dict[str, Any]) -> bytes:
                return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        for rec in records:
            batch.append(dumps(rec))
            if len(batch) >= 10_000:
                f.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            f.write(b"\n".join(batch) + b"\n")


def write_csv(path, records: Iterable[dict]) -> None:
    """CSV with a header of FIELDS, UTF-8; amounts are written as they are (a planted fraction stays
    a fraction). A CSV file holds disbursements only: a reversal row is refused (write JSON Lines)."""

    def rows():
        for rec in records:
            if "record_type" in rec:
                raise ValueError("a reversal row cannot go into a CSV file of disbursements; write JSON Lines")
            yield [rec[k] for k in FIELDS]

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(rows())


def _main(argv: list[str] | None = None) -> None:  # pragma: no cover - a convenience for humans
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic Lampung disbursement dataset.")
    parser.add_argument("n_records", type=int)
    parser.add_argument("out", help="file ending in .jsonl or .csv")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--first-period", default="2026-01")
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--reversal-rate", type=float, default=0.0, help="JSON Lines only")
    args = parser.parse_args(argv)
    records = iter_records(args.n_records, seed=args.seed, first_period=args.first_period, months=args.months,
                           reversal_rate=args.reversal_rate)
    (write_csv if args.out.endswith(".csv") else write_jsonl)(args.out, records)


if __name__ == "__main__":  # pragma: no cover
    _main()
