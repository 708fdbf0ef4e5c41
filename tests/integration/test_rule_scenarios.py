"""The rulebook on the real stack: one scenario file per rule (tests/scenarios/<rule>.jsonl with
its expected case in <rule>.expect.json), the what-if simulator on that history, and a rulebook
activation that later alerts carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidcore.rulebook import HOUSEHOLD_RULES, PERSON_RULES, default_rulebook_text

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
RULES = sorted(p.name.removesuffix(".expect.json") for p in SCENARIOS.glob("*.expect.json"))


def test_there_is_a_scenario_for_every_case_rule():
    assert set(RULES) == set(PERSON_RULES + HOUSEHOLD_RULES) - {"modified_resubmission"}


@pytest.fixture(scope="module")
def ingested(cli, stack):
    for rule in RULES:
        cli.run("ingest", str(SCENARIOS / f"{rule}.jsonl"))
    cli.run("wait", "--timeout", "120")
    return json.loads(cli.run("alerts", "--json").stdout)["alerts"]


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_raises_exactly_its_case(ingested, rule):
    expect = json.loads((SCENARIOS / f"{rule}.expect.json").read_text())
    mine = [a for a in ingested if a["rule_id"] == rule]
    assert len(mine) == expect["alerts"], mine
    (alert,) = mine
    assert alert["subject_kind"] == expect["subject_kind"]
    assert alert["amount_idr_at_stake"] == expect["amount_idr_at_stake"]
    assert len(alert["events"]) == expect["lines"]
    assert alert["status"] == "open"
    assert alert["rulebook_version"] == "2026-11-01"
    assert alert["regency_name"] == "Kota Bandar Lampung" and "1871011001" in alert["message"]
    # every line names its source reference once the projection has the archive's copy
    assert all(e["source_system"] == "SCENARIO" and e["source_ref"] in alert["message"] for e in alert["events"])


def test_simulating_a_looser_rulebook_reports_the_cases_it_would_remove(ingested, cli, tmp_path):
    proposal = default_rulebook_text().replace('version = "2026-11-01"', 'version = "proposal-1"')
    proposal = proposal.replace("cap_idr = 3_000_000", "cap_idr = 3_000_001")
    proposal = proposal.replace("[rules.non_government_same_kind]\n# Aid from these source types of the same kind"
                                " (reference data kind_group) as a government\n# programme the household already gets"
                                " in the period.\nenabled = true",
                                "[rules.non_government_same_kind]\nenabled = false")
    assert "enabled = false" in proposal
    path = tmp_path / "proposal.toml"
    path.write_text(proposal)
    report = json.loads(cli.run("rules", "simulate", "--rulebook", str(path), "--json").stdout)
    removed = {r["rule_id"]: r for r in report["by_rule_and_regency"] if r["alerts_removed"]}
    assert set(removed) == {"household_monthly_cap", "non_government_same_kind"}
    assert removed["household_monthly_cap"]["idr_at_stake_removed"] == 1
    assert removed["non_government_same_kind"]["idr_at_stake_removed"] == 150_000
    assert report["alerts_added"] == 0
    assert report["open_alerts_in_force"] == len(RULES)
    table = cli.run("rules", "simulate", "--rulebook", str(path)).stdout
    assert "household_monthly_cap" in table and "Kota Bandar Lampung" in table


def test_a_bad_rulebook_is_refused_with_the_key_named(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(default_rulebook_text().replace("cap_idr = 3_000_000", "cap_idr = -5"))
    proc = cli.run("rules", "check", str(path), check=False)
    assert proc.returncode == 1 and "rules.household_monthly_cap.cap_idr" in proc.stderr


def test_an_activated_rulebook_decides_later_events_and_is_on_their_alerts(ingested, cli, tmp_path):
    text = default_rulebook_text().replace('version = "2026-11-01"', 'version = "2026-12-01"')
    text = text.replace("cap_idr = 3_000_000", "cap_idr = 1_000_000")
    path = tmp_path / "december.toml"
    path.write_text(text)
    assert "now in force" in cli.run("rules", "activate", str(path)).stdout
    assert "already in force" in cli.run("rules", "activate", str(path)).stdout
    rows = [json.loads(line) for line in (SCENARIOS / "household_monthly_cap.jsonl").read_text().splitlines()]
    later = [dict(r, source_ref="DEC-" + r["source_ref"], kk="1871010101199999", amount_idr=600_000,
                  nik=r["nik"][:12] + str(int(r["nik"][12:]) + 500).zfill(4)) for r in rows]
    feed = tmp_path / "december.jsonl"
    feed.write_text("".join(json.dumps(r) + "\n" for r in later))
    cli.run("ingest", str(feed))
    cli.run("wait", "--timeout", "120")
    alerts = json.loads(cli.run("alerts", "--json", "--rule", "household_monthly_cap").stdout)["alerts"]
    december = [a for a in alerts if a["rulebook_version"] == "2026-12-01"]
    assert len(december) == 1 and december[0]["amount_idr_at_stake"] == 200_000 and december[0]["threshold"] == 1_000_000
    history = json.loads(cli.run("rules", "history").stdout)
    assert [h["version"] for h in history] == ["2026-11-01", "2026-12-01"]
    shown = json.loads(cli.run("rules", "show", "--json").stdout)
    assert shown["version"] == "2026-12-01" and shown["household_cap_idr"] == 1_000_000
