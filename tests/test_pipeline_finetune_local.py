"""seer-finetune end to end through kfp.local on rg-tiny: a registered pretrained trunk → resolve →
import → generated sets → 2-rank CPU `seer finetune` (torchrun via torchx, as the local backend runs
it) → test384 of the fine-tuned classifier → registered with lineage to its parent. KFP's artifacts
stay descriptors; the classifier lives under data_root (docs/artifacts.md)."""

from pathlib import Path

import pytest
import torch

from pipelines.finetune import build_finetune_pipeline
from pipelines.run.local_run import _init_local
from seer import artifacts, storage
from seer.checkpoints.classifier import load_classifier
from seer.models import build_trunk
from seer.registry import StorageRegistry

SIZE = 32
OVERRIDES = [
    f"data.crop_size={SIZE}", "data.crop_scale=[0.5, 1.0]", "data.num_workers=0", "optim.epochs=2",
    "optim.milestones=[1]", "optim.base_batch=16", "train.batch_per_gpu=8", "train.checkpoint_every=100",
    "train.metrics_port=0",
]  # fmt: skip


@pytest.mark.slow
def test_finetune_pipeline_trains_tests_and_registers_with_lineage(tmp_path: Path) -> None:
    trunk = tmp_path / "trunk.pt"
    torch.save(build_trunk("rg-tiny", seed=1).state_dict(), trunk)
    registry = str(tmp_path / "registry")
    parent = StorageRegistry(registry).register("seer-tiny", "pretrain-1", str(trunk), preset="rg-tiny")
    _init_local(tmp_path)
    build_finetune_pipeline(exit_handler=False)(
        registry=registry,
        model_name="seer-tiny",
        finetuned_name="seer-tiny-count",
        recipe="in1k-384",
        overrides=OVERRIDES,
        data_root=str(tmp_path / "data"),
        benchmark_sizes={
            "counting": {"n_train": 32, "n_val": 16, "size": SIZE},
            "copy-detection": {"n_originals": 4, "n_distractors": 4, "n_train": 4},
            "geo": {"n_train": 8, "n_val": 4, "size": SIZE},
            "fairness": {"n_train": 8, "n_test": 4, "size": SIZE},
        },
        eval_transform=f"shorter:{SIZE}:{SIZE}",
        eval_workers=0,
        eval_device="cpu",
    )
    entry = StorageRegistry(registry).latest("seer-tiny-count")
    assert entry.version.startswith("ft-") and entry.parent_run == "seer-tiny/pretrain-1"
    assert entry.artifacts["pretrained"] == parent.artifact_uri and entry.preset == "rg-tiny"
    assert set(k.split(".")[0] for k in entry.metrics) == {"test384"}, "only test384 runs by default"
    assert 0.0 <= entry.metrics["test384.top1"] <= entry.metrics["test384.top5"] <= 1.0
    clf = load_classifier(entry.artifact_uri)
    assert clf.preset == "rg-tiny" and len(clf.classes) >= 2
    data_root = tmp_path / "data"
    assert Path(entry.artifact_uri).is_relative_to(data_root / "runs")
    (run_dir,) = (tmp_path / "pipeline-root").glob("seer-finetune-*")
    described = artifacts.read_descriptor(str(run_dir / "finetune" / "classifier"), "classifier")
    assert described["uri"] == entry.artifact_uri and described["preset"] == "rg-tiny"
    assert described["pretrained"] == str(trunk)
    doc = storage.read_json(entry.artifacts["test384.metrics"])
    assert doc["checkpoint"]["uri"] == entry.artifact_uri
    assert (run_dir / "finetune" / "classifier").stat().st_size < 2**16, "KFP holds a descriptor only"
