"""Where a polled table was read up to, and how a batch of rows moves that position on.

A table is read in (watermark, key) order, strictly after its position. The position is the last
watermark value read plus the keys already read at exactly that value (`seen_keys`). Why the keys:
a watermark such as `updated_at` or a load date is often shared by many rows, and a row can be
committed later with the same value as the last row read (same second, same batch date). A cursor
of (watermark, key) alone would skip such a row whenever its key sorts before the last key read;
a cursor of the watermark alone would skip every later row of that value. Reading
`watermark > last OR (watermark = last AND key NOT IN seen_keys)` reads each such row once, in
whatever key order it arrives, and never a row twice. The seen keys are dropped as soon as the
watermark moves on, so they only ever hold the rows of one watermark value.

What no watermark can give: a row committed after rows with a *higher* watermark were read (a
long transaction that took its timestamp early) is behind the position. Intake's idempotency by
source reference makes re-reading harmless, so such tables are re-read from an earlier position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Position:
    watermark: str | None  # the last watermark value read, as text of the column's type; None: from the start
    seen_keys: tuple[str, ...] = ()  # keys read at exactly `watermark`


def advance(position: Position, rows: Sequence[tuple[str, str]]) -> Position:
    """The position after reading `rows`, (watermark text, key text) in the order read (by
    watermark, then key). Rows at the position's own watermark add to its seen keys."""
    if not rows:
        return position
    last = rows[-1][0]
    at_last = [key for wm, key in rows if wm == last]
    if last == position.watermark:
        return Position(last, tuple(dict.fromkeys((*position.seen_keys, *at_last))))
    return Position(last, tuple(dict.fromkeys(at_last)))
