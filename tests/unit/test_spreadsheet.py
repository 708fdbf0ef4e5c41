"""Excel input: typed cells become the values a CSV would hold, or a named refusal; sheets are
read with the row numbers Excel shows."""

from __future__ import annotations

from datetime import date, datetime

import openpyxl
import pytest

from aidcore.spreadsheet import CellProblem, cell_value
from connectors.files import RowError, estimated_rows, read_rows
from tests.unit.builders import NIK, NOW_US, TOKEN_KEY, raw_record, reference
from aidcore.intake import Rejection, validate_any


def test_text_stays_text_and_empty_cells_are_empty():
    assert cell_value("nik", NIK) == NIK
    assert cell_value("kk", None) == ""


@pytest.mark.parametrize("field", ["nik", "kk"])
@pytest.mark.parametrize("value", [1871014504850001, 1.871014504850001e15, 1871014504850000])
def test_a_nik_or_kk_typed_as_a_number_is_refused_never_guessed(field, value):
    problem = cell_value(field, value)
    assert isinstance(problem, CellProblem)
    assert (problem.code, problem.field) == (f"{field}_stored_as_number", field)
    assert str(value) not in problem.message


@pytest.mark.parametrize("value, expected", [(250000, 250000), (250000.0, 250000), (250000.5, 250000.5)])
def test_amounts_keep_their_number(value, expected):
    got = cell_value("amount_idr", value)
    assert got == expected and type(got) is type(expected)


def test_amount_cells_reach_intake_precisely():
    def outcome(amount):
        return validate_any(raw_record(amount_idr=cell_value("amount_idr", amount)), reference=reference(),
                            token_key=TOKEN_KEY, now_us=NOW_US)

    assert outcome(250000.0).disbursement.amount_idr == 250000
    rejected = outcome(250000.5)
    assert isinstance(rejected, Rejection) and rejected.code == "amount_idr_must_be_whole_rupiah"


def test_headers_are_recognised_in_any_case():
    assert cell_value("NIK", 1871014504850001).code == "nik_stored_as_number"
    assert cell_value("Amount_IDR", 250000.0) == 250000


def test_codes_typed_as_numbers_read_as_the_integer_excel_shows():
    assert cell_value("region_code", 1871011001) == "1871011001"
    assert cell_value("source_ref", 42.0) == "42"
    assert cell_value("source_ref", 12.5).code == "number_in_text_field"
    assert cell_value("source_ref", 10**15).code == "number_in_text_field"


def test_dates_booleans_and_periods():
    assert cell_value("disbursed_at", datetime(2026, 4, 3, 9, 30)) == "2026-04-03T09:30:00"
    assert cell_value("period", date(2026, 3, 1)).code == "period_stored_as_date"
    assert cell_value("source_ref", datetime(2026, 3, 1)).code == "date_in_text_field"
    assert cell_value("amount_idr", True).code == "boolean_cell"


def test_a_timestamp_typed_as_an_excel_date_has_no_offset_and_intake_says_so():
    raw = raw_record(disbursed_at=cell_value("disbursed_at", datetime(2026, 4, 3, 9, 30)))
    rejected = validate_any(raw, reference=reference(), token_key=TOKEN_KEY, now_us=NOW_US)
    assert rejected.code == "disbursed_at_needs_offset"


def _sheet(path, rows):
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)
    return path


def test_sheet_rows_carry_the_row_number_excel_shows(tmp_path):
    path = _sheet(tmp_path / "a.xlsx", [
        ["source_ref", "nik", "amount_idr", None],
        ["R1", NIK, 250000],
        [],
        ["R3", 1871014504850001, 250000.5, "under no header"],
        ["R4", NIK, None],
    ])
    rows = list(read_rows(path))
    assert [n for n, _ in rows] == [2, 4, 5]
    assert rows[0][1] == {"source_ref": "R1", "nik": NIK, "amount_idr": 250000}
    error = rows[1][1]
    assert isinstance(error, RowError) and (error.code, error.field) == ("nik_stored_as_number", "nik")
    assert rows[2][1] == {"source_ref": "R4", "nik": NIK, "amount_idr": ""}
    assert estimated_rows(path) == 4
