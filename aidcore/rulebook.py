"""The detection rulebook: which rules are on, their thresholds and programme sets.

Parsed from TOML text and validated on load: every error names the key and what was expected, and
unknown keys are errors (a misspelt threshold must not silently fall back to a default). The text
itself travels on the log in a RulebookActivated event, so the version in force is part of history;
`digest` identifies the exact text, so two different texts can never pass as one version.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

from aidcore.reference import Reference

MODIFIED_RESUBMISSION = "modified_resubmission"
DUPLICATE_PERSON = "duplicate_person_programme_period"
DUPLICATE_HOUSEHOLD = "duplicate_household_programme_period"
EXCLUSIVE_HOUSEHOLD = "exclusive_programmes_household"
STACKING_PERSON = "stacking_programmes_person"
STACKING_HOUSEHOLD = "stacking_programmes_household"
HOUSEHOLD_CAP = "household_monthly_cap"
NON_GOVERNMENT_SAME_KIND = "non_government_same_kind"

PERSON_RULES = (MODIFIED_RESUBMISSION, DUPLICATE_PERSON, STACKING_PERSON)
HOUSEHOLD_RULES = (DUPLICATE_HOUSEHOLD, EXCLUSIVE_HOUSEHOLD, STACKING_HOUSEHOLD, HOUSEHOLD_CAP,
                   NON_GOVERNMENT_SAME_KIND)
RULE_IDS = PERSON_RULES + HOUSEHOLD_RULES

# The keys each rule table takes besides `enabled`, with their kinds.
_RULE_KEYS: dict[str, dict[str, str]] = {
    MODIFIED_RESUBMISSION: {},
    DUPLICATE_PERSON: {},
    DUPLICATE_HOUSEHOLD: {"programmes": "programmes"},
    EXCLUSIVE_HOUSEHOLD: {"exclusions": "exclusions"},
    STACKING_PERSON: {"max_programmes": "count"},
    STACKING_HOUSEHOLD: {"max_programmes": "count"},
    HOUSEHOLD_CAP: {"cap_idr": "rupiah"},
    NON_GOVERNMENT_SAME_KIND: {"source_types": "source_types"},
}


class RulebookError(ValueError):
    """A rulebook that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class Rulebook:
    """Defaults are a minimal book (the two hard rules) for tests of the core; a running stack
    always uses a parsed file."""

    version: str = "builtin-1"
    enabled: frozenset[str] = frozenset({MODIFIED_RESUBMISSION, DUPLICATE_PERSON})
    household_programmes: frozenset[str] = frozenset()
    exclusions: tuple[tuple[str, frozenset[str]], ...] = ()
    person_max_programmes: int = 3
    household_max_programmes: int = 4
    household_cap_idr: int = 3_000_000
    non_government_sources: frozenset[str] = frozenset({"CSR", "COMMUNITY"})
    reversal_wait_s: int = 604_800
    text: str = ""
    digest: str = ""

    def on(self, rule_id: str) -> bool:
        return rule_id in self.enabled

    def describe(self) -> dict[str, Any]:
        """The settings as plain data, for `aidledger rules show` and simulation reports."""
        return {
            "version": self.version,
            "digest": self.digest,
            "enabled": sorted(self.enabled),
            "household_programmes": sorted(self.household_programmes),
            "exclusions": {p: sorted(x) for p, x in self.exclusions},
            "person_max_programmes": self.person_max_programmes,
            "household_max_programmes": self.household_max_programmes,
            "household_cap_idr": self.household_cap_idr,
            "non_government_sources": sorted(self.non_government_sources),
            "reversal_wait_s": self.reversal_wait_s,
        }


def _fail(path: str, message: str) -> RulebookError:
    return RulebookError(f"rulebook {path}: {message}")


def _table(data: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise _fail(path, "must be a table")
    return data


def _unknown(data: Mapping[str, Any], allowed, path: str) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise _fail(f"{path}.{extra[0]}" if path else extra[0], "is not a known key"
                    f" (known: {', '.join(sorted(allowed))})")


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, "must be a whole number of at least 1")
    return value


def _rupiah(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, "must be a whole number of rupiah, at least 1")
    return value


def _codes(value: Any, known, path: str, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(path, f"must be a non-empty list of {what}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _fail(path, f"names unknown {what} {', '.join(unknown)}")
    return frozenset(value)


def _exclusions(value: Any, programmes, path: str) -> tuple[tuple[str, frozenset[str]], ...]:
    if not isinstance(value, list):
        raise _fail(path, "must be a list of {programme = ..., excludes = [...]} tables")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        item = _table(item, where)
        _unknown(item, ("programme", "excludes"), where)
        programme = item.get("programme")
        if not isinstance(programme, str) or programme not in programmes:
            raise _fail(f"{where}.programme", f"names unknown programme {programme!r}")
        if any(programme == earlier for earlier, _ in out):
            # its cases would share one identity and one would hide the other
            raise _fail(f"{where}.programme", f"{programme} is listed again; put all it excludes in one entry")
        excludes = _codes(item.get("excludes"), programmes, f"{where}.excludes", "programmes")
        if programme in excludes:
            raise _fail(f"{where}.excludes", f"{programme} cannot exclude itself")
        out.append((programme, excludes))
    return tuple(out)


def parse_rulebook(text: str, reference: Reference) -> Rulebook:
    """Validate and build a rulebook; programme and source codes are checked against `reference`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RulebookError(f"rulebook is not valid TOML: {err}") from None
    _unknown(data, ("version", "rules", "reversals"), "")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip() or len(version) > 64:
        raise _fail("version", "must be a non-empty string of at most 64 characters")
    rules = _table(data.get("rules", {}), "rules")
    _unknown(rules, RULE_IDS, "rules")
    settings: dict[str, Any] = {}
    enabled = set()
    kinds = {
        "programmes": lambda v, p: _codes(v, reference.programmes, p, "programmes"),
        "exclusions": lambda v, p: _exclusions(v, reference.programmes, p),
        "count": _count,
        "rupiah": _rupiah,
        "source_types": lambda v, p: _codes(v, reference.source_types, p, "source types"),
    }
    for rule_id in RULE_IDS:
        path = f"rules.{rule_id}"
        table = _table(rules.get(rule_id, {"enabled": False}), path)
        keys = _RULE_KEYS[rule_id]
        _unknown(table, ("enabled", *keys), path)
        flag = table.get("enabled", True)
        if not isinstance(flag, bool):
            raise _fail(f"{path}.enabled", "must be true or false")
        if flag:
            enabled.add(rule_id)
        for key, kind in keys.items():
            if key not in table:
                if flag:
                    raise _fail(f"{path}.{key}", "is required when the rule is enabled")
                continue
            settings[f"{rule_id}.{key}"] = kinds[kind](table[key], f"{path}.{key}")
    reversals = _table(data.get("reversals", {}), "reversals")
    _unknown(reversals, ("wait_seconds",), "reversals")
    wait = _count(reversals.get("wait_seconds", 604_800), "reversals.wait_seconds")
    defaults = Rulebook(version="", enabled=frozenset())
    return Rulebook(
        version=version.strip(),
        enabled=frozenset(enabled),
        household_programmes=settings.get(f"{DUPLICATE_HOUSEHOLD}.programmes", frozenset()),
        exclusions=settings.get(f"{EXCLUSIVE_HOUSEHOLD}.exclusions", ()),
        person_max_programmes=settings.get(f"{STACKING_PERSON}.max_programmes", defaults.person_max_programmes),
        household_max_programmes=settings.get(f"{STACKING_HOUSEHOLD}.max_programmes",
                                              defaults.household_max_programmes),
        household_cap_idr=settings.get(f"{HOUSEHOLD_CAP}.cap_idr", defaults.household_cap_idr),
        non_government_sources=settings.get(f"{NON_GOVERNMENT_SAME_KIND}.source_types",
                                            defaults.non_government_sources),
        reversal_wait_s=wait,
        text=text,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def default_rulebook_text() -> str:
    return resources.files("aidcore").joinpath("data/rulebook.toml").read_text(encoding="utf-8")


def default_rulebook(reference: Reference) -> Rulebook:
    return parse_rulebook(default_rulebook_text(), reference)


def configured_rulebook(path: str, reference: Reference) -> Rulebook:
    """The rulebook a setting names: a file path, or empty for the packaged default."""
    if not path:
        return default_rulebook(reference)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise RulebookError(f"cannot read rulebook file {path}: {err.strerror}") from None
    return parse_rulebook(text, reference)
