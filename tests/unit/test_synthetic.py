"""The synthetic Lampung dataset: deterministic, well-formed, and its answer key is exact.

The recounts here are brute force over the records, independent of how the generator plants
cases (and of the core, which test_synthetic_answer_key runs over the records), so a planted case
the key forgets, or a clean record that accidentally breaks a rule, shows up as a difference.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidcore import intake
from aidcore.reference import default_reference
from aidcore.rulebook import default_rulebook
from connectors import synthetic
from connectors.synthetic import (
    FIELDS,
    INVALID_VARIANTS,
    PROGRAMMES,
    REGENCIES,
    REVERSAL_FIELDS,
    RULE_KINDS,
    generate,
    iter_records,
    write_csv,
    write_jsonl,
)

N = 30_000
REVERSAL_RATE = 0.005
PROVINCES = frozenset(
    "11 12 13 14 15 16 17 18 19 21 31 32 33 34 35 36 51 52 53 61 62 63 64 65 "
    "71 72 73 74 75 76 81 82 91 92 93 94 95 96 97".split()
)
SOURCE_TYPES = {"APBN", "APBD_PROV", "APBD_KAB", "APBDES", "CSR", "COMMUNITY"}
KINDS = {"CASH", "IN_KIND", "PREMIUM"}
CHANNELS = {"BANK_TRANSFER", "POS", "E_WALLET", "CASH", "GOODS"}
HOUSEHOLD_PROGRAMMES = {c for c, (_t, per, _w) in PROGRAMMES.items() if per == "household"}
WIB = timezone(timedelta(hours=7))
REFERENCE = default_reference()
BOOK = default_rulebook(REFERENCE)


@pytest.fixture(scope="module")
def ds():
    return generate(N, seed=11, reversal_rate=REVERSAL_RATE)


def key(r):
    return (r["source_system"], r["source_ref"])


def ident(r):
    return r["nik"] or r["provisional_id"]


def is_reversal(r) -> bool:
    return r.get("record_type") == "reversal"


def invalid_keys(ds):
    return {c.source_refs[0] for c in ds.answer_key if c.kind == "invalid"}


def valid_records(ds):
    """The valid disbursements (reversal rows left out)."""
    bad = invalid_keys(ds)
    return [r for r in ds.records if not is_reversal(r) and key(r) not in bad]


def reversals(ds):
    return [r for r in ds.records if is_reversal(r)]


def nik_ok(nik: str) -> bool:
    if len(nik) != 16 or not all("0" <= c <= "9" for c in nik) or nik[:2] not in PROVINCES:
        return False
    day, month, yy = int(nik[6:8]), int(nik[8:10]), int(nik[10:12])
    if day > 40:
        day -= 40
    if nik[12:] == "0000":
        return False
    for century in (1900, 2000):
        try:
            date(century + yy, month, day)
            return True
        except ValueError:
            pass
    return False


def kk_ok(kk: str, region_code: str) -> bool:
    """16 digits: the district of issue (the household's), the issue date DDMMYY, a serial."""
    if not re.fullmatch(r"\d{16}", kk) or kk[:6] != region_code[:6] or kk[12:] == "0000":
        return False
    try:
        date(2000 + int(kk[10:12]), int(kk[8:10]), int(kk[6:8]))
    except ValueError:
        return False
    return True


def paid_in_time(r) -> bool:
    """Disbursed inside the period month or shortly after (before it is two months old), WIB."""
    at = datetime.fromisoformat(r["disbursed_at"])
    y, m = int(r["period"][:4]), int(r["period"][5:])
    start = datetime(y, m, 1, tzinfo=WIB)
    two_months_later = datetime(y + (m + 1) // 12, (m + 1) % 12 + 1, 1, tzinfo=WIB)
    return at.utcoffset() == timedelta(hours=7) and start <= at < two_months_later


def recount_duplicates(ds):
    """(person, programme, period) -> distinct source keys, over valid records, where more than one."""
    refs = defaultdict(set)
    for r in valid_records(ds):
        refs[(ident(r), r["programme_code"], r["period"])].add(key(r))
    return {k: v for k, v in refs.items() if len(v) > 1}


def planted_duplicates(ds):
    return {
        (c.nik, c.programme_code, c.period): set(c.source_refs)
        for c in ds.answer_key
        if c.kind == "duplicate_person"
    }


def household(r) -> str:
    """The household the rules see: the KK, or the person alone when the payment names none."""
    return r["kk"] or ident(r)


def recount_rules(ds) -> set[tuple[str, str, str]]:
    """(rule, subject, period) for every rule the valid payments break, by brute force over
    gross amounts with the shipped rulebook's limits. Reversals only take back planted
    duplicates (whose records still count here) and parts of clean payments, so gross is enough."""
    kind = {code: p.kind_group for code, p in REFERENCE.programmes.items()}
    people, homes = defaultdict(list), defaultdict(list)
    first = {}
    for r in valid_records(ds):
        first.setdefault(key(r), r)  # the ledger keeps the first version of a reference
    for r in first.values():
        people[(ident(r), r["period"])].append(r["programme_code"])
        homes[(household(r), r["period"])].append(r)
    out = set()
    for (who, period), programmes in people.items():
        if len(set(programmes)) < len(programmes):
            out.add(("duplicate_person_programme_period", who, period))
        if len(set(programmes)) > BOOK.person_max_programmes:
            out.add(("stacking_programmes_person", who, period))
    for (home, period), rows in homes.items():
        programmes = {r["programme_code"] for r in rows}
        if sum(r["amount_idr"] for r in rows) > BOOK.household_cap_idr:
            out.add(("household_monthly_cap", home, period))
        if len(programmes) > BOOK.household_max_programmes:
            out.add(("stacking_programmes_household", home, period))
        if any(len({ident(r) for r in rows if r["programme_code"] == p}) > 1 for p in BOOK.household_programmes):
            out.add(("duplicate_household_programme_period", home, period))
        if any(p in programmes and programmes & excluded for p, excluded in BOOK.exclusions):
            out.add(("exclusive_programmes_household", home, period))
        government = {kind[r["programme_code"]] for r in rows if r["source_type"] not in BOOK.non_government_sources}
        if any(r["source_type"] in BOOK.non_government_sources and kind[r["programme_code"]] in government for r in rows):
            out.add(("non_government_same_kind", home, period))
    return out


def planted_rules(ds) -> set[tuple[str, str, str]]:
    return {(c.rule_id, (c.kk or c.nik) if c.subject_kind == "HOUSEHOLD" else c.nik, c.period)
            for c in ds.answer_key if c.kind in RULE_KINDS}


# ------------------------------------------------------------------ determinism and size


def test_same_seed_same_output_and_streaming_form_agrees():
    a = generate(4_000, seed=5, reversal_rate=0.01)
    b = generate(4_000, seed=5, reversal_rate=0.01)
    assert a.records == b.records
    assert a.answer_key == b.answer_key
    assert list(iter_records(4_000, seed=5, reversal_rate=0.01)) == a.records
    assert generate(4_000, seed=6, reversal_rate=0.01).records != a.records


def test_streaming_consumer_may_mutate_what_it_gets():
    kwargs = dict(seed=8, redelivery_rate=0.02, modified_rate=0.02, duplicate_rate=0.02, reversal_rate=0.02)
    expected = generate(3_000, **kwargs).records
    got = []
    for r in iter_records(3_000, **kwargs):
        got.append(dict(r))
        r.clear()
    assert got == expected


@pytest.mark.parametrize("n", [0, 1, 37, 999, 12_345])
@pytest.mark.parametrize("reversal_rate", [0, 0.01])
def test_record_count_is_exact(n, reversal_rate):
    assert len(generate(n, seed=3, reversal_rate=reversal_rate).records) == n


def test_planted_counts_follow_the_rates(ds):
    kinds = Counter(c.kind for c in ds.answer_key)
    reversed_ = round(N * REVERSAL_RATE)
    assert kinds == {
        "duplicate_person": round(N * 0.01),
        "redelivery": round(N * 0.005),
        "modified_resubmission": round(N * 0.002),
        "invalid": round(N * 0.002),
        **{k: round(N * 0.002) for k in RULE_KINDS if k != "duplicate_person"},
        "reversal_void": reversed_ // 2,
        "reversal_unknown": reversed_ // 10,
        "reversal_partial": reversed_ - reversed_ // 2 - reversed_ // 10,
    }
    assert Counter(c.status for c in ds.answer_key if c.kind == "duplicate_person") == {
        "open": round(N * 0.01) - reversed_ // 2, "void_reversed": reversed_ // 2}


def test_zero_rates_give_clean_data():
    clean = generate(3_000, seed=2, duplicate_rate=0, redelivery_rate=0, modified_rate=0, invalid_rate=0, case_rate=0)
    assert clean.answer_key == []
    assert len({key(r) for r in clean.records}) == 3_000
    assert recount_rules(clean) == set()
    assert not any(r["programme_code"] == "RTLH" for r in clean.records)  # always above the cap: planted only


def test_reversals_are_off_unless_asked_for():
    assert not reversals(generate(3_000, seed=2))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        generate(10, first_period="2026-13")
    with pytest.raises(ValueError):
        generate(10, months=0)
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        generate(100, duplicate_rate=0.6)
    with pytest.raises(ValueError):
        generate(100, case_rate=0.1)  # once for each of six rules: 0.6
    with pytest.raises(ValueError):
        generate(100, reversal_rate=1.0)
    with pytest.raises(ValueError):
        iter_records(10, first_period="26-01")  # at the call, not at the first next()


# ------------------------------------------------------------------ shape of every record


def test_fields_and_types(ds):
    bad = invalid_keys(ds)
    for r in ds.records:
        fields = REVERSAL_FIELDS if is_reversal(r) else FIELDS
        assert tuple(r) == fields
        for f in fields:
            if f != "amount_idr":
                assert type(r[f]) is str, (f, r)
        if key(r) not in bad:
            assert type(r["amount_idr"]) is int and r["amount_idr"] > 0, r


def test_valid_records_are_well_formed(ds):
    periods = {f"2026-{m:02d}" for m in range(1, 7)}
    lampung = set(REGENCIES)
    for r in valid_records(ds):
        assert r["source_type"] in SOURCE_TYPES and r["kind"] in KINDS and r["channel"] in CHANNELS, r
        assert r["programme_code"] in PROGRAMMES, r
        assert r["source_ref"] and r["agency_code"] and r["funding_account"] and r["recipient_name"], r
        assert re.fullmatch(r"18\d{8}", r["region_code"]) and r["region_code"][:4] in lampung, r
        assert r["kk"] == "" or re.fullmatch(r"\d{16}", r["kk"]), r
        if r["nik"]:
            assert nik_ok(r["nik"]), r
            assert r["provisional_id"] == "", r
        else:
            assert re.fullmatch(r"PRV-\d{10}-\d{6}", r["provisional_id"]), r
        assert r["period"] in periods, r
        assert r["funding_account"].split("-")[1] == r["period"][:4], r  # the budget year of the period
        assert paid_in_time(r), r


def test_programme_figures(ds):
    resubmitted = {c.source_refs[0] for c in ds.answer_key if c.kind == "modified_resubmission"}
    for r in valid_records(ds):
        p, a = r["programme_code"], r["amount_idr"]
        if key(r) in resubmitted:
            continue
        if p == "BPNT":
            assert a == 200_000
        elif p == "BLT_DD":
            assert a == 300_000 and r["source_type"] == "APBDES"
            village = r["region_code"]
            assert (r["source_system"], r["agency_code"]) == (f"SISKEUDES-{village}", f"DESA-{village}")
        elif p == "PKH":
            assert r["period"][5:] in ("01", "04", "07", "10") and a % 25_000 == 0 and 225_000 <= a <= 3_000_000
        elif p == "PIP":
            assert a in (450_000, 750_000, 1_800_000)
        elif p == "PBI_JK":
            assert (a, r["kind"], r["channel"]) == (42_000, "PREMIUM", "BANK_TRANSFER")
        elif p == "RTLH":
            assert a in (17_500_000, 20_000_000) and r["source_type"] == "APBD_KAB"
        elif p == "ZAKAT_FITRAH":
            assert 100_000 <= a <= 400_000 and a % 25_000 == 0 and r["source_type"] == "COMMUNITY"


def test_some_months_are_paid_two_at_once(ds):
    """BPNT (and some village BLT_DD) pay two months together: two records, one disbursed_at."""
    times = defaultdict(set)
    for r in valid_records(ds):
        if r["programme_code"] in ("BPNT", "BLT_DD"):
            times[(ident(r), r["programme_code"], r["disbursed_at"])].add(r["period"])
    together = Counter(k[1] for k, periods in times.items() if len(periods) == 2)
    assert together["BPNT"] > 0 and together["BLT_DD"] > 0


def test_population_looks_like_lampung(ds):
    people = {ident(r): r for r in valid_records(ds)}
    without_nik = sum(1 for p in people if p.startswith("PRV-"))
    migrants = sum(1 for p in people if not p.startswith(("PRV-", "18")))
    assert 0.002 < without_nik / len(people) < 0.03
    assert migrants > 0
    regencies = Counter(r["region_code"][:4] for r in valid_records(ds))
    assert set(regencies) == set(REGENCIES)
    assert regencies["1802"] > regencies["1813"] * 3  # Lampung Tengah is far larger than Pesisir Barat
    assert {r["programme_code"] for r in valid_records(ds)} >= set(PROGRAMMES)


def test_nik_is_unique_per_person(ds):
    """A NIK belongs to one person: one name, one KK, over every valid record."""
    seen = {}
    for r in valid_records(ds):
        if r["nik"]:
            who = (r["recipient_name"].upper(), r["kk"])
            assert seen.setdefault(r["nik"], who) == who, r


def test_households_are_families_with_a_valid_kk(ds):
    """A KK is issued in the household's district and names one village; households where every
    member is insured (PBI JK goes to each member with a NIK) show the family sizes, mostly 3-5."""
    copies = {c.source_refs[1] for c in ds.answer_key if c.kind == "duplicate_person"}  # may come from a neighbour
    villages = defaultdict(set)
    insured = defaultdict(set)
    for r in valid_records(ds):
        if r["kk"] and key(r) not in copies:
            assert kk_ok(r["kk"], r["region_code"]), r
            villages[r["kk"]].add(r["region_code"])
        if r["kk"] and r["programme_code"] == "PBI_JK":
            insured[r["kk"]].add(r["nik"])
    assert all(len(v) == 1 for v in villages.values())
    sizes = Counter(len(v) for v in insured.values())
    assert sum(n for size, n in sizes.items() if 3 <= size <= 5) / sum(sizes.values()) > 0.5
    assert 3 <= sum(size * n for size, n in sizes.items()) / sum(sizes.values()) <= 4.5


# ------------------------------------------------------------------ the answer key is exact


def test_brute_force_rule_recount_equals_answer_key(ds):
    """Every rule the records break, and only those, is a planted case of that rule."""
    assert recount_rules(ds) == planted_rules(ds)
    assert {c.rule_id for c in ds.answer_key if c.kind in RULE_KINDS} == set(RULE_KINDS.values())


def test_every_planted_case_is_in_the_records(ds):
    keys = Counter(key(r) for r in ds.records)
    for c in ds.answer_key:
        for i, ref in enumerate(c.source_refs):
            if c.kind == "reversal_unknown" and i == 1:
                assert ref not in keys  # the original is a payment the data does not hold
            else:
                assert ref in keys, c
    by_key = {key(r): r for r in ds.records}
    for c in ds.answer_key:
        if c.kind in RULE_KINDS and c.kind != "duplicate_person":
            subject = (c.kk or c.nik) if c.subject_kind == "HOUSEHOLD" else c.nik
            for r in (by_key[ref] for ref in c.source_refs):
                assert r["period"] == c.period, c
                assert (household(r) if c.subject_kind == "HOUSEHOLD" else ident(r)) == subject, c


def test_people_without_nik_or_kk_are_planted_too(ds):
    """Undocumented people are covered by the rules: some planted cases are about a person with a
    provisional id and no KK, as a person and as a household of one."""
    by_key = {key(r): r for r in ds.records}
    alone = [c for c in ds.answer_key if c.kind in RULE_KINDS and c.nik.startswith("PRV-")
             and not by_key[c.source_refs[-1]]["kk"]]
    assert any(c.kind == "duplicate_person" for c in alone)
    assert any(c.subject_kind == "HOUSEHOLD" and c.kk == "" for c in alone)


def test_source_keys_repeat_only_for_redeliveries_and_resubmissions(ds):
    counts = Counter(key(r) for r in ds.records)
    repeated = {k for k, n in counts.items() if n > 1}
    planted = {c.source_refs[0] for c in ds.answer_key if c.kind in ("redelivery", "modified_resubmission")}
    assert repeated == planted
    assert all(counts[k] == 2 for k in repeated)
    occurrences = defaultdict(list)
    for r in ds.records:
        if key(r) in repeated:
            occurrences[key(r)].append(r)
    for c in ds.answer_key:
        if c.kind == "redelivery":
            first, second = occurrences[c.source_refs[0]]
            assert first == second
        elif c.kind == "modified_resubmission":
            first, second = occurrences[c.source_refs[0]]
            assert c.rule_id == "exists_with_different_amount_idr"
            assert {f for f in FIELDS if first[f] != second[f]} == {"amount_idr"}
            assert type(second["amount_idr"]) is int and second["amount_idr"] > 0
            assert c.amount_idr_at_stake == abs(second["amount_idr"] - first["amount_idr"])


def test_brute_force_duplicate_recount_equals_answer_key(ds):
    assert recount_duplicates(ds) == planted_duplicates(ds)
    for c in ds.answer_key:
        if c.kind == "duplicate_person":
            assert c.rule_id == "duplicate_person_programme_period"
            assert len(c.source_refs) == 2 and c.source_refs[0] != c.source_refs[1]


def test_household_programmes_are_paid_to_one_member_unless_planted(ds):
    members = defaultdict(set)
    for r in valid_records(ds):
        if r["kk"] and r["programme_code"] in HOUSEHOLD_PROGRAMMES:
            members[(r["kk"], r["programme_code"], r["period"])].add(ident(r))
    over = {k for k, v in members.items() if len(v) > 1}
    planted = {(c.kk, c.programme_code, c.period) for c in ds.answer_key if c.kind == "duplicate_household"}
    assert over == planted and planted


def test_blt_dd_with_pkh_or_bpnt_only_where_planted(ds):
    by_household_period = defaultdict(set)
    for r in valid_records(ds):
        by_household_period[(household(r), r["period"])].add(r["programme_code"])
    together = {k for k, p in by_household_period.items() if "BLT_DD" in p and p & {"PKH", "BPNT"}}
    planted = {(c.kk or c.nik, c.period) for c in ds.answer_key if c.kind == "exclusive_household"}
    assert together == planted and planted
    assert any("BLT_DD" in p for p in by_household_period.values())


def test_rtlh_grants_are_planted_cap_cases(ds):
    by_key = {key(r): r for r in valid_records(ds)}
    planted = {ref for c in ds.answer_key if c.kind == "household_cap" for ref in c.source_refs}
    rtlh = {k for k, r in by_key.items() if r["programme_code"] == "RTLH"}
    assert rtlh and rtlh <= planted
    assert any(by_key[ref]["programme_code"] == "PIP" for ref in planted)  # and some cases of layering


def test_reversals_name_what_they_take_back(ds):
    by_key = {key(r): r for r in ds.records if not is_reversal(r)}
    cases = {c.source_refs[0]: c for c in ds.answer_key if c.kind.startswith("reversal_")}
    voided = {c.source_refs[1] for c in ds.answer_key if c.kind == "duplicate_person" and c.status == "void_reversed"}
    assert len(cases) == len(reversals(ds))
    for r in reversals(ds):
        c = cases[key(r)]
        original = (r["original_source_system"], r["original_source_ref"])
        assert c.source_refs[1] == original and ident(r) == c.nik and r["reason"]
        assert datetime.fromisoformat(r["reversed_at"]).utcoffset() == timedelta(hours=7)
        if c.kind == "reversal_unknown":
            assert original not in by_key and c.status == "pending"
            assert original[1].split("-")[1] == "2025"  # a payment of the year before the window
            continue
        paid = by_key[original]
        assert ident(paid) == ident(r) and r["agency_code"] == paid["agency_code"] and c.status == "accepted"
        assert r["reversed_at"] > paid["disbursed_at"]
        if c.kind == "reversal_void":
            assert original in voided and r["amount_idr"] == paid["amount_idr"]
        else:
            assert 0 < r["amount_idr"] < paid["amount_idr"]
    assert {cases[key(r)].source_refs[1] for r in reversals(ds) if cases[key(r)].kind == "reversal_void"} == voided


def test_duplicates_come_later_in_time_and_stream(ds):
    position = {}
    for i, r in enumerate(ds.records):
        position.setdefault(key(r), i)
    by_key = {key(r): r for r in ds.records}
    changed_system = 0
    for c in ds.answer_key:
        if c.kind == "duplicate_person":
            first, dup = c.source_refs
            assert position[dup] > position[first]
            assert by_key[dup]["disbursed_at"] > by_key[first]["disbursed_at"]
            changed_system += first[0] != dup[0]
    assert changed_system > 0  # some duplicates arrive through another system


def test_records_are_in_time_order_except_resent_copies(ds):
    seen = set()
    firsts = []
    for r in ds.records:
        if key(r) in seen:
            continue  # a redelivery or resubmission: resent later, carrying its old time
        seen.add(key(r))
        firsts.append(r["reversed_at"] if is_reversal(r) else r["disbursed_at"])
    assert firsts == sorted(firsts)


def _defect(r):
    nik = r["nik"]
    if nik and (len(nik) != 16 or not all("0" <= ch <= "9" for ch in nik)):
        return "nik_must_be_16_ascii_digits"
    if nik and not nik_ok(nik):
        return "nik_birth_date_invalid"
    a = r["amount_idr"]
    if a != int(a):
        return "amount_idr_must_be_whole_rupiah"
    if a <= 0:
        return "amount_idr_must_be_positive"
    if r["programme_code"] not in PROGRAMMES:
        return "programme_code_unknown"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", r["period"]):
        return "period_must_be_yyyy_mm"
    return None


def test_invalid_rows_have_exactly_their_defect_and_nothing_else(ds):
    invalid = {c.source_refs[0]: c for c in ds.answer_key if c.kind == "invalid"}
    assert {c.rule_id for c in invalid.values()} == set(INVALID_VARIANTS.values())
    others = [r for r in ds.records if key(r) not in invalid]
    other_people = {ident(r) for r in others}
    other_kks = {r.get("kk") for r in others}
    for r in ds.records:
        if is_reversal(r):
            continue
        c = invalid.get(key(r))
        if c is None:
            assert _defect(r) is None, r
            continue
        assert _defect(r) == c.rule_id, r
        assert c.nik == r["nik"] and c.programme_code == r["programme_code"] and c.period == r["period"]
        assert r["nik"] not in other_people and r["kk"] not in other_kks  # a fresh person and household
    assert any(any("\u0660" <= ch <= "\u0669" for ch in r["nik"]) for r in ds.records)


def test_a_year_boundary_window():
    d = generate(3_000, seed=4, first_period="2026-10", months=6)
    periods = {r["period"] for r in valid_records(d)}
    assert periods == {"2026-10", "2026-11", "2026-12", "2027-01", "2027-02", "2027-03"}
    for r in valid_records(d):
        assert r["funding_account"].split("-")[1] == r["period"][:4], r
        assert f"-{r['period'][:4]}-" in r["source_ref"], r
    assert recount_duplicates(d) == planted_duplicates(d)
    assert recount_rules(d) == planted_rules(d)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=200, max_value=2_500),
    seed=st.integers(min_value=0, max_value=2**32),
    months=st.integers(min_value=1, max_value=14),
    month=st.integers(min_value=1, max_value=12),
)
def test_answer_key_is_exact_for_any_seed_and_window(n, seed, months, month):
    d = generate(n, seed=seed, first_period=f"2027-{month:02d}", months=months, duplicate_rate=0.03,
                 redelivery_rate=0.02, modified_rate=0.02, invalid_rate=0.02, case_rate=0.01, reversal_rate=0.02)
    assert len(d.records) == n
    assert recount_duplicates(d) == planted_duplicates(d)
    assert recount_rules(d) == planted_rules(d)
    assert all(paid_in_time(r) for r in valid_records(d))
    counts = Counter(key(r) for r in d.records)
    assert {k for k, v in counts.items() if v > 1} == {
        c.source_refs[0] for c in d.answer_key if c.kind in ("redelivery", "modified_resubmission")
    }


# ------------------------------------------------------------------ writers


def test_write_jsonl_and_csv(tmp_path):
    d = generate(500, seed=9, invalid_rate=0.02)
    jl = tmp_path / "x.jsonl"
    write_jsonl(jl, d.records)
    lines = jl.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == d.records
    cs = tmp_path / "x.csv"
    write_csv(cs, iter(d.records))
    with open(cs, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == FIELDS
    assert len(rows) == 501
    assert [row[FIELDS.index("nik")] for row in rows[1:]] == [r["nik"] for r in d.records]
    assert [row[FIELDS.index("amount_idr")] for row in rows[1:]] == [str(r["amount_idr"]) for r in d.records]


def test_reversal_rows_go_to_json_lines_only(tmp_path):
    d = generate(800, seed=9, reversal_rate=0.02)
    assert reversals(d)
    write_jsonl(tmp_path / "x.jsonl", d.records)
    assert [json.loads(line) for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()] == d.records
    with pytest.raises(ValueError, match="JSON Lines"):
        write_csv(tmp_path / "x.csv", d.records)


# ------------------------------------------------------------------ against the real intake


def test_intake_rejects_exactly_the_planted_invalid_rows(ds):
    intake = pytest.importorskip("aidcore.intake")
    now_us = intake.to_us(datetime(2027, 1, 1, tzinfo=timezone.utc))
    expected = {c.source_refs[0]: c.rule_id for c in ds.answer_key if c.kind == "invalid"}
    for r in ds.records[:5_000] + [r for r in ds.records if key(r) in expected or is_reversal(r)]:
        out = intake.validate_any(r, reference=REFERENCE, token_key=b"k" * 32, now_us=now_us)
        assert getattr(out, "code", None) == expected.get(key(r)), (r, out)


def test_budget_records_cover_every_line_and_plant_the_largest_short():
    dataset = synthetic.generate(3_000, seed=5)
    budget, short = synthetic.budget_records(dataset.records)
    ref = default_reference()
    paid: dict[tuple, int] = {}
    for rec in dataset.records:
        if "record_type" not in rec and type(rec["amount_idr"]) is int and rec["amount_idr"] > 0 \
                and rec["programme_code"] in ref.programmes:
            key = (rec["funding_account"], rec["agency_code"], rec["programme_code"])
            paid[key] = paid.get(key, 0) + rec["amount_idr"]
    allocated = {(r["funding_account"], r["agency_code"], r["programme_code"]): r["amount_idr"]
                 for r in budget if r["record_type"] == "allocation"}
    released: Counter = Counter()
    for r in budget:
        if r["record_type"] == "release":
            released[(r["funding_account"], r["agency_code"])] += r["amount_idr"]
    assert allocated.keys() == paid.keys() and len(short) == 1
    largest = max(paid, key=paid.get)
    assert short == [largest[0]]
    for key, amount in allocated.items():
        assert amount % 1_000_000 == 0
        assert (amount < paid[key]) == (key == largest)
        released[key[:2]] -= amount
    assert set(released.values()) == {0}  # each agency got in cash what each of its lines allocated
    for r in budget:
        outcome = intake.validate_any(r, reference=ref, token_key=b"k" * 32, now_us=2_000_000_000_000_000)
        assert not isinstance(outcome, intake.Rejection), outcome
