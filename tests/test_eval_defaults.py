"""Each default lives once: the KFP evaluation steps and `seer eval` flags take their defaults from
the protocol dataclasses (a step parameter that differs from its dataclass field fails here)."""

from __future__ import annotations

import inspect

import pytest

from components import evaluate as steps
from seer.cli import build_parser
from seer.eval import test384
from seer.eval.copy_detection import CopyDetectionConfig
from seer.eval.fairness import FairnessConfig
from seer.eval.geolocalization import GeoConfig
from seer.eval.knn import KnnConfig
from seer.eval.linear import LinearConfig
from seer.eval.setup import FeatureOptions, RunSettings, field_defaults

# step parameter → (dataclass, field); `workers` is FeatureOptions.num_workers
_SHARED = {"batch_size": (FeatureOptions, "batch_size"), "workers": (FeatureOptions, "num_workers")}
STEPS = {
    steps.linear_eval: {"epochs": (LinearConfig, "epochs"), "seed": (LinearConfig, "seed"), **_SHARED},
    steps.knn_eval: {"k": (KnnConfig, "k"), "temperature": (KnnConfig, "temperature"), **_SHARED},
    steps.copy_detection_eval: {"pca_dims": (CopyDetectionConfig, "pca_dims"), **_SHARED},
    steps.geolocalization_eval: {
        "method": (GeoConfig, "method"),
        "cell_deg": (GeoConfig, "cell_deg"),
        "chunk_size": (GeoConfig, "chunk_size"),
        **_SHARED,
    },
    steps.fairness_eval: {
        "classifier": (FairnessConfig, "classifier"),
        "indicator": (FairnessConfig, "indicator"),
        "topk": (FairnessConfig, "topk"),
        **_SHARED,
    },
    steps.test384_eval: {
        "resolution": (test384.Test384Config, "resolution"),
        "workers": (FeatureOptions, "num_workers"),
    },
}


@pytest.mark.parametrize("step", list(STEPS), ids=lambda s: s.name)
def test_step_defaults_are_the_dataclass_defaults(step) -> None:
    params = inspect.signature(step.python_func).parameters
    for name, (cls, field) in STEPS[step].items():
        if name == "batch_size" and step is steps.test384_eval:
            continue
        assert params[name].default == field_defaults(cls)[field], f"{step.name}.{name}"
    assert params["device"].default == field_defaults(RunSettings)["device"]


def test_cli_flags_default_to_the_dataclass_fields() -> None:
    root = build_parser()
    ns = root.parse_args(["eval", "linear", "--train", "t", "--val", "v", "--checkpoint", "random"])
    assert ns.epochs == LinearConfig.epochs and ns.milestones == LinearConfig.milestones
    assert ns.probe_batch_size == field_defaults(LinearConfig)["batch_size"]
    assert ns.workers == field_defaults(FeatureOptions)["num_workers"]
    assert LinearConfig.for_epochs(28).milestones == LinearConfig.milestones
