"""Fairness of a classifier across groups, three indicators (`--indicator`):

- `accuracy`: per-group accuracy on a `path,label,group` test set, the disparity (max − min,
  min / max) and predictions of a configurable list of harmful labels per group;
- `geographic`: SEER's Dollar Street indicator, top-k hit rate after the label map, by income
  bucket, region and country (`seer.eval.fairness_indicators`; test set `path,label,income,region,
  country`, e.g. `seer eval import-dollar-street` output);
- `label-association`: SEER's Casual Conversations indicator, the share of images whose top-k
  labels fall in each association category, by gender, age bucket, skin tone and gender × skin
  tone (test set `path,gender,age,skin_type`, no class label, e.g. `seer eval
  import-casual-conversations` output).

The classifier (`--classifier`) is a linear probe or k-NN trained on frozen features of `--train`
(reports record `frozen-features`), or `finetuned`: the checkpoint is a classifier file fine-tuned by
`seer finetune` (SEER fine-tunes the whole trunk on an ImageNet-22k subset, `--recipe fairness-in22k`)
and its own head gives the top-k / top-1 over its classes; no training set is read, and the reports
record `fine-tuned`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from seer import storage
from seer.errors import ConfigError
from seer.eval import fairness_indicators as fi
from seer.eval import finetuned, metrics, report
from seer.eval.datasets import DatasetError, EvalDataset, read_manifest_rows
from seer.eval.features import FeatureSet
from seer.eval.knn import knn_scores
from seer.eval.linear import LinearConfig, predict, train_probe
from seer.eval.setup import Scored, arg, check_choices, choice, evaluate, ints, names, prepare

INDICATORS = {
    "accuracy": "per-group accuracy on path,label,group",
    "geographic": "Dollar Street top-k hit rate by income/region/country",
    "label-association": "Casual Conversations top-k label categories by gender/age/skin tone",
}
CLASSIFIERS = {
    "linear": "linear probe on frozen features of --train",
    "knn": "k-NN on frozen features of --train",
    "finetuned": "the checkpoint's own head (a `seer finetune` classifier file, no --train)",
}
PROTOCOL = "frozen-features"
# indicator → test-set columns besides `path` (read from the manifest as they are)
TEST_COLUMNS = {
    "geographic": ("label", "income", "region", "country"),
    "label-association": ("gender", "age", "skin_type"),
}


@dataclass
class FairnessResult:
    metrics: dict[str, float]
    per_group: dict[str, dict[str, float]]


def floats(text: str) -> tuple[float, ...]:
    """`90.02,1808.04` → (90.02, 1808.04)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


@dataclass
class FairnessConfig:
    """Which indicator, which classifier runs on the features, and the indicators' label maps and buckets."""

    indicator: str = choice("accuracy", INDICATORS)
    topk: int = field(default=5, metadata=arg("predictions per image the SEER indicators look at (VISSL: 5)"))
    label_map: str | None = field(
        default=None,
        metadata=arg(
            "JSON URI mapping each training class (name, or index into the sorted class names) to a list of "
            "labels: Dollar Street labels (VISSL in22k_cls_idx_to_dollar_street_labels_map.json) or label names "
            "(in22k_cls_name_to_label_name_map.json); default: a class is its own label"
        ),
    )
    associations: str | None = field(
        default=None,
        metadata=arg(
            "JSON URI {category: [labels]} for label-association (default: VISSL's IN22k-subset map: non-human, "
            "human, possibly-human, crime)"
        ),
    )
    income_edges: tuple[float, ...] = field(
        default=fi.INCOME_EDGES,
        metadata=arg(
            "monthly-income bucket edges in USD (default e^4.5,e^7.5: VISSL's round(ln(income)/3) low/medium/high)",
            parse=floats,
        ),
    )
    age_edges: tuple[int, ...] = field(
        default=fi.AGE_EDGES,
        metadata=arg(
            "age bucket edges (default: VISSL get_cc_age_bucket <18, 18-30, 30-45, 45-70, 70+)", parse=ints
        ),
    )
    skin_lighter_max: int = field(
        default=fi.SKIN_LIGHTER_MAX,
        metadata=arg(
            "highest Fitzpatrick type counted as lighter skin; above it up to 6 is darker (VISSL: 3)"
        ),
    )

    harmful_labels: tuple[str, ...] = field(
        default=(), metadata=arg("comma-separated class names counted as harmful predictions", parse=names)
    )
    classifier: str = choice("linear", CLASSIFIERS)
    k: int = field(default=20, metadata=arg("neighbours (knn classifier)"))
    temperature: float = field(default=0.07, metadata=arg("τ of the k-NN vote weight (knn classifier)"))

    def validate(self) -> None:
        check_choices(self)
        if self.topk < 1:
            raise ConfigError("--topk must be >= 1")
        for name, edges in (("--income-edges", self.income_edges), ("--age-edges", self.age_edges)):
            if not edges or list(edges) != sorted(set(edges)):
                raise ConfigError(f"{name} must be increasing numbers, e.g. {name} 18,30,45,70")
        if not 1 <= self.skin_lighter_max < 6:
            raise ConfigError("--skin-lighter-max must be a Fitzpatrick type from 1 to 5")


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


def load_label_map(uri: str, classes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{training class name: labels} from a JSON object keyed by class name or by index into `classes`."""
    raw = storage.read_json(uri)
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(
            f"{uri}: a label map is a JSON object {{class: [labels]}}; got {type(raw).__name__}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        name = key if key in classes else None
        if name is None and key.isdigit() and int(key) < len(classes):
            name = classes[int(key)]
        if name is not None:
            out[name] = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    if not out:
        raise DatasetError(
            f"{uri}: no key names a training class (classes: {', '.join(classes[:5])} ...); key the map by the "
            "training set's class names or their indices"
        )
    return out


def load_associations(uri: str | None) -> dict[str, tuple[str, ...]]:
    """{category: labels} from a JSON URI, or VISSL's IN22k-subset association map."""
    if uri is None:
        return dict(fi.ASSOCIATIONS)
    raw = storage.read_json(uri)
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise DatasetError(f"{uri}: an association map is a JSON object {{category: [labels]}}")
    return {str(k): tuple(str(x) for x in v) for k, v in raw.items()}


def read_test_columns(dataset: EvalDataset, columns: Sequence[str]) -> dict[str, list[str]]:
    """The manifest's values of `columns` for each kept sample (blank → "")."""
    if dataset.fmt not in ("csv", "jsonl"):
        raise DatasetError(
            f"{dataset.uri}: this indicator reads columns path,{','.join(columns)} from a CSV/JSONL manifest; "
            "write one with `seer eval import-dollar-street` or `import-casual-conversations`"
        )
    rows = {
        str(r.get("path", "")).strip(): r for _, r in read_manifest_rows(dataset.uri, dataset.fmt, ("path",))
    }
    first = next(iter(rows.values()), {})
    missing = [c for c in columns if c not in first]
    if missing:
        raise DatasetError(
            f"{dataset.uri}: lacks column(s) {missing}; this indicator needs path,{','.join(columns)}"
        )
    return {c: [str(rows[s.key].get(c) or "").strip() for s in dataset.samples] for c in columns}


def geographic_groups(
    values: Mapping[str, list[str]], config: FairnessConfig, uri: str
) -> dict[str, list[str]]:
    """income bucket, region and country per image."""
    try:
        incomes = [float(v) for v in values["income"]]
    except ValueError:
        raise DatasetError(
            f"{uri}: every income must be a number (monthly USD, as Dollar Street gives it)"
        ) from None
    return {
        "income": [fi.income_bucket(x, config.income_edges) for x in incomes],
        "region": [v or "unknown" for v in values["region"]],
        "country": [v or "unknown" for v in values["country"]],
    }


def association_groups(values: Mapping[str, list[str]], config: FairnessConfig) -> dict[str, list[str]]:
    """gender, age bucket, skin tone and gender × skin tone per image (VISSL's attribute names)."""
    gender = [v.lower() or "unknown" for v in values["gender"]]
    tone = [fi.skin_tone(v, config.skin_lighter_max) for v in values["skin_type"]]
    return {
        "gender": gender,
        "age": [fi.age_bucket(v, config.age_edges) for v in values["age"]],
        "skintone": tone,
        "gender_skintone": [f"{g}_{t}" for g, t in zip(gender, tone, strict=True)],
    }


def indicator_report(
    scores: np.ndarray,
    classes: Sequence[str],
    config: FairnessConfig,
    groups: Mapping[str, Sequence[str]],
    truth: Sequence[str] = (),
    label_map: Mapping[str, Sequence[str]] | None = None,
    associations: Mapping[str, Sequence[str]] = fi.ASSOCIATIONS,
) -> FairnessResult:
    """Flat metrics and per-group details of the geographic or label-association indicator."""
    top = fi.top_classes(scores, config.topk)
    if config.indicator == "geographic":
        predicted = fi.mapped_labels(top, classes, label_map)
        overall, per = fi.geographic_hit_rates(predicted, truth, groups)
        flat = {"hit_rate": overall}
        for attribute, by_value in per.items():
            flat.update({f"{attribute}.{v}.hit_rate": r["rate"] for v, r in by_value.items()})
            if attribute in ("income", "region"):
                flat[f"{attribute}.disparity"] = metrics.disparity(r["rate"] for r in by_value.values())[
                    "max_minus_min"
                ]
        return FairnessResult(flat, per)
    # VISSL's label association names each class by the first label its map lists
    first = {c: tuple(v[:1]) for c, v in label_map.items()} if label_map else None
    overall, per = fi.label_associations(fi.mapped_labels(top, classes, first), groups, associations)
    flat = dict(overall)
    for attribute, by_value in per.items():
        for value, by_category in by_value.items():
            flat.update({f"{attribute}.{value}.{c}": r["rate"] for c, r in by_category.items()})
    return FairnessResult(flat, per)


def _lower_is_better(
    config: FairnessConfig, groups: Mapping[str, Sequence[str]], associations: Mapping[str, Sequence[str]]
) -> list[str]:
    """Disparities, and the shares of harmful association categories (non-human, crime)."""
    if config.indicator == "accuracy":
        return ["disparity", "harmful_predictions"]
    if config.indicator == "geographic":
        return ["income.disparity", "region.disparity"]
    harmful = [c for c in associations if c in fi.HARMFUL_ASSOCIATIONS]
    return harmful + [
        f"{a}.{v}.{c}" for a, values in groups.items() for v in sorted(set(values)) for c in harmful
    ]


def _indicator_plots(
    r: FairnessResult, indicator: str, associations: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    if indicator == "geographic":
        return {
            f"hit rate by {a}": {v: x["rate"] for v, x in r.per_group[a].items()}
            for a in ("income", "region")
        }
    by_group = r.per_group["gender_skintone"]
    return {
        f"{c} by gender x skin tone": {v: by[c]["rate"] for v, by in by_group.items()} for c in associations
    }


def _classify(config: FairnessConfig, probe: LinearConfig, f: dict[str, FeatureSet], train: EvalDataset):
    train_x, test_x, n = f["train"].stacked(), f["test"].stacked(), len(train.classes)
    if config.classifier == "linear":
        return predict(train_probe(train_x, train.labels, n, probe)[0], test_x)
    return knn_scores(train_x, train.labels, test_x, n, config.k, config.temperature)


def run(train_uri: str | None, test_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval fairness`: train a probe (or k-NN) on `train_uri`, score the indicator on `test_uri`;
    with `classifier="finetuned"` the checkpoint's own head scores instead (`train_uri` unused)."""
    probe = kwargs.pop("probe", None)
    run_settings, options, config = prepare(checkpoint, FairnessConfig, kwargs)
    probe = probe or LinearConfig()
    probe.validate()  # before loading data or extracting features, as `seer eval linear` does
    head = None
    if config.classifier == "finetuned":
        head, run_settings, options = finetuned.prepare_classifier(run_settings, options)
        train, classes, source, protocol = None, head.classes, checkpoint, finetuned.PROTOCOL
    elif not train_uri:
        raise ConfigError(f"--classifier {config.classifier} needs a training set: pass --train URI")
    else:
        train = run_settings.load(train_uri, "classification")
        classes, source, protocol = train.classes, train_uri, PROTOCOL
    if config.indicator == "accuracy":
        test = run_settings.load(test_uri, "grouped", classes=classes)
    else:
        test = run_settings.load(test_uri, "images")
    unknown = [h for h in config.harmful_labels if h not in classes]
    if unknown:
        raise ConfigError(f"harmful label(s) {unknown} are not classes of {source}; classes: {classes}")
    label_map = load_label_map(config.label_map, classes) if config.label_map else None
    associations = load_associations(config.associations)
    groups: dict[str, list[str]] = {}
    truth: list[str] = []
    if config.indicator != "accuracy":
        values = read_test_columns(test, TEST_COLUMNS[config.indicator])
        if config.indicator == "geographic":
            groups, truth = geographic_groups(values, config, test_uri), values["label"]
        else:
            groups = association_groups(values, config)

    def score(f: dict[str, FeatureSet]) -> Scored:
        scores = head.logits(f["test"].stacked()) if head else _classify(config, probe, f, train)
        details: dict[str, Any] = {"classes": classes, "protocol": protocol}
        if config.indicator != "accuracy":
            r = indicator_report(scores, classes, config, groups, truth, label_map, associations)
            bars = _indicator_plots(r, config.indicator, associations)
            return Scored(
                r.metrics,
                {"per_group": r.per_group, **details},
                lambda: {k: report.plot_bars(v, k, "rate") for k, v in bars.items()},
            )
        r = fairness_report(scores.argmax(axis=1), test.labels, test.groups, classes, config.harmful_labels)
        plots = {
            "accuracy per group": ({g: v["accuracy"] for g, v in r.per_group.items()}, "accuracy per group"),
            "harmful predictions per group": (
                {g: v["harmful_rate"] for g, v in r.per_group.items()},
                "harmful-label rate per group",
                "rate",
            ),
        }
        return Scored(
            r.metrics,
            {"per_group": r.per_group, **details},
            lambda: {k: report.plot_bars(*v) for k, v in plots.items()},
        )

    classifier = {"linear": asdict(probe), "knn": {"k": config.k, "temperature": config.temperature}}
    record = {
        "protocol": protocol,
        "indicator": config.indicator,
        "classifier": config.classifier,
        **classifier.get(config.classifier, {}),
        "harmful_labels": list(config.harmful_labels),
        "baselines": list(run_settings.baselines),
    }
    if config.indicator != "accuracy":
        record.update(topk=config.topk, label_map=config.label_map, mapped_classes=len(label_map or classes))
        if config.indicator == "geographic":
            record["income_edges"] = list(config.income_edges)
        else:
            record.update(
                associations={k: list(v) for k, v in associations.items()},
                age_edges=list(config.age_edges),
                skin_lighter_max=config.skin_lighter_max,
            )
    sets = {"test": test} if train is None else {"train": train, "test": test}
    lower = _lower_is_better(config, groups, associations)
    return evaluate(
        "fairness", run_settings, options, sets, score, record, seed=probe.seed, lower_is_better=lower
    )[0]
