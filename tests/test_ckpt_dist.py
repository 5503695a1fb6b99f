"""2-rank (gloo) acceptance: FSDP2 training checkpoint → consolidate → slice → load into a sharded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from seer.cli import main
from seer.config import load_config
from seer.data.shard import ShardSettings, shard
from seer.data.synthetic import generate_corpus
from seer.models.swav_model import build_swav_model

SCRIPT = Path(__file__).parent / "dist" / "ckpt_fsdp_roundtrip.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_fsdp_round_trip_is_bit_exact(tmp_path):
    _run([*TORCHRUN, str(SCRIPT), str(tmp_path)])
    results = json.loads((tmp_path / "result.json").read_text())
    assert len(results) == 2  # seer index and VISSL slice_list
    assert json.loads((tmp_path / "crc.json").read_text()) == {"bad_crc": None}
    for outcome in results.values():
        assert outcome["mismatched"] == []
        assert outcome["tensors"] > 100 and outcome["units"] > 10 and outcome["sharded_params"] > 50
    # The DCP checkpoint really was sharded: each FSDP-sharded tensor is stored as two row blocks.
    assert len(list((tmp_path / "run" / "checkpoints" / "iter-00000001").glob("*.distcp"))) == 2


@pytest.mark.slow
def test_training_engine_checkpoint_round_trip_into_two_rank_sharded_model(tmp_path):
    """`seer pretrain` (2 ranks, 2 iterations) → `seer ckpt consolidate` → `seer ckpt slice` → sharded load."""
    generate_corpus(tmp_path / "images", 16, seed=3, min_size=48, max_size=64)
    shard(
        [str(tmp_path / "images")],
        str(tmp_path / "shards"),
        ShardSettings(max_samples_per_shard=8),
        workers=1,
    )
    overrides = {
        "train.iterations": "2",
        "train.checkpoint_every": "2",
        "train.batch_per_gpu": "4",
        "data.num_workers": "0",
        "data.crops": "[{size: 32, count: 2, scale: [0.3, 1.0]}, {size: 16, count: 2, scale: [0.1, 0.3]}]",
        "optim.warmup_iters": "1",
        "swav.freeze_prototypes_iters": "1",
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    run = [*TORCHRUN, "-m", "seer", "pretrain", "--recipe", "rg-tiny", *sets]
    _run([*run, "--data", str(tmp_path / "shards"), "--output", str(tmp_path / "out")])
    ckpt = tmp_path / "out" / "checkpoints" / "iter-00000002"
    assert (
        main(["ckpt", "consolidate", str(ckpt), "--output", str(tmp_path / "m.pt"), "--preset", "rg-tiny"])
        == 0
    )
    assert main(["ckpt", "slice", str(tmp_path / "m.pt"), "--output", str(tmp_path / "sliced")]) == 0

    prototypes = load_config("rg-tiny").model.num_prototypes  # the recipe's head, not the preset's default
    meta = build_swav_model("rg-tiny", "meta", num_prototypes=prototypes).state_dict()
    expected = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in meta.items()}
    dcp.load({"model": expected}, checkpoint_id=str(ckpt), no_dist=True)
    torch.save(expected, tmp_path / "reference.pt")
    _run([*TORCHRUN, str(SCRIPT), str(tmp_path), str(tmp_path / "sliced"), str(tmp_path / "reference.pt")])
    (outcome,) = json.loads((tmp_path / "result.json").read_text()).values()
    assert outcome["mismatched"] == [] and outcome["tensors"] == len(expected)
