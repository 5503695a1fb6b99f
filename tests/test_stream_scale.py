"""ShardStream setup memory grows with the number of shards, not with samples or per-sample records.

The manifests are synthetic (fake shard records, no tars): set-up only reads the manifest, and the
per-sample records (rejects, cross-partition exclusions) stay in compressed files it never opens.
Figures (memory and time, up to 100k shards = 1B samples) come from ``bench/manifest_scale.py``.
"""

from __future__ import annotations

import gc
import gzip
import tracemalloc
from pathlib import Path

import pytest

from seer.data.shard import iter_records, read_manifest
from seer.data.stream import ShardStream, build_loader
from seer.data.synthetic_manifest import write_synthetic_manifest


def setup_peak_bytes(manifest_uri: str) -> int:
    """Peak Python allocations of building a rank's stream and loader (64 ranks, batch 32)."""
    gc.collect()
    tracemalloc.start()
    try:
        stream = ShardStream(manifest_uri, None, rank=3, world_size=64)
        build_loader(stream, 32, num_workers=0)
        assert stream._pieces(0, 3, stream.samples_per_worker())  # a worker's span is computed, not read
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_setup_memory_follows_shards_not_samples_or_records(tmp_path: Path) -> None:
    million = write_synthetic_manifest(
        str(tmp_path / "a"), shards=1_000, samples_per_shard=1_000, records=1_000_000
    )
    ten_million = write_synthetic_manifest(
        str(tmp_path / "b"), shards=1_000, samples_per_shard=10_000, records=10
    )
    more_shards = write_synthetic_manifest(
        str(tmp_path / "c"), shards=4_000, samples_per_shard=1_000, records=10
    )
    assert read_manifest(million)["totals"]["samples"] == 1_000 * 1_000 - 100  # 100 copies excluded
    assert next(iter_records(million, "rejected"))["reason"] == "corrupt"
    with gzip.open(tmp_path / "a" / "rejected.jsonl.gz", "rb") as records:
        assert sum(chunk.count(b"\n") for chunk in iter(lambda: records.read(1 << 20), b"")) == 1_000_000

    a, b, c = (setup_peak_bytes(uri) for uri in (million, ten_million, more_shards))
    assert abs(a - b) < 0.15 * a + 65_536  # 1M samples + 1M records ~ 10M samples + 10 records
    assert c > 2.5 * a  # 4x the shards: the measurement does see what grows
    assert c < 4_000 * 4_096  # well under 4 KiB per shard
