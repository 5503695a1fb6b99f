"""The pretrain step: a launcher. `backend="local"` runs torchrun on the step's own machine (kfp.local,
a single node); `backend="pytorchjob"` (Training Operator v1) or `"trainjob"` (Kubeflow Trainer v2)
renders, submits and watches the training job, re-attaches to it when the step is retried, and deletes
it when the step is cancelled (SIGTERM) or gives up (timeouts, image pull errors)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import seer_component


@seer_component
def pretrain(
    shards: Input[Dataset],
    run: Output[Model],
    metrics: Output[Metrics],
    run_id: str,
    data_root: str,
    recipe: str = "rg-tiny",
    overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
    backend: str = "local",
    nproc_per_node: int = 2,
    job_name: str = "",
    trainer_image: str = "",
    nodes: int = 0,
    gpus_per_node: int = -1,
    namespace: str = "seer",
    storage_secret: str = "seer-storage",
    service_account: str = "seer-trainer",
    gang_scheduler: str = "",
    kueue_queue: str = "",
    trainjob_runtime: str = "seer-torch",
    node_selector: dict = {},  # noqa: B006
    tolerations: list = [],  # noqa: B006
    network: str = "tcp",
    network_devices: int = 0,
    timeout_s: float = 0.0,
    pending_timeout_s: float = 1800.0,
    poll_interval_s: float = 5.0,
):
    """SwAV pretraining (`seer pretrain`) with `recipe` on the shards; checkpoints land under `run`.

    Args:
        shards: Descriptor of the shards (the merge step's): the job reads the shards prefix it names.
        run: Descriptor of the training output `data_root/runs/<run_id>/pretrain/` (checkpoints/iter-NNNNNNNN/,
            train_log.jsonl, summary.json).
        metrics: Final training numbers from summary.json.
        run_id: Pipeline run id; names the job (seer.launch.job_name: `seer-<run_id>` unless `job_name` is set).
        data_root: Folder or s3:// / minio:// prefix for the run's data.
        recipe: Pretraining recipe (rg-tiny … rg10b, `seer config list`) or config path.
        overrides: Config overrides, e.g. ["train.iterations=100"].
        backend: local (torchrun on this machine), pytorchjob (Training Operator v1) or trainjob (Trainer v2).
        nproc_per_node: Local ranks (backend local).
        job_name: Job name (default seer-<run_id>).
        trainer_image: Trainer image with a pinned tag (images/trainer); the pipelines pass SEER_TRAINER_IMAGE.
        nodes: Pods (0: the recipe's, rg10b: 62).
        gpus_per_node: GPUs per pod (-1: the recipe's).
        namespace: Namespace of the job.
        storage_secret: Secret holding the object-storage credentials and SEER_S3_ENDPOINT ('' for none).
        service_account: Service account of the training pods.
        gang_scheduler: '', volcano or scheduler-plugins (pytorchjob).
        kueue_queue: Kueue LocalQueue to queue the job in ('' for none).
        trainjob_runtime: TrainingRuntime of a trainjob (manifests/overlays/trainer-v2).
        node_selector: Training pods' node selector.
        tolerations: Training pods' tolerations (Kubernetes toleration objects).
        network: NCCL fabric: tcp, efa or ib.
        network_devices: EFA adapters / RDMA devices per pod.
        timeout_s: Give up (and delete the job) after this many seconds (0: never).
        pending_timeout_s: Give up if no pod runs within this many seconds.
        poll_interval_s: Seconds between job status polls (backs off while nothing changes).
    """
    from seer import storage
    from seer.artifacts import data_location, metadata, resolve, write_descriptor
    from seer.launch import job_name as make_job_name
    from seer.launch import pretrain_entry
    from seer.launch.step import run_training, step_job_options
    from seer.registry import flatten_metrics

    data_uri, run_prefix = resolve(shards.uri), data_location(data_root, "runs", run_id)
    output_uri = storage.join(run_prefix, "pretrain")
    job = step_job_options(
        backend,
        run_id,
        image=trainer_image,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        storage_secret=storage_secret,
        gang_scheduler=gang_scheduler,
        kueue_queue=kueue_queue,
        trainjob_runtime=trainjob_runtime,
        namespace=namespace,
        service_account=service_account,
        node_selector=node_selector,
        tolerations=tolerations,
        network=network,
        network_devices=network_devices,
    )
    job_info = run_training(
        backend,
        pretrain_entry(recipe),
        recipe,
        output_uri=output_uri,
        data_uri=data_uri,
        overrides=overrides,
        nproc_per_node=nproc_per_node,
        job_name=make_job_name(run_id, job_name),
        job_options=job,
        timeout_s=timeout_s,
        pending_timeout_s=pending_timeout_s,
        poll_interval_s=poll_interval_s,
    )
    summary = storage.read_json(storage.join(output_uri, "summary.json"))
    for name, value in flatten_metrics(summary).items():
        metrics.log_metric(name, value)
    doc = write_descriptor(
        run.path,
        "run",
        output_uri,
        prefix=run_prefix,
        preset=summary.get("preset", ""),
        recipe=recipe,
        backend=backend,
        data=data_uri,
        **job_info,
    )
    run.metadata.update(metadata(doc))
