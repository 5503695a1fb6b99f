"""Test-only inference of a fine-tuned classifier (trunk + linear) at 384 px (seer_spec §5.2).

Test transform: resize the shorter side to 384 (bicubic) → centre crop 384 → ImageNet
normalisation; one pass over the set; top-1/top-5. The classifier is a seer consolidated file
whose heads hold `clf.0.weight` / `clf.0.bias` (the convention of `seer.checkpoints`, so timm or
torchvision fine-tuned weights converted with `seer ckpt convert --to seer` work). Its
`config.classifier` may say which `tap` / `pool` feed the Linear and the class names (defaults:
avgpool / avg, classes "0".."N-1"). `seer eval linear --save-classifier` writes one from a probe,
its BatchNorm folded into the Linear.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seer import storage
from seer.checkpoints import CONSOLIDATED_FORMAT
from seer.checkpoints.io import open_archive
from seer.checkpoints.mapping import CLASSIFIER
from seer.eval import metrics, report
from seer.eval.datasets import load_dataset
from seer.eval.features import (
    CheckpointLoadError,
    FeatureOptions,
    LoadedTrunk,
    TransformSpec,
    extract,
    load_trunk,
    resolve_device,
)


@dataclass
class Classifier:
    """The linear part of a classifier checkpoint and how its features are taken."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor
    tap: str
    pool: str
    classes: list[str]
    preset: str | None

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(features, dtype=torch.float32).flatten(1)
        return (x @ self.weight.T.float() + self.bias.float()).numpy()


def save_classifier(
    uri: str,
    loaded: LoadedTrunk,
    weight: torch.Tensor,
    bias: torch.Tensor,
    tap: str,
    pool: str,
    classes: Sequence[str],
) -> None:
    """Write trunk + linear classifier as a seer consolidated file with a `clf.0` head."""
    payload = {
        "format": CONSOLIDATED_FORMAT,
        "preset": loaded.preset,
        "iteration": None,
        "config": {"classifier": {"tap": tap, "pool": pool, "classes": list(classes)}},
        "trunk": {k: v.detach().cpu() for k, v in loaded.trunk.state_dict().items()},
        "heads": {CLASSIFIER[0]: weight.detach().cpu(), CLASSIFIER[1]: bias.detach().cpu()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_classifier(uri: str) -> Classifier:
    """The `clf.0` classifier of a consolidated checkpoint (the trunk loads with `load_trunk`)."""
    with open_archive(uri) as reader:
        obj = reader.obj
        heads = (
            obj.get("heads") if isinstance(obj, dict) and obj.get("format") == CONSOLIDATED_FORMAT else None
        )
        if not isinstance(heads, dict) or not all(k in heads for k in CLASSIFIER):
            raise CheckpointLoadError(
                f"{uri} has no classifier head ({', '.join(CLASSIFIER)} in a {CONSOLIDATED_FORMAT} file); "
                "write one with `seer eval linear --save-classifier URI` or `seer ckpt convert --to seer`"
            )
        weight, bias = reader.read(heads[CLASSIFIER[0]]), reader.read(heads[CLASSIFIER[1]])
        info = (
            ((obj.get("config") or {}).get("classifier") or {}) if isinstance(obj.get("config"), dict) else {}
        )
        preset = obj.get("preset")
    classes = list(info.get("classes") or [str(i) for i in range(weight.shape[0])])
    if len(classes) != weight.shape[0]:
        raise CheckpointLoadError(f"{uri}: {len(classes)} class names for a {weight.shape[0]}-way classifier")
    return Classifier(weight, bias, info.get("tap", "avgpool"), info.get("pool", "avg"), classes, preset)


def run(
    val_uri: str,
    checkpoint: str,
    *,
    resolution: int = 384,
    batch_size: int = 32,
    num_workers: int = 0,
    precision: str = "auto",
    cache: str | None = None,
    device: str = "auto",
    fmt: str = "auto",
    max_bad_rows: str | int = 0,
    output: str | None = None,
) -> dict:
    """`seer eval test384`: one pass of trunk + classifier over the set at `resolution` px."""
    classifier = load_classifier(checkpoint)
    val = load_dataset(
        val_uri, "classification", fmt=fmt, classes=classifier.classes, max_bad_rows=max_bad_rows
    )
    loaded = load_trunk(checkpoint, classifier.preset, resolve_device(device))
    options = FeatureOptions(
        tap=classifier.tap,
        pool=classifier.pool,
        transform=TransformSpec("shorter", resolution, resolution, "bicubic"),
        precision=precision,
        batch_size=batch_size,
        num_workers=num_workers,
        cache=cache,
    )
    features = extract(loaded, val, options)
    scores = classifier.logits(features.stacked())
    pred = scores.argmax(axis=1)
    n_classes = len(classifier.classes)
    per_class = metrics.per_class_accuracy(pred, val.labels, n_classes)
    confusion = metrics.confusion_matrix(pred, val.labels, n_classes)
    doc = report.metrics_document(
        "test384",
        metrics.topk_accuracy(scores, val.labels, (1, 5)),
        checkpoint=loaded.describe(),
        datasets={"val": val.describe()},
        config={**options.describe(), "resolution": resolution},
        details={
            "classes": classifier.classes,
            "per_class_accuracy": dict(zip(classifier.classes, per_class, strict=True)),
            "confusion": confusion,
        },
    )
    if output:
        report.write_report(
            output, doc, report.classification_plots(per_class, confusion, classifier.classes)
        )
    return doc
