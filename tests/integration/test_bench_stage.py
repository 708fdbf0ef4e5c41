"""The detection stage of `make bench`, small but long enough for each rate to span several of
the counters' polls: the raw ceiling read in its own process, the ledger worker with one and two
processes and the per-event Faust baseline, each on the real broker. What is checked is that every
stage read every event; the rates are the bench's to judge."""

from __future__ import annotations

import pytest

from aidledger.bench_stage import detection_stage

pytestmark = pytest.mark.integration


def test_detection_stage_reads_every_event_in_every_measure():
    result = detection_stage(events=20_000, tokens=5_000, partitions=4, baseline_events=3_000)
    assert result["events"] == 20_000
    assert result["raw_ceiling_events"] == 20_000, "the ceiling's own process did not decode every event"
    for measure in ("raw_ceiling_events_per_s", "worker_events_per_s", "two_workers_events_per_s",
                    "baseline_events_per_s"):
        assert result[measure] > 0, f"{measure}: nothing was counted"
    assert result["worker_over_raw_ceiling"] == result["worker_events_per_s"] / result["raw_ceiling_events_per_s"]
