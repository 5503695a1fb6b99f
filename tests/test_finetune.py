"""`seer finetune`: recipes, schedule, loader resume, memory plan, and (slow) 2-rank CPU fine-tunes.

One 2-rank torchrun fine-tune of rg-tiny (gloo, real `python -m seer finetune`) on a generated
counting set is shared by the slow tests: it must beat the linear probe of the same trunk on the
same data, its classifier file must run through `seer eval test384`, the sliced loader and the
registry, and a SIGKILLed run must resume with identical per-iteration losses. A geo fine-tune on a
generated set with known cells must beat the frozen-feature nearest-neighbour baseline at 25 km.

VISSL sources the recipes follow: configs/config/benchmark/fulltune/imagenet1k/
eval_resnet_8gpu_transfer_in1k_fulltune.yaml (optimizer, schedule), .../imagenet1k/transforms/
res384_mixup_swavBlur.yaml (384 px colour/blur), .../im2gps_yfcc/eval_resnet_8gpu_transfer_im2gps_fulltune.yaml
(geo), vissl/models/heads/mlp.py (`clf.0` head names).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from seer.checkpoints.classifier import load_classifier
from seer.checkpoints.load import load_trunk
from seer.checkpoints.mapping import CLASSIFIER
from seer.checkpoints.vissl import export_vissl, import_vissl
from seer.cli import main
from seer.data.synthetic_benchmarks import make_counting_set, make_geo_set
from seer.eval import geolocalization, linear, test384
from seer.eval.features import TransformSpec
from seer.eval.linear import LinearConfig
from seer.eval.setup import FeatureOptions
from seer.finetune.config import load_finetune_config
from seer.finetune.data import LabelledLoader, load_labelled, train_transform
from seer.finetune.plan import estimate_finetune
from seer.finetune.register import register_finetuned
from seer.finetune.run import run_finetune
from seer.finetune.task import StepSchedule, param_groups
from seer.models import build_trunk
from seer.registry import StorageRegistry
from seer.train import checkpoint
from seer.train.plan import GIB
from tests.pretrain_runs import env, losses, process_tree, run

SIZE = 48
EPOCHS, PER_EPOCH = 5, 15  # 240 images / (8 per rank × 2 ranks)
OPTS = FeatureOptions(transform=TransformSpec("shorter", SIZE, SIZE, "bicubic"), num_workers=0)


def _overrides(trunk: Path) -> list[str]:
    """rg-tiny at 48 px, LR 0.1 per 16 images (the recipe's 0.1 per 256 is for ImageNet batches)."""
    return [
        "model.preset=rg-tiny", f"model.checkpoint={trunk}", f"data.crop_size={SIZE}",
        "data.crop_scale=[0.5, 1.0]", "data.num_workers=0", f"optim.epochs={EPOCHS}", "optim.milestones=[4]",
        "optim.base_lr=0.1", "optim.base_batch=16", "train.batch_per_gpu=8", f"train.checkpoint_every={PER_EPOCH}",
        "train.log_every=1", "train.metrics_port=0",
    ]  # fmt: skip


def _pretrained(root: Path) -> Path:
    """A seeded rg-tiny trunk saved as a plain (torchvision-named) state dict: one of the formats read."""
    path = root / "trunk.pt"
    torch.save(build_trunk("rg-tiny", seed=1).state_dict(), path)
    return path


# ---- fast ------------------------------------------------------------------------------------


def test_recipes_carry_the_vissl_fulltune_numbers() -> None:
    in1k = load_finetune_config("in1k-384")
    assert (in1k.data.crop_size, in1k.data.jitter_strength, in1k.data.blur_p) == (384, 1.0, 0.5)
    o = in1k.optim
    assert (o.base_lr, o.base_batch, o.epochs, o.milestones) == (0.1, 256, 105, [30, 60, 90, 100])
    assert (o.weight_decay, o.nesterov, o.momentum, o.regularize_bn, o.label_smoothing) == (
        0,
        True,
        0.9,
        False,
        0,
    )
    gps = load_finetune_config("im2gps")
    assert (gps.data.task, gps.data.crop_size, gps.data.blur_p, gps.data.jitter_p) == ("geo", 224, 0, 0)
    g = gps.optim
    assert (g.base_lr, g.epochs, g.milestones, g.weight_decay) == (0.1, 15, [4, 8, 12, 13, 14], 1e-4)
    big = load_finetune_config("in1k-384-rg10b")
    assert (big.model.preset, big.train.batch_per_gpu, big.train.sync_bn_group) == ("rg10b", 8, 0)
    assert load_finetune_config("fairness-in22k").optim.milestones == o.milestones


def test_bad_values_name_the_key() -> None:
    with pytest.raises(Exception, match=r"optim\.milestones"):
        load_finetune_config("im2gps", ["optim.milestones=[4, 20]"])
    assert main(["finetune", "--recipe", "in1k-384", "--set", "model.checkpoint=x"]) == 2  # no --output


def test_lr_steps_at_milestone_epochs_and_bn_is_not_decayed() -> None:
    schedule = StepSchedule(0.4, 0.1, [4 * 10, 8 * 10])
    assert [schedule.at(i) for i in (0, 39, 40, 79, 80)] == pytest.approx([0.4, 0.4, 0.04, 0.04, 0.004])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, load_finetune_config("im2gps"))
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model[1].parameters()}


def test_loader_resumes_at_the_same_batch(tmp_path: Path) -> None:
    sets = make_counting_set(str(tmp_path), n_train=24, n_val=6, size=32, seed=1)
    cfg = load_finetune_config("in1k-384", ["data.crop_size=32"])
    data = load_labelled(cfg, sets["train"])

    def loader() -> LabelledLoader:
        return LabelledLoader(data.samples, train_transform(cfg), rank=1, world_size=2, batch_size=3, seed=0)

    first = loader()
    full = [b for _ in range(2) for b in first]  # two epochs, 4 batches each
    interrupted = loader()
    batches = iter(interrupted)
    for _ in range(3):
        next(batches)
    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    rest = [*resumed, *resumed]
    assert len(full) == 8 and len(rest) == 5
    for (got, keys), (want, want_keys) in zip(rest, full[3:], strict=True):
        assert keys == want_keys and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_plan_rg10b_at_384_on_8x80_and_62x8x40() -> None:
    """The pretraining estimator's trunk terms, the SwAV head swapped for a 1000-way classifier."""
    cfg = load_finetune_config("in1k-384-rg10b")
    one = estimate_finetune(cfg, 1, 8, 80)
    big = estimate_finetune(cfg, 62, 8, 40)
    trunk = sum(p.numel() for p in build_trunk("rg10b", device="meta").parameters())
    assert one.params == big.params == trunk + 28280 * 1000 + 1000
    assert one.crops == [(384, 1)] and one.batch_per_gpu == 8
    assert one.sharded_params_bytes == pytest.approx(one.params * 4 / 8)
    assert big.sharded_params_bytes == pytest.approx(one.params * 4 / 496)
    assert one.fits and one.total_bytes(True) < 80 * GIB
    assert big.fits and big.total_bytes(False) > 40 * GIB  # 40 GB GPUs need activation checkpointing
    assert big.lr == pytest.approx(0.1 * 8 * 496 / 256)
    assert (
        main(["finetune", "--recipe", "in1k-384-rg10b", "--plan", "--nodes", "62", "--gpu-mem-gb", "40"]) == 0
    )


# ---- slow: 2-rank fine-tunes ---------------------------------------------------------------------


def _torchrun(trunk: Path, data: str, output: Path) -> list[str]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    sets = [a for o in _overrides(trunk) for a in ("--set", o)]
    return [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "seer", "finetune", "--recipe", "in1k-384",
            *sets, "--data", data, "--output", str(output)]  # fmt: skip


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_counting_set(
        str(tmp_path_factory.mktemp("count")), n_train=240, n_val=120, max_count=3, size=SIZE
    )


@pytest.fixture(scope="module")
def trunk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pretrained(tmp_path_factory.mktemp("trunk"))


@pytest.fixture(scope="module")
def reference(counting: dict[str, str], trunk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("ft") / "out"
    run(_torchrun(trunk, counting["train"], output))
    return output


@pytest.mark.slow
def test_finetune_beats_the_linear_probe_of_the_same_trunk(
    reference: Path, counting: dict, trunk: Path
) -> None:
    probe = LinearConfig.for_epochs(200, batch_size=32, base_lr=4.0)  # the best probe setting we found
    probed = linear.run(
        counting["train"], counting["val"], str(trunk), preset="rg-tiny", options=OPTS, config=probe
    )
    tuned = test384.run(counting["val"], str(reference / "classifier.pt"), resolution=SIZE, options=OPTS)
    assert tuned["metrics"]["top1"] > probed["metrics"]["top1"] + 0.1, (tuned["metrics"], probed["metrics"])
    got = losses(reference)
    assert sorted(got) == list(range(1, EPOCHS * PER_EPOCH + 1))
    assert sum(list(got.values())[-PER_EPOCH:]) < sum(list(got.values())[:PER_EPOCH])


@pytest.mark.slow
def test_classifier_file_sliced_form_vissl_round_trip_and_registry(
    reference: Path, trunk: Path, tmp_path: Path
) -> None:
    clf_uri = str(reference / "classifier.pt")
    clf = load_classifier(clf_uri)
    assert clf.classes == ["1", "2", "3"] and clf.preset == "rg-tiny" and clf.weight.shape == (3, 128)
    whole = load_trunk(clf_uri).trunk.state_dict()
    sliced = load_trunk(str(reference / "sliced")).trunk.state_dict()
    assert all(torch.equal(v, sliced[k]) for k, v in whole.items())
    start = build_trunk("rg-tiny", seed=1).state_dict()
    assert not torch.equal(whole["stem.0.weight"], start["stem.0.weight"])  # the trunk was trained too
    # VISSL finetuned_in1k layout (`0.clf.0.*`) imports back to the same classifier format.
    export_vissl(clf_uri, str(tmp_path / "vissl.torch"))
    import_vissl(str(tmp_path / "vissl.torch"), str(tmp_path / "imported.pt"), "rg-tiny")
    back = load_classifier(str(tmp_path / "imported.pt"))
    assert torch.equal(back.weight, clf.weight) and torch.equal(back.bias, clf.bias)
    assert set(torch.load(tmp_path / "imported.pt", weights_only=True)["heads"]) == set(CLASSIFIER)

    registry = StorageRegistry(str(tmp_path / "registry"))
    parent = registry.register("seer-tiny", "pretrain-1", str(trunk), preset="rg-tiny")
    entry = register_finetuned(registry, str(reference), "seer-tiny-counting", "ft-1", parent, {"top1": 0.7})
    assert entry.parent_run == "seer-tiny/pretrain-1" and entry.artifacts["pretrained"] == parent.artifact_uri
    assert entry.sha256 == registry.get("seer-tiny-counting", "ft-1").sha256
    assert entry.artifacts["sliced"].endswith("sliced/index.json") and entry.preset == "rg-tiny"


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_with_identical_losses(
    reference: Path, counting: dict, trunk: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    cmd = _torchrun(trunk, counting["train"], output)
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = output / "checkpoints" / f"iter-{PER_EPOCH:08d}" / checkpoint.MARKER
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in process_tree(proc.pid):  # torchrun and its workers, as when a pod dies
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (output / "finetune.json").exists(), "the run must die mid-training"
    killed_at = checkpoint.latest_complete(str(output)).iteration
    run(cmd)
    expected, got = losses(reference), losses(output)
    assert sorted(got) == list(range(1, EPOCHS * PER_EPOCH + 1))
    for i in range(killed_at + 1, EPOCHS * PER_EPOCH + 1):
        assert got[i] == pytest.approx(expected[i], abs=1e-5), f"iteration {i}"


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_geo_finetune_beats_nearest_neighbour_at_25km(trunk: Path, tmp_path: Path) -> None:
    sets = make_geo_set(str(tmp_path / "geo"), n_train=240, n_val=120, size=SIZE, seed=0)
    nn_doc = geolocalization.run(
        sets["train"], sets["val"], str(trunk), preset="rg-tiny", options=OPTS, method="nn"
    )
    over = [*_overrides(trunk), f"data.cells={sets['cells']}", "optim.epochs=4", "optim.milestones=[3]",
            "train.batch_per_gpu=16", "train.checkpoint_every=100"]  # fmt: skip
    run_finetune(load_finetune_config("im2gps", over), str(tmp_path / "out"), sets["train"])
    clf = str(tmp_path / "out" / "classifier.pt")
    tuned = geolocalization.run(None, sets["val"], clf, method="finetuned", options=OPTS)
    assert tuned["config"]["protocol"] == "fine-tuned"
    assert tuned["metrics"]["acc@25km"] > nn_doc["metrics"]["acc@25km"] + 0.15, (
        tuned["metrics"],
        nn_doc["metrics"],
    )
