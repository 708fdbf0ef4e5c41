"""Reading input files row by row: JSON Lines or CSV (by suffix), with 1-based row numbers.

A row that cannot be parsed is yielded as a `RowError` with a named code instead of stopping the
file: invalid_json, invalid_text_encoding.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from aidcore.spreadsheet import CellProblem, cell_value


@dataclass(frozen=True, slots=True)
class RowError:
    code: str
    message: str
    field: str | None = None


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".xlsx":
        return "xlsx"
    raise ValueError(f"{path.name}: unsupported file type {suffix!r} (use .jsonl, .csv or .xlsx)")


def read_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, dict or RowError). Header lines of CSV are not counted as rows."""
    kind = file_format(path)
    if kind == "xlsx":
        yield from _xlsx_rows(path)
    elif kind == "jsonl":
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    code = "invalid_text_encoding" if "utf-8" in str(exc).lower() else "invalid_json"
                    yield number, RowError(code, f"line {number} is not valid JSON: {str(exc)[:80]}")
    else:
        with open(path, "rb") as raw:
            # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is named
            # and the rows around it are still read
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
            for number, row in enumerate(csv.DictReader(text), start=1):
                values = {k: v for k, v in row.items() if k is not None}
                if any(_has_surrogate(v) for v in values.values() if isinstance(v, str)) or any(
                    _has_surrogate(k) for k in values
                ):
                    yield number, RowError("invalid_text_encoding", f"row {number} is not valid UTF-8")
                else:
                    yield number, values


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _xlsx_rows(path: Path) -> Iterator[tuple[int, object]]:
    import openpyxl

    # data_only: a formula's value as Excel last computed it (a file never opened in Excel has none)
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None)
        if header is None:
            return
        names = [h.strip() if isinstance(h, str) else None for h in header]
        # the number the spreadsheet shows: read-only mode yields every row, empty ones included
        for number, cells in enumerate(rows, start=2):
            if all(c is None or c == "" for c in cells):
                continue
            yield number, _xlsx_record(names, cells)
    finally:
        book.close()


def _xlsx_record(names: list[str | None], cells: tuple) -> dict | RowError:
    record = {}
    for name, value in zip(names, cells):
        if name is None:  # a column without a header, as csv.DictReader drops it
            continue
        value = cell_value(name, value)
        if isinstance(value, CellProblem):
            return RowError(value.code, value.message, value.field)
        record[name] = value
    for name in names[len(cells):]:
        if name is not None:
            record[name] = ""
    return record


def estimated_rows(path: Path) -> int:
    """About how many rows the file holds, for a progress bar: an Excel sheet's own dimension, or
    the file size over the average line length of its first MiB."""
    if file_format(path) == "xlsx":
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True)
        try:
            return max(1, (book.worksheets[0].max_row or 2) - 1)
        finally:
            book.close()
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if not head:
        return 1
    return max(1, int(path.stat().st_size / (len(head) / max(1, head.count(b"\n")))))
