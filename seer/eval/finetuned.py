"""Scoring with a fine-tuned classifier's own head instead of a probe on frozen features.

The checkpoint is a classifier file (`seer.checkpoints.classifier`: what `seer finetune` writes, a
consolidated file whose `clf.0` head reads `config.classifier.tap` / `pool`). Its trunk is
evaluated as any checkpoint (`seer.eval.setup.evaluate`, sharded where that applies), at the
classifier's tap and pool, and the head turns those features into class scores. Reports name the
protocol `fine-tuned` (the frozen-feature ones: `frozen-features`).
"""

from __future__ import annotations

from dataclasses import replace

from seer.checkpoints.classifier import Classifier, load_classifier
from seer.eval.setup import FeatureOptions, RunSettings

PROTOCOL = "fine-tuned"


def prepare_classifier(
    settings: RunSettings, options: FeatureOptions
) -> tuple[Classifier, RunSettings, FeatureOptions]:
    """The head of `settings.checkpoint`; the run settings with its preset, the options with its tap
    and pool. Fails naming the fix when the checkpoint has no classifier head."""
    classifier = load_classifier(settings.checkpoint)
    settings = replace(settings, preset=settings.preset or classifier.preset)
    return classifier, settings, replace(options, tap=classifier.tap, pool=classifier.pool)
