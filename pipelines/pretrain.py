"""`seer-pretrain`: [generate corpus] → list → shard partitions (ParallelFor) → merge → pretrain →
consolidate + slice → evaluations → register, inside an exit handler that records how the run ended
and deletes a left-over training job. Artifacts are descriptors; the bytes live under `data_root`
(docs/artifacts.md).

`build_pretrain_pipeline()` makes the pipeline function; `seer_pretrain` is the cluster version (the
one `make compile` writes). kfp 2.16.1's local runner cannot run two parts of it:
- `dsl.ExitHandler` (NotImplementedError for the final-status input): `pipelines/run/local_run.py`
  builds it with `exit_handler=False` and records the final state itself;
- a task after a `dsl.ParallelFor` (KeyError on the loop in its topological sort; nested pipelines fed
  by task outputs fail too): local_run passes `partitions=N`, which unrolls the loop into N shard tasks
  at build time. The tasks, their inputs and the merge are the same as the loop's.
"""

from collections.abc import Mapping
from typing import Any

from kfp import dsl

from components import (
    consolidate_slice,
    generate_corpus,
    list_images,
    merge_shards,
    pretrain,
    register_model,
    shard_partition,
)
from components.placement import StepSettings, apply
from pipelines import RUN_ID
from pipelines.evaluations import datasets_step, evaluation_steps, results_of, with_evaluation_parameters
from pipelines.storage_defaults import DEFAULT_DATA_ROOT, DEFAULT_REGISTRY
from pipelines.training import training_exit_handler, training_step_arguments, with_training_parameters

PIPELINE_NAME = "seer-pretrain"
DESCRIPTION = (
    "SEER self-supervised pretraining (SwAV on RegNetY): list → shard (fan-out) → merge → pretrain → slice → "
    "evaluate → register."
)
VERSION = f"run-{RUN_ID}"  # the registered model version of a run

# Pod settings per step (override with a YAML file: pipelines/compile.py --step-settings).
DEFAULT_STEP_SETTINGS: dict[str, StepSettings] = {
    "generate-corpus": StepSettings(cpu="1", memory="2Gi"),
    "list-images": StepSettings(cpu="1", memory="2Gi", retries=2),
    # Partitions and the merge resume where a killed attempt stopped (seer.data.shard / merge).
    "shard-partition": StepSettings(cpu="8", memory="16Gi", retries=2),
    "merge-shards": StepSettings(cpu="2", memory="8Gi", retries=1),
    # Retrying pretrain is safe: the launcher re-attaches to the job it started (seer.launch.kube).
    "pretrain": StepSettings(cpu="4", memory="16Gi", shm="4Gi", retries=2),
    # DCP checkpoints are copied to local disk to be consolidated (seer.checkpoints.consolidate).
    "consolidate-slice": StepSettings(cpu="4", memory="32Gi", scratch="256Gi", retries=1),
    "eval-datasets": StepSettings(cpu="1", memory="4Gi", retries=1),
    # A consolidated (not sliced) checkpoint on object storage is copied locally before loading.
    "evaluation": StepSettings(cpu="8", memory="32Gi", shm="8Gi", scratch="64Gi"),
    "register-model": StepSettings(cpu="1", memory="2Gi", timeout_s=3600),
    "record-failure-and-cleanup": StepSettings(cpu="500m", memory="1Gi", timeout_s=1800, retries=1),
}


def build_pretrain_pipeline(
    *,
    exit_handler: bool = True,
    step_settings: Mapping[str, StepSettings] | None = None,
    partitions: int | None = None,
) -> Any:
    """The `seer-pretrain` pipeline function; `exit_handler=False` for runners without ExitHandler,
    `partitions=N` (the run's shard_parallelism) for runners without tasks after a ParallelFor."""
    settings = {**DEFAULT_STEP_SETTINGS, **(step_settings or {})}

    def shard_steps(images: Any, data_root: Any, shard_parallelism: Any) -> Any:
        """list → one shard-partition task per partition → merge; returns the merge task."""
        listed = apply(
            list_images(images=images, data_root=data_root, run_id=RUN_ID, partitions=shard_parallelism),
            settings["list-images"],
        )
        listed.set_caching_options(False)  # it must look at the images on every run
        common = {"prefix": listed.outputs["prefix"], "digest": listed.outputs["digest"]}
        if partitions is None:
            with dsl.ParallelFor(listed.outputs["indices"], name="shard-partitions") as index:
                parts = [shard_partition(partition=index, partitions=shard_parallelism, **common)]
        else:
            parts = [
                shard_partition(partition=i, partitions=shard_parallelism, **common)
                for i in range(partitions)
            ]
        for part in parts:
            apply(part, settings["shard-partition"])
        merge = merge_shards(partitions=shard_parallelism, **common).after(*parts)
        return apply(merge, settings["merge-shards"])

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @with_evaluation_parameters
    @with_training_parameters
    def seer_pretrain(
        images_uri: str = "",
        synth_images: int = 256,
        data_root: str = DEFAULT_DATA_ROOT,
        shard_parallelism: int = 1,
        recipe: str = "rg-tiny",
        overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
        registry: str = DEFAULT_REGISTRY,
        model_name: str = "seer",
        training: dict | None = None,
        evaluation: dict | None = None,
    ):
        """SEER pretraining: list → shard (fan-out) → merge → pretrain → consolidate + slice → evaluations → register.

        Args:
            images_uri: Images to shard (folder, .tar, list file, s3:// or minio:// prefix); empty generates a synthetic corpus.
            synth_images: Images in the synthetic corpus when images_uri is empty.
            data_root: Folder or s3:// / minio:// prefix for the run's data (shards, checkpoints, slices, classifiers, generated sets); KFP artifacts only hold descriptors pointing there. On multi-user KFP keep it under mlpipeline/shared/ or private-artifacts/<namespace>/.
            shard_parallelism: Shard steps run in parallel (partitions of the listing), e.g. 125 for 1B images at 8 cores each (seer shard --plan).
            recipe: Pretraining recipe: rg-tiny, rg-small, rg32gf, rg64gf, rg128gf, rg256gf, rg10b, seer2021, or a config path.
            overrides: Config overrides, e.g. ["train.iterations=1000", "optim.base_lr=0.3"].
            registry: Model registry: a storage URI or a Kubeflow Model Registry http(s) address. The default (mlpipeline/shared/...) is writable in standalone and multi-user KFP; a profile-private one is minio://mlpipeline/private-artifacts/<namespace>/...
            model_name: Registered model name.
        """
        with training_exit_handler(
            training,
            settings["record-failure-and-cleanup"],
            name="train-evaluate-register",
            model_name=model_name,
            model_version=VERSION,
            enabled=exit_handler,
        ):
            corpus = apply(
                generate_corpus(count=synth_images, source_uri=images_uri, data_root=data_root),
                settings["generate-corpus"],
            )
            shards = shard_steps(corpus.outputs["images"], data_root, shard_parallelism)
            train = pretrain(
                shards=shards.outputs["shards"],
                run_id=RUN_ID,
                data_root=data_root,
                recipe=recipe,
                overrides=overrides,
                **training_step_arguments(training),
            )
            apply(train, settings["pretrain"]).set_caching_options(False)
            ckpt = apply(consolidate_slice(run=train.outputs["run"]), settings["consolidate-slice"])
            datasets = datasets_step(evaluation, data_root, settings)
            evals = evaluation_steps(
                ckpt.outputs["sliced"], datasets.outputs["datasets"], settings, evaluation
            )
            register = register_model(
                model=ckpt.outputs["sliced"],
                registry=registry,
                name=model_name,
                version=VERSION,
                parent_run=RUN_ID,
                description="seer-pretrain run",
                **results_of(evals),
            )
            apply(register, settings["register-model"]).set_caching_options(False)

    return seer_pretrain


seer_pretrain = build_pretrain_pipeline()
