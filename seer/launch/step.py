"""The launch of a pipeline training step (pretrain, finetune): one `seer` training command run with
torchrun on the step's own machine (`backend="local"`), or as a PyTorchJob / TrainJob that is rendered,
submitted and watched (re-attached when the step is retried, deleted when it is cancelled or gives up).

`step_job_options` turns the step's KFP parameters, where 0, -1 and '' stand for "not set" (KFP
parameter defaults must be literals), into `render_job` options; `run_training` runs the command."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from seer.errors import ConfigError
from seer.launch.backends import BACKENDS, make_launcher, render_job
from seer.launch.kube import LaunchError
from seer.launch.local import run_local
from seer.launch.pytorchjob import seer_args

RUN_ID_LABEL = "pipelines.kubeflow.org/run-id"


def step_job_options(
    backend: str,
    run_id: str,
    *,
    image: str,
    nodes: int,
    gpus_per_node: int,
    storage_secret: str,
    gang_scheduler: str,
    kueue_queue: str,
    trainjob_runtime: str,
    **options: Any,
) -> dict[str, Any]:
    """`render_job` options from a step's parameters: nodes 0 and gpus_per_node -1 take the recipe's
    shape, empty secret / scheduler / queue mean none; the job carries the run id as a label, and a
    trainjob its runtime. `options` (namespace, node_selector, network, ...) pass through."""
    return {
        "image": image,
        "nodes": nodes or None,
        "gpus_per_node": None if gpus_per_node < 0 else gpus_per_node,
        "storage_secret": storage_secret or None,
        "gang_scheduler": gang_scheduler or None,
        "kueue_queue": kueue_queue or None,
        "labels": {RUN_ID_LABEL: run_id[:63]},
        **({"runtime": trainjob_runtime} if backend == "trainjob" else {}),
        **options,
    }


def run_training(
    backend: str,
    entry: Sequence[str],
    size: str,
    *,
    output_uri: str,
    data_uri: str | None,
    overrides: Sequence[str],
    nproc_per_node: int,
    job_name: str,
    job_options: Mapping[str, Any],
    timeout_s: float = 0.0,
    pending_timeout_s: float = 1800.0,
    poll_interval_s: float = 5.0,
) -> dict[str, Any]:
    """Run `seer <entry> --set ... --data DATA --output OUTPUT` on `backend`. `size`: the recipe or
    model preset that sizes a job (`render_job`); `timeout_s` 0 waits for ever. Returns
    {"job": "namespace/name", "restarts": n} for a job, {} for a local run."""
    if backend == "local":
        if run_local(
            seer_args(entry, output_uri, overrides, data_uri=data_uri), nproc_per_node=nproc_per_node
        ):
            raise LaunchError(f"local `seer {' '.join(entry)}` failed; see the rank logs above")
        return {}
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; use local, {' or '.join(BACKENDS)}")
    from seer.launch.kube import load_api_client

    job = render_job(
        backend,
        job_name,
        size,
        entry=entry,
        output_uri=output_uri,
        data_uri=data_uri,
        overrides=overrides,
        **job_options,
    )
    result = make_launcher(backend, load_api_client(), poll_interval_s=poll_interval_s).run(
        job, timeout_s=timeout_s or None, pending_timeout_s=pending_timeout_s
    )
    return {"job": f"{result.namespace}/{result.name}", "restarts": result.restarts}
