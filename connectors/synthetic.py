"""Synthetic disbursement input records for Lampung, with planted cases and an exact answer key.

Owns: a deterministic generator of realistic input records (the field set of DOMAIN.md's input
record table) for a population of Lampung households, and the answer key of the cases planted in
them: duplicate payments to one person, redelivered messages, modified resubmissions and rows the
intake must reject. Also owns writing such records as JSON Lines or CSV.

Must not touch: the ledger, the broker, the database, the clock or the network. Standard library
and the core's input-record field list only (orjson is used for writing when importable). The caller passes everything: seed, first
period, number of months; the same arguments always give the same records, in the same order.

How the data is built, so the answer key is exact:
- A population of households is drawn village by village (weighted by regency population) and
  each household is enrolled in programmes with a payment plan (which periods, which member,
  which amount). By construction nobody is paid twice for one programme and period, and no
  household receives BLT_DD together with PKH or BPNT.
- Payments are emitted month by month and merged into exact disbursement-time order.
- Planted records are then woven in: duplicates of a person's payment a few days to weeks later
  (by time), exact copies and amount-changed copies of a record some way later in the stream, and
  invalid rows for fresh people (new NIK, new KK) so an invalid row is never also another case.
"""

from __future__ import annotations

import csv
import gc
import heapq
import json
import random
from bisect import bisect_left, bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import accumulate
from typing import Any, Iterable, Iterator

from aidcore.intake import INPUT_FIELDS

try:  # optional speed-up for writing; the generator itself never needs it
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "FIELDS",
    "REGENCIES",
    "PROGRAMMES",
    "INVALID_VARIANTS",
    "PlantedCase",
    "Dataset",
    "generate",
    "iter_records",
    "write_jsonl",
    "write_csv",
]

# The input record, in DOMAIN.md order.
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
    "PROV_SEMBAKO": ("APBD_PROV", "household", "provincial monthly food package"),
    "RTLH": ("APBD_KAB", "household", "house repair materials, once"),
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

DUPLICATE_RULE = "duplicate_person_programme_period"
MODIFIED_RULE = "exists_with_different_amount_idr"


@dataclass(frozen=True)
class PlantedCase:
    kind: str  # "duplicate_person" | "redelivery" | "modified_resubmission" | "invalid"
    rule_id: str | None
    source_refs: tuple[tuple[str, str], ...]
    nik: str | None  # the NIK (or provisional id) the case is about, as sent
    programme_code: str | None
    period: str | None


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


# --------------------------------------------------------------------------- the world


class _Ent:
    """One enrolment: a programme paid to one person of a household in some periods."""

    __slots__ = ("bases", "sched", "amount", "tod", "periods")

    def __init__(self, bases, sched, amount, tod, periods):
        self.bases = bases  # per window year: (base record, source_ref prefix)
        self.sched = sched  # schedule key: (programme, area)
        self.amount = amount
        self.tod = tod  # second of the office day
        self.periods = periods  # period indexes


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

    def household(self) -> list[_Ent]:
        """Draw one household and its enrolments. The exclusivity rules hold here by construction."""
        rnd = self.rnd
        M = self.months
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
        persons = []  # (nik, provisional_id, name, age, female)
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
            persons.append((nik, prv, self.name(female), age, female))

        head = persons[0]
        with_nik = [p for p in persons if p[0]]
        adults_nik = [p for p in with_nik if p[3] >= 17]
        ents: list[_Ent] = []
        tod = int(rnd() * _OFFICE_SECONDS)

        g = rnd()
        if undocumented:
            central, blt = False, g < 0.6
        else:
            central, blt = g < 0.52, 0.52 <= g < 0.69
        if central and adults_nik:
            bpnt, pkh = rnd() < 0.88, rnd() < 0.42
            if not (bpnt or pkh):
                bpnt = True
            if pkh and self.quarter_ps:
                mothers = [p for p in adults_nik if p[4]]
                who = mothers[0] if mothers else adults_nik[0]
                components = []
                for p in persons:
                    a = p[3]
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
                amount = sum(sorted(components, reverse=True)[:4])
                channel = "BANK_TRANSFER" if rnd() < 0.85 else "POS"
                ents.append(_Ent(
                    self.bases("SIKS-NG", "APBN", "KEMENSOS", "PKH", who, kk, "CASH", channel, village,
                               "APBN-{y}-KEMENSOS-PKH", "PKH-{y}-"),
                    ("PKH", regency), amount, tod, list(self.quarter_ps)))
            if bpnt:
                who = head if head[0] else adults_nik[0]
                c = rnd()
                channel = "BANK_TRANSFER" if c < 0.6 else "POS" if c < 0.9 else "E_WALLET"
                ents.append(_Ent(
                    self.bases("SIKS-NG", "APBN", "KEMENSOS", "BPNT", who, kk, "CASH", channel, village,
                               "APBN-{y}-KEMENSOS-BPNT", "BPNT-{y}-"),
                    ("BPNT", regency), 200_000, tod, list(range(M))))
        elif blt:
            channel = self.village_channel.get(village)
            if channel is None:
                channel = self.village_channel[village] = "CASH" if rnd() < 0.75 else "BANK_TRANSFER"
            ents.append(_Ent(
                self.bases(f"SISKEUDES-{village}", "APBDES", f"DESA-{village}", "BLT_DD", head, kk, "CASH",
                           channel, village, f"APBDES-{{y}}-{village}", "BLT-{y}-"),
                ("BLT_DD", village), 300_000, tod, list(range(M))))

        if not undocumented:
            # PIP: each enrolled student once a calendar year, in the month their tranche is paid
            if rnd() < (0.45 if central else 0.2):
                for p in with_nik:
                    a = p[3]
                    if 7 <= a <= 18 and rnd() < 0.75:
                        amount = 450_000 if a <= 12 else 750_000 if a <= 15 else 1_800_000
                        periods = []
                        for year in self.years:
                            key = f"{year:04d}-{1 + int(rnd() * 12):02d}"
                            if key in self.p_index:
                                periods.append(self.p_index[key])
                        if periods:
                            ents.append(_Ent(
                                self.bases("SIPINTAR", "APBN", "KEMENDIKDASMEN", "PIP", p, kk, "CASH",
                                           "BANK_TRANSFER", village, "APBN-{y}-KEMENDIKDASMEN-PIP", "PIP-{y}-"),
                                ("PIP", regency), amount, int(rnd() * _OFFICE_SECONDS), periods))
            # PBI JK: every member with a NIK, every month; most premiums central, some regency-paid
            if with_nik and rnd() < (0.16 if central else 0.07):
                if rnd() < 0.8:
                    agency, stype, funding = "KEMENKES", "APBN", "APBN-{y}-KEMENKES-PBI_JK"
                else:
                    agency, stype, funding = f"DINKES-{regency}", "APBD_KAB", f"APBD-{{y}}-{regency}-DINKES-PBI_JK"
                for p in with_nik:
                    ents.append(_Ent(
                        self.bases("BPJS-PBI", stype, agency, "PBI_JK", p, kk, "PREMIUM", "BANK_TRANSFER",
                                   village, funding, "PBI-{y}-"),
                        ("PBI_JK", regency), 42_000, int(rnd() * _OFFICE_SECONDS), list(range(M))))
        if rnd() < 0.07:
            ents.append(_Ent(
                self.bases("SIMBANSOS-1800", "APBD_PROV", "DINSOS-1800", "PROV_SEMBAKO", head, kk, "IN_KIND",
                           "GOODS", village, "APBD-{y}-1800-DINSOS-SEMBAKO", "SMB-{y}-"),
                ("PROV_SEMBAKO", regency), 150_000, tod, list(range(M))))
        if rnd() < 0.01:
            ents.append(_Ent(
                self.bases(f"SIMBANSOS-{regency}", "APBD_KAB", f"DISPERKIM-{regency}", "RTLH", head, kk,
                           "IN_KIND", "GOODS", village, f"APBD-{{y}}-{regency}-DISPERKIM-RTLH", "RTLH-{y}-"),
                ("RTLH", regency), 17_500_000 if rnd() < 0.6 else 20_000_000, tod, [int(rnd() * M)]))
        if regency in ("1801", "1809", "1871") and rnd() < 0.15:
            periods = [p for p in range(M) if rnd() < 0.5]
            if periods:
                ents.append(_Ent(
                    self.bases("CSR-PTBA", "CSR", "PTBA", "CSR_PANGAN", head, kk, "IN_KIND", "GOODS", village,
                               "CSR-{y}-PTBA-PANGAN", "PTBA-{y}-"),
                    ("CSR_PANGAN", regency), 250_000, tod, periods))
        if self.zakat_ps and rnd() < 0.25:
            cash = rnd() < 0.6
            ents.append(_Ent(
                self.bases("BAZNAS-LPG", "COMMUNITY", "BAZNAS-1800", "ZAKAT_FITRAH", head, kk,
                           "CASH" if cash else "IN_KIND", "CASH" if cash else "GOODS", village,
                           "ZIS-{y}-BAZNAS-LAMPUNG-FITRAH", "ZF-{y}-"),
                ("ZAKAT_FITRAH", village), 100_000 + 25_000 * int(rnd() * 13), tod, list(self.zakat_ps)))
        return ents

    # ------------------------------------------------------------------ schedules

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


# --------------------------------------------------------------------------- streams


def _plan(world: _World, n_clean: int) -> list[list[_Ent]]:
    """Households until their payments add up to exactly n_clean; buckets of enrolments per period."""
    buckets: list[list[_Ent]] = [[] for _ in range(world.months)]
    with _no_gc():
        _fill(world, buckets, n_clean)
    return buckets


def _fill(world: _World, buckets: list[list[_Ent]], n_clean: int) -> None:
    planned = 0
    while planned < n_clean:
        ents = world.household()
        count = sum(len(e.periods) for e in ents)
        excess = planned + count - n_clean
        while excess > 0:  # trim the last household: dropping payments never breaks an invariant
            for e in reversed(ents):
                if e.periods:
                    e.periods.pop()
                    excess -= 1
                    count -= 1
                    break
        for e in ents:
            for p in e.periods:
                buckets[p].append(e)
        planned += count


def _clean(world: _World, buckets: list[list[_Ent]]) -> Iterator[tuple]:
    """Clean payments in exact disbursement-time order, as (ts, seq, record, ref prefix, day, p).
    No payment is disbursed before its period's month starts, so after month p is generated every
    pending payment earlier than month p+1 is final."""
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
                        prefix, d, p))
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
            redelivery_rate: float, modified_rate: float, invalid_rate: float,
            answer_key: list[PlantedCase] | None) -> Iterator[dict]:
    """Check the arguments now (not at the first next()), then return the record iterator."""
    if not isinstance(n_records, int) or n_records < 0:
        raise ValueError("n_records must be a non-negative integer")
    rates = (duplicate_rate, redelivery_rate, modified_rate, invalid_rate)
    if any(not 0 <= r < 1 for r in rates) or sum(rates) > 0.5:
        raise ValueError("each rate must be in [0, 1) and together at most 0.5")
    world = _World(seed, first_period, months)
    k_dup, k_red, k_mod, k_inv = (round(n_records * r) for r in rates)
    n_clean = n_records - k_dup - k_red - k_mod - k_inv
    if n_clean < k_dup + k_red + k_mod or (k_inv and n_clean < 1):
        raise ValueError("too few records for the planted cases")

    # Where the planted cases go: a separate generator, so planting never shifts the clean data.
    # Actions are keyed by the index of a clean record in delivery order.
    prng = random.Random(f"{seed}:plant")
    prnd = prng.random
    sources = prng.sample(range(n_clean), k_dup + k_red + k_mod)
    triggers: dict[int, list[tuple]] = {}
    for i in sources[:k_dup]:
        triggers.setdefault(i, []).append(("dup",))
    for n, i in enumerate(sources[k_dup:]):
        # a resend usually follows soon, sometimes after a large part of the stream
        distance = 1 + int(prnd() ** 2 * max(1, n_clean // 20))
        triggers.setdefault(i, []).append(("red" if n < k_red else "mod", min(i + distance, n_clean - 1)))
    variants = list(INVALID_VARIANTS)
    prng.shuffle(variants)
    for n, i in enumerate(sorted(prng.sample(range(n_clean), k_inv))):
        triggers.setdefault(i, []).append(("inv", variants[n % len(variants)]))
    return _weave(world, n_clean, prng, triggers, answer_key)


def _weave(world: _World, n_clean: int, prng: random.Random, triggers: dict[int, list[tuple]],
           answer_key: list[PlantedCase] | None) -> Iterator[dict]:
    """The clean stream with the planted records woven in; refs are numbered in delivery order.
    Every copy is taken before the original is handed out, so a caller may mutate what it gets."""
    if n_clean == 0 and not triggers:
        return
    prnd = prng.random
    counters: dict[str, int] = {}
    later: dict[int, list[tuple[dict, PlantedCase]]] = {}  # clean index -> copies to emit after it
    dups: list[tuple] = []  # heap of (ts, seq, record, ref prefix, original key), by time
    keep = answer_key is not None
    hseq = 0

    def ref(rec: dict, prefix: str) -> None:
        system = rec["source_system"]
        c = counters.get(system, 0) + 1
        counters[system] = c
        rec["source_ref"] = f"{prefix}{c:08d}"

    def emit_dup(item: tuple) -> dict:
        _ts, _s, rec, prefix, orig = item
        ref(rec, prefix)
        if keep:
            answer_key.append(PlantedCase("duplicate_person", DUPLICATE_RULE,
                                          (orig, (rec["source_system"], rec["source_ref"])),
                                          rec["nik"] or rec["provisional_id"], rec["programme_code"],
                                          rec["period"]))
        return rec

    index = -1
    for ts, _seq, rec, prefix, d, p in _clean(world, _plan(world, n_clean)):
        while dups and dups[0][0] <= ts:
            yield emit_dup(heapq.heappop(dups))
        index += 1
        ref(rec, prefix)
        actions = triggers.get(index)
        if actions is None:
            yield rec
        else:
            out = [rec]
            key = (rec["source_system"], rec["source_ref"])
            ident = rec["nik"] or rec["provisional_id"]
            for action in actions:
                what = action[0]
                if what == "dup":
                    dup, dprefix = _duplicate(world, prng, rec, prefix)
                    # a few days to a few weeks later, still before the period is two months old
                    last = min(max(d + 3, world.p_start[p] + world.p_days[p] + 20), world.p_late[p] - 1)
                    dday = d + 1 + int(prnd() * min(30, last - d))
                    dts = world.day_str[dday] + world.tod_str[int(prnd() * _OFFICE_SECONDS)]
                    dup["disbursed_at"] = dts
                    heapq.heappush(dups, (dts, hseq, dup, dprefix, key))
                    hseq += 1
                elif what == "inv":  # right after its template, same time
                    bad, code = _invalid(world, prng, rec, action[1])
                    ref(bad, prefix)
                    if keep:
                        answer_key.append(PlantedCase("invalid", code, ((bad["source_system"], bad["source_ref"]),),
                                                      bad["nik"], bad["programme_code"], bad["period"]))
                    out.append(bad)
                else:
                    copy = dict(rec)
                    if what == "red":
                        case = PlantedCase("redelivery", None, (key,), ident, rec["programme_code"], rec["period"])
                    else:
                        amount = rec["amount_idr"]
                        options = (amount + amount // 2, amount - amount // 4, amount + 50_000, amount * 2)
                        copy["amount_idr"] = options[int(prnd() * len(options))]
                        case = PlantedCase("modified_resubmission", MODIFIED_RULE, (key,), ident,
                                           rec["programme_code"], rec["period"])
                    later.setdefault(action[1], []).append((copy, case))
            yield from out
        if later:
            scheduled = later.pop(index, None)
            if scheduled:
                for copy, case in scheduled:
                    if keep:
                        answer_key.append(case)
                    yield copy
    while dups:
        yield emit_dup(heapq.heappop(dups))


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
             modified_rate: float = 0.002, invalid_rate: float = 0.002) -> Dataset:
    """Exactly n_records input records in delivery order, and the answer key of planted cases.

    Planted counts are round(n_records * rate) each; the rest are clean payments."""
    answer_key: list[PlantedCase] = []
    with _no_gc():
        records = list(_stream(n_records, seed, first_period, months, duplicate_rate, redelivery_rate,
                               modified_rate, invalid_rate, answer_key))
    return Dataset(records, answer_key)


def iter_records(n_records: int, *, seed: int = 20261122, first_period: str = "2026-01", months: int = 6,
                 duplicate_rate: float = 0.01, redelivery_rate: float = 0.005,
                 modified_rate: float = 0.002, invalid_rate: float = 0.002) -> Iterator[dict]:
    """The same records as `generate(...)`, one at a time and without the answer key. Holds the
    payment plan and about one month of records in memory, not the whole set."""
    return _stream(n_records, seed, first_period, months, duplicate_rate, redelivery_rate,
                   modified_rate, invalid_rate, None)


def write_jsonl(path, records: Iterable[dict]) -> None:
    """One JSON object per line, UTF-8, keys in FIELDS order."""
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
    a fraction)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows([rec[k] for k in FIELDS] for rec in records)


def _main(argv: list[str] | None = None) -> None:  # pragma: no cover - a convenience for humans
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic Lampung disbursement dataset.")
    parser.add_argument("n_records", type=int)
    parser.add_argument("out", help="file ending in .jsonl or .csv")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--first-period", default="2026-01")
    parser.add_argument("--months", type=int, default=6)
    args = parser.parse_args(argv)
    records = iter_records(args.n_records, seed=args.seed, first_period=args.first_period, months=args.months)
    (write_csv if args.out.endswith(".csv") else write_jsonl)(args.out, records)


if __name__ == "__main__":  # pragma: no cover
    _main()
