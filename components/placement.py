"""Per-step pod settings: resources, accelerators, node selectors, tolerations, storage credentials.

Pipelines apply a `StepSettings` to each task at compile time (`apply(task, settings)`); the defaults
live in `pipelines/` and a YAML/JSON file can override them per step (`load_step_settings`). kfp.local
ignores all of these (it warns about resources), so they only matter on a cluster.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import kubernetes

# KFP's artifact-store credentials (keys accesskey/secretkey), mapped to what seer.storage reads.
ARTIFACT_SECRET = "mlpipeline-minio-artifact"
ARTIFACT_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
DEFAULT_STORAGE_ENDPOINT = "http://seaweedfs.kubeflow:8333"
SCRATCH = "/scratch"


@dataclass
class StepSettings:
    """Where and with what one step's pod runs. Empty values leave KFP's defaults."""

    cpu: str = ""
    memory: str = ""
    gpus: int = 0
    accelerator: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    shm: str = ""  # size of a memory-backed /dev/shm (DataLoader workers), e.g. 8Gi
    scratch: str = ""  # size of a generic ephemeral volume at /scratch (TMPDIR) for local copies, e.g. 200Gi
    timeout_s: int = 0
    retries: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def merged(self, overrides: Mapping[str, Any]) -> StepSettings:
        """A copy with `overrides` applied; unknown keys fail naming the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown step settings {unknown}; use some of {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def apply(
    task: Any,
    settings: StepSettings,
    *,
    storage_endpoint: str = DEFAULT_STORAGE_ENDPOINT,
    storage_secret: str = ARTIFACT_SECRET,
) -> Any:
    """Apply `settings` and the object-storage wiring (endpoint + credentials from a Secret) to a task."""
    if settings.cpu:
        task.set_cpu_request(settings.cpu).set_cpu_limit(settings.cpu)
    if settings.memory:
        task.set_memory_request(settings.memory).set_memory_limit(settings.memory)
    if settings.gpus:
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.gpus)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in settings.tolerations:
        kubernetes.add_toleration(
            task,
            key=tol.get("key"),
            operator=tol.get("operator", "Equal"),
            value=tol.get("value"),
            effect=tol.get("effect"),
        )
    if settings.shm:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm
        )
    if settings.scratch:
        # A per-pod PVC (deleted with the pod): node disks are too small for checkpoint-sized copies.
        kubernetes.add_ephemeral_volume(
            task,
            volume_name="scratch",
            mount_path=SCRATCH,
            access_modes=["ReadWriteOnce"],
            size=settings.scratch,
        )
        task.set_env_variable("TMPDIR", SCRATCH)
    if settings.timeout_s:
        kubernetes.set_timeout(task, settings.timeout_s)
    if settings.retries:
        task.set_retry(settings.retries)
    if storage_endpoint:
        task.set_env_variable("SEER_S3_ENDPOINT", storage_endpoint)
    for name, value in settings.env.items():
        task.set_env_variable(name, value)
    if storage_secret:
        kubernetes.use_secret_as_env(task, secret_name=storage_secret, secret_key_to_env=ARTIFACT_SECRET_KEYS)
    kubernetes.add_pod_annotation(task, "sidecar.istio.io/inject", "false")
    return task


def load_step_settings(
    defaults: Mapping[str, StepSettings], path: str | Path | None
) -> dict[str, StepSettings]:
    """`defaults` with a YAML/JSON file's `{step: {field: value}}` overrides merged in."""
    settings = dict(defaults)
    if not path:
        return settings
    text = Path(path).read_text()
    import yaml

    overrides = (json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)) or {}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"{path}: unknown steps {unknown}; use some of {sorted(settings)}")
    for step, values in overrides.items():
        settings[step] = settings[step].merged(values or {})
    return settings
