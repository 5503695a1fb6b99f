"""Test-only inference of a fine-tuned classifier (trunk + linear) at 384 px (seer_spec §5.2).

Test transform: resize the shorter side to 384 (bicubic) → centre crop 384 → ImageNet
normalisation; one pass over the set; top-1/top-5. Classifiers: VISSL `finetuned_in1k`
checkpoints, timm / torchvision classifiers, or seer classifier files (`seer.checkpoints.classifier`
says which tap / pool feed the Linear); a 1000-way ImageNet head's classes are the wnids, so the
standard `val/<wnid>/<image>` folder is scored directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from seer.checkpoints.classifier import load_any_classifier
from seer.eval.features import FeatureSet, TransformSpec
from seer.eval.linear import classification_result
from seer.eval.setup import (
    Scored,
    arg,
    classification_scored,
    evaluate,
    load_model,
    prepare,
)


@dataclass
class Test384Config:
    """The test resolution (resize shorter side, bicubic, centre crop)."""

    resolution: int = field(default=384, metadata=arg("test resolution (resize and crop size)"))


def run(val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval test384`: one pass of trunk + classifier over the set at `config.resolution` px
    (`options` supplies precision, batch size, workers and cache; tap and pool come from the file)."""
    run_settings, options, config = prepare(checkpoint, Test384Config, kwargs)
    classifier = load_any_classifier(checkpoint, run_settings.preset)
    val = run_settings.load(val_uri, "classification", classes=classifier.classes)
    # the trunk: in the classifier file, or the sharded checkpoint it references (loaded sharded again)
    trunk_uri = classifier.trunk_uri or checkpoint
    loaded = load_model(replace(run_settings, checkpoint=trunk_uri, preset=classifier.preset))
    size = config.resolution
    options = replace(
        options,
        tap=classifier.tap,
        pool=classifier.pool,
        transform=TransformSpec("shorter", size, size, "bicubic"),
    )

    def score(f: dict[str, FeatureSet]) -> Scored:
        scores = classifier.logits(f["val"].stacked())
        return classification_scored(
            classification_result(scores, val.labels, len(classifier.classes)), classifier.classes
        )

    record = {"resolution": size, "classes": len(classifier.classes)}
    doc, _, _ = evaluate("test384", run_settings, options, {"val": val}, score, record, loaded=loaded)
    return doc
