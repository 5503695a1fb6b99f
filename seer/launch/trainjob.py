"""Render a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1) that runs `seer pretrain`.

The TrainJob is derived from the PyTorchJob `render_pytorchjob` builds, so both backends run the same
command, image, environment, resources and pod settings:

- `spec.trainer`: image, command (torchrun reading the `PET_*` variables the Trainer's torch plugin
  injects, as the training operator does), `numNodes`, `numProcPerNode`, `resourcesPerNode`, env (the
  storage Secret's keys by `secretKeyRef`: the Trainer API has no `envFrom`);
- `spec.runtimePatches` (manager `seer.kubeflow.org/launcher`): the pod settings a runtime may be
  patched with (service account, security contexts, `/dev/shm`, node selector, tolerations, pull
  secrets, labels), on the runtime's `node` replicated job;
- `spec.runtimeRef`: the runtime (default: the namespaced `TrainingRuntime` `seer-torch` from
  manifests/overlays/trainer-v2, which declares the metrics port and the restart policy);
- Kueue: the `kueue.x-k8s.io/queue-name` label and `spec.suspend: true` (Kueue un-suspends on admission).

Restart behaviour lives in the runtime (JobSet `failurePolicy.maxRestarts`, the Job's pod
`restartPolicy`), not in the TrainJob; the seer-torch runtime mirrors the PyTorchJob's values.
"""

from __future__ import annotations

import copy
from typing import Any

from seer.errors import ConfigError
from seer.launch.pytorchjob import SPEC_HASH_ANNOTATION, render_pytorchjob, spec_hash

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
CONTAINER_NAME = "node"  # the trainer container of the torch runtimes; its log is streamed
REPLICATED_JOB = "node"  # the runtime's replicated job that runs the trainer
PATCH_MANAGER = "seer.kubeflow.org/launcher"
DEFAULT_RUNTIME = "seer-torch"
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
EFA_CHECK = "seer launch check-network efa"
# The storage Secret's keys (manifests/components/storage-secret) as (key, optional); seer.storage reads them.
STORAGE_SECRET_KEYS = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("SEER_S3_ENDPOINT", True),
    ("AWS_SESSION_TOKEN", True),
    ("AWS_REGION", True),
)


def render_trainjob(
    name: str,
    recipe: str,
    *,
    runtime: str = DEFAULT_RUNTIME,
    runtime_kind: str = "TrainingRuntime",
    kueue_queue: str | None = None,
    **job_options: Any,
) -> dict[str, Any]:
    """Render the TrainJob for `seer pretrain` as a dict; `job_options` are `render_pytorchjob`'s.

    `gang_scheduler`/`queue` are refused: a TrainJob gets gang scheduling from its runtime's
    `podGroupPolicy` (or from Kueue, `kueue_queue`).
    """
    if job_options.get("gang_scheduler") or job_options.get("queue"):
        raise ConfigError(
            "gang_scheduler/queue do not apply to a TrainJob: set podGroupPolicy in its runtime "
            "(manifests/overlays/trainer-v2) or queue it with Kueue (kueue_queue)"
        )
    if runtime_kind not in RUNTIME_KINDS:
        raise ConfigError(f"runtime_kind {runtime_kind!r} is unknown; use one of {', '.join(RUNTIME_KINDS)}")
    if not runtime:
        raise ConfigError(
            "runtime is empty; name a TrainingRuntime such as seer-torch (or torch-distributed)"
        )
    source = render_pytorchjob(name, recipe, **job_options)
    master = source["spec"]["pytorchReplicaSpecs"]["Master"]
    nodes = sum(r["replicas"] for r in source["spec"]["pytorchReplicaSpecs"].values())
    pod = copy.deepcopy(master["template"]["spec"])
    container = pod["containers"][0]

    env = list(container.get("env") or [])
    for ref in container.get("envFrom") or []:
        secret = ref["secretRef"]["name"]
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
            for key, optional in STORAGE_SECRET_KEYS
        ]
    command = list(container["command"])
    if pod.get("initContainers"):  # the EFA check: a runtime patch cannot add init containers
        command = ["sh", "-c", f'{EFA_CHECK} && exec "$@"', "sh", *command]
    trainer: dict[str, Any] = {
        "image": container["image"],
        "command": command,
        "numNodes": nodes,
        "numProcPerNode": int(source["spec"]["nprocPerNode"]),
        "resourcesPerNode": container["resources"],
        "env": env,
    }
    pod_patch: dict[str, Any] = {
        "serviceAccountName": pod["serviceAccountName"],
        "securityContext": pod["securityContext"],
        "volumes": pod["volumes"],
        "containers": [
            {
                "name": CONTAINER_NAME,
                "volumeMounts": container["volumeMounts"],
                "securityContext": container["securityContext"],
            }
        ],
    }
    for key in ("nodeSelector", "tolerations", "imagePullSecrets"):
        if pod.get(key):
            pod_patch[key] = pod[key]
    labels = dict(source["metadata"]["labels"])
    spec: dict[str, Any] = {
        "runtimeRef": {"name": runtime, "kind": runtime_kind, "apiGroup": GROUP},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": REPLICATED_JOB,
                                    "template": {
                                        "spec": {
                                            "template": {
                                                "metadata": copy.deepcopy(master["template"]["metadata"]),
                                                "spec": pod_patch,
                                            }
                                        }
                                    },
                                }
                            ]
                        }
                    }
                },
            }
        ],
    }
    deadline = source["spec"]["runPolicy"].get("activeDeadlineSeconds")
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    if kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = kueue_queue
        spec["suspend"] = True
    job: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": source["metadata"]["namespace"],
            "labels": labels,
            "annotations": {},
        },
        "spec": spec,
    }
    job["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(job)
    return job
