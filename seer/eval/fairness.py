"""Fairness of a classifier across groups: per-group accuracy, disparity, harmful-label predictions.

The classifier is a linear probe (or k-NN) trained on frozen features of a training set; it is
scored on a test set whose rows carry a group. Disparity is the spread of per-group accuracy
(max − min, and min / max). For each group we also count predictions that fall in a configurable
list of harmful labels (labels that would be offensive when assigned to people of that group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from seer.errors import ConfigError
from seer.eval import metrics, report
from seer.eval.datasets import load_dataset
from seer.eval.features import FeatureOptions, extract_variants, load_trunk, resolve_device
from seer.eval.knn import knn_scores
from seer.eval.linear import LinearConfig, predict, train_probe


@dataclass
class FairnessResult:
    metrics: dict[str, float]
    per_group: dict[str, dict[str, float]]


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


def run(
    train_uri: str,
    test_uri: str,
    checkpoint: str,
    *,
    harmful_labels: Sequence[str] = (),
    classifier: str = "linear",
    k: int = 20,
    temperature: float = 0.07,
    preset: str | None = None,
    options: FeatureOptions | None = None,
    config: LinearConfig | None = None,
    baselines: tuple[str, ...] = (),
    device: str = "auto",
    fmt: str = "auto",
    max_bad_rows: str | int = 0,
    output: str | None = None,
) -> dict:
    """`seer eval fairness`: train a probe (or k-NN) on `train_uri`, score per group on `test_uri`."""
    if classifier not in ("linear", "knn"):
        raise ConfigError(f"unknown classifier {classifier!r}; choose linear or knn")
    options = options or FeatureOptions()
    config = config or LinearConfig()
    options.validate()
    config.validate()  # before loading data or extracting features, as `seer eval linear` does
    train = load_dataset(train_uri, "classification", fmt=fmt, max_bad_rows=max_bad_rows)
    test = load_dataset(test_uri, "grouped", fmt=fmt, classes=train.classes, max_bad_rows=max_bad_rows)
    unknown = [h for h in harmful_labels if h not in train.classes]
    if unknown:
        raise ConfigError(
            f"harmful label(s) {unknown} are not classes of {train_uri}; classes: {train.classes}"
        )
    loaded = load_trunk(checkpoint, preset, resolve_device(device), seed=config.seed)
    variants = extract_variants(loaded, {"train": train, "test": test}, options, baselines, config.seed)
    results = {}
    for name, f in variants.items():
        if classifier == "linear":
            head, _ = train_probe(f["train"].stacked(), train.labels, len(train.classes), config)
            scores = predict(head, f["test"].stacked())
        else:
            scores = knn_scores(
                f["train"].stacked(), train.labels, f["test"].stacked(), len(train.classes), k, temperature
            )
        results[name] = fairness_report(
            scores.argmax(axis=1), test.labels, test.groups, train.classes, harmful_labels
        )
    main = results.pop("model")
    settings = asdict(config) if classifier == "linear" else {"k": k, "temperature": temperature}
    doc = report.metrics_document(
        "fairness",
        main.metrics,
        checkpoint=loaded.describe(),
        datasets={"train": train.describe(), "test": test.describe()},
        config={
            **options.describe(),
            "classifier": classifier,
            **settings,
            "harmful_labels": list(harmful_labels),
            "baselines": list(baselines),
        },
        lower_is_better=["disparity", "harmful_predictions"],
        baselines={name: r.metrics for name, r in results.items()},
        details={"per_group": main.per_group, "classes": train.classes},
    )
    if output:
        plots = {
            "accuracy per group": report.plot_bars(
                {g: v["accuracy"] for g, v in main.per_group.items()}, "accuracy per group"
            ),
            "harmful predictions per group": report.plot_bars(
                {g: v["harmful_rate"] for g, v in main.per_group.items()},
                "harmful-label rate per group",
                "rate",
            ),
        }
        report.write_report(output, doc, plots)
    return doc
