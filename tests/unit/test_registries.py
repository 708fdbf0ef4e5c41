"""Registry extracts: row validation with named codes, and where registries disagree."""

from __future__ import annotations

import pytest

from aidcore.intake import Rejection
from aidcore.registries import (
    ABSENT,
    DECILE_DIFFERS,
    VILLAGE_DIFFERS,
    Entry,
    disagreements,
    person_disagreements,
    validate_registry_row,
)
from aidcore.watermark import Position, advance
from tests.unit.builders import KK, NIK, NOW_US, TOKEN_KEY, reference


def row(**overrides):
    raw = {"nik": NIK, "kk": KK, "village_code": "1871011001", "decile": "1", "name": "Siti"}
    raw.update(overrides)
    return validate_registry_row(raw, registry="DTKS", extract_date="2026-10-01", row_ref="dtks.csv:7",
                                 regencies=reference().regencies, token_key=TOKEN_KEY, now_us=NOW_US)


def test_a_valid_row_is_tokens_on_the_record_and_the_nik_for_the_vault_only():
    r = row()
    assert r.nik == NIK and r.kk == KK and r.name == "Siti"
    rec = r.record
    assert NIK not in repr(rec) and KK not in repr(rec)
    assert (rec.regency_code, rec.village_code, rec.decile, rec.source_row_ref) == ("1871", "1871011001", 1, "dtks.csv:7")
    assert rec.event_id == row(decile="2").record.event_id  # one event per person per extract


@pytest.mark.parametrize("overrides, code", [
    ({"nik": ""}, "nik_required"),
    ({"nik": "18710145048500"}, "nik_must_be_16_ascii_digits"),
    ({"nik": "1871019904850001"}, "nik_birth_date_invalid"),
    ({"kk": "123"}, "kk_must_be_16_ascii_digits"),
    ({"village_code": "187101100"}, "village_code_must_be_10_ascii_digits"),
    ({"village_code": "3171011001"}, "regency_unknown"),
    ({"decile": "0"}, "decile_must_be_1_to_10"),
    ({"decile": "11"}, "decile_must_be_1_to_10"),
    ({"decile": "1.5"}, "decile_must_be_1_to_10"),
    ({"row_ref": "x" * 129}, "row_ref_too_long"),
])
def test_bad_rows_are_named(overrides, code):
    r = row(**overrides)
    assert isinstance(r, Rejection) and r.code == code


def test_decile_and_kk_may_be_absent():
    r = row(decile="", kk="")
    assert r.record.decile is None and r.record.kk_token is None


E = Entry


def test_one_person_absent_with_another_decile_and_village():
    found = person_disagreements("t1", {"DTKS": E("1871", "1871011001", 1), "P3KE": E("1807", "1807012003", 2)},
                                 ("DTKS", "P3KE", "REGSOSEK"))
    assert [d.kind for d in found] == [ABSENT, DECILE_DIFFERS, VILLAGE_DIFFERS]
    assert found[0].detail == {"missing_from": ["REGSOSEK"], "in": ["DTKS", "P3KE"]}
    assert found[1].detail == {"DTKS": 1, "P3KE": 2}
    assert found[2].regencies == ("1807", "1871")


def test_deciles_are_compared_only_where_given_and_agreement_is_silent():
    entries = {"DTKS": E("1871", "1871011001", None), "P3KE": E("1871", "1871011001", 3)}
    assert person_disagreements("t", entries, ("DTKS", "P3KE")) == []


def test_report_counts_per_kind_and_regency_and_filters_by_regency():
    current = {
        "DTKS": {"a": E("1871", "1871011001", 1), "b": E("1807", "1807012003", 2), "c": E("1807", "1807012003", 1)},
        "P3KE": {"a": E("1871", "1871011001", 1), "b": E("1807", "1807012003", 3), "c": E("1871", "1871011002", 1)},
        "REGSOSEK": {"a": E("1871", "1871011001", 1), "c": E("1807", "1807012003", 1)},
    }
    report = disagreements(current).as_dict()
    assert report["registries"] == ["DTKS", "P3KE", "REGSOSEK"] and report["people"] == 3
    assert report["by_kind"] == {ABSENT: 1, DECILE_DIFFERS: 1, VILLAGE_DIFFERS: 1}
    assert report["by_regency"] == {"1807": {ABSENT: 1, DECILE_DIFFERS: 1, VILLAGE_DIFFERS: 1},
                                    "1871": {ABSENT: 0, DECILE_DIFFERS: 0, VILLAGE_DIFFERS: 1}}
    assert [e["person_token"] for e in report["examples"][VILLAGE_DIFFERS]] == ["c"]
    only = disagreements(current, regency="1871").as_dict()
    assert only["people"] == 2 and only["by_kind"] == {ABSENT: 0, DECILE_DIFFERS: 0, VILLAGE_DIFFERS: 1}
    assert only["by_regency"] == {"1871": {ABSENT: 0, DECILE_DIFFERS: 0, VILLAGE_DIFFERS: 1}}


def test_one_registry_alone_has_nothing_to_disagree_with():
    assert disagreements({"DTKS": {"a": E("1871", "1871011001", 1)}}).as_dict()["by_kind"] == {
        ABSENT: 0, DECILE_DIFFERS: 0, VILLAGE_DIFFERS: 0}


def test_watermark_position_keeps_the_keys_of_its_value_and_drops_them_when_it_moves():
    start = Position(None)
    p = advance(start, [("1", "a"), ("2", "c"), ("2", "d")])
    assert p == Position("2", ("c", "d"))
    # a row arriving later at the same watermark, with a key sorting before those read
    assert advance(p, [("2", "b")]) == Position("2", ("c", "d", "b"))
    assert advance(p, [("2", "b"), ("3", "a")]) == Position("3", ("a",))
    assert advance(p, []) == p
