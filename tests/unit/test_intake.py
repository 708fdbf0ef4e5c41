"""aidcore.intake.validate_record: every outcome code, their precedence, money, time and ids."""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidcore import intake, nik as nikmod
from aidcore.intake import Accepted, Disbursement, Identity
from aidcore.outcomes import CONTENT_FIELDS, INTAKE_CODES
from builders import (
    CONTENT_CHANGES,
    DROP,
    KK,
    NIK,
    NOW,
    NOW_US,
    TOKEN_KEY,
    accepted,
    disbursement,
    iso,
    raw_record,
    reference,
    reference_with_inactive_programme,
    rejection,
    validate,
)

# One way to produce each intake outcome: overrides of raw_record(), and the field the rejection
# must name. "record_must_be_an_object" is not an override: the record is not a mapping at all.
CASES: dict[str, tuple[dict, str | None]] = {
    "field_unknown": ({"amount": 750_000}, "amount"),
    "source_system_required": ({"source_system": "  "}, "source_system"),
    "source_ref_required": ({"source_ref": DROP}, "source_ref"),
    "source_system_too_long": ({"source_system": "S" * 129}, "source_system"),
    "source_ref_too_long": ({"source_ref": "R" * 129}, "source_ref"),
    "source_type_unknown": ({"source_type": "APBN2"}, "source_type"),
    "agency_code_required": ({"agency_code": ""}, "agency_code"),
    "programme_code_required": ({"programme_code": DROP}, "programme_code"),
    "programme_code_unknown": ({"programme_code": "pkh"}, "programme_code"),
    "programme_inactive": ({"programme_code": "OLD_BANSOS"}, "programme_code"),
    "identity_required": ({"nik": "", "provisional_id": DROP}, "nik"),
    "nik_must_be_16_ascii_digits": ({"nik": NIK[:15]}, "nik"),
    "nik_province_invalid": ({"nik": "20" + NIK[2:]}, "nik"),
    "nik_birth_date_invalid": ({"nik": NIK[:6] + "72" + NIK[8:]}, "nik"),
    "nik_serial_invalid": ({"nik": NIK[:12] + "0000"}, "nik"),
    "provisional_id_invalid": ({"nik": "", "provisional_id": "P1"}, "provisional_id"),
    "kk_must_be_16_ascii_digits": ({"kk": KK[:15]}, "kk"),
    "amount_idr_required": ({"amount_idr": DROP}, "amount_idr"),
    "amount_idr_must_be_integer": ({"amount_idr": "abc"}, "amount_idr"),
    "amount_idr_must_be_whole_rupiah": ({"amount_idr": "200000.5"}, "amount_idr"),
    "amount_idr_must_be_positive": ({"amount_idr": 0}, "amount_idr"),
    "amount_idr_too_large": ({"amount_idr": 500_000_001}, "amount_idr"),
    "kind_unknown": ({"kind": "CHEQUE"}, "kind"),
    "period_must_be_yyyy_mm": ({"period": "2026-4"}, "period"),
    "disbursed_at_invalid": ({"disbursed_at": "yesterday"}, "disbursed_at"),
    "disbursed_at_needs_offset": ({"disbursed_at": "2026-04-03T10:00:00"}, "disbursed_at"),
    "disbursed_at_in_future": ({"disbursed_at": "2027-01-01T00:00:00+07:00"}, "disbursed_at"),
    "period_out_of_range": ({"period": "2024-01"}, "period"),
    "channel_unknown": ({"channel": "PIGEON"}, "channel"),
    "region_code_must_be_10_ascii_digits": ({"region_code": "187101100"}, "region_code"),
    "funding_account_required": ({"funding_account": ""}, "funding_account"),
}


def test_every_intake_code_has_a_case():
    assert set(CASES) | {"record_must_be_an_object"} == set(INTAKE_CODES)


def test_the_default_record_is_accepted():
    outcome = validate(raw_record())
    assert isinstance(outcome, Accepted), outcome


@pytest.mark.parametrize("code", list(CASES))
def test_each_intake_code(code):
    overrides, field = CASES[code]
    got = rejection(raw_record(**overrides), ref=reference_with_inactive_programme())
    assert (got.code, got.field) == (code, field)
    assert got.message


@pytest.mark.parametrize("raw", [None, [], ["SIKS-NG"], "a,b,c", 42, b"{}"])
def test_record_must_be_an_object(raw):
    got = rejection(raw)
    assert (got.code, got.field) == ("record_must_be_an_object", None)


def test_reference_without_inactive_programmes_rejects_the_code_as_unknown():
    got = rejection(raw_record(programme_code="OLD_BANSOS"))
    assert got.code == "programme_code_unknown"


def test_limits_of_source_system_and_ref_are_inclusive():
    d = disbursement(source_system="S" * intake.MAX_REF_CHARS, source_ref="R" * intake.MAX_REF_CHARS)
    assert len(d.source_system) == len(d.source_ref) == 128


# --- precedence ------------------------------------------------------------------------------


def _combinable_pairs():
    codes = list(CASES)
    for first, second in itertools.combinations(codes, 2):
        a, b = CASES[first][0], CASES[second][0]
        if set(a) & set(b):
            continue  # both break the same field: no record has both problems
        yield first, second


def test_a_record_with_two_problems_reports_the_one_listed_first():
    assert INTAKE_CODES.index("field_unknown") < INTAKE_CODES.index("funding_account_required")
    ref = reference_with_inactive_programme()
    wrong = []
    pairs = list(_combinable_pairs())
    assert len(pairs) > 300
    for first, second in pairs:
        assert INTAKE_CODES.index(first) < INTAKE_CODES.index(second)
        got = rejection(raw_record(**CASES[first][0], **CASES[second][0]), ref=ref)
        if got.code != first:
            wrong.append(f"{first} + {second} -> {got.code}")
    assert not wrong, "\n".join(wrong)


def test_a_non_object_wins_over_everything():
    assert rejection(["amount", 0]).code == "record_must_be_an_object"


def test_precedence_examples():
    # a bad NIK is reported before a bad amount, a bad amount before a bad region code
    assert rejection(raw_record(nik="123", amount_idr=-5)).code == "nik_must_be_16_ascii_digits"
    assert rejection(raw_record(amount_idr="1.5", region_code="x")).code == "amount_idr_must_be_whole_rupiah"
    # a NIK, when present, is checked even if a provisional_id is also given
    assert rejection(raw_record(nik=NIK[:12] + "0000", provisional_id="P1")).code == "nik_serial_invalid"


# --- identities ------------------------------------------------------------------------------


def test_nik_is_normalized_before_validation_and_tokenizing():
    a = accepted(nik="1871 0145.0485 0001")
    assert a.identity.nik == NIK
    assert a.disbursement.person_token == nikmod.person_token(TOKEN_KEY, NIK)
    assert a.disbursement.identity_kind == "NIK"


def test_provisional_identity_when_nik_is_empty():
    a = accepted(nik="", provisional_id="DESA-1871011001-0042")
    assert a.disbursement.identity_kind == "PROVISIONAL"
    assert a.disbursement.person_token == nikmod.provisional_token(TOKEN_KEY, "DESA-1871011001-0042")
    assert (a.identity.nik, a.identity.provisional_id) == (None, "DESA-1871011001-0042")


def test_nik_wins_over_provisional_id_and_the_provisional_id_is_not_kept():
    a = accepted(provisional_id="DESA-1871011001-0042")
    assert a.disbursement.identity_kind == "NIK"
    assert a.identity.provisional_id is None


def test_kk_is_optional_and_tokenized_when_present():
    assert disbursement(kk="").kk_token is None
    assert disbursement(kk=DROP).kk_token is None
    assert disbursement(kk="1871 0101 0110 0001").kk_token == nikmod.kk_token(TOKEN_KEY, KK)


def test_the_clear_nik_never_appears_in_the_disbursement():
    a = accepted(kk=KK, recipient_name="Siti Aminah")
    for f in fields(Disbursement):
        value = str(getattr(a.disbursement, f.name))
        assert NIK not in value, f.name
        assert KK not in value, f.name
        assert "Siti" not in value, f.name
    assert (a.identity.nik, a.identity.kk, a.identity.recipient_name) == (NIK, KK, "Siti Aminah")
    assert a.identity.person_token == a.disbursement.person_token


def test_the_clear_provisional_id_never_appears_in_the_disbursement():
    a = accepted(nik="", provisional_id="DESA-1871011001-0042")
    for f in fields(Disbursement):
        assert "DESA-1871011001-0042" not in str(getattr(a.disbursement, f.name)), f.name


def test_disbursement_has_no_field_for_clear_identity():
    names = {f.name for f in fields(Disbursement)}
    assert not names & {"nik", "kk", "provisional_id", "recipient_name"}
    assert {"nik", "kk", "recipient_name"} <= {f.name for f in fields(Identity)}


# --- money -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        (200_000, 200_000),
        ("200000", 200_000),
        ("200000.00", 200_000),
        (" 200000 ", 200_000),
        (200_000.0, 200_000),  # a JSON number with a zero fraction
        # Exponent notation is a decimal string whose value is whole: the code accepts it.
    ],
)
def test_whole_rupiah_amounts_are_accepted(value, amount):
    assert disbursement(amount_idr=value).amount_idr == amount


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (200_000.5, "amount_idr_must_be_whole_rupiah"),
        ("200000.5", "amount_idr_must_be_whole_rupiah"),
        ("200000.01", "amount_idr_must_be_whole_rupiah"),
        ("1e-3", "amount_idr_must_be_integer"),
        ("1e3", "amount_idr_must_be_integer"),
        ("2E5", "amount_idr_must_be_integer"),
        ("\u0662\u0660\u0660\u0660\u0660\u0660", "amount_idr_must_be_integer"),
        ("200_000", "amount_idr_must_be_integer"),
        ("200.000", "amount_idr_must_be_integer"),
        ("1.000.000", "amount_idr_must_be_integer"),
        ("200,000", "amount_idr_must_be_integer"),
        ("   ", "amount_idr_required"),
        (True, "amount_idr_must_be_integer"),
        (False, "amount_idr_must_be_integer"),
        ("abc", "amount_idr_must_be_integer"),
        ("0x10", "amount_idr_must_be_integer"),
        ("NaN", "amount_idr_must_be_integer"),
        ("Infinity", "amount_idr_must_be_integer"),
        (float("inf"), "amount_idr_must_be_integer"),
        (float("nan"), "amount_idr_must_be_integer"),
        ([200_000], "amount_idr_must_be_integer"),
        (0, "amount_idr_must_be_positive"),
        ("0.00", "amount_idr_must_be_positive"),
        ("-0", "amount_idr_must_be_positive"),
        (-5, "amount_idr_must_be_positive"),
        ("-5", "amount_idr_must_be_positive"),
        (None, "amount_idr_required"),
        ("", "amount_idr_required"),
    ],
)
def test_bad_amounts_are_rejected_with_the_right_code(value, code):
    got = rejection(raw_record(amount_idr=value))
    assert (got.code, got.field) == (code, "amount_idr")


def test_fractions_are_never_rounded():
    for value in ("749999.9", "750000.4", 750_000.5):
        assert rejection(raw_record(amount_idr=value)).code == "amount_idr_must_be_whole_rupiah"


def test_amount_at_exactly_the_maximum_is_accepted_and_one_rupiah_more_rejected():
    top = reference().max_amount_idr
    assert disbursement(amount_idr=top).amount_idr == top
    assert disbursement(amount_idr=str(top)).amount_idr == top
    assert rejection(raw_record(amount_idr=top + 1)).code == "amount_idr_too_large"
    assert rejection(raw_record(amount_idr=f"{top + 1}.00")).code == "amount_idr_too_large"


def test_huge_exponent_amount_is_rejected_quickly():
    # A child process so the runaway conversion can be killed at the deadline.
    code = (
        "from aidcore.intake import parse_amount\n"
        "outcome = parse_amount('1e999999999')\n"
        "print(outcome if isinstance(outcome, str) else 'an int')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1.0)
    assert done.stdout.strip() in ("amount_idr_too_large", "amount_idr_must_be_integer")


# --- period and time -------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["2026-01", "2026-04", "2000-01", "2025-12"])
def test_good_periods(period):
    assert disbursement(period=period, disbursed_at=f"{period}-01T10:00:00+07:00").period == period


@pytest.mark.parametrize(("period", "ok"), [("2025-04", True), ("2025-03", False), ("2026-07", True),
                                            ("2026-08", False), ("2099-01", False), ("2000-01", False)])
def test_a_period_may_be_12_months_behind_or_3_ahead_of_the_month_paid(period, ok):
    raw = raw_record(period=period, disbursed_at="2026-04-01T00:30:00+07:00")  # March 31 in UTC, April where paid
    outcome = validate(raw)
    assert isinstance(outcome, Accepted) if ok else outcome.code == "period_out_of_range", outcome


@pytest.mark.parametrize("period", ["2026-00", "2026-13", "2026-4", "202604", "26-04", "1999-12", "2101-01", "2026/04", "\uff12\uff10\uff12\uff16-04"])
def test_bad_periods(period):
    assert rejection(raw_record(period=period)).code == "period_must_be_yyyy_mm"


def test_disbursed_at_is_kept_as_utc_microseconds_and_the_senders_offset():
    d = disbursement(disbursed_at="2026-04-03T10:00:00+07:00")
    assert d.disbursed_at_us == intake.to_us(NOW.replace(day=3, hour=10))
    assert d.disbursed_at_offset_min == 420
    same_instant = disbursement(disbursed_at="2026-04-03T03:00:00+00:00")
    assert same_instant.disbursed_at_us == d.disbursed_at_us
    assert same_instant.disbursed_at_offset_min == 0


@pytest.mark.parametrize("text", ["2026-04-03T10:00:00", "2026-04-03", "2026-04-03 10:00"])
def test_disbursed_at_without_offset_is_rejected(text):
    assert rejection(raw_record(disbursed_at=text)).code == "disbursed_at_needs_offset"


@pytest.mark.parametrize("text", ["yesterday", "", "03/04/2026 10:00", "2026-04-31T10:00:00+07:00"])
def test_disbursed_at_that_is_not_iso_8601_is_invalid(text):
    assert rejection(raw_record(disbursed_at=text)).code == "disbursed_at_invalid"


def test_disbursed_at_exactly_at_the_future_tolerance_is_accepted():
    limit = NOW + timedelta(seconds=reference().future_tolerance_s)
    assert disbursement(disbursed_at=iso(limit)).disbursed_at_us == NOW_US + reference().future_tolerance_s * 1_000_000


@pytest.mark.parametrize("beyond", [timedelta(microseconds=1), timedelta(seconds=1)])
def test_disbursed_at_beyond_the_future_tolerance_is_rejected(beyond):
    limit = NOW + timedelta(seconds=reference().future_tolerance_s)
    assert rejection(raw_record(disbursed_at=iso(limit + beyond))).code == "disbursed_at_in_future"


def test_future_tolerance_is_relative_to_the_now_passed_in():
    late = iso(NOW + timedelta(days=3))
    assert rejection(raw_record(disbursed_at=late)).code == "disbursed_at_in_future"
    assert isinstance(validate(raw_record(disbursed_at=late), now_us=NOW_US + 3 * 86_400 * 1_000_000), Accepted)


def test_recorded_at_is_the_now_passed_in():
    assert disbursement(now_us=NOW_US + 5).recorded_at_us == NOW_US + 5


# --- event ids -------------------------------------------------------------------------------

CHANGES = CONTENT_CHANGES


def test_changes_cover_every_content_field():
    assert set(CHANGES) == set(CONTENT_FIELDS)


def test_event_id_is_a_deterministic_uuid():
    import uuid

    a, b = disbursement(), disbursement()
    assert a.event_id == b.event_id
    assert uuid.UUID(a.event_id).version == 5


def test_recorded_at_does_not_change_the_event_id():
    early, late = disbursement(now_us=NOW_US), disbursement(now_us=NOW_US + 3_600_000_000)
    assert early.recorded_at_us != late.recorded_at_us
    assert early.event_id == late.event_id


def test_formatting_of_the_nik_does_not_change_the_event_id():
    assert disbursement(nik="1871.0145.0485.0001").event_id == disbursement().event_id


def test_same_instant_in_another_offset_is_different_content():
    # The sender's offset is kept (to show the original time), so it is part of the content.
    assert disbursement(disbursed_at="2026-04-03T03:00:00+00:00").event_id != disbursement().event_id


@pytest.mark.parametrize(
    "changes",
    list(CHANGES.values()) + [{"source_system": "DINSOS-LPG"}, {"source_ref": "PKH-2026-04-000002"}, {"kk": ""}],
    ids=list(CHANGES) + ["source_system", "source_ref", "kk_removed"],
)
def test_event_id_changes_when_any_content_or_key_field_changes(changes):
    assert disbursement(**changes).event_id != disbursement().event_id


def test_recipient_name_is_identity_data_not_content():
    # The name goes only to the vault; a corrected spelling is not a different disbursement.
    assert disbursement(recipient_name="SITI AMINAH").event_id == disbursement().event_id


@settings(max_examples=300)
@given(st.text(max_size=20), st.text(max_size=40), st.binary(min_size=32, max_size=32))
def test_event_id_is_the_version_5_uuid_of_the_content_hash(system, ref, digest):
    """Event ids are stored for good: the formatting shortcut must give exactly what uuid gives."""
    import hashlib
    import uuid

    h = hashlib.sha256(system.encode() + b"\x1f" + ref.encode() + b"\x1f" + digest).digest()
    assert intake.make_event_id(system, ref, digest) == str(uuid.UUID(bytes=h[:16], version=5))
