"""Reference data: programmes, source types, kinds, channels, regency names.

Parsed from TOML text and validated on load; `default_reference()` reads the copy shipped with
the package. Codes that grow (programme, agency, source) are strings checked here, never Avro
enums, so adding a programme is a data change, not a schema change.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources


class ReferenceError_(ValueError):
    """Reference data that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class Programme:
    code: str
    name: str
    paid_to: str  # "person" | "household"
    kind_group: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class Reference:
    version: str
    programmes: dict[str, Programme]
    source_types: frozenset[str]
    kinds: frozenset[str]
    channels: frozenset[str]
    regencies: dict[str, str]
    max_amount_idr: int
    future_tolerance_s: int
    max_budget_amount_idr: int = 1_000_000_000_000_000  # one allocation or release above this is absurd
    # a payment may settle a period up to this many months before the month it is paid in
    # (arrears), or pay up to `period_advance_months_max` months ahead (BPNT is often paid two
    # months at once); beyond either it is out of period
    period_arrears_months_max: int = 12
    period_advance_months_max: int = 3
    # a person or a household with more payments than this in one period is a placeholder identity
    # (one dummy NIK or KK typed for many people), not a recipient: its rules are no longer
    # evaluated for that period, so one bad identity cannot stall a partition with cases of
    # thousands of lines; the worker counts each payment it left unevaluated
    period_payments_max: int = 250

    def regency_name(self, region_code: str) -> str:
        return self.regencies.get(region_code[:4], f"region {region_code[:4]}")


def parse_reference(text: str) -> Reference:
    data = tomllib.loads(text)
    try:
        programmes = {}
        for code, p in data["programmes"].items():
            if ":" in code:  # account names end in the programme code (aidcore.postings)
                raise ReferenceError_(f"programmes.{code}: a programme code cannot hold ':'")
            if p.get("paid_to") not in ("person", "household"):
                raise ReferenceError_(f"programmes.{code}.paid_to must be 'person' or 'household'")
            programmes[code] = Programme(
                code=code,
                name=str(p["name"]),
                paid_to=p["paid_to"],
                kind_group=str(p["kind_group"]),
                active=bool(p.get("active", True)),
            )
        max_amount = data["max_amount_idr"]
        if not isinstance(max_amount, int) or max_amount <= 0:
            raise ReferenceError_("max_amount_idr must be a positive integer")
        return Reference(
            version=str(data["version"]),
            programmes=programmes,
            source_types=frozenset(data["source_types"]),
            kinds=frozenset(data["kinds"]),
            channels=frozenset(data["channels"]),
            regencies={str(k): str(v) for k, v in data.get("regencies", {}).items()},
            max_amount_idr=max_amount,
            future_tolerance_s=int(data.get("future_tolerance_s", 86_400)),
            max_budget_amount_idr=_positive(data.get("max_budget_amount_idr", 1_000_000_000_000_000),
                                            "max_budget_amount_idr"),
            period_arrears_months_max=_positive(data.get("period_arrears_months_max", 12), "period_arrears_months_max"),
            period_advance_months_max=_positive(data.get("period_advance_months_max", 3), "period_advance_months_max"),
            period_payments_max=_positive(data.get("period_payments_max", 250), "period_payments_max"),
        )
    except KeyError as missing:
        raise ReferenceError_(f"reference data lacks the key {missing}") from None


def _positive(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ReferenceError_(f"{key} must be a positive integer")
    return value


def default_reference() -> Reference:
    text = resources.files("aidcore").joinpath("data/reference.toml").read_text(encoding="utf-8")
    return parse_reference(text)
