"""Launching `seer pretrain`: a kubeflow.org/v1 PyTorchJob on Kubernetes, or torchrun on this machine.

- `pytorchjob.render_pytorchjob(...)` builds the job object (no cluster needed);
- `kube.PyTorchJobLauncher(api_client).run(job)` submits or re-attaches, watches and cancels it;
- `local.run_local(args)` runs the same `seer` command under torchrun via torchx `local_cwd`.
"""

from seer.launch.kube import JobHandle, JobLauncher, JobResult, LaunchError, PyTorchJobLauncher
from seer.launch.local import run_local
from seer.launch.pytorchjob import pretrain_args, render_pytorchjob

__all__ = [
    "JobHandle",
    "JobLauncher",
    "JobResult",
    "LaunchError",
    "PyTorchJobLauncher",
    "pretrain_args",
    "render_pytorchjob",
    "run_local",
]
