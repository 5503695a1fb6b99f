"""Evaluation steps, one per SEER protocol (`seer eval …`): a typed signature around
`seer.eval.steps.run_step`, whose defaults are the protocol dataclasses' (tests/test_eval_defaults.py).

Each reads its sets from `datasets.json` (the eval_datasets step), writes `report.html` +
`metrics.json` into `results`, logs the metrics to the KFP `Metrics` artifact, copies the report into
the `HTML` artifact the UI renders and, for classification, logs the confusion matrix.
`enabled=False` records a skipped evaluation instead, so a pipeline run chooses its evaluations with
parameters rather than control flow. The parameters every step shares are documented once
(`_COMMON_ARGS`); the signatures are kept compact (`# fmt: off`), a parameter group a line."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import seer_component


def _publish(doc: dict, results_path: str, metrics, report, confusion=None) -> None:
    """Log a seer metrics document to KFP: scalars, the HTML report and (optionally) the confusion matrix."""
    import shutil

    for name, value in doc["metrics"].items():
        metrics.log_metric(name, value)
    for baseline, values in (doc.get("baselines") or {}).items():
        for name, value in values.items():
            metrics.log_metric(f"{baseline}.{name}", value)
    shutil.copyfile(f"{results_path}/report.html", report.path)
    if confusion is not None:
        details = doc["details"]
        confusion.log_confusion_matrix([str(c) for c in details["classes"]], details["confusion"])


def _skip(name: str, results_path: str, report) -> None:
    """Record an evaluation that the run's parameters turned off."""
    import json
    import os

    os.makedirs(results_path, exist_ok=True)
    with open(os.path.join(results_path, "skipped.json"), "w") as f:
        json.dump({"eval": name, "skipped": True}, f)
    with open(report.path, "w") as f:
        f.write(f"<html><body><p>{name}: not run (enabled=false)</p></body></html>")
    print(f"{name}: skipped (enabled=false)")


def _evaluate(
    name: str, enabled: bool, checkpoint: str, datasets, results, metrics, report, confusion=None, **params
) -> None:
    """Run evaluation `name` of `checkpoint` with the step's `params` (seer.eval.steps.run_step) and
    publish it, or record it as skipped when the run turned it off."""
    from seer.eval.steps import run_step

    if not enabled:
        _skip(name, results.path, report)
        return
    doc = run_step(name, checkpoint, datasets.uri, results.path, **params)
    _publish(doc, results.path, metrics, report, confusion)


_COMMON_ARGS = {
    "model": "Checkpoint to evaluate (sliced or consolidated).",
    "datasets": "The eval_datasets folder (datasets.json).",
    "report": "HTML report with plots.",
    "results": "Folder with report.html and metrics.json (seer-eval-metrics-v1).",
    "enabled": "Run this evaluation.",
    "transform": "Test transform, e.g. shorter:256:224.",
    "batch_size": "Images per forward pass during feature extraction.",
    "workers": "Image-decoding processes (0: in the step's process).",
    "device": "auto, cpu or cuda:N.",
    "baselines": "Also evaluate random-init and/or random-features.",
}


def _documented(func):
    """Append the shared parameters' descriptions to the step's docstring `Args:` (the KFP UI text)."""
    import inspect

    names = inspect.signature(func).parameters
    shared = "".join(f"\n        {n}: {text}" for n, text in _COMMON_ARGS.items() if n in names)
    func.__doc__ = func.__doc__.rstrip() + shared + "\n    "
    return func


def _eval_step(func):
    """A lightweight component with the shared helpers and the shared parameter descriptions."""
    return seer_component(additional_funcs=[_publish, _skip, _evaluate])(_documented(func))


# fmt: off
@_eval_step
def linear_eval(
    model: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics], report: Output[HTML], results: Output[Artifact],
    classifier: Output[Model], enabled: bool = True, epochs: int = 28, protocol: str = "vissl",
    tap: str = "published", pool: str = "published", transform: str = "shorter:256:224",
    batch_size: int = 64, workers: int = 4, device: str = "auto",
    baselines: list = [], seed: int = 0,  # noqa: B006 - KFP parameter defaults must be literals
):
    """Linear probe (BN + Linear on frozen features) on linear_train → top-1/top-5 on linear_val.

    Args:
        metrics: top1/top5 (and baselines'), shown in the run comparison.
        confusion: Confusion matrix on linear_val.
        classifier: Trunk + trained probe, for the test384 step.
        epochs: Probe training epochs (milestones scale with it).
        protocol: vissl (fresh RandomResizedCrop + flip crops every epoch, SEER's) or fast (one
            test-transform pass reused every epoch).
        tap: Trunk output (res2..res5, avgpool) or published (the model's published feature).
        pool: avg, adaptive:HxW, none, or published.
        seed: Seed of the probe and of the baselines.
    """
    if not enabled:
        _skip("linear", classifier.path, report)
    _evaluate("linear", enabled, model.uri, datasets, results, metrics, report, confusion, epochs=epochs, seed=seed,
              protocol=protocol, tap=tap, pool=pool, save_classifier_uri=classifier.path, transform=transform,
              batch_size=batch_size, workers=workers, device=device, baselines=baselines)


@_eval_step
def knn_eval(
    model: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics], report: Output[HTML], results: Output[Artifact],
    enabled: bool = True, k: int = 20, temperature: float = 0.07, transform: str = "shorter:256:224",
    batch_size: int = 64, workers: int = 4, device: str = "auto", baselines: list = [], seed: int = 0,  # noqa: B006
):
    """Weighted k-NN on frozen features: linear_train neighbours → top-1/top-5 on linear_val.

    Args:
        metrics: top1/top5 (and baselines').
        confusion: Confusion matrix on linear_val.
        k: Number of neighbours.
        temperature: τ of the exp(similarity / τ) vote weight.
        seed: Seed of the baselines.
    """
    _evaluate("knn", enabled, model.uri, datasets, results, metrics, report, confusion, k=k, temperature=temperature,
              seed=seed, transform=transform, batch_size=batch_size, workers=workers, device=device,
              baselines=baselines)


@_eval_step
def copy_detection_eval(
    model: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics], report: Output[HTML],
    results: Output[Artifact], enabled: bool = True, pca_dims: int = 1024, max_distractors: int = 10000,
    transform: str = "longer:224", precision: str = "fp32", batch_size: int = 64, workers: int = 4,
    device: str = "auto", baselines: list = [], seed: int = 0,  # noqa: B006
):
    """R-MAC copy detection (CopyDays protocol): copy_queries against copy_database + copy_distractors →
    strong.mAP (headline), mAP per split, µAP. Needs copy_whitening (a set separate from the database).

    Args:
        metrics: strong.mAP, mAP per split and µAP (and baselines').
        pca_dims: Dimensions kept by the PCA-whitening learnt on copy_whitening.
        max_distractors: Distractors added to the database (the first N of copy_distractors).
        precision: fp32 (SEER's copy-detection features) or bf16 / auto.
        seed: Seed of the baselines.
    """
    _evaluate("copy-detection", enabled, model.uri, datasets, results, metrics, report, pca_dims=pca_dims, seed=seed,
              max_distractors=max_distractors, transform=transform, precision=precision, batch_size=batch_size,
              workers=workers, device=device, baselines=baselines)


@_eval_step
def geolocalization_eval(
    model: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics], report: Output[HTML],
    results: Output[Artifact], enabled: bool = False, method: str = "nn", cell_deg: float = 1.0,
    chunk_size: int = 2048, transform: str = "shorter:224:224", batch_size: int = 64, workers: int = 4,
    device: str = "auto", baselines: list = [],  # noqa: B006
):
    """Geolocalization: predict geo_val locations from geo_train on frozen features, or with the model's
    own cell classifier (method finetuned) → accuracy at 1/25/200/750/2500 km; the report records the protocol.

    Args:
        metrics: Accuracy per distance threshold (and baselines').
        method: nn (nearest training image), cells (cell classifier; prediction = top cell's mean coordinates)
            or finetuned (model is a `seer finetune --recipe im2gps` classifier: its own head and cells).
        cell_deg: Grid cell size in degrees when geo_cells is not given.
        chunk_size: Training images per block when assigning them to the nearest cell centre.
    """
    _evaluate("geolocalization", enabled, model.uri, datasets, results, metrics, report, method=method,
              cell_deg=cell_deg, chunk_size=chunk_size, transform=transform, batch_size=batch_size, workers=workers,
              device=device, baselines=baselines)


@_eval_step
def fairness_eval(
    model: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics], report: Output[HTML],
    results: Output[Artifact], enabled: bool = False, indicator: str = "accuracy", topk: int = 5,
    label_map: str = "", associations: str = "", harmful_labels: list = [], classifier: str = "linear",  # noqa: B006
    transform: str = "shorter:256:224", batch_size: int = 64, workers: int = 4, device: str = "auto",
    baselines: list = [],  # noqa: B006
):
    """Fairness: classifier on fairness_train (frozen features) or the model's own head (classifier
    finetuned), the chosen indicator on fairness_test.

    Args:
        metrics: Per-group accuracy / hit rates / label-association shares (and baselines').
        indicator: accuracy (per-group accuracy), geographic (Dollar Street top-k hit rate by income, region,
            country) or label-association (Casual Conversations label categories by gender, age, skin tone).
        topk: Predictions per image the SEER indicators look at.
        label_map: URI of the JSON class → labels map ("" = a class is its own label).
        associations: URI of the JSON category → labels map ("" = VISSL's IN22k-subset map).
        harmful_labels: Class names counted as harmful predictions (accuracy indicator).
        classifier: linear or knn (on frozen features), or finetuned (model is a `seer finetune` classifier).
    """
    _evaluate("fairness", enabled, model.uri, datasets, results, metrics, report, indicator=indicator, topk=topk,
              label_map=label_map or None, associations=associations or None, harmful_labels=harmful_labels,
              classifier=classifier, transform=transform, batch_size=batch_size, workers=workers, device=device,
              baselines=baselines)


@_eval_step
def test384_eval(
    classifier: Input[Model], datasets: Input[Dataset], metrics: Output[Metrics], report: Output[HTML],
    results: Output[Artifact], enabled: bool = False, classifier_uri: str = "", preset: str = "",
    resolution: int = 384, batch_size: int = 32, workers: int = 4, device: str = "auto",
):
    """384 px test of a classifier on test384_val (default linear_val) → top-1/top-5.

    Args:
        classifier: Classifier checkpoint written by the linear step (used when classifier_uri is empty).
        classifier_uri: A fine-tuned classifier to test instead: VISSL finetuned_in1k, timm or torchvision
            weights, or a seer classifier file (1000-way ImageNet heads map to the wnid folders).
        preset: Model preset of classifier_uri when the file does not name one (VISSL files).
        metrics: top1/top5 at the test resolution.
        resolution: Test resolution (resize shorter side, centre crop).
    """
    _evaluate("test384", enabled, classifier_uri or classifier.uri, datasets, results, metrics, report,
              resolution=resolution, preset=preset or None, batch_size=batch_size, workers=workers, device=device)
# fmt: on
