"""`seer plan`: memory estimate checked against autograd, the rg10b verdict, refusals, time to train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seer.cli import main
from seer.config import load_config
from seer.models import build_trunk
from seer.train.plan import GIB, block_activations, estimate, measured_throughput


@pytest.mark.parametrize(("preset", "crops"), [("rg-tiny", [(64, 2), (32, 2)]), ("rg-small", [(64, 1)])])
def test_activation_estimate_matches_what_autograd_saves(preset: str, crops: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    trunk = build_trunk(preset, "cpu").train()
    batch = 2
    params = {p.untyped_storage().data_ptr() for p in trunk.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = [trunk(torch.randn(batch * count, 3, size, size)) for size, count in crops]
    blocks, stem = block_activations(preset, crops, batch)
    estimated = (sum(b.compute + b.bn for b in blocks) + stem) * 4  # fp32 everywhere here
    assert outputs and 0.93 <= estimated / sum(saved.values()) <= 1.02


def test_rg10b_on_62_nodes_fits_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--recipe", "rg10b", "--nodes", "62", "--gpus-per-node", "8", "--gpu-mem-gb", "40"]
    assert main([*argv, "--img-per-sec-per-gpu", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "9,628,923,288" in out and "496 GPUs" in out
    assert "global batch        7,936" in out and "learning rate       9.3" in out
    assert "iterations          126,009" in out
    assert "9.33 days at 2.5 img/s/GPU" in out
    assert "FITS:" in out and "without checkpointing it would need" in out
    plan = estimate(load_config("rg10b"), 62, 8, 40)
    assert plan.sharded_params_bytes == pytest.approx(9_628_923_288 * 4 / 496)
    assert plan.total_bytes(True) < 40 * GIB < plan.total_bytes(False)
    assert plan.largest_unit == "trunk.trunk_output.block4.block4-0.f.c.0"  # 800M-param conv, own unit
    # Faults: what the rendered PyTorchJob uses (seer.launch.pytorchjob.restart_settings, max_faults 10).
    assert "restart policy      ExitCode: exit 200" in out
    assert "backoffLimit        621 = 62 nodes × 10 faults + 1" in out
    assert "torchrun            --max-restarts 10, c10d rendezvous" in out
    assert "checkpoint save     ~26 s for fp32 weights + momentum at 50 MB/s per node" in out  # 80 GB / 62
    assert "trainer 150 s < torchrun SIGKILL 180 s < terminationGracePeriodSeconds 210 s" in out


def test_plan_refuses_what_cannot_fit_with_the_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "--recipe", "rg10b", "--nodes", "1", "--gpus-per-node", "1", "--gpu-mem-gb", "40"]) == 2
    )
    out = capsys.readouterr().out
    assert "DOES NOT FIT: needs" in out and "only 40 GiB exist" in out
    assert "sharded params/grads/momentum" in out and "use more GPUs" in out
    argv = ["plan", "--recipe", "rg10b", "--nodes", "62", "--set", "train.activation_checkpointing=false"]
    assert main(argv) == 2
    assert "enable activation checkpointing" in capsys.readouterr().out


def test_plan_json_and_measured_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train_step_gpu.json").write_text(
        json.dumps(
            {
                "device_name": "H100",
                "rows": [
                    {"preset": "rg128gf", "variant": "seer", "device": "cuda", "img_per_sec": 90.0},
                    {"preset": "rg128gf", "variant": "baseline", "device": "cuda", "img_per_sec": 60.0},
                ],
            }
        )
    )
    assert measured_throughput("rg128gf", tmp_path) == (90.0, "train_step_gpu.json (H100)")
    assert measured_throughput("rg10b", tmp_path) is None
    assert main(["plan", "--recipe", "rg128gf", "--nodes", "2", "--batch-per-gpu", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["global_batch"] == 128 and data["lr"] == pytest.approx(0.3 * 128 / 256)
    assert data["fits"] is True and data["iterations"] == 7_812_500
