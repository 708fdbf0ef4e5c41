"""Reading input files: JSON Lines and CSV rows, with named errors for unreadable rows."""

from __future__ import annotations

import pytest

from connectors.files import RowError, file_format, read_rows


def test_jsonl_rows_are_numbered_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    assert list(read_rows(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_a_broken_json_line_is_a_named_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    rows = list(read_rows(path))
    assert rows[0] == (1, {"a": 1}) and rows[2] == (3, {"a": 3})
    assert isinstance(rows[1][1], RowError) and rows[1][1].code == "invalid_json"


def test_invalid_utf8_in_jsonl_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": "\xff\xfe"}\n')
    (number, row), = read_rows(path)
    assert isinstance(row, RowError) and row.code == "invalid_text_encoding"


def test_csv_rows_are_dicts_of_strings(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("source_system,amount_idr\nS,200000\nT,300000\n", encoding="utf-8")
    assert list(read_rows(path)) == [(1, {"source_system": "S", "amount_idr": "200000"}),
                                     (2, {"source_system": "T", "amount_idr": "300000"})]


def test_invalid_utf8_in_csv_is_named(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"source_system,amount_idr\nS,200000\n\xff,1\n")
    rows = list(read_rows(path))
    assert rows[0] == (1, {"source_system": "S", "amount_idr": "200000"})
    assert isinstance(rows[-1][1], RowError) and rows[-1][1].code == "invalid_text_encoding"


@pytest.mark.parametrize("name", ["a.xml", "a.txt", "a"])
def test_unsupported_file_types_are_refused(name, tmp_path):
    with pytest.raises(ValueError):
        file_format(tmp_path / name)


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfsource_system,amount_idr\r\nS,200000\r\n")
    assert list(read_rows(path)) == [(1, {"source_system": "S", "amount_idr": "200000"})]
