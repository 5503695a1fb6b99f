"""`seer-finetune`: a registered model (or a checkpoint URI) → fine-tune (`seer finetune`, locally or as
a PyTorchJob / TrainJob for the big presets) → evaluations of the fine-tuned classifier (test384; geo and
fairness with its own head) → register the fine-tuned version with lineage to its pretrained parent,
inside an exit handler (as seer-pretrain's, `pipelines.training`) that records how the run ended and
deletes a training job a cancelled or failed run left behind. kfp.local has no ExitHandler: build it
with `exit_handler=False` there.

By default it runs test384 only (the evaluations that score a classifier with its own head are chosen
by `geo_method=finetuned` / `fairness_classifier=finetuned`, defaults here); linear, k-NN and copy
detection can still be switched on and evaluate the fine-tuned trunk's frozen features.
"""

from collections.abc import Mapping
from functools import partial
from typing import Any

from kfp import dsl

from components import finetune, register_finetuned_model
from components.placement import StepSettings, apply
from pipelines import RUN_ID
from pipelines.evaluations import datasets_step, evaluation_steps, results_of, with_evaluation_parameters
from pipelines.model_source import registered_model, with_model_source_parameters
from pipelines.pretrain import DEFAULT_STEP_SETTINGS
from pipelines.storage_defaults import DEFAULT_DATA_ROOT
from pipelines.training import training_exit_handler, training_step_arguments, with_training_parameters

PIPELINE_NAME = "seer-finetune"
DESCRIPTION = (
    "Fine-tune a registered SEER model (ImageNet 384 px, Im2GPS cells, fairness subsets), evaluate the "
    "classifier and register it with lineage to the pretrained model."
)
VERSION = f"ft-{RUN_ID}"  # the registered version of the fine-tuned classifier
# The evaluations of a fine-tuned classifier: its own head, on its own task.
FINETUNE_EVAL_DEFAULTS = {
    "run_linear": False,
    "run_knn": False,
    "run_copy_detection": False,
    "run_test384": True,
    "geo_method": "finetuned",
    "fairness_classifier": "finetuned",
}

DEFAULT_FINETUNE_STEP_SETTINGS: dict[str, StepSettings] = {
    "resolve-model": StepSettings(cpu="500m", memory="1Gi"),
    "eval-datasets": DEFAULT_STEP_SETTINGS["eval-datasets"],
    # Like pretrain: a retried step re-attaches to its job, and seer finetune resumes its checkpoints.
    "finetune": DEFAULT_STEP_SETTINGS["pretrain"],
    "evaluation": DEFAULT_STEP_SETTINGS["evaluation"],
    "register-finetuned-model": DEFAULT_STEP_SETTINGS["register-model"],
    "record-failure-and-cleanup": DEFAULT_STEP_SETTINGS["record-failure-and-cleanup"],
}


def build_finetune_pipeline(
    *, exit_handler: bool = True, step_settings: Mapping[str, StepSettings] | None = None
) -> Any:
    """The `seer-finetune` pipeline function; `exit_handler=False` for runners without ExitHandler
    (kfp.local)."""
    settings = {**DEFAULT_FINETUNE_STEP_SETTINGS, **(step_settings or {})}

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @partial(with_evaluation_parameters, defaults=FINETUNE_EVAL_DEFAULTS)
    @with_training_parameters
    @with_model_source_parameters
    def seer_finetune(
        recipe: str = "in1k-384",
        overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
        train_uri: str = "",
        train_role: str = "",
        finetuned_name: str = "seer-finetuned",
        data_root: str = DEFAULT_DATA_ROOT,
        source: dict | None = None,
        training: dict | None = None,
        evaluation: dict | None = None,
    ):
        """Fine-tuning: resolve model → fine-tune → evaluations of the classifier → register with lineage.

        Args:
            recipe: Fine-tuning recipe: in1k-384, in1k-384-rg10b, im2gps, fairness-in22k (or a YAML path in the trainer image).
            overrides: Fine-tuning config overrides, e.g. ["optim.epochs=3", "data.crop_size=224"].
            train_uri: Labelled training set (path,label or, for im2gps, path,lat,lon); empty: a set of the evaluation datasets.
            train_role: Evaluation-dataset role to train on when train_uri is empty (default linear_train, geo_train for im2gps).
            finetuned_name: Registered model name of the fine-tuned classifier.
            data_root: Folder or s3:// / minio:// prefix for the run's data (the fine-tune, generated sets).
        """
        with training_exit_handler(
            training,
            settings["record-failure-and-cleanup"],
            name="finetune-evaluate-register",
            model_name=finetuned_name,
            model_version=VERSION,
            enabled=exit_handler,
        ):
            resolved, model = registered_model(source, settings)
            datasets = datasets_step(evaluation, data_root, settings)
            tuned = finetune(
                model=model.output,
                datasets=datasets.outputs["datasets"],
                run_id=RUN_ID,
                data_root=data_root,
                recipe=recipe,
                preset=resolved.outputs["preset"],
                overrides=overrides,
                train_uri=train_uri,
                train_role=train_role,
                **training_step_arguments(training),
            )
            apply(tuned, settings["finetune"]).set_caching_options(False)
            classifier = tuned.outputs["classifier"]
            evals = evaluation_steps(
                classifier, datasets.outputs["datasets"], settings, evaluation, classifier
            )
            register = register_finetuned_model(
                classifier=classifier,
                registry=source["registry"],
                name=finetuned_name,
                version=VERSION,
                parent_name=source["model_name"],
                parent_version=resolved.outputs["version"],
                **results_of(evals),
            )
            apply(register, settings["register-finetuned-model"]).set_caching_options(False)

    return seer_finetune


seer_finetune = build_finetune_pipeline()
