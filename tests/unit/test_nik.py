"""aidcore.nik: normalization, structural validation, tokens and masking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidcore import nik as nikmod
from builders import NIK, OTHER_TOKEN_KEY, TOKEN_KEY, make_nik

HEX32 = re.compile(r"[0-9a-f]{32}")


# --- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "1871014504850001",
        "1871 0145 0485 0001",
        "1871.0145.0485.0001",
        "18.71.01.450485.0001",
        "  1871014504850001\t",
        "1871\u00a00145\u00a004850001",
    ],
)
def test_normalize_strips_spaces_and_dots(raw):
    assert nikmod.normalize(raw) == NIK


def test_normalize_keeps_other_characters_so_validation_can_reject_them():
    assert nikmod.normalize("1871-0145-0485-0001") == "1871-0145-0485-0001"


# --- structure -------------------------------------------------------------------------------


def test_a_valid_lampung_nik_has_no_problem():
    assert nikmod.nik_problem(NIK) is None


def test_make_nik_builds_the_default():
    assert make_nik() == NIK


@pytest.mark.parametrize(
    "nik",
    [
        "187101450485000",  # 15 digits
        "18710145048500011",  # 17 digits
        "",
        "1871014504850O01",  # letter O
        "1871-01450485001",
        "\u0661\u0662\u0663" + NIK[3:],  # Arabic-Indic ١٢٣
        "\u0661\u0668\u0667\u0661\u0660\u0661\u0664\u0665\u0660\u0664\u0668\u0665\u0660\u0660\u0660\u0661",  # all Arabic-Indic
        "\uff11" + NIK[1:],  # full-width １
        "\uff11\uff18\uff17\uff11\uff10\uff11\uff14\uff15\uff10\uff14\uff18\uff15\uff10\uff10\uff10\uff11",
        "\u00b9" + NIK[1:],  # superscript one
        NIK[:15] + "\u00b2",  # superscript two
        "\u0967" + NIK[1:],  # Devanagari one
    ],
)
def test_nik_must_be_16_ascii_digits(nik):
    assert nikmod.nik_problem(nik) == "nik_must_be_16_ascii_digits"


def test_non_ascii_digits_are_rejected_even_though_isdigit_accepts_them():
    for sample in ("\u0661\u0662\u0663", "\uff11", "\u00b9\u00b2\u00b3"):
        assert sample.isdigit(), "premise: str.isdigit() accepts these"
        assert not nikmod.is_ascii_digits(sample, len(sample))


@given(st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=16, max_size=16))
@settings(database=None, max_examples=200)
def test_only_ascii_digits_ever_pass(text):
    problem = nikmod.nik_problem(text)
    if not all(c in "0123456789" for c in text):
        assert problem == "nik_must_be_16_ascii_digits"


@pytest.mark.parametrize("province", ["00", "10", "20", "99", "54", "80"])
def test_unknown_province_code_is_rejected(province):
    assert nikmod.nik_problem(make_nik(province=province)) == "nik_province_invalid"


@pytest.mark.parametrize("province", sorted(nikmod.PROVINCE_CODES))
def test_every_known_province_is_accepted(province):
    # Migrants hold NIKs from other provinces: the prefix is never a test of eligibility.
    assert nikmod.nik_problem(make_nik(province=province)) is None


@pytest.mark.parametrize("dd", [1, 15, 31, 41, 45, 60, 71])
def test_birth_day_for_men_and_women_plus_40_is_valid(dd):
    nik = NIK[:6] + f"{dd:02d}" + "01" + "85" + "0001"  # January has 31 days
    assert nikmod.nik_problem(nik) is None


@pytest.mark.parametrize("dd", [0, 32, 39, 40, 72, 80, 99])
def test_birth_day_outside_1_31_and_41_71_is_invalid(dd):
    nik = NIK[:6] + f"{dd:02d}" + "01" + "85" + "0001"
    assert nikmod.nik_problem(nik) == "nik_birth_date_invalid"


@pytest.mark.parametrize("month", [0, 13, 99])
def test_birth_month_00_and_13_are_invalid(month):
    assert nikmod.nik_problem(make_nik(month=month)) == "nik_birth_date_invalid"


@pytest.mark.parametrize("female", [False, True])
def test_29_february_is_accepted_structurally(female):
    # YY has no century, so leap years cannot be checked; 29 Feb is always structurally fine.
    assert nikmod.nik_problem(make_nik(day=29, month=2, year=85, female=female)) is None


@pytest.mark.parametrize(("day", "month"), [(30, 2), (31, 4), (31, 6), (31, 9), (31, 11)])
@pytest.mark.parametrize("female", [False, True])
def test_day_beyond_the_month_is_invalid(day, month, female):
    assert nikmod.nik_problem(make_nik(day=day, month=month, female=female)) == "nik_birth_date_invalid"


def test_serial_0000_is_invalid_and_0001_valid():
    assert nikmod.nik_problem(make_nik(serial=0)) == "nik_serial_invalid"
    assert nikmod.nik_problem(make_nik(serial=1)) is None
    assert nikmod.nik_problem(make_nik(serial=9999)) is None


def test_checks_report_the_first_problem():
    # Bad province, bad date and zero serial: the province is checked first.
    assert nikmod.nik_problem("9971017204850000") == "nik_province_invalid"
    assert nikmod.nik_problem("1871017204850000") == "nik_birth_date_invalid"


# --- provisional ids -------------------------------------------------------------------------


@pytest.mark.parametrize("pid", ["PRV1", "DESA-1871011001-0042", "x" * 64])
def test_provisional_id_accepted(pid):
    assert nikmod.provisional_problem(pid) is None


@pytest.mark.parametrize("pid", ["", "abc", "x" * 65, "PRV 0001", "PRV-\u00e9t\u00e9", "PRV\t001"])
def test_provisional_id_rejected(pid):
    assert nikmod.provisional_problem(pid) == "provisional_id_invalid"


# --- tokens ----------------------------------------------------------------------------------

TOKEN_FUNCTIONS = [nikmod.person_token, nikmod.provisional_token, nikmod.kk_token]


@pytest.mark.parametrize("token_of", TOKEN_FUNCTIONS, ids=lambda f: f.__name__)
def test_token_is_deterministic_32_lowercase_hex(token_of):
    token = token_of(TOKEN_KEY, NIK)
    assert token == token_of(TOKEN_KEY, NIK)
    assert len(token) == nikmod.TOKEN_HEX_CHARS == 32
    assert HEX32.fullmatch(token)


@pytest.mark.parametrize("token_of", TOKEN_FUNCTIONS, ids=lambda f: f.__name__)
def test_token_differs_by_key(token_of):
    assert token_of(TOKEN_KEY, NIK) != token_of(OTHER_TOKEN_KEY, NIK)


def test_token_is_not_a_plain_hash_of_the_nik():
    import hashlib

    assert nikmod.person_token(TOKEN_KEY, NIK) not in hashlib.sha256(NIK.encode()).hexdigest()


@given(st.text(alphabet="0123456789", min_size=4, max_size=16))
@settings(database=None, max_examples=100)
def test_nik_provisional_and_kk_domains_never_collide_for_the_same_string(value):
    tokens = {f(TOKEN_KEY, value) for f in TOKEN_FUNCTIONS}
    assert len(tokens) == 3


def test_different_niks_give_different_tokens():
    assert nikmod.person_token(TOKEN_KEY, NIK) != nikmod.person_token(TOKEN_KEY, make_nik(serial=2))


# --- mask ------------------------------------------------------------------------------------


def test_mask_shows_only_the_first_five_and_last_two_digits():
    assert nikmod.mask(NIK) == "18710*********01"
    assert len(nikmod.mask(NIK)) == 16


@pytest.mark.parametrize("text", ["", "123", "18710145048500011"])
def test_mask_of_a_non_nik_hides_everything(text):
    assert nikmod.mask(text) == "*" * len(text)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=100), st.sampled_from([b"NIK:", b"PRV:", b"KK:"]),
       st.text(alphabet="0123456789ABCDEFXYZ-", min_size=1, max_size=40))
def test_token_is_the_hmac_sha256_prefix(key, domain, value):
    """Tokens are stored for good: the precomputed pads must give exactly the HMAC-SHA256 prefix
    every earlier token was made of, for keys shorter and longer than SHA-256's 64-byte block."""
    import hashlib
    import hmac

    expected = hmac.new(key, domain + value.encode("ascii"), hashlib.sha256).hexdigest()[:nikmod.TOKEN_HEX_CHARS]
    assert nikmod._token(key, domain, value) == expected
