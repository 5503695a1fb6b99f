"""The evaluation fan-out shared by `seer-pretrain`, `seer-evaluate` and `seer-finetune`: its pipeline
parameters (declared once here, added to the pipelines' signatures by `with_evaluation_parameters`),
`datasets_step` (the evaluation sets) and `evaluation_steps`, which wires the six evaluation steps onto
a model and the eval_datasets output."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from components import eval_datasets
from components import evaluate as steps
from components.placement import StepSettings, apply
from pipelines.parameter_blocks import ParameterBlock, with_parameter_block


def _step_default(step: Any, name: str) -> Any:
    """A step parameter's default (the step's defaults are checked against the library dataclasses)."""
    return inspect.signature(step.python_func).parameters[name].default


EVALUATION_PARAMETERS: ParameterBlock = {
    "eval_sources": (dict, {}, "Your evaluation sets by role (linear_train, linear_val, copy_queries, copy_database, "
                     "copy_distractors, copy_whitening, geo_train, geo_val, geo_cells, fairness_train, fairness_test, "
                     "test384_val); missing ones are generated (never copy_distractors or test384_val)."),
    "benchmark_sizes": (dict, {}, 'Sizes of generated benchmark sets, e.g. {"counting": {"n_train": 120}}.'),
    "run_linear": (bool, True, "Run the linear probe."),
    "run_knn": (bool, True, "Run the k-NN evaluation."),
    "run_copy_detection": (bool, True, "Run the copy-detection evaluation."),
    "run_geolocalization": (bool, False, "Run the geolocalization evaluation."),
    "run_fairness": (bool, False, "Run the fairness evaluation."),
    "run_test384": (bool, False, "Run the 384 px test of test384_classifier, or of the linear probe's classifier "
                    "(then needs run_linear)."),
    "linear_epochs": (int, 28, "Linear-probe epochs."),
    "linear_protocol": (str, "vissl", "Linear-probe protocol: vissl (fresh random crops every epoch through the "
                        "trunk, SEER's) or fast (one test-transform pass reused every epoch)."),
    "linear_tap": (str, "published", "Linear-probe trunk output (res2..res5, avgpool) or published (the model's "
                   "published feature: 32Gf res5, 64-256Gf avgpool, 10B res4)."),
    "linear_pool": (str, "published", "Linear-probe pooling: avg, adaptive:HxW, none or published."),
    "test384_classifier": (str, "", "Fine-tuned classifier for the 384 px test (VISSL finetuned_in1k, timm, "
                           "torchvision); empty: the linear probe's."),
    "test384_preset": (str, "", "Model preset of test384_classifier when the file names none (VISSL)."),
    "eval_transform": (str, "shorter:256:224", "Test transform of the classification evaluations, e.g. "
                       "shorter:256:224."),
    "copy_transform": (str, "longer:224", "Test transform of copy detection, e.g. longer:224."),
    "geo_transform": (str, _step_default(steps.geolocalization_eval, "transform"), "Test transform of "
                      "geolocalization (VISSL im2gps: Resize 224 + CenterCrop 224)."),
    "geo_method": (str, _step_default(steps.geolocalization_eval, "method"), "Geolocalization predictor: nn or "
                   "cells (cell classifier over geo_cells) on frozen features, or finetuned (the model is a geo "
                   "fine-tune: its own cell classifier, SEER's protocol)."),
    "fairness_indicator": (str, _step_default(steps.fairness_eval, "indicator"), "Fairness indicator: accuracy, "
                           "geographic (Dollar Street) or label-association (Casual Conversations)."),
    "fairness_classifier": (str, _step_default(steps.fairness_eval, "classifier"), "Fairness classifier: linear "
                            "or knn on frozen features of fairness_train, or finetuned (the model's own head)."),
    "fairness_label_map": (str, _step_default(steps.fairness_eval, "label_map"), "URI of the JSON map from the "
                           "fairness_train classes to Dollar Street labels / label names (empty: none)."),
    "eval_baselines": (list, [], "Also evaluate baselines: random-init and/or random-features."),
    "eval_workers": (int, 4, "Image-decoding processes per evaluation step."),
    "eval_device": (str, "auto", "Device of the evaluation steps: auto, cpu or cuda."),
}  # fmt: skip

# evaluation → (step, its run_* switch, its transform parameter)
_STEPS = {
    "linear": (steps.linear_eval, "run_linear", "eval_transform"),
    "knn": (steps.knn_eval, "run_knn", "eval_transform"),
    "copy-detection": (steps.copy_detection_eval, "run_copy_detection", "copy_transform"),
    "geolocalization": (steps.geolocalization_eval, "run_geolocalization", "geo_transform"),
    "fairness": (steps.fairness_eval, "run_fairness", "eval_transform"),
}


# evaluation → {step parameter: pipeline parameter} beyond the shared ones
_STEP_PARAMETERS = {
    "linear": {
        "epochs": "linear_epochs",
        "protocol": "linear_protocol",
        "tap": "linear_tap",
        "pool": "linear_pool",
    },
    "geolocalization": {"method": "geo_method"},
    "fairness": {
        "indicator": "fairness_indicator",
        "label_map": "fairness_label_map",
        "classifier": "fairness_classifier",
    },
}


def with_evaluation_parameters(func: Callable, *, defaults: Mapping[str, Any] | None = None) -> Callable:
    """Give a pipeline function the evaluation parameters after its own (signature and docstring
    `Args:`); the function receives them as one mapping, `evaluation`. `defaults` replaces some
    parameters' defaults for this pipeline (e.g. seer-finetune runs test384 by default)."""
    return with_parameter_block(EVALUATION_PARAMETERS, "evaluation", func, defaults=defaults)


def datasets_step(evaluation: Mapping[str, Any], data_root: Any, settings: Mapping[str, StepSettings]) -> Any:
    """The eval_datasets task: the user's sets by role, the missing ones generated under `data_root`."""
    task = eval_datasets(
        sources=evaluation["eval_sources"], benchmark_sizes=evaluation["benchmark_sizes"], data_root=data_root
    )
    return apply(task, settings["eval-datasets"])


def evaluation_steps(
    model: Any,
    datasets: Any,
    settings: Mapping[str, StepSettings],
    evaluation: Mapping[str, Any],
    classifier: Any = None,
) -> dict[str, Any]:
    """The six evaluation tasks on `model` (fan-out), keyed by evaluation name. test384 tests
    `classifier` (a fine-tuned classifier artifact) when given, else the linear probe's."""
    common = {"device": evaluation["eval_device"], "workers": evaluation["eval_workers"]}
    tasks = {}
    for name, (step, switch, transform) in _STEPS.items():
        extra = {param: evaluation[source] for param, source in _STEP_PARAMETERS.get(name, {}).items()}
        tasks[name] = step(
            model=model,
            datasets=datasets,
            enabled=evaluation[switch],
            transform=evaluation[transform],
            baselines=evaluation["eval_baselines"],
            **extra,
            **common,
        )
    tasks["test384"] = steps.test384_eval(
        classifier=tasks["linear"].outputs["classifier"] if classifier is None else classifier,
        datasets=datasets,
        enabled=evaluation["run_test384"],
        classifier_uri=evaluation["test384_classifier"],
        preset=evaluation["test384_preset"],
        **common,
    )
    for task in tasks.values():
        apply(task, settings["evaluation"])
    return tasks


def results_of(tasks: Mapping[str, Any]) -> dict[str, Any]:
    """register_model / compare_metrics keyword arguments: each evaluation's results folder."""
    return {name.replace("-", "_"): task.outputs["results"] for name, task in tasks.items()}
