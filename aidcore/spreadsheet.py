"""What a typed spreadsheet cell means as an input value, decided before intake sees the row.

A CSV cell is always text; an Excel cell is typed: text, a number (always an IEEE double inside
Excel, shown with at most 15 significant digits), a date or time, or a boolean. This module turns
one cell's value into what the same column would hold in a CSV file, or names why it cannot:

- NIK and KK cells typed as numbers are refused (`nik_stored_as_number`, `kk_stored_as_number`):
  Excel keeps 15 significant digits, so the 16th digit of a NIK is already gone, and any leading
  zero too. Nothing is guessed back.
- Amounts keep their number: 250000.0 is 250000; 250000.5 reaches intake as a number and is
  rejected there as a fraction (`amount_idr_must_be_whole_rupiah`), never rounded.
- Timestamp columns typed as dates carry no UTC offset, so they become ISO text without one and
  intake names that (`disbursed_at_needs_offset`); a period typed as a date is refused
  (`period_stored_as_date`): Excel makes a date of "2026-03" and the day it invents is a guess.
- Other text columns (references, codes) typed as numbers are read as the integer Excel shows when
  that is exact (a whole number below 10^15); otherwise `number_in_text_field`. A date in a text
  column is `date_in_text_field`; a boolean anywhere is `boolean_cell`.

Only the standard library: the reader (connectors.files) hands plain Python values in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

# columns whose value is a number in the input record; everything else is text
NUMBER_FIELDS = frozenset({"amount_idr", "fiscal_year", "decile"})
# columns holding a moment: a typed date becomes ISO 8601 text (offset-less: intake names that)
MOMENT_FIELDS = frozenset({"disbursed_at", "reversed_at", "allocated_at", "released_at", "extract_date"})
# identity columns: 16 digits, more than Excel's 15 significant digits can hold
IDENTITY_FIELDS = frozenset({"nik", "kk"})
PERIOD_FIELDS = frozenset({"period"})
EXACT_TEXT_LIMIT = 10**15  # below this, a whole double is the integer Excel shows


@dataclass(frozen=True, slots=True)
class CellProblem:
    code: str
    field: str
    message: str


def cell_value(field: str, value: object) -> object:
    """The input value of one cell of column `field` (its header, in any case), or the
    `CellProblem` that refuses it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before numbers: bool is an int in Python
        return CellProblem("boolean_cell", field, f"{field} is a TRUE/FALSE cell; type the value as text")
    if isinstance(value, (int, float)):
        return _number(field, value)
    if isinstance(value, (datetime, date, time)):
        return _moment(field, value)
    return CellProblem("unreadable_cell", field, f"{field} holds a cell of type {type(value).__name__}")


def _number(field: str, value: int | float) -> object:
    if field.lower() in IDENTITY_FIELDS:
        return CellProblem(f"{field.lower()}_stored_as_number", field,
                           f"{field} is stored as a number, which keeps only 15 significant digits and no leading"
                           f" zeros; format the column as text and enter the {field.upper()} again")
    if field.lower() in NUMBER_FIELDS:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value  # an int, or a fraction / huge value that intake rejects by its own code
    if isinstance(value, float):
        if not value.is_integer() or abs(value) >= EXACT_TEXT_LIMIT:
            return CellProblem("number_in_text_field", field,
                               f"{field} is stored as a number that is not a whole number Excel can show exactly;"
                               " format the column as text")
        value = int(value)
    if abs(value) >= EXACT_TEXT_LIMIT:
        return CellProblem("number_in_text_field", field,
                           f"{field} is stored as a number longer than Excel keeps exactly; format the column as text")
    return str(value)


def _moment(field: str, value: datetime | date | time) -> object:
    if field.lower() in MOMENT_FIELDS:
        return value.isoformat()
    if field.lower() in PERIOD_FIELDS:
        return CellProblem("period_stored_as_date", field,
                           "period is stored as a date; format the column as text and enter it as YYYY-MM")
    return CellProblem("date_in_text_field", field, f"{field} is stored as a date; format the column as text")


SPREADSHEET_CODES: tuple[str, ...] = (
    "boolean_cell",
    "nik_stored_as_number",
    "kk_stored_as_number",
    "number_in_text_field",
    "period_stored_as_date",
    "date_in_text_field",
    "unreadable_cell",
)
