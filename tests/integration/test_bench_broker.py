"""`make bench-broker` on a small scale: the probe fills a partition of the real embedded broker,
fetches its last batch at each size, and writes its figures."""

from __future__ import annotations

import json

from aidledger import bench_broker


def test_the_broker_probe_measures_each_size(tmp_path):
    out = tmp_path / "broker.json"
    assert bench_broker.main(["--sizes", "20,200", "--fetches", "10", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["batches"] for s in result["steps"]] == [20, 200]
    for step in result["steps"]:
        assert step["fetch_wall_ms"] > 0 and step["broker_cpu_ms"] >= 0
    assert result["steps"][0]["wall_ratio"] == 1.0
