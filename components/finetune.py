"""The fine-tune step (`seer finetune`): `backend="local"` runs torchrun on the step's own machine;
`pytorchjob` / `trainjob` run it as a training job rendered, submitted and watched like pretraining's
(`seer.finetune.step.run_finetune_step`, `seer.launch`)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import seer_component


@seer_component
def finetune(
    model: Input[Model],
    datasets: Input[Dataset],
    classifier: Output[Model],
    metrics: Output[Metrics],
    run_id: str,
    data_root: str,
    recipe: str = "in1k-384",
    preset: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter defaults must be literals
    train_uri: str = "",
    train_role: str = "",
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
    """Full fine-tuning of the pretrained `model` with `recipe`; the classifier lands under
    `data_root/runs/<run_id>/finetune/` (classifier.pt, sliced/, finetune.json, checkpoints).

    Args:
        model: The pretrained checkpoint (a descriptor, or the data itself: consolidated, sliced, VISSL, ...).
        datasets: The eval_datasets folder (datasets.json), where the training set comes from unless train_uri is set.
        classifier: Descriptor of the fine-tuned classifier file (what test384, geolocalization and fairness score).
        metrics: Final training numbers from summary.json.
        run_id: Pipeline run id; names the job (seer-<run_id> unless job_name is set).
        data_root: Folder or s3:// / minio:// prefix for the run's data.
        recipe: Fine-tuning recipe: in1k-384, in1k-384-rg10b, im2gps, fairness-in22k, or a YAML path.
        preset: Model preset of the pretrained checkpoint ('' keeps the recipe's model.preset).
        overrides: Config overrides, e.g. ["optim.epochs=3", "train.batch_per_gpu=16"].
        train_uri: Labelled training set URI ('' takes it from datasets).
        train_role: datasets.json role to train on ('' : linear_train, geo_train for geo recipes).
        backend: local (torchrun on this machine), pytorchjob (Training Operator v1) or trainjob (Trainer v2).
        nproc_per_node: Local ranks (backend local).
        job_name: Job name (default seer-<run_id>).
        trainer_image: Trainer image with a pinned tag (images/trainer).
        nodes: Pods (0: the preset's, rg10b: 62).
        gpus_per_node: GPUs per pod (-1: the preset's).
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
    from seer.artifacts import data_location, metadata, write_descriptor
    from seer.finetune.step import run_finetune_step
    from seer.launch import job_name as make_job_name
    from seer.launch.step import step_job_options
    from seer.registry import flatten_metrics

    prefix = data_location(data_root, "runs", run_id)
    output_uri = storage.join(prefix, "finetune")
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
    result = run_finetune_step(
        model.uri,
        output_uri,
        recipe=recipe,
        preset=preset,
        overrides=overrides,
        train_uri=train_uri,
        datasets_uri=datasets.uri,
        train_role=train_role,
        backend=backend,
        nproc_per_node=nproc_per_node,
        job_name=make_job_name(run_id, job_name),
        job_options=job,
        watch=dict(timeout_s=timeout_s, pending_timeout_s=pending_timeout_s, poll_interval_s=poll_interval_s),
    )
    for name, value in flatten_metrics(result["summary"]).items():
        metrics.log_metric(name, value)
    export = result["export"]
    doc = write_descriptor(
        classifier.path,
        "classifier",
        export["classifier"],
        prefix=prefix,
        run=output_uri,
        recipe=recipe,
        backend=backend,
        data=result["data"],
        **{k: export[k] for k in ("preset", "sha256", "iteration", "classes", "pretrained", "sliced")},
        **{k: result[k] for k in ("job", "restarts") if k in result},
    )
    classifier.metadata.update(metadata(doc))
