"""aidcore.intake for the budget side: allocations and treasury releases, every code in its
precedence order, ids and what a resubmission under their key is called."""

from __future__ import annotations

import itertools

import pytest

from aidcore import intake, outcomes
from aidcore.intake import AcceptedBudget, BudgetAllocation, Rejection, TreasuryRelease
from aidcore.ledger import key_outcome
from builders import (
    DROP,
    NOW_US,
    TOKEN_KEY,
    allocation,
    disbursement,
    raw_allocation,
    raw_release,
    reference,
    reference_with_inactive_programme,
    release,
    reversal,
)


def decide(raw, ref=None):
    return intake.validate_any(raw, reference=ref or reference(), token_key=TOKEN_KEY, now_us=NOW_US)


COMMON = {
    "field_unknown": ({"nik": "1871014504850001"}, "nik"),
    "source_system_required": ({"source_system": " "}, "source_system"),
    "source_ref_required": ({"source_ref": DROP}, "source_ref"),
    "source_system_too_long": ({"source_system": "S" * 129}, "source_system"),
    "source_ref_too_long": ({"source_ref": "R" * 129}, "source_ref"),
    "source_type_unknown": ({"source_type": "APBNX"}, "source_type"),
    "funding_account_required": ({"funding_account": ""}, "funding_account"),
    "funding_account_too_long": ({"funding_account": "F" * 129}, "funding_account"),
    "agency_code_required": ({"agency_code": DROP}, "agency_code"),
    "amount_idr_required": ({"amount_idr": DROP}, "amount_idr"),
    "amount_idr_must_be_integer": ({"amount_idr": "5e9"}, "amount_idr"),
    "amount_idr_must_be_whole_rupiah": ({"amount_idr": "1000.50"}, "amount_idr"),
    "amount_idr_must_be_positive": ({"amount_idr": -1}, "amount_idr"),
    "amount_idr_too_large": ({"amount_idr": 1_000_000_000_000_001}, "amount_idr"),
}
ALLOCATION_CASES = {
    **COMMON,
    "programme_code_required": ({"programme_code": ""}, "programme_code"),
    "programme_code_unknown": ({"programme_code": "PKH2"}, "programme_code"),
    "programme_inactive": ({"programme_code": "OLD_BANSOS"}, "programme_code"),
    "fiscal_year_invalid": ({"fiscal_year": "26"}, "fiscal_year"),
    "allocated_at_invalid": ({"allocated_at": "January"}, "allocated_at"),
    "allocated_at_needs_offset": ({"allocated_at": "2026-01-05T09:00:00"}, "allocated_at"),
    "allocated_at_in_future": ({"allocated_at": "2027-01-05T09:00:00+07:00"}, "allocated_at"),
}
RELEASE_CASES = {
    **COMMON,
    "released_at_invalid": ({"released_at": "soon"}, "released_at"),
    "released_at_needs_offset": ({"released_at": "2026-02-02T10:00:00"}, "released_at"),
    "released_at_in_future": ({"released_at": "2030-02-02T10:00:00+07:00"}, "released_at"),
}
KINDS = {"allocation": (raw_allocation, ALLOCATION_CASES, outcomes.ALLOCATION_INTAKE_CODES),
         "release": (raw_release, RELEASE_CASES, outcomes.RELEASE_INTAKE_CODES)}


@pytest.mark.parametrize("kind", KINDS)
def test_every_code_has_a_case(kind):
    _, cases, codes = KINDS[kind]
    assert set(cases) | {"record_type_unknown"} == set(codes)


@pytest.mark.parametrize(("kind", "code"), [(k, c) for k, (_, cases, _) in KINDS.items() for c in cases])
def test_each_code(kind, code):
    raw, cases, _ = KINDS[kind]
    overrides, field = cases[code]
    got = decide(raw(**overrides), reference_with_inactive_programme())
    assert isinstance(got, Rejection), got
    assert (got.code, got.field) == (code, field)
    assert got.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_record_with_two_problems_reports_the_one_listed_first(kind):
    raw, cases, codes = KINDS[kind]
    wrong = []
    for first, second in itertools.combinations(cases, 2):
        a, b = cases[first][0], cases[second][0]
        if set(a) & set(b):
            continue
        if codes.index(first) > codes.index(second):
            first, second = second, first
        got = decide(raw(**cases[first][0], **cases[second][0]), reference_with_inactive_programme())
        if got.code != first:
            wrong.append(f"{first} + {second} -> {got.code}")
    assert not wrong, "\n".join(wrong)


def test_an_unknown_record_type_names_all_four():
    got = decide(raw_allocation(record_type="budget"))
    assert got.code == "record_type_unknown"
    assert all(t in got.message for t in ("disbursement", "reversal", "allocation", "release"))


def test_valid_records_become_their_events():
    a = allocation(amount_idr="5000000000.00", fiscal_year="2026")
    assert isinstance(a, BudgetAllocation)
    assert (a.funding_account, a.agency_code, a.programme_code, a.fiscal_year, a.amount_idr) == (
        "APBN-2026-KEMENSOS-PKH", "KEMENSOS", "PKH", 2026, 5_000_000_000)
    assert (a.allocated_at_offset_min, a.recorded_at_us) == (420, NOW_US)
    r = release()
    assert isinstance(r, TreasuryRelease)
    assert (r.source_type, r.agency_code, r.amount_idr) == ("APBN", "KEMENSOS", 2_000_000_000)
    assert intake.record_type_of(a) == "allocation" and intake.record_type_of(r) == "release"


def test_a_budget_amount_may_exceed_a_payments_limit():
    assert allocation(amount_idr=reference().max_amount_idr * 1000).amount_idr == 500_000_000_000


@pytest.mark.parametrize("year", [True, 1999, 2101, "20266", "２０２６", None])
def test_fiscal_years_outside_2000_2100_or_not_ascii_are_refused(year):
    assert decide(raw_allocation(fiscal_year=year)).code == "fiscal_year_invalid"


def test_the_same_record_gets_the_same_id_and_any_change_another():
    assert allocation().event_id == allocation().event_id
    assert allocation(amount_idr=1).event_id != allocation().event_id
    assert release().event_id == release().event_id
    assert release(agency_code="DINSOS-LAMPUNG").event_id != release().event_id


def test_an_allocation_and_a_release_with_the_same_content_differ_in_id():
    a = decide(raw_allocation(source_ref="X"))
    r = decide(raw_release(source_ref="X"))
    assert isinstance(a, AcceptedBudget) and isinstance(r, AcceptedBudget)
    assert a.record.event_id != r.record.event_id


@pytest.mark.parametrize(("build", "field", "change"), [
    (allocation, "amount_idr", {"amount_idr": 1}),
    (allocation, "programme_code", {"programme_code": "BPNT"}),
    (allocation, "fiscal_year", {"fiscal_year": 2027}),
    (allocation, "allocated_at", {"allocated_at": "2026-01-06T09:00:00+07:00"}),
    (release, "agency_code", {"agency_code": "DINSOS-LAMPUNG"}),
    (release, "released_at", {"released_at": "2026-02-02T10:00:00+08:00"}),
    (release, "funding_account", {"funding_account": "APBN-2026-OTHER"}),
])
def test_a_budget_record_resent_with_other_content_names_the_field(build, field, change):
    original = build()
    again = build(**change)
    kind = intake.record_type_of(original)
    assert key_outcome(kind, original.event_id, original.digests(), original) == outcomes.EXISTS
    assert key_outcome(kind, original.event_id, original.digests(), again) == f"exists_with_different_{field}"
    assert f"exists_with_different_{field}" in outcomes.ALL_CODES


def test_another_kind_of_record_under_a_key_is_another_record_type():
    a = allocation(source_system="SIKS-NG", source_ref="PKH-2026-04-000001")
    d = disbursement()
    assert key_outcome("disbursement", d.event_id, d.digests(), a) == "exists_with_different_record_type"
    assert key_outcome("allocation", a.event_id, a.digests(), d) == "exists_with_different_record_type"
    v = reversal()
    assert key_outcome("reversal", v.event_id, v.digests(), v) == outcomes.EXISTS
