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
    SEER_TRAINER_IMAGE,
    consolidate_slice,
    eval_datasets,
    generate_corpus,
    list_images,
    merge_shards,
    pretrain,
    record_failure_and_cleanup,
    register_model,
    shard_partition,
)
from components.placement import StepSettings, apply
from pipelines.evaluations import evaluation_steps, results_of, with_evaluation_parameters
from pipelines.storage_defaults import DEFAULT_DATA_ROOT, DEFAULT_REGISTRY, DEFAULT_STATUS_URI

PIPELINE_NAME = "seer-pretrain"
DESCRIPTION = (
    "SEER self-supervised pretraining (SwAV on RegNetY): list → shard (fan-out) → merge → pretrain → slice → "
    "evaluate → register."
)
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
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
    def seer_pretrain(
        images_uri: str = "",
        synth_images: int = 256,
        data_root: str = DEFAULT_DATA_ROOT,
        shard_parallelism: int = 1,
        recipe: str = "rg-tiny",
        overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
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
        registry: str = DEFAULT_REGISTRY,
        model_name: str = "seer",
        status_uri: str = DEFAULT_STATUS_URI,
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
            backend: Where training runs: local (torchrun inside the step's pod), pytorchjob (a Kubeflow PyTorchJob) or trainjob (a Kubeflow Trainer v2 TrainJob).
            nproc_per_node: Ranks of a local run.
            nodes: PyTorchJob pods (0: the recipe's, rg10b: 62).
            gpus_per_node: GPUs per PyTorchJob pod (-1: the recipe's, 8 for the large recipes).
            trainer_image: Trainer image (images/trainer) with a pinned tag.
            job_name: PyTorchJob name (default: seer-<run id>).
            namespace: Namespace of the PyTorchJob.
            storage_secret: Secret with the object-storage credentials and SEER_S3_ENDPOINT for the training pods.
            gang_scheduler: Gang scheduling of the training pods: '' (none), volcano or scheduler-plugins.
            kueue_queue: Kueue LocalQueue the training job waits in until admitted ('' for none).
            node_selector: Node selector of the training pods, e.g. {"nvidia.com/gpu.present": "true"}.
            tolerations: Tolerations of the training pods (Kubernetes objects).
            network: NCCL fabric of the training pods: tcp, efa or ib.
            network_devices: EFA adapters or RDMA devices per training pod.
            train_timeout_s: Delete the training job after this many seconds (0: no limit).
            pending_timeout_s: Delete the training job when no pod runs within this many seconds.
            registry: Model registry: a storage URI or a Kubeflow Model Registry http(s) address. The default (mlpipeline/shared/...) is writable in standalone and multi-user KFP; a profile-private one is minio://mlpipeline/private-artifacts/<namespace>/...
            model_name: Registered model name.
            status_uri: Folder the exit handler writes each run's final state and failed pods' logs to ('' skips it); under mlpipeline/shared/ or private-artifacts/<namespace>/ on multi-user KFP.
        """

        def steps() -> None:
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
            apply(train, settings["pretrain"]).set_caching_options(False)
            ckpt = apply(consolidate_slice(run=train.outputs["run"]), settings["consolidate-slice"])
            datasets = apply(
                eval_datasets(
                    sources=evaluation["eval_sources"],
                    benchmark_sizes=evaluation["benchmark_sizes"],
                    data_root=data_root,
                ),
                settings["eval-datasets"],
            )
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

        if not exit_handler:
            steps()
            return
        # KFP refuses pipeline outputs from inside an ExitHandler; the run's record names the version.
        cleanup = record_failure_and_cleanup(
            run_id=RUN_ID,
            status_uri=status_uri,
            backend=backend,
            job_name=job_name,
            namespace=namespace,
            model_name=model_name,
            model_version=VERSION,
        )
        apply(cleanup, settings["record-failure-and-cleanup"]).set_caching_options(False)
        with dsl.ExitHandler(cleanup, name="train-evaluate-register"):
            steps()

    return seer_pretrain


seer_pretrain = build_pretrain_pipeline()
