"""The training backends behind one interface: render a job, and the `JobLauncher` that runs it.

`pytorchjob` (default): Training Operator v1 `PyTorchJob`; `trainjob`: Kubeflow Trainer v2 `TrainJob`.
`job_name` is the one place a pipeline run's job is named, so the pretrain step and the exit
handler that cleans up after it always agree.
"""

from __future__ import annotations

import re
from typing import Any

from seer.errors import ConfigError
from seer.launch.kube import KubeJobLauncher, PyTorchJobLauncher, TrainJobLauncher
from seer.launch.pytorchjob import render_pytorchjob
from seer.launch.trainjob import render_trainjob

BACKENDS: dict[str, type[KubeJobLauncher]] = {"pytorchjob": PyTorchJobLauncher, "trainjob": TrainJobLauncher}
MAX_JOB_NAME = 48


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)} (or local)")
    return backend


def job_name(run_id: str, name: str = "") -> str:
    """The training job of pipeline run `run_id`: `name` when given, else `seer-<run id>` made a valid
    Kubernetes name (lowercase, at most 48 characters, no trailing '-')."""
    if name:
        return name
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower())
    return f"seer-{slug}"[:MAX_JOB_NAME].rstrip("-")


def render_job(backend: str, name: str, recipe: str, **options: Any) -> dict[str, Any]:
    """The job object of `backend`; `options` are `render_pytorchjob`'s (plus `runtime`,
    `runtime_kind` for trainjob; `kueue_queue` for both)."""
    if check_backend(backend) == "trainjob":
        return render_trainjob(name, recipe, **options)
    for key in ("runtime", "runtime_kind"):
        if options.pop(key, None):
            raise ConfigError(f"{key} only applies to backend trainjob")
    return render_pytorchjob(name, recipe, **options)


def make_launcher(backend: str, api_client: Any, **options: Any) -> KubeJobLauncher:
    """The `JobLauncher` of `backend` over a kubernetes ApiClient."""
    return BACKENDS[check_backend(backend)](api_client, **options)
