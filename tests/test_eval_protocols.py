"""SEER's evaluation protocols as VISSL ran them (issue 18 items 4-6), on hand-made data:

- linear probe: `vissl` protocol (RandomResizedCrop + flip every epoch, torchvision defaults scale
  0.08-1, ratio 3/4-4/3; VISSL benchmark/linear_image_classification/imagenet1k transforms) vs `fast`;
  published taps (VISSL MODEL_ZOO.md + models/regnet*.yaml, seer_spec §5.1: 32Gf res5 (3,1) → 11136,
  64Gf avgpool → 4920, 10B res4 (2,1) → 22220);
- copy detection (VISSL tools/instance_retrieval_test.py, data_util.CopyDaysDataset): whitening
  required, distractors never relevant, strong.mAP headline, Copydays folder layout;
- 384 px test of fine-tuned classifiers: 1000-way heads map to sorted ImageNet wnids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kfp.dsl import Dataset
from PIL import Image

import components
from seer import storage
from seer.checkpoints.classifier import imagenet_wnids, load_any_classifier
from seer.checkpoints.load import load_trunk
from seer.checkpoints.mapping import seer_to_timm_name, seer_to_vissl_trunk
from seer.cli import main
from seer.data.synthetic_benchmarks import make_copy_detection_set, make_counting_set
from seer.errors import ConfigError
from seer.eval import copy_detection, linear, test384
from seer.eval.copydays import CROP_PERCENTS, JPEG_QUALITIES, import_copydays
from seer.eval.datasets import load_dataset
from seer.eval.features import (
    TrainAugment,
    augmented_batches,
    extract,
    parse_transform,
    pool_tensor,
    published_features,
)
from seer.eval.setup import FeatureOptions
from seer.models import build_trunk

CPU = {"preset": "rg-tiny", "device": "cpu"}


def _options(**kw) -> FeatureOptions:
    return FeatureOptions(transform=parse_transform("square:32"), num_workers=0, batch_size=16, **kw)


# ---------------------------------------------------------------------------------------------
# Linear probe


def test_random_resized_crop_boxes_follow_torchvision_defaults() -> None:
    aug, rng = TrainAugment(224), np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = aug.crop_box(300, 200, rng)
        assert top >= 0 and top + h <= 200 and left >= 0 and left + w <= 300
        # rounding of w and h moves the share and ratio by at most one pixel's worth
        assert 0.08 * 0.9 <= h * w / 60000 <= 1.0 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a 100×1 strip fits no draw: the fallback is the centred box with the ratio clamped to 4/3,
    # by hand: w = round(1 · 4/3) = 1, h = 1, left = (100 − 1) // 2 = 49
    assert aug.crop_box(100, 1, rng) == (0, 49, 1, 1)


@pytest.mark.parametrize(("preset", "tap", "pool", "dims"), [
    ("rg32gf", "res5", "adaptive:3x1", 3712 * 3),
    ("rg64gf", "avgpool", "avg", 4920),
    ("rg10b", "res4", "adaptive:2x1", 11110 * 2),
    ("rg-tiny", "avgpool", "avg", None),
])  # fmt: skip
def test_published_taps_have_the_published_dimensions(preset, tap, pool, dims) -> None:
    assert published_features(preset) == (tap, pool)
    if dims is None:  # no SEER number for rg-tiny: the plain avgpool feature
        return
    trunk = build_trunk(preset, device="meta")
    with torch.no_grad():
        fmap = trunk(torch.empty(1, 3, 224, 224, device="meta"), taps=[tap])[tap]
    assert pool_tensor(fmap, pool).flatten(1).shape[1] == dims


def test_vissl_protocol_streams_fresh_crops_each_epoch(tmp_path) -> None:
    made = make_counting_set(str(tmp_path / "set"), n_train=6, n_val=4, max_count=2, size=48)
    train = load_dataset(made["train"], "classification")
    loaded = load_trunk("random", "rg-tiny")
    opts, aug = _options(tap="avgpool", pool="avg"), TrainAugment(32)

    def epoch(e: int) -> dict[int, np.ndarray]:
        return {
            int(i): x.numpy()
            for idx, xs in augmented_batches(loaded, train, opts, aug, 4, 0, e)
            for i, x in zip(idx, xs, strict=True)
        }

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert sorted(first) == list(range(6))  # every image once an epoch
    assert all(np.array_equal(first[i], again[i]) for i in first)  # crops depend on (seed, epoch, image)
    assert all(not np.allclose(first[i], second[i]) for i in first)  # a new crop every epoch


def test_linear_protocols_are_recorded_and_fast_features_are_memory_mapped(tmp_path) -> None:
    made = make_counting_set(str(tmp_path / "set"), n_train=12, n_val=6, max_count=2, size=32)
    config = linear.LinearConfig(epochs=2, milestones=(1,), batch_size=4, base_lr=0.1)
    docs = {
        p: linear.run(
            made["train"], made["val"], "random", options=_options(tap="published", pool="published"),
            config=config, protocol=linear.LinearProtocol(p, train_crop=32, feature_dir=str(tmp_path / "mm")), **CPU,
        )
        for p in ("vissl", "fast")
    }  # fmt: skip
    assert (
        docs["vissl"]["config"]["protocol"] == "vissl"
        and "RandomResizedCrop 32" in docs["vissl"]["config"]["train_features"]
    )
    assert (
        docs["fast"]["config"]["protocol"] == "fast"
        and "reused every epoch" in docs["fast"]["config"]["train_features"]
    )
    for doc in docs.values():  # rg-tiny has no published feature: avgpool, and the request is kept
        assert (doc["config"]["tap"], doc["config"]["pool"], doc["config"]["tap_requested"]) == (
            "avgpool",
            "avg",
            "published",
        )
    assert len(list((tmp_path / "mm").glob("*.npy"))) == 2  # fast: train and val features on disk
    # memory-mapped features equal the in-RAM ones
    val = load_dataset(made["val"], "classification")
    loaded = load_trunk("random", "rg-tiny")
    mapped = extract(loaded, val, _options(), spill_dir=str(tmp_path / "mm2"))
    assert isinstance(mapped.stacked(), np.memmap)
    np.testing.assert_allclose(mapped.stacked(), extract(loaded, val, _options()).stacked(), rtol=1e-6)


def test_linear_help_names_both_protocols(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "linear", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--protocol {vissl,fast}" in text and "(default: vissl)" in text and "--tap" in text
    assert "published" in text and "res5 pooled 3x1" in text


def test_published_is_only_a_linear_probe_choice() -> None:
    with pytest.raises(ConfigError, match="published"):
        extract(load_trunk("random", "rg-tiny"), None, _options(tap="published"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Copy detection


def test_copy_detection_requires_a_whitening_set(tmp_path, capsys) -> None:
    made = make_copy_detection_set(str(tmp_path / "c"), n_originals=2, n_distractors=1, n_train=2, size=32)
    code = main(
        [
            "eval",
            "copy-detection",
            "--queries",
            made["queries"],
            "--checkpoint",
            "random",
            "--preset",
            "rg-tiny",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--whitening" in err
    with pytest.raises(ConfigError, match="separate set"):
        copy_detection.copy_detection(
            [np.ones((1, 4))], [np.ones((1, 4))], None, np.ones((1, 1), bool), ["strong"]
        )
    # a pipeline given its own copy sets but no whitening set fails instead of generating one
    with pytest.raises(ConfigError, match="copy_whitening"):
        components.eval_datasets.python_func(
            datasets=Dataset(name="d", uri=str(tmp_path / "d"), metadata={}),
            data_root=str(tmp_path / "data"),
            sources={"copy_queries": made["queries"], "copy_database": made["database"]},
        )


def test_distractors_join_the_database_and_never_match(tmp_path) -> None:
    made = make_copy_detection_set(str(tmp_path / "c"), n_originals=3, n_distractors=0, n_train=3, size=32)
    extra = make_copy_detection_set(str(tmp_path / "x"), n_originals=5, n_distractors=0, n_train=1, size=32)
    doc = copy_detection.run(
        made["queries"], "random", database_uri=made["database"], distractors_uri=extra["database"],
        whitening_uri=made["train"], max_distractors=4, pca_dims=8,
        options=FeatureOptions(tap="res4", pool="rmac:3", transform=parse_transform("longer:32"), num_workers=0), **CPU,
    )  # fmt: skip
    assert doc["details"]["database"] == {"references": 3, "distractors": 4}
    assert doc["config"]["distractors"] == 4 and doc["config"]["headline"] == "strong.mAP"
    assert next(iter(doc["metrics"])) == "strong.mAP"
    # by hand (revisitop trapezoid): one relevant item ranked 2nd behind a distractor → AP = (0 + 1/2) / 2
    result = copy_detection.evaluate_ranking(np.array([[0.5, 0.9]]), np.array([[True, False]]), ["strong"])
    assert result.metrics["strong.mAP"] == pytest.approx(0.25)


def _jpeg(path: Path, colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (colour, 255 - colour, 90)).save(path, "JPEG")


def _copydays_tree(root: Path) -> None:
    """Copydays' real layout, two image groups (2000xx and 2001xx)."""
    for name in ("200000.jpg", "200100.jpg"):
        _jpeg(root / "original" / name, int(name[3]) * 100)
    for name in ("200001.jpg", "200002.jpg", "200101.jpg"):
        _jpeg(root / "strong" / name, 30)
    for folder in [f"jpegqual/{q}" for q in JPEG_QUALITIES] + [f"crops/{p}" for p in CROP_PERCENTS]:
        for name in ("200000.jpg", "200100.jpg"):
            _jpeg(root / folder / name, 60)


def test_import_copydays_reads_the_real_layout(tmp_path, capsys) -> None:
    root, out = tmp_path / "copydays", str(tmp_path / "manifests")
    _copydays_tree(root)
    for i in range(5):
        _jpeg(tmp_path / "yfcc" / f"d{i}.jpg", 10 * i)
        _jpeg(tmp_path / "whit" / f"w{i}.jpg", 20 * i)
    (tmp_path / "whit.txt").write_text("".join(f"whit/w{i}.jpg\n" for i in range(5)))
    made = import_copydays(
        str(root), out, str(tmp_path / "yfcc"), str(tmp_path / "whit.txt"), max_distractors=3
    )
    assert made["originals"] == 2 and made["queries_strong"] == 3 and made["queries_crops_80"] == 2
    assert made["distractors_images"] == 3 and made["whitening_images"] == 5
    rows = storage.read_text(made["queries"]).splitlines()
    assert rows[0] == "query,reference,split" and len(rows) == 1 + 2 + 3 + 18 * 2
    assert f"{root}/strong/200101.jpg,{root}/original/200100.jpg,strong" in rows  # 200101 // 100 = 2001
    assert f"{root}/jpegqual/3/200000.jpg,{root}/original/200000.jpg,jpegqual_3" in rows
    with pytest.raises(ConfigError, match="separate"):
        import_copydays(str(root), str(tmp_path / "m2"), whitening=str(root / "original"))
    (root / "crops" / "80" / "200000.jpg").unlink()
    (root / "crops" / "80" / "200100.jpg").unlink()
    assert main(["eval", "import-copydays", str(root), "--output", str(tmp_path / "m3")]) == 2
    assert "crops/80 has no images" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 384 px test of fine-tuned classifiers


def _classifier_state(target: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """rg-tiny trunk + a 1000-way head that predicts class `target` for every image (bias only)."""
    trunk = build_trunk("rg-tiny", device="cpu", seed=3).state_dict()
    features = trunk["trunk_output.block4.block4-0.proj.0.weight"].shape[0]
    weight, bias = torch.zeros(1000, features), torch.zeros(1000)
    bias[target] = 5.0
    return trunk, weight, bias


def _write(kind: str, uri: Path, target: int) -> None:
    trunk, w, b = _classifier_state(target)
    if kind == "timm":
        state = {seer_to_timm_name(k): v for k, v in trunk.items() if not k.endswith("num_batches_tracked")}
        torch.save({**state, "head.fc.weight": w, "head.fc.bias": b}, uri)
    elif kind == "torchvision":
        torch.save({**trunk, "fc.weight": w, "fc.bias": b}, uri)
    else:  # VISSL finetuned_in1k: trunk + `0.clf.0` head under classy_state_dict
        model = {
            "trunk": {seer_to_vissl_trunk(k): v for k, v in trunk.items()},
            "heads": {"0.clf.0.weight": w, "0.clf.0.bias": b},
        }
        torch.save({"type": "consolidated", "classy_state_dict": {"base_model": {"model": model}}}, uri)


@pytest.mark.parametrize("kind", ["timm", "torchvision", "vissl"])
def test_test384_scores_an_imagenet_classifier_on_wnid_folders(kind, tmp_path) -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
    # val/<wnid>/: 3 images of class 500, 1 of class 7; the head always says 500 → top-1 3/4 by hand.
    # Folder-local indices (0, 1) would give 0: the labels must be the wnid indices.
    for i in range(3):
        _jpeg(tmp_path / "val" / wnids[500] / f"a{i}.JPEG", 40 * i)
    _jpeg(tmp_path / "val" / wnids[7] / "b.JPEG", 200)
    ckpt = tmp_path / f"{kind}.pth"
    _write(kind, ckpt, target=500)
    clf = load_any_classifier(str(ckpt), "rg-tiny")
    assert clf.classes[500] == wnids[500] and (clf.tap, clf.pool) == ("avgpool", "avg")
    # (no --output: the 1000-class report plots take longer than the test itself)
    doc = test384.run(
        str(tmp_path / "val"), str(ckpt), preset="rg-tiny", device="cpu", resolution=32,
        options=FeatureOptions(num_workers=0),
    )  # fmt: skip
    assert doc["metrics"]["top1"] == pytest.approx(0.75) and doc["config"]["classes"] == 1000


def test_vissl_pretrained_checkpoint_is_not_a_classifier(tmp_path) -> None:
    trunk, _, _ = _classifier_state(0)
    model = {
        "trunk": {
            seer_to_vissl_trunk(k): v for k, v in trunk.items() if not k.endswith("num_batches_tracked")
        }
    }
    torch.save({"classy_state_dict": {"base_model": {"model": model}}}, tmp_path / "pre.torch")
    with pytest.raises(Exception, match="finetuned_in1k"):
        load_any_classifier(str(tmp_path / "pre.torch"), "rg-tiny")
