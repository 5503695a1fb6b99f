"""Registry steps (`seer.registry`): register a model version with its eval metrics, resolve a
registered model (or a checkpoint URI) for re-evaluation, and compare new metrics with the last
registered ones (`seer eval compare`)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components import seer_component

_RESULTS_ARGS = {
    "linear": "Linear-probe results folder.",
    "knn": "k-NN results folder.",
    "copy_detection": "Copy-detection results folder.",
    "geolocalization": "Geolocalization results folder.",
    "fairness": "Fairness results folder.",
    "test384": "384 px test results folder.",
}


def _with_results_args(func):
    """Append the six evaluation-results inputs to the step's docstring `Args:` (the KFP UI text)."""
    shared = "".join(f"\n        {name}: {text}" for name, text in _RESULTS_ARGS.items())
    func.__doc__ = func.__doc__.rstrip() + shared + "\n    "
    return func


def _results_by_eval(linear, knn, copy_detection, geolocalization, fairness, test384) -> dict:
    """Evaluation name → results folder URI of the six evaluation artifacts."""
    named = zip(
        ("linear", "knn", "copy-detection", "geolocalization", "fairness", "test384"),
        (linear, knn, copy_detection, geolocalization, fairness, test384),
        strict=True,
    )
    return {eval_name: artifact.uri for eval_name, artifact in named}


# fmt: off
@seer_component(additional_funcs=[_results_by_eval])
@_with_results_args
def register_model(
    model: Input[Model],
    linear: Input[Artifact], knn: Input[Artifact], copy_detection: Input[Artifact],
    geolocalization: Input[Artifact], fairness: Input[Artifact], test384: Input[Artifact],
    entry: Output[Artifact],
    registry: str,
    name: str,
    version: str,
    preset: str = "",
    parent_run: str = "",
    description: str = "",
) -> str:
    """Register `model` as `name`/`version` with every evaluation's metrics (`<eval>.<metric>`) and the
    URIs of their metrics.json and report.html. Idempotent for the same artifact; returns the version.

    Args:
        model: The artifact to register: the sliced checkpoint, or its descriptor (the data URI is registered).
        entry: The registry entry as JSON.
        registry: Storage URI of the registry, or the http(s) address of a Kubeflow Model Registry.
        name: Model name.
        version: Version name (unique per model).
        preset: Model preset recorded with the version ('' reads it from the model's metadata).
        parent_run: The run that produced the model.
        description: Free text shown with the version.
    """
    import json

    from seer.artifacts import resolve
    from seer.registry import collect_results, open_registry

    metrics, artifacts = collect_results(
        _results_by_eval(linear, knn, copy_detection, geolocalization, fairness, test384)
    )
    registered = open_registry(registry).register(
        name,
        version,
        resolve(model.uri),
        sha256=None,
        metrics=metrics,
        artifacts=artifacts,
        preset=preset or model.metadata.get("preset", ""),
        parent_run=parent_run,
        description=description,
    )
    with open(entry.path, "w") as f:
        json.dump(registered.to_dict(), f, indent=2)
    entry.metadata.update({"registry": registry, "name": name, "version": registered.version})
    print(f"registered {name} {registered.version} in {registry}: {json.dumps(metrics, sort_keys=True)}")
    return registered.version


@seer_component(additional_funcs=[_results_by_eval])
@_with_results_args
def register_finetuned_model(
    classifier: Input[Model],
    linear: Input[Artifact], knn: Input[Artifact], copy_detection: Input[Artifact],
    geolocalization: Input[Artifact], fairness: Input[Artifact], test384: Input[Artifact],
    entry: Output[Artifact],
    registry: str,
    name: str,
    version: str,
    parent_name: str = "",
    parent_version: str = "",
) -> str:
    """Register the fine-tuned classifier as `name`/`version` with the evaluations' metrics, lineage to
    the registered pretrained model `parent_name`/`parent_version` (`seer.finetune.register`); returns
    the version.

    Args:
        classifier: The finetune step's classifier descriptor.
        entry: The registry entry as JSON.
        registry: Storage URI of the registry, or the http(s) address of a Kubeflow Model Registry.
        name: Model name of the fine-tuned classifier.
        version: Version name (unique per model).
        parent_name: Registered model that was fine-tuned ('' for a bare checkpoint URI).
        parent_version: Its version ('' for a bare checkpoint URI).
    """
    import json

    from seer.finetune.register import register_finetune_run

    results = _results_by_eval(linear, knn, copy_detection, geolocalization, fairness, test384)
    registered = register_finetune_run(registry, classifier.uri, name, version, results, parent_name, parent_version)
    with open(entry.path, "w") as f:
        json.dump(registered.to_dict(), f, indent=2)
    entry.metadata.update({"registry": registry, "name": name, "version": registered.version})
    print(f"registered {name} {registered.version} (from {registered.parent_run or 'a checkpoint'}) in {registry}")
    return registered.version


@seer_component
def resolve_model(registry: str, name: str, version: str = "latest", checkpoint_uri: str = "") -> NamedTuple(
    "Resolved", [("uri", str), ("preset", str), ("version", str)]
):
    """The checkpoint to evaluate: `checkpoint_uri` when given, else the registered `name`/`version`.

    Args:
        registry: Storage URI of the registry, or the http(s) address of a Kubeflow Model Registry.
        name: Registered model name.
        version: Registered version, or latest.
        checkpoint_uri: Evaluate this checkpoint instead of a registered one.
    """
    from collections import namedtuple

    from seer.registry import open_registry

    resolved = namedtuple("Resolved", ["uri", "preset", "version"])
    if checkpoint_uri:
        return resolved(checkpoint_uri, "", "")
    reg = open_registry(registry)
    entry = reg.latest(name) if version == "latest" else reg.get(name, version)
    print(f"evaluating {name} {entry.version}: {entry.artifact_uri}")
    return resolved(entry.artifact_uri, entry.preset, entry.version)


@seer_component(additional_funcs=[_results_by_eval])
@_with_results_args
def compare_metrics(
    linear: Input[Artifact], knn: Input[Artifact], copy_detection: Input[Artifact],
    geolocalization: Input[Artifact], fairness: Input[Artifact], test384: Input[Artifact],
    comparison: Output[Markdown],
    registry: str,
    name: str,
    threshold: float = 0.01,
    fail_on_regression: bool = False,
) -> int:
    """Compare each evaluation with the same evaluation of the last registered version of `name`;
    returns the number of regressed metrics (moves in the bad direction beyond `threshold`).

    Args:
        comparison: Markdown table of the deltas, shown in the KFP UI.
        registry: Storage URI of the registry, or the http(s) address of a Kubeflow Model Registry.
        name: Registered model name whose latest version is the baseline.
        threshold: Regression threshold, absolute in metric units (0.01 = 1 point).
        fail_on_regression: Fail the step (and the run) when a metric regressed.
    """
    from seer.errors import SeerError
    from seer.registry import compare_with_latest, open_registry

    results = _results_by_eval(linear, knn, copy_detection, geolocalization, fairness, test384)
    markdown, regressions = compare_with_latest(open_registry(registry), name, results, threshold)
    with open(comparison.path, "w") as f:
        f.write(markdown + "\n")
    print(markdown)
    if regressions and fail_on_regression:
        raise SeerError(f"{len(regressions)} metric(s) regressed: {', '.join(regressions)}")
    return len(regressions)
# fmt: on
