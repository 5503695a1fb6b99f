"""Evaluation steps, one per SEER protocol (`seer eval …`), each a typed signature around
`seer.eval.steps.run_step`; parameter defaults match the protocol dataclasses (tests check it). Each reads its sets from `datasets.json`
(the eval_datasets step), writes `report.html` + `metrics.json` into `results`, logs the metrics to
the KFP `Metrics` artifact, copies the report into the `HTML` artifact the UI renders and, for
classification, logs the confusion matrix. `enabled=False` records a skipped evaluation instead, so a
pipeline run chooses its evaluations with parameters rather than control flow."""

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


@seer_component(additional_funcs=[_publish, _skip])
def linear_eval(
    model: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    results: Output[Artifact],
    classifier: Output[Model],
    enabled: bool = True,
    epochs: int = 28,
    transform: str = "shorter:256:224",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    baselines: list = [],  # noqa: B006 - KFP parameter defaults must be literals
    seed: int = 0,
):
    """Linear probe (BN + Linear on frozen avgpool features) on linear_train → top-1/top-5 on linear_val.

    Args:
        model: Checkpoint to evaluate (sliced or consolidated).
        datasets: The eval_datasets folder (datasets.json).
        metrics: top1/top5 (and baselines'), shown in the run comparison.
        confusion: Confusion matrix on linear_val.
        report: HTML report with plots.
        results: Folder with report.html and metrics.json (seer-eval-metrics-v1).
        classifier: Trunk + trained probe, for the test384 step.
        enabled: Run this evaluation.
        epochs: Probe training epochs (milestones scale with it).
        transform: Test transform, e.g. shorter:256:224.
        batch_size: Images per forward pass during feature extraction.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
        baselines: Also evaluate random-init and/or random-features.
        seed: Seed of the probe and of the baselines.
    """
    if not enabled:
        _skip("linear", results.path, report)
        _skip("linear", classifier.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "linear", model.uri, datasets.uri, results.path, transform=transform, batch_size=batch_size,
        workers=workers, device=device, baselines=baselines, epochs=epochs, seed=seed,
        save_classifier_uri=classifier.path,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report, confusion)


@seer_component(additional_funcs=[_publish, _skip])
def knn_eval(
    model: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    results: Output[Artifact],
    enabled: bool = True,
    k: int = 20,
    temperature: float = 0.07,
    transform: str = "shorter:256:224",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    baselines: list = [],  # noqa: B006
    seed: int = 0,
):
    """Weighted k-NN on frozen features: linear_train neighbours → top-1/top-5 on linear_val.

    Args:
        model: Checkpoint to evaluate (sliced or consolidated).
        datasets: The eval_datasets folder (datasets.json).
        metrics: top1/top5 (and baselines').
        confusion: Confusion matrix on linear_val.
        report: HTML report with plots.
        results: Folder with report.html and metrics.json.
        enabled: Run this evaluation.
        k: Number of neighbours.
        temperature: τ of the exp(similarity / τ) vote weight.
        transform: Test transform, e.g. shorter:256:224.
        batch_size: Images per forward pass.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
        baselines: Also evaluate random-init and/or random-features.
        seed: Seed of the baselines.
    """
    if not enabled:
        _skip("knn", results.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "knn", model.uri, datasets.uri, results.path, transform=transform, batch_size=batch_size,
        workers=workers, device=device, baselines=baselines, k=k, temperature=temperature, seed=seed,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report, confusion)


@seer_component(additional_funcs=[_publish, _skip])
def copy_detection_eval(
    model: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    results: Output[Artifact],
    enabled: bool = True,
    pca_dims: int = 1024,
    transform: str = "longer:224",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    baselines: list = [],  # noqa: B006
    seed: int = 0,
):
    """R-MAC copy detection (CopyDays protocol): copy_queries against copy_database → mAP per split, µAP.

    Args:
        model: Checkpoint to evaluate (sliced or consolidated).
        datasets: The eval_datasets folder (datasets.json).
        metrics: mAP per split and µAP (and baselines').
        report: HTML report with plots.
        results: Folder with report.html and metrics.json.
        enabled: Run this evaluation.
        pca_dims: Dimensions kept by the PCA-whitening learnt on copy_whitening.
        transform: Test transform, e.g. longer:224.
        batch_size: Images per forward pass.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
        baselines: Also evaluate random-init and/or random-features.
        seed: Seed of the baselines.
    """
    if not enabled:
        _skip("copy-detection", results.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "copy-detection", model.uri, datasets.uri, results.path, transform=transform, batch_size=batch_size,
        workers=workers, device=device, baselines=baselines, pca_dims=pca_dims, seed=seed,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report)


@seer_component(additional_funcs=[_publish, _skip])
def geolocalization_eval(
    model: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    results: Output[Artifact],
    enabled: bool = False,
    method: str = "nn",
    transform: str = "shorter:256:224",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    baselines: list = [],  # noqa: B006
):
    """Geolocalization: predict geo_val locations from geo_train → accuracy at 1/25/200/750/2500 km.

    Args:
        model: Checkpoint to evaluate (sliced or consolidated).
        datasets: The eval_datasets folder (datasets.json).
        metrics: Accuracy per distance threshold (and baselines').
        report: HTML report with plots.
        results: Folder with report.html and metrics.json.
        enabled: Run this evaluation.
        method: nn (nearest training image) or cells (cell classifier over geo_cells).
        transform: Test transform, e.g. shorter:256:224.
        batch_size: Images per forward pass.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
        baselines: Also evaluate random-init and/or random-features.
    """
    if not enabled:
        _skip("geolocalization", results.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "geolocalization", model.uri, datasets.uri, results.path, transform=transform, batch_size=batch_size,
        workers=workers, device=device, baselines=baselines, method=method,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report)


@seer_component(additional_funcs=[_publish, _skip])
def fairness_eval(
    model: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    results: Output[Artifact],
    enabled: bool = False,
    harmful_labels: list = [],  # noqa: B006
    classifier: str = "linear",
    transform: str = "shorter:256:224",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    baselines: list = [],  # noqa: B006
):
    """Fairness: classifier on fairness_train, per-group accuracy and disparity on fairness_test.

    Args:
        model: Checkpoint to evaluate (sliced or consolidated).
        datasets: The eval_datasets folder (datasets.json).
        metrics: Per-group accuracy, disparity, harmful-label rates (and baselines').
        report: HTML report with plots.
        results: Folder with report.html and metrics.json.
        enabled: Run this evaluation.
        harmful_labels: Class names counted as harmful predictions.
        classifier: linear or knn.
        transform: Test transform, e.g. shorter:256:224.
        batch_size: Images per forward pass.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
        baselines: Also evaluate random-init and/or random-features.
    """
    if not enabled:
        _skip("fairness", results.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "fairness", model.uri, datasets.uri, results.path, transform=transform, batch_size=batch_size,
        workers=workers, device=device, baselines=baselines, harmful_labels=harmful_labels, classifier=classifier,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report)


@seer_component(additional_funcs=[_publish, _skip])
def test384_eval(
    classifier: Input[Model],
    datasets: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    results: Output[Artifact],
    enabled: bool = False,
    resolution: int = 384,
    batch_size: int = 32,
    workers: int = 4,
    device: str = "auto",
):
    """384 px test of the linear step's classifier (trunk + probe) on linear_val → top-1/top-5.

    Args:
        classifier: Classifier checkpoint written by the linear step (needs it enabled).
        datasets: The eval_datasets folder (datasets.json).
        metrics: top1/top5 at the test resolution.
        report: HTML report.
        results: Folder with report.html and metrics.json.
        enabled: Run this evaluation.
        resolution: Test resolution (resize shorter side, centre crop).
        batch_size: Images per forward pass.
        workers: Image-decoding processes (0: in the step's process).
        device: auto, cpu or cuda:N.
    """
    if not enabled:
        _skip("test384", results.path, report)
        return
    from seer.eval.steps import run_step

    doc = run_step(
        "test384", classifier.uri, datasets.uri, results.path, batch_size=batch_size, workers=workers,
        device=device, resolution=resolution,
    )  # fmt: skip
    _publish(doc, results.path, metrics, report)
