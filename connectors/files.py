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


@dataclass(frozen=True, slots=True)
class RowError:
    code: str
    message: str


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path.name}: unsupported file type {suffix!r} (use .jsonl or .csv)")


def read_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, dict or RowError). Header lines of CSV are not counted as rows."""
    kind = file_format(path)
    if kind == "jsonl":
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


def progress_total(path: Path) -> int:
    return path.stat().st_size
