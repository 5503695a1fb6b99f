"""`seer-evaluate`: a registered model (or a checkpoint URI) → evaluations → compare with the last
registered metrics → register the new metrics as a new version. What `make schedule-reeval` runs."""

from collections.abc import Mapping
from typing import Any

from kfp import dsl

from components import compare_metrics, register_model
from components.placement import StepSettings, apply
from pipelines import RUN_ID
from pipelines.evaluations import datasets_step, evaluation_steps, results_of, with_evaluation_parameters
from pipelines.model_source import registered_model, with_model_source_parameters
from pipelines.pretrain import DEFAULT_STEP_SETTINGS
from pipelines.storage_defaults import DEFAULT_DATA_ROOT

PIPELINE_NAME = "seer-evaluate"
DESCRIPTION = (
    "Re-evaluate a registered SEER model (or a checkpoint), compare with its last registered metrics and "
    "register the new ones."
)

DEFAULT_EVAL_STEP_SETTINGS: dict[str, StepSettings] = {
    "resolve-model": StepSettings(cpu="500m", memory="1Gi"),
    "eval-datasets": DEFAULT_STEP_SETTINGS["eval-datasets"],
    "evaluation": DEFAULT_STEP_SETTINGS["evaluation"],
    "compare-metrics": StepSettings(cpu="500m", memory="1Gi"),
    "register-model": DEFAULT_STEP_SETTINGS["register-model"],
}


def build_evaluate_pipeline(*, step_settings: Mapping[str, StepSettings] | None = None) -> Any:
    """The `seer-evaluate` pipeline function."""
    settings = {**DEFAULT_EVAL_STEP_SETTINGS, **(step_settings or {})}

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @with_evaluation_parameters
    @with_model_source_parameters
    def seer_evaluate(
        regression_threshold: float = 0.01,
        fail_on_regression: bool = False,
        data_root: str = DEFAULT_DATA_ROOT,
        source: dict | None = None,
        evaluation: dict | None = None,
    ):
        """Re-evaluation: resolve model → evaluations → compare with the last registered metrics → register.

        Args:
            regression_threshold: A metric regressed when it moved the bad way by more than this (0.01 = 1 point).
            fail_on_regression: Fail the run (and register nothing) when a metric regressed.
            data_root: Folder or s3:// / minio:// prefix for generated evaluation sets.
        """
        resolved, model = registered_model(source, settings)
        registry, model_name = source["registry"], source["model_name"]
        datasets = datasets_step(evaluation, data_root, settings)
        evals = evaluation_steps(model.output, datasets.outputs["datasets"], settings, evaluation)
        for task in evals.values():
            task.set_caching_options(False)
        compare = compare_metrics(
            registry=registry,
            name=model_name,
            threshold=regression_threshold,
            fail_on_regression=fail_on_regression,
            **results_of(evals),
        )
        apply(compare, settings["compare-metrics"]).set_caching_options(False)
        register = register_model(
            model=model.output,
            registry=registry,
            name=model_name,
            version=f"eval-{RUN_ID}",
            preset=resolved.outputs["preset"],
            parent_run=RUN_ID,
            description="seer-evaluate re-evaluation",
            **results_of(evals),
        ).after(compare)
        apply(register, settings["register-model"]).set_caching_options(False)

    return seer_evaluate


seer_evaluate = build_evaluate_pipeline()
