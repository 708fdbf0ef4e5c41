"""The national poverty registries (DTKS, P3KE, Regsosek): one extract row becomes a
`RegistryRecord` keyed by NIK token, or a `Rejection` with a named code; and where the registries'
current contents disagree about a person (`disagreements`).

An extract is a whole registry at one date; the latest imported extract of a registry is its
current content. Rows are checked in `REGISTRY_CODES` order, the first failure wins. Columns other
than `REGISTRY_FIELDS` (names, addresses, scores) are not read: the ledger keeps only what it
compares, and the clear NIK and KK go to the vault alone.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from aidcore import nik as nikmod
from aidcore.intake import Rejection

REGISTRIES: tuple[str, ...] = ("DTKS", "P3KE", "REGSOSEK")
REGISTRY_FIELDS: tuple[str, ...] = ("nik", "kk", "village_code", "decile", "row_ref", "name")

REGISTRY_CODES: tuple[str, ...] = (
    "nik_required",
    "nik_must_be_16_ascii_digits",
    "nik_province_invalid",
    "nik_birth_date_invalid",
    "nik_serial_invalid",
    "kk_must_be_16_ascii_digits",
    "village_code_must_be_10_ascii_digits",
    "regency_unknown",
    "decile_must_be_1_to_10",
    "row_ref_too_long",
    "person_repeated_in_extract",  # a second row for one NIK in one extract: the first is kept
)

# Disagreement kinds, in the order a report lists them.
ABSENT = "absent_from_registry"  # in at least one current registry, not in this one
DECILE_DIFFERS = "decile_differs"  # two registries rank the person in different poverty deciles
VILLAGE_DIFFERS = "village_differs"  # two registries place the person in different villages
KINDS: tuple[str, ...] = (ABSENT, DECILE_DIFFERS, VILLAGE_DIFFERS)
MAX_ROW_REF_CHARS = 128


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """One person in one registry extract, as it travels on the log: tokens, never a clear NIK."""

    event_id: str
    registry: str
    extract_date: str  # YYYY-MM-DD
    person_token: str
    kk_token: str | None
    regency_code: str  # the first four digits of village_code
    village_code: str  # 10-digit Kemendagri code
    decile: int | None  # 1 poorest .. 10; None when the extract has none
    source_row_ref: str
    recorded_at_us: int


@dataclass(frozen=True, slots=True)
class RegistryRow:
    record: RegistryRecord
    nik: str  # for the vault only
    kk: str | None
    name: str


def registry_event_id(registry: str, extract_date: str, person_token: str) -> str:
    """One event per person per extract: importing the same extract again adds nothing."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aidledger-registry:{registry}:{extract_date}:{person_token}"))


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    return "" if value is None else str(value).strip()


def validate_registry_row(raw: Mapping[str, Any], *, registry: str, extract_date: str, row_ref: str,
                          regencies: Iterable[str], token_key: bytes, now_us: int) -> RegistryRow | Rejection:
    """One extract row; `row_ref` is used when the row has no `row_ref` column of its own."""
    nik = nikmod.normalize(_text(raw, "nik"))
    if not nik:
        return Rejection("nik_required", "nik", "a registry row needs the person's NIK")
    problem = nikmod.nik_problem(nik)
    if problem:
        return Rejection(problem, "nik", "the NIK is not a structurally valid 16-digit NIK")
    kk = nikmod.normalize(_text(raw, "kk"))
    if kk and not nikmod.is_ascii_digits(kk, 16):
        return Rejection("kk_must_be_16_ascii_digits", "kk", "kk must be 16 ASCII digits when given")
    village = _text(raw, "village_code").replace(".", "")
    if not nikmod.is_ascii_digits(village, 10):
        return Rejection("village_code_must_be_10_ascii_digits", "village_code",
                         "village_code must be the 10-digit Kemendagri village code")
    if village[:4] not in set(regencies):
        return Rejection("regency_unknown", "village_code", f"regency {village[:4]} is not in the reference data")
    decile_text = _text(raw, "decile")
    decile = None
    if decile_text:
        if isinstance(raw.get("decile"), int) and not isinstance(raw.get("decile"), bool):
            decile = raw["decile"]
        elif decile_text.isascii() and decile_text.isdigit():
            decile = int(decile_text)
        if decile is None or not 1 <= decile <= 10:
            return Rejection("decile_must_be_1_to_10", "decile", "decile must be a whole number from 1 to 10")
    ref = _text(raw, "row_ref") or row_ref
    if len(ref) > MAX_ROW_REF_CHARS:
        return Rejection("row_ref_too_long", "row_ref", f"at most {MAX_ROW_REF_CHARS} characters")
    token = nikmod.person_token(token_key, nik)
    record = RegistryRecord(registry_event_id(registry, extract_date, token), registry, extract_date, token,
                            nikmod.kk_token(token_key, kk) if kk else None, village[:4], village, decile, ref, now_us)
    return RegistryRow(record, nik, kk or None, _text(raw, "name"))


# --- disagreements ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    """What one registry's current extract says of one person."""

    regency_code: str
    village_code: str
    decile: int | None


@dataclass(frozen=True, slots=True)
class Disagreement:
    kind: str
    person_token: str
    regencies: tuple[str, ...]  # every regency a registry places the person in, sorted
    detail: dict  # registry -> its entry (village, decile), or for ABSENT {"missing_from": [...], "in": [...]}


@dataclass
class DisagreementReport:
    registries: tuple[str, ...]  # those compared: the ones with a current extract
    people: int = 0
    by_kind: Counter = field(default_factory=Counter)
    by_regency: dict = field(default_factory=dict)  # regency -> Counter of kinds
    examples: dict = field(default_factory=dict)  # kind -> [Disagreement, ...] (first tokens in order)

    def as_dict(self) -> dict:
        return {
            "registries": list(self.registries), "people": self.people,
            "by_kind": {k: self.by_kind.get(k, 0) for k in KINDS},
            "by_regency": {r: {k: c.get(k, 0) for k in KINDS} for r, c in sorted(self.by_regency.items())},
            "examples": {k: [{"person_token": d.person_token, "regencies": list(d.regencies), "detail": d.detail}
                             for d in self.examples.get(k, [])] for k in KINDS},
        }


def person_disagreements(person_token: str, entries: Mapping[str, Entry],
                         registries: tuple[str, ...]) -> list[Disagreement]:
    """Where the registries in `registries` disagree about one person, who is in `entries`' keys.
    Deciles are compared only between registries that give one."""
    regencies = tuple(sorted({e.regency_code for e in entries.values()}))
    out = []
    missing = [r for r in registries if r not in entries]
    if missing:
        present = [r for r in registries if r in entries]
        out.append(Disagreement(ABSENT, person_token, regencies, {"missing_from": missing, "in": present}))
    deciles = {r: e.decile for r, e in entries.items() if e.decile is not None}
    if len(set(deciles.values())) > 1:
        out.append(Disagreement(DECILE_DIFFERS, person_token, regencies,
                                {r: deciles[r] for r in registries if r in deciles}))
    villages = {r: e.village_code for r, e in entries.items()}
    if len(set(villages.values())) > 1:
        out.append(Disagreement(VILLAGE_DIFFERS, person_token, regencies,
                                {r: villages[r] for r in registries if r in villages}))
    return out


def compared_order(registries: Iterable[str]) -> tuple[str, ...]:
    """The order a report lists registries in: `REGISTRIES` first, any other name after, sorted."""
    names = set(registries)
    return tuple(r for r in REGISTRIES if r in names) + tuple(sorted(names - set(REGISTRIES)))


def disagreements(current: Mapping[str, Mapping[str, Entry]], *, regency: str | None = None,
                  examples_per_kind: int = 10) -> DisagreementReport:
    """Compare the registries' current contents (registry -> person token -> entry). A finding
    counts once per kind and once under each regency the registries place the person in; with
    `regency`, only people some registry places there. Examples are the first tokens in order."""
    registries = compared_order(current)
    report = DisagreementReport(registries)
    tokens = sorted({t for people in current.values() for t in people})
    for token in tokens:
        entries = {r: current[r][token] for r in registries if token in current[r]}
        if regency is not None and all(e.regency_code != regency for e in entries.values()):
            continue
        report.people += 1
        for d in person_disagreements(token, entries, registries):
            report.by_kind[d.kind] += 1
            for code in d.regencies if regency is None else (regency,):
                report.by_regency.setdefault(code, Counter())[d.kind] += 1
            shown = report.examples.setdefault(d.kind, [])
            if len(shown) < examples_per_kind:
                shown.append(d)
    return report
