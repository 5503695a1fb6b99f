"""Fairness of a classifier across groups: per-group accuracy, disparity, harmful-label predictions.

The classifier is a linear probe (or k-NN) trained on frozen features of a training set; it is
scored on a test set whose rows carry a group. Disparity is the spread of per-group accuracy
(max − min, and min / max). For each group we also count predictions that fall in a configurable
list of harmful labels (labels that would be offensive when assigned to people of that group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from seer.errors import ConfigError
from seer.eval import metrics, report
from seer.eval.features import FeatureSet
from seer.eval.knn import knn_scores
from seer.eval.linear import LinearConfig, predict, train_probe
from seer.eval.setup import Scored, arg, evaluate, names, prepare


@dataclass
class FairnessResult:
    metrics: dict[str, float]
    per_group: dict[str, dict[str, float]]


@dataclass
class FairnessConfig:
    """Which classifier runs on the features and which labels count as harmful."""

    harmful_labels: tuple[str, ...] = field(
        default=(), metadata=arg("comma-separated class names counted as harmful predictions", parse=names)
    )
    classifier: str = field(
        default="linear", metadata=arg("classifier on the features", choices=("linear", "knn"))
    )
    k: int = field(default=20, metadata=arg("neighbours (knn classifier)"))
    temperature: float = field(default=0.07, metadata=arg("τ of the k-NN vote weight (knn classifier)"))

    def validate(self) -> None:
        if self.classifier not in ("linear", "knn"):
            raise ConfigError(f"unknown classifier {self.classifier!r}; choose linear or knn")


def fairness_report(
    pred: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    harmful_labels: Sequence[str] = (),
) -> FairnessResult:
    """Per-group accuracy/count/harmful predictions and the flat metrics the report compares."""
    per_group = metrics.group_accuracy(pred, labels, groups)
    for group, values in metrics.harmful_prediction_counts(pred, groups, class_names, harmful_labels).items():
        per_group[group].update(values)
    spread = metrics.disparity(v["accuracy"] for v in per_group.values())
    flat = {
        "accuracy": float((np.asarray(pred) == np.asarray(labels)).mean()),
        "disparity": spread["max_minus_min"],
        "min_over_max": spread["min_over_max"],
        "harmful_predictions": float(sum(v["harmful_predictions"] for v in per_group.values())),
    }
    for group, values in per_group.items():
        flat[f"{group}.accuracy"] = values["accuracy"]
    return FairnessResult(metrics=flat, per_group=per_group)


def run(train_uri: str, test_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval fairness`: train a probe (or k-NN) on `train_uri`, score per group on `test_uri`."""
    probe = kwargs.pop("probe", None)
    run_settings, options, config = prepare(checkpoint, FairnessConfig, kwargs)
    probe = probe or LinearConfig()
    probe.validate()  # before loading data or extracting features, as `seer eval linear` does
    train = run_settings.load(train_uri, "classification")
    test = run_settings.load(test_uri, "grouped", classes=train.classes)
    unknown = [h for h in config.harmful_labels if h not in train.classes]
    if unknown:
        raise ConfigError(
            f"harmful label(s) {unknown} are not classes of {train_uri}; classes: {train.classes}"
        )

    def score(f: dict[str, FeatureSet]) -> Scored:
        train_x, test_x, n = f["train"].stacked(), f["test"].stacked(), len(train.classes)
        if config.classifier == "linear":
            scores = predict(train_probe(train_x, train.labels, n, probe)[0], test_x)
        else:
            scores = knn_scores(train_x, train.labels, test_x, n, config.k, config.temperature)
        r = fairness_report(
            scores.argmax(axis=1), test.labels, test.groups, train.classes, config.harmful_labels
        )
        plots = {
            "accuracy per group": ({g: v["accuracy"] for g, v in r.per_group.items()}, "accuracy per group"),
            "harmful predictions per group": (
                {g: v["harmful_rate"] for g, v in r.per_group.items()},
                "harmful-label rate per group",
                "rate",
            ),
        }
        details = {"per_group": r.per_group, "classes": train.classes}
        return Scored(r.metrics, details, lambda: {k: report.plot_bars(*v) for k, v in plots.items()})

    linear = config.classifier == "linear"
    record = {
        "classifier": config.classifier,
        **(asdict(probe) if linear else {"k": config.k, "temperature": config.temperature}),
        "harmful_labels": list(config.harmful_labels),
        "baselines": list(run_settings.baselines),
    }
    sets = {"train": train, "test": test}
    lower = ["disparity", "harmful_predictions"]
    return evaluate(
        "fairness", run_settings, options, sets, score, record, seed=probe.seed, lower_is_better=lower
    )[0]
