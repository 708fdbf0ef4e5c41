"""The Lampung-scale bench at smoke size, end to end: a fresh broker and PostgreSQL, the
generated log produced, replayed by the real projector from offset zero, and verified; the
result file has what the README quotes."""

from __future__ import annotations

import json

import pytest

from aidledger import bench_scale

pytestmark = pytest.mark.integration


def test_smoke_run_replays_and_verifies(tmp_path):
    out = tmp_path / "scale.json"
    assert bench_scale.main(["--events", "20000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["verify"]["ok"], result["verify"]
    assert result["events"] == 20_000 and result["people"] == 3_000 and result["months"] == 36
    log = result["log"]
    assert log["records"] == 20_000 and log["people_paid"] == 3_000
    assert log["distinct_events"] == 20_000 - log["redeliveries"]
    replay = result["replay"]
    assert replay["seconds"] > 0 and replay["records_per_s"] > 0 and replay["met"] is False  # not the full size
    assert {"date", "machine", "generate_seconds", "produce_seconds"} <= set(result)
    assert result["machine"]["cores"] >= 1
