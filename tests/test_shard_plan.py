"""`seer shard --plan`: wall time and pods from images, pods x cores and a per-core rate."""

from __future__ import annotations

import math

import pytest

from seer.cli import main
from seer.data.parallel_listing import LIST_WORKERS
from seer.data.shard_plan import BYTES_PER_SAMPLE, LIST_RATE, LIST_WRITE_RATE, MERGE_RATE, plan_sharding
from seer.errors import ConfigError


def test_billion_images_plan() -> None:
    plan = plan_sharding(1e9, pods=125, cores=8, rate=100.0, target_hours=72)
    assert plan.shard_hours == pytest.approx(1e9 / (125 * 8 * 100) / 3600)  # 2.78 h
    # one pod lists with 32 streams (~160k keys/s), bounded by one process writing the list files (~30k/s)
    list_rate = min(LIST_RATE * LIST_WORKERS, LIST_WRITE_RATE)
    assert list_rate == LIST_WRITE_RATE
    overhead = 1e9 / list_rate / 3600 + 1e9 / MERGE_RATE / 3600
    assert plan.total_hours == pytest.approx(plan.shard_hours + overhead)
    assert 9 < overhead < 11  # listing 9.3 h + merge 0.9 h: see docs/sharding.md
    assert plan.pods_for_target == math.ceil(1e9 / (8 * 100 * (72 - overhead) * 3600))
    # pods_for_target pods really finish within the target, one pod fewer does not
    for pods, within in ((plan.pods_for_target, True), (plan.pods_for_target - 1, False)):
        assert (plan_sharding(1e9, pods=pods, cores=8, rate=100.0).total_hours <= 72) is within
    assert plan.partition_images == 8_000_000
    assert plan.partition_memory_gib == pytest.approx(8e6 * BYTES_PER_SAMPLE / 2**30)
    assert plan_sharding(1e9, pods=1, cores=1, rate=100.0, target_hours=8).pods_for_target == 0  # impossible


def test_plan_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shard", "--plan", "--images", "1e9", "--pods", "125", "--cores", "8", "--rate", "100"]) == 0
    out = capsys.readouterr().out
    assert "1,000,000,000" in out and "125 x 8 = 1000 cores" in out
    assert "sharding" in out and "2.8 h" in out and "listing (1 pod, 32 streams)" in out
    with pytest.raises(ConfigError, match="--cores >= 1"):
        plan_sharding(10, pods=1, cores=0)
