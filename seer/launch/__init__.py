"""Launching `seer pretrain` (or `seer finetune`, `finetune_entry`): a PyTorchJob or TrainJob on Kubernetes, or torchrun on this machine.

- `render_job(backend, ...)` builds the job object (no cluster needed): `pytorchjob` (Training
  Operator v1, the default) or `trainjob` (Kubeflow Trainer v2);
- `make_launcher(backend, api_client).run(job)` submits or re-attaches, watches and cancels it;
- `job_name(run_id)` names a pipeline run's job (shared by the pretrain and exit-handler steps);
- `local.run_local(args)` runs the same `seer` command under torchrun via torchx `local_cwd`;
- `step.run_training(backend, entry, ...)` is a pipeline training step's launch, on either.
"""

from seer.launch.backends import BACKENDS, job_name, make_launcher, render_job
from seer.launch.kube import (
    JobHandle,
    JobLauncher,
    JobResult,
    LaunchError,
    PyTorchJobLauncher,
    TrainJobLauncher,
)
from seer.launch.local import run_local
from seer.launch.pytorchjob import finetune_entry, pretrain_args, pretrain_entry, render_pytorchjob, seer_args
from seer.launch.trainjob import render_trainjob

__all__ = [
    "BACKENDS",
    "JobHandle",
    "JobLauncher",
    "JobResult",
    "LaunchError",
    "PyTorchJobLauncher",
    "TrainJobLauncher",
    "finetune_entry",
    "job_name",
    "make_launcher",
    "pretrain_args",
    "pretrain_entry",
    "render_job",
    "render_pytorchjob",
    "render_trainjob",
    "run_local",
    "seer_args",
]
