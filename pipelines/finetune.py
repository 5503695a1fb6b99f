"""`seer-finetune`: a registered model (or a checkpoint URI) → fine-tune (`seer finetune`, locally or as
a PyTorchJob / TrainJob for the big presets) → evaluations of the fine-tuned classifier (test384; geo and
fairness with its own head) → register the fine-tuned version with lineage to its pretrained parent.

By default it runs test384 only (the evaluations that score a classifier with its own head are chosen
by `geo_method=finetuned` / `fairness_classifier=finetuned`, defaults here); linear, k-NN and copy
detection can still be switched on and evaluate the fine-tuned trunk's frozen features.
"""

from collections.abc import Mapping
from functools import partial
from typing import Any

from kfp import dsl
from kfp.dsl import Model

from components import SEER_TRAINER_IMAGE, eval_datasets, finetune, register_finetuned_model, resolve_model
from components.placement import StepSettings, apply
from pipelines.evaluations import evaluation_steps, results_of, with_evaluation_parameters
from pipelines.pretrain import DEFAULT_STEP_SETTINGS, RUN_ID
from pipelines.storage_defaults import DEFAULT_DATA_ROOT, DEFAULT_REGISTRY

PIPELINE_NAME = "seer-finetune"
DESCRIPTION = (
    "Fine-tune a registered SEER model (ImageNet 384 px, Im2GPS cells, fairness subsets), evaluate the "
    "classifier and register it with lineage to the pretrained model."
)
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
}


def build_finetune_pipeline(*, step_settings: Mapping[str, StepSettings] | None = None) -> Any:
    """The `seer-finetune` pipeline function."""
    settings = {**DEFAULT_FINETUNE_STEP_SETTINGS, **(step_settings or {})}

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @partial(with_evaluation_parameters, defaults=FINETUNE_EVAL_DEFAULTS)
    def seer_finetune(
        registry: str = DEFAULT_REGISTRY,
        model_name: str = "seer",
        model_version: str = "latest",
        checkpoint_uri: str = "",
        recipe: str = "in1k-384",
        overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
        train_uri: str = "",
        train_role: str = "",
        finetuned_name: str = "seer-finetuned",
        data_root: str = DEFAULT_DATA_ROOT,
        backend: str = "local",
        nproc_per_node: int = 2,
        nodes: int = 0,
        gpus_per_node: int = -1,
        trainer_image: str = SEER_TRAINER_IMAGE,
        job_name: str = "",
        namespace: str = "seer",
        storage_secret: str = "seer-storage",
        gang_scheduler: str = "",
        kueue_queue: str = "",
        node_selector: dict = {},  # noqa: B006
        tolerations: list = [],  # noqa: B006
        network: str = "tcp",
        network_devices: int = 0,
        train_timeout_s: float = 0.0,
        pending_timeout_s: float = 1800.0,
        evaluation: dict | None = None,
    ):
        """Fine-tuning: resolve model → fine-tune → evaluations of the classifier → register with lineage.

        Args:
            registry: Model registry: a storage URI or a Kubeflow Model Registry http(s) address.
            model_name: Registered pretrained model to fine-tune.
            model_version: Its version, or latest.
            checkpoint_uri: Fine-tune this checkpoint (any format seer reads) instead of a registered version.
            recipe: Fine-tuning recipe: in1k-384, in1k-384-rg10b, im2gps, fairness-in22k (or a YAML path in the trainer image).
            overrides: Fine-tuning config overrides, e.g. ["optim.epochs=3", "data.crop_size=224"].
            train_uri: Labelled training set (path,label or, for im2gps, path,lat,lon); empty: a set of the evaluation datasets.
            train_role: Evaluation-dataset role to train on when train_uri is empty (default linear_train, geo_train for im2gps).
            finetuned_name: Registered model name of the fine-tuned classifier.
            data_root: Folder or s3:// / minio:// prefix for the run's data (the fine-tune, generated sets).
            backend: Where fine-tuning runs: local (torchrun inside the step's pod), pytorchjob or trainjob.
            nproc_per_node: Ranks of a local run.
            nodes: Training job pods (0: the preset's, rg10b: 62).
            gpus_per_node: GPUs per pod (-1: the preset's, 8 for the large presets).
            trainer_image: Trainer image (images/trainer) with a pinned tag.
            job_name: Training job name (default: seer-<run id>).
            namespace: Namespace of the training job.
            storage_secret: Secret with the object-storage credentials and SEER_S3_ENDPOINT for the training pods.
            gang_scheduler: Gang scheduling of the training pods: '' (none), volcano or scheduler-plugins.
            kueue_queue: Kueue LocalQueue the training job waits in until admitted ('' for none).
            node_selector: Node selector of the training pods.
            tolerations: Tolerations of the training pods (Kubernetes objects).
            network: NCCL fabric of the training pods: tcp, efa or ib.
            network_devices: EFA adapters or RDMA devices per training pod.
            train_timeout_s: Delete the training job after this many seconds (0: no limit).
            pending_timeout_s: Delete the training job when no pod runs within this many seconds.
        """
        resolved = resolve_model(
            registry=registry, name=model_name, version=model_version, checkpoint_uri=checkpoint_uri
        )
        apply(resolved, settings["resolve-model"]).set_caching_options(False)
        model = dsl.importer(artifact_uri=resolved.outputs["uri"], artifact_class=Model, reimport=True)
        datasets = apply(
            eval_datasets(
                sources=evaluation["eval_sources"],
                benchmark_sizes=evaluation["benchmark_sizes"],
                data_root=data_root,
            ),
            settings["eval-datasets"],
        )
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
            backend=backend,
            nproc_per_node=nproc_per_node,
            job_name=job_name,
            trainer_image=trainer_image,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            namespace=namespace,
            storage_secret=storage_secret,
            gang_scheduler=gang_scheduler,
            kueue_queue=kueue_queue,
            node_selector=node_selector,
            tolerations=tolerations,
            network=network,
            network_devices=network_devices,
            timeout_s=train_timeout_s,
            pending_timeout_s=pending_timeout_s,
        )
        apply(tuned, settings["finetune"]).set_caching_options(False)
        classifier = tuned.outputs["classifier"]
        evals = evaluation_steps(classifier, datasets.outputs["datasets"], settings, evaluation, classifier)
        register = register_finetuned_model(
            classifier=classifier,
            registry=registry,
            name=finetuned_name,
            version=f"ft-{RUN_ID}",
            parent_name=model_name,
            parent_version=resolved.outputs["version"],
            **results_of(evals),
        )
        apply(register, settings["register-finetuned-model"]).set_caching_options(False)

    return seer_finetune


seer_finetune = build_finetune_pipeline()
