"""Formatting money and moments for people: Rp 1.250.000, 2026-04-03 10:00 WIB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def rupiah(amount_idr: int) -> str:
    sign = "-" if amount_idr < 0 else ""
    return f"{sign}Rp {abs(amount_idr):,}".replace(",", ".")


def local_time(at_us: int, offset_min: int = 7 * 60) -> str:
    tz = timezone(timedelta(minutes=offset_min))
    moment = datetime.fromtimestamp(at_us / 1_000_000, tz)
    return moment.isoformat(timespec="seconds")
