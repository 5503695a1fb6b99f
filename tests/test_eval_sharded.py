"""Sharded evaluation (issue 16): the trunk FSDP2-sharded over torchrun ranks and loaded from a sliced
checkpoint, as SEER evaluates its 10B model (seer_spec §7: "the evaluation model is sharded and
initialised from the sliced checkpoint across 8 GPUs").

FSDP2 facts relied on (torch.distributed.fsdp `fully_shard`): parameters are DTensors sharded `Shard(0)`
in `torch.chunk` sizes over the mesh; buffers (BatchNorm statistics) stay replicated; every forward of a
unit all-gathers its parameters, so all ranks must run the same number of forwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seer.checkpoints.slice import slice_checkpoint
from seer.data.synthetic_benchmarks import make_counting_set
from seer.errors import ConfigError
from seer.eval import knn, linear, sharded
from seer.eval.datasets import load_dataset
from seer.eval.features import extract, parse_transform
from seer.eval.setup import FeatureOptions, RunSettings, load_model
from seer.models import build_trunk

SCRIPT = Path(__file__).parent / "dist" / "eval_sharded.py"


def _torchrun(*args: str, ranks: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    subprocess.run([*cmd, str(SCRIPT), *args], check=True, timeout=600)


@pytest.fixture(scope="module")
def sliced_rg_small(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sharded")
    trunk = build_trunk("rg-small", seed=7)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong buffer would show
        for name, buf in trunk.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    consolidated = str(root / "conso.pt")
    torch.save(
        {
            "format": "seer-consolidated-v1",
            "preset": "rg-small",
            "iteration": 1,
            "trunk": trunk.state_dict(),
            "heads": {},
        },
        consolidated,
    )
    slice_checkpoint(consolidated, str(root / "sliced"))
    return str(root / "sliced")


def _options() -> FeatureOptions:
    return FeatureOptions(transform=parse_transform("square:32"), batch_size=4, num_workers=0)


@pytest.mark.slow
def test_two_rank_sharded_evaluation_equals_one_process(sliced_rg_small: str, tmp_path: Path) -> None:
    """Same features (1e-5, fp32) and the same kNN / linear metrics as the whole trunk in one process;
    each rank keeps only its own rows of every parameter, so its parameters are ~1/2 of the trunk."""
    sets = make_counting_set(str(tmp_path / "set"), n_train=9, n_val=5, max_count=2, size=32, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    _torchrun("load", sliced_rg_small, sets["train"], sets["val"], str(out))

    single = load_model(RunSettings(sliced_rg_small, shard="off", device="cpu"))
    assert single.shard_sizes is None
    reference = extract(single, load_dataset(sets["train"]), _options()).stacked()
    common = {"checkpoint": sliced_rg_small, "shard": "off", "device": "cpu", "options": _options()}
    knn_ref = knn.run(sets["train"], sets["val"], **common)["metrics"]
    linear_ref = linear.run(sets["train"], sets["val"], config=linear.LinearConfig.for_epochs(3), **common)[
        "metrics"
    ]
    fast = linear.LinearProtocol("fast", feature_dir=str(tmp_path / "single-features"))
    linear_fast_ref = linear.run(
        sets["train"], sets["val"], config=linear.LinearConfig.for_epochs(3), protocol=fast, **common
    )["metrics"]
    params = dict(single.trunk.named_parameters())
    total = sum(p.numel() for p in params.values())
    for rank in (0, 1):
        result = json.loads((out / f"rank{rank}.json").read_text())
        np.testing.assert_allclose(np.load(out / f"features{rank}.npy"), reference, rtol=1e-5, atol=1e-5)
        assert result["knn"] == pytest.approx(knn_ref, abs=1e-6)
        assert result["linear"] == pytest.approx(linear_ref, abs=1e-6)
        assert result["linear_fast"] == pytest.approx(linear_fast_ref, abs=1e-6)
        # 9 images over 2 ranks at batch 4: rank 0 runs 2 forwards, rank 1 one and an idle one (lockstep)
        local = result["shard_sizes"]["local"]
        assert result["shard_sizes"]["global"] == total
        assert 0.45 * total <= local <= 0.55 * total
        read_params = 0
        for read in result["reads"]:
            name = read["fqn"].removeprefix("trunk.")
            if name not in params:
                continue  # buffers are replicated by FSDP2: every rank keeps them whole
            n = read["shape"][0]
            per_rank = -(-n // 2)
            own = [min(n, rank * per_rank), min(n, (rank + 1) * per_rank)]
            assert read["rows"] == own, f"rank {rank} kept rows {read['rows']} of {name}, owns {own}"
            read_params += read["kept_bytes"]
        assert read_params == local * 4  # fp32: kept exactly its shard, nothing more
    # the classifier file of a sharded probe references the trunk instead of copying it
    from seer.checkpoints.classifier import load_classifier
    from seer.eval import test384

    classifier = load_classifier(str(out / "clf.pt"))
    assert classifier.trunk_uri == sliced_rg_small
    single384 = test384.run(sets["val"], str(out / "clf.pt"), shard="off", device="cpu", resolution=32)
    assert result["test384"] == pytest.approx(single384["metrics"], abs=1e-6)
    # one (N, C) feature file per set, written by both ranks; features were never gathered (see the script)
    spilled = sorted(np.load(p, mmap_mode="r").shape[0] for p in (out / "features").glob("*.npy"))
    assert spilled == [5, 9]


@pytest.mark.slow
def test_rg10b_sharded_evaluation_set_up_on_two_cpu_ranks(tmp_path: Path) -> None:
    """The 10B trunk (rg10b) is built and sharded on the meta device up to reading weights: each of 2
    ranks holds half of its parameters."""
    _torchrun("meta", "rg10b", str(tmp_path))
    sizes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = sizes[0]["global"]
    assert total > 9e9 * 0.9  # rg10b's trunk
    for s in sizes:
        assert s["all_meta"] and abs(s["local"] - total / 2) / total < 0.01


def test_shard_modes(sliced_rg_small: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert not sharded.should_shard("off", sliced_rg_small, None, cpu, 8)
    assert sharded.should_shard("on", sliced_rg_small, None, cpu, 2)
    with pytest.raises(ConfigError, match="torchrun"):
        sharded.should_shard("on", sliced_rg_small, None, cpu, 1)
    with pytest.raises(ConfigError, match="auto, on or off"):
        sharded.should_shard("yes", sliced_rg_small, None, cpu, 2)
    trunk_bytes = sharded.trunk_param_bytes("rg-small")
    monkeypatch.setattr(sharded, "rank_memory_bytes", lambda device: 4 * trunk_bytes)
    assert not sharded.should_shard("auto", sliced_rg_small, None, cpu, 2)  # fits: whole trunk per rank
    monkeypatch.setattr(sharded, "rank_memory_bytes", lambda device: trunk_bytes)
    assert sharded.should_shard("auto", sliced_rg_small, None, cpu, 2)  # over half the memory: shard
    assert not sharded.should_shard("auto", sliced_rg_small, None, cpu, 1)  # one rank: nothing to shard with


def test_shard_on_needs_a_sliced_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "trunk.pt"
    torch.save(build_trunk("rg-tiny").state_dict(), plain)
    with pytest.raises(ConfigError, match="seer ckpt slice"):
        sharded.should_shard("on", str(plain), "rg-tiny", torch.device("cpu"), 2)


def test_eval_plan_says_rg10b_fits_8x40gb_sharded_and_not_one_40gb_gpu(capsys: pytest.CaptureFixture) -> None:
    """seer_spec §7: SEER evaluates rg10b sharded on 8 GPUs. Sharded, a rank keeps P*4/8 bytes of fp32
    shards; whole on one GPU the fp32 trunk plus autocast's bf16 copies (P*6) exceed 40 GB."""
    from seer.cli import main
    from seer.eval.plan import eval_memory

    params = sum(p.numel() for p in build_trunk("rg10b", device="meta").parameters())
    for px in (224, 384):
        eight = eval_memory("rg10b", 8, 40, px, 32)
        assert eight.params == -(-params * 4 // 8) and eight.fits
        assert eight.total < 40 * 2**30
        one = eval_memory("rg10b", 1, 40, px, 32)
        assert one.params == params * 6 and not one.fits
    assert eval_memory("rg10b", 8, 40, 384, 32).activations > eval_memory("rg10b", 8, 40, 224, 32).activations
    assert main(["eval", "plan", "--preset", "rg10b", "--gpus", "8x40", "1x40", "--resolution", "224"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == ["rg10b", "8", "40", "224"] and out[1].endswith("yes")
    assert out[2].endswith("NO")


def test_largest_activation_is_the_stem_output_for_rg_tiny() -> None:
    """A 32x32 image through rg-tiny's stride-2 stem: stem_width x 16 x 16 is the largest layer output."""
    from seer.eval.plan import largest_activation
    from seer.models import get_preset

    assert largest_activation("rg-tiny", 32) == get_preset("rg-tiny").stem_width * 16 * 16


@pytest.mark.slow
def test_a_step_with_two_ranks_runs_as_torchrun_and_reports_once(
    sliced_rg_small: str, tmp_path: Path
) -> None:
    """A pipeline evaluation step on a pod with N GPUs runs as a torchrun of N ranks (here forced to 2 on
    CPU) with the trunk sharded; rank 0 alone writes the report, whose metrics equal a 1-process step's."""
    from seer import storage
    from seer.eval.steps import run_step

    sets = make_counting_set(str(tmp_path / "set"), n_train=9, n_val=5, max_count=2, size=32, seed=0)
    storage.write_json(
        str(tmp_path / "datasets.json"), {"linear_train": sets["train"], "linear_val": sets["val"]}
    )
    common = {"batch_size": 4, "workers": 0, "transform": "square:32", "device": "cpu", "k": 3}
    two = run_step(
        "knn", sliced_rg_small, str(tmp_path), str(tmp_path / "two"), ranks=2, shard="on", **common
    )
    one = run_step(
        "knn", sliced_rg_small, str(tmp_path), str(tmp_path / "one"), ranks=1, shard="off", **common
    )
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metrics.json", "report.html"]


def test_a_classifier_whose_referenced_trunk_is_gone_or_changed_says_so(tmp_path: Path) -> None:
    from seer.checkpoints.load import CheckpointLoadError, load_trunk

    trunk = tmp_path / "trunk.pt"
    torch.save(build_trunk("rg-tiny").state_dict(), trunk)
    head = {"clf.0.weight": torch.zeros(2, 8), "clf.0.bias": torch.zeros(2)}
    for ref, problem in (
        ({"uri": str(tmp_path / "gone")}, "missing"),
        ({"uri": str(trunk), "sha256": "0" * 64}, "sha256 differs"),
    ):
        clf = tmp_path / "clf.pt"
        torch.save(
            {"format": "seer-consolidated-v1", "preset": "rg-tiny", "heads": head, "trunk_ref": ref}, clf
        )
        with pytest.raises(CheckpointLoadError, match=problem):
            load_trunk(str(clf), "rg-tiny")
    torch.save(
        {
            "format": "seer-consolidated-v1",
            "preset": "rg-tiny",
            "heads": head,
            "trunk_ref": {"uri": str(trunk)},
        },
        clf,
    )
    assert load_trunk(str(clf), "rg-tiny").preset == "rg-tiny"
