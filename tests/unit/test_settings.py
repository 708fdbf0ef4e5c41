"""aidcore.settings: every group builds from a mapping, converts types, names bad variables,
and every variable is unique, prefixed and documented."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from aidcore import settings as settingsmod
from aidcore.settings import ALL_GROUPS, SettingsError

ROOT = Path(__file__).resolve().parents[2]
ALL_FIELDS = [(group, f) for group in ALL_GROUPS for f in fields(group)]
FIELD_IDS = [f"{group.__name__}.{f.name}" for group, f in ALL_FIELDS]

# A valid non-default value per type, as text in the environment and as the typed result.
SAMPLES = {int: ("4242", 4242), float: ("2.5", 2.5), str: ("custom-value", "custom-value"), bool: ("true", True)}


def env_of(f) -> str:
    return f.metadata["env"]


@pytest.mark.parametrize("group", ALL_GROUPS, ids=lambda g: g.__name__)
def test_an_empty_environment_gives_the_defaults(group):
    built = group.from_env({})
    assert built == group()
    for f in fields(group):
        assert getattr(built, f.name) == f.default


@pytest.mark.parametrize("group", ALL_GROUPS, ids=lambda g: g.__name__)
def test_unrelated_variables_are_ignored(group):
    assert group.from_env({"PATH": "/bin", "AIDLEDGER_NO_SUCH_SETTING": "1"}) == group()


@pytest.mark.parametrize(("group", "f"), ALL_FIELDS, ids=FIELD_IDS)
def test_a_variable_overrides_its_default_with_type_conversion(group, f):
    kind = type(f.default)
    assert kind in SAMPLES, f"no sample value for {kind.__name__}; add one"
    text, value = SAMPLES[kind]
    built = group.from_env({env_of(f): text})
    assert getattr(built, f.name) == value
    assert type(getattr(built, f.name)) is kind
    others = [g for g in fields(group) if g.name != f.name]
    assert all(getattr(built, g.name) == g.default for g in others)


@pytest.mark.parametrize(("group", "f"), ALL_FIELDS, ids=FIELD_IDS)
def test_an_empty_variable_means_the_default(group, f):
    assert getattr(group.from_env({env_of(f): ""}), f.name) == f.default


NUMERIC = [(g, f) for g, f in ALL_FIELDS if type(f.default) in (int, float)]


@pytest.mark.parametrize(("group", "f"), NUMERIC, ids=[f"{g.__name__}.{f.name}" for g, f in NUMERIC])
@pytest.mark.parametrize("bad", ["abc", "12abc", "1,5"])
def test_a_bad_number_raises_settings_error_naming_the_variable(group, f, bad):
    with pytest.raises(SettingsError) as caught:
        group.from_env({env_of(f): bad})
    assert env_of(f) in str(caught.value)
    assert bad in str(caught.value)


def test_there_are_integer_settings_to_check():
    assert any(type(f.default) is int for _, f in ALL_FIELDS)


def test_a_float_setting_accepts_an_integer_text():
    assert settingsmod.WorkerSettings.from_env({"AIDLEDGER_WORKER_SESSION_TIMEOUT_S": "10"}).session_timeout_s == 10.0


def test_settings_are_frozen():
    built = settingsmod.StackSettings.from_env({})
    with pytest.raises(Exception):
        built.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(("group", "f"), ALL_FIELDS, ids=FIELD_IDS)
def test_every_variable_is_prefixed_and_documented(group, f):
    assert re.fullmatch(r"AIDLEDGER_[A-Z0-9_]+", env_of(f)), env_of(f)
    assert f.metadata["doc"].strip()


def test_every_variable_is_unique_across_groups():
    names = [env_of(f) for _, f in ALL_FIELDS]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, repeated


def test_describe_lists_every_field():
    for group in ALL_GROUPS:
        rows = group.describe()
        assert [r[0] for r in rows] == [env_of(f) for f in fields(group)]
        assert all(len(r) == 3 and r[2] for r in rows)


def test_topic_names_follow_the_prefix():
    names = settingsmod.topic_names(settingsmod.StackSettings.from_env({"AIDLEDGER_TOPIC_PREFIX": "lpg"}))
    assert names["ledger"] == "lpg.ledger.v1"
    group_owned = {"state", "households", "household_state"}
    assert all(n.startswith("lpg.") for role, n in names.items() if role not in group_owned)
    assert names["state"] == "aidledger-lpg-ledger-state-changelog"
    assert names["households"] == "aidledger-lpg-ledger-households"
    assert names["household_state"] == "aidledger-lpg-ledger-household-changelog"


def test_each_consumer_group_has_its_own_state_changelog():
    """Two groups reading one ledger must never share a changelog: each would load the other's
    accepted payments and answer `exists` for events it never decided."""
    a = settingsmod.topic_names(settingsmod.StackSettings.from_env({"AIDLEDGER_CONSUMER_GROUP": "a"}))
    b = settingsmod.topic_names(settingsmod.StackSettings.from_env({"AIDLEDGER_CONSUMER_GROUP": "b"}))
    assert a["ledger"] == b["ledger"] and a["state"] != b["state"]
    assert a["households"] != b["households"] and a["household_state"] != b["household_state"]


def test_the_readme_lists_every_variable():
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet at the repository root; this checks it lists every AIDLEDGER_ variable once it does")
    text = readme.read_text(encoding="utf-8")
    missing = [env_of(f) for _, f in ALL_FIELDS if not re.search(rf"\b{env_of(f)}\b", text)]
    assert not missing, "README.md does not mention: " + ", ".join(missing)
