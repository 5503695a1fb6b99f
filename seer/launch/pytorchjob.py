"""Render a Kubeflow Training Operator v1 `PyTorchJob` (kubeflow.org/v1) that runs `seer pretrain`
(or another training command of the engine, `seer finetune`: the `entry` of `render_pytorchjob`).

The job has one Master replica and `nodes - 1` Worker replicas; every pod runs `torchrun`, which reads
the `PET_*` variables the operator injects (node rank, master address, processes per node), so the
same command line works on 1 node and on 62. Storage credentials only ever come from a Secret
(`envFrom`), never as inline values.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from seer.errors import ConfigError

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER_NAME = "pytorch"  # the operator only wires the container with this name
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
SPEC_HASH_ANNOTATION = "seer.kubeflow.org/spec-sha256"
PART_OF_LABEL = ("app.kubernetes.io/part-of", "seer-kubeflow")
GANG_SCHEDULERS = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NETWORKS = ("tcp", "efa", "ib")
# `seer` commands on the training engine: they resume from their newest checkpoint and save on SIGTERM.
TRAINING_COMMANDS = ("pretrain", "finetune")

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The operator names pods "<job>-worker-<i>" and services after them; keep room under 63 characters.
_MAX_NAME_LEN = 48


@dataclass(frozen=True)
class NodeShape:
    """Default placement of a recipe: node count, GPUs and host resources per node."""

    nodes: int
    gpus_per_node: int
    cpu: str
    memory: str
    shm: str
    procs_per_node: int | None = None  # processes per node when gpus_per_node == 0 (CPU runs)


_GPU_NODE = {"cpu": "88", "memory": "960Gi", "shm": "128Gi"}  # an 8-GPU A100/H100 node, leaving headroom
# SEER's published layouts (reference/seer_spec.md §3): RG-10B on 62×8 A100, RG-256Gf on 64×8 (bs 8192),
# RG-128Gf on 16×8 (bs 4096); the smaller trunks fit comfortably on 8 nodes.
RECIPE_SHAPES: dict[str, NodeShape] = {
    "rg10b": NodeShape(62, 8, **_GPU_NODE),
    "rg256gf": NodeShape(64, 8, **_GPU_NODE),
    "rg128gf": NodeShape(16, 8, **_GPU_NODE),
    "rg64gf": NodeShape(8, 8, **_GPU_NODE),
    "rg32gf": NodeShape(8, 8, **_GPU_NODE),
    "rg-small": NodeShape(1, 8, cpu="32", memory="240Gi", shm="32Gi"),
    "rg-tiny": NodeShape(1, 0, cpu="2", memory="8Gi", shm="1Gi", procs_per_node=2),
}


def recipe_shape(recipe: str) -> NodeShape | None:
    """The default node shape of a recipe name, or None for unknown recipes and config paths."""
    return RECIPE_SHAPES.get(recipe.lower().replace("_", "-")) or RECIPE_SHAPES.get(recipe.lower())


def seer_args(
    entry: Sequence[str],
    output_uri: str,
    overrides: Sequence[str] = (),
    *,
    data_uri: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """`entry` (a `seer` subcommand and its config argument, e.g. `["pretrain", "--recipe", "rg10b"]`)
    followed by the arguments every training command shares: `--set` overrides, `--data`, `--output`."""
    args = list(entry)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE; write it like train.lr=0.3")
        args += ["--set", item]
    if data_uri:
        args += ["--data", data_uri]
    return [*args, "--output", output_uri, *extra_args]


def pretrain_entry(recipe: str) -> list[str]:
    """`seer pretrain --recipe RECIPE`: what a training job runs unless told otherwise."""
    return ["pretrain", "--recipe", recipe]


def finetune_entry(recipe: str) -> list[str]:
    """`seer finetune --recipe RECIPE` (a recipe name or YAML path, `seer.finetune.config`)."""
    return ["finetune", "--recipe", recipe]


def pretrain_args(
    recipe: str,
    output_uri: str,
    overrides: Sequence[str] = (),
    *,
    data_uri: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The `seer pretrain ...` arguments (after `-m seer`) shared by the PyTorchJob and local runs."""
    return seer_args(pretrain_entry(recipe), output_uri, overrides, data_uri=data_uri, extra_args=extra_args)


# ---- restarts --------------------------------------------------------------------------------
# Training operator v1.9 (pkg/util/train, pkg/core/job.go, pkg/controller.v1/common/pod.go):
# - restartPolicy ExitCode sets the pods' own restartPolicy to Never; a pod that fails with an exit code
#   >= 128 is deleted and recreated, one with 1-127 fails the job at once.
# - backoffLimit is compared with the sum of container restartCounts of Running pods (plus, for
#   backoffLimit 0, any new pod failure fails the job). Recreated pods start at 0, so under ExitCode
#   retryable failures are not counted (kubeflow/trainer#2045); the trainer counts them itself
#   (train.max_faults, `seer.train.faults`). Under OnFailure one rank's fault restarts the container
#   of every pod (torchrun fails on all nodes), i.e. `nodes` restarts per fault.
RESTART_POLICY = "ExitCode"
CHECKPOINT_BYTES_PER_PARAM = 8  # fp32 weights + fp32 SGD momentum in the DCP checkpoint
SAVE_BYTES_PER_S_PER_NODE = 50e6  # conservative upload rate of one node's shard to object storage
STEP_ALLOWANCE_S = 60.0  # the step in flight when SIGTERM arrives finishes first
MIN_GRACE_S = 120
MARGIN_S = 30  # between the trainer's budget, torchrun's SIGKILL and the kubelet's SIGKILL
RDZV_JOIN_TIMEOUT_S = 1800  # a replacement pod may wait for a node before the group re-forms


@dataclass(frozen=True)
class RestartSettings:
    """How a job of `nodes` survives `max_faults` faults; shared by the PyTorchJob and TrainJob backends.

    `grace_seconds` (train.grace_seconds) bounds the trainer's preemption save after SIGTERM;
    torchrun SIGKILLs its workers `shutdown_timeout` seconds after forwarding SIGTERM, and the kubelet
    kills the pod `termination_grace_period_seconds` after its SIGTERM: each covers the one before.
    """

    nodes: int
    max_faults: int
    restart_policy: str
    backoff_limit: int
    max_restarts: int
    save_seconds: float
    grace_seconds: int
    shutdown_timeout: int
    termination_grace_period_seconds: int

    def torchrun_args(self, rdzv_id: str) -> list[str]:
        """Elastic restarts with a c10d rendezvous on the Master pod (it outlives worker restarts)."""
        return [
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
            f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=join_timeout={RDZV_JOIN_TIMEOUT_S}",
            f"--max-restarts={self.max_restarts}",
            f"--shutdown-timeout={self.shutdown_timeout}",
        ]

    def trainer_overrides(self) -> list[str]:
        return [f"train.max_faults={self.max_faults}", f"train.grace_seconds={self.grace_seconds}"]


def restart_settings(
    nodes: int,
    max_faults: int,
    checkpoint_bytes: float = 0.0,
    *,
    save_bytes_per_s_per_node: float = SAVE_BYTES_PER_S_PER_NODE,
    step_seconds: float = STEP_ALLOWANCE_S,
) -> RestartSettings:
    """Restart policy, backoff, torchrun restarts and grace periods for `nodes` tolerating `max_faults`.

    backoffLimit = nodes × max_faults + 1: where the operator counts restarts (container restarts, every
    pod once per fault; the job fails when the count reaches the limit) the job survives `max_faults`
    faults and fails on the next. The save
    is estimated as `checkpoint_bytes` written by all nodes in parallel; the trainer's grace covers the
    step in flight plus twice that, at least `MIN_GRACE_S`.
    """
    if nodes < 1 or max_faults < 0:
        raise ConfigError(f"nodes must be >= 1 and max_faults >= 0 (got {nodes} and {max_faults})")
    save_s = checkpoint_bytes / (nodes * save_bytes_per_s_per_node)
    grace = max(MIN_GRACE_S, 10 * math.ceil((step_seconds + 2 * save_s + MARGIN_S) / 10))
    return RestartSettings(
        nodes=nodes,
        max_faults=max_faults,
        restart_policy=RESTART_POLICY,
        backoff_limit=nodes * max_faults + 1,
        max_restarts=max_faults,
        save_seconds=save_s,
        grace_seconds=grace,
        shutdown_timeout=grace + MARGIN_S,
        termination_grace_period_seconds=grace + 2 * MARGIN_S,
    )


def checkpoint_bytes(preset: str) -> float:
    """Size of a training checkpoint of a model preset (0 when the preset is unknown, e.g. a config path)."""
    from seer.models.presets import PRESETS

    published = getattr(PRESETS.get(preset.lower()), "published_params", None)
    if not published:
        return 0.0
    scale = {"M": 1e6, "B": 1e9}[published[-1]]
    return float(published[:-1]) * scale * CHECKPOINT_BYTES_PER_PARAM


def torchrun_command(module_args: Sequence[str], restarts: RestartSettings, rdzv_id: str) -> list[str]:
    """torchrun (through `seer.launch.elastic`, for exit codes the operator reads) taking topology
    from the operator's PET_* env (expanded by the kubelet), then `-m seer`."""
    return [
        "python",
        "-m",
        "seer.launch.elastic",
        "--nnodes=$(PET_NNODES)",
        "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        *restarts.torchrun_args(rdzv_id),
        "-m",
        "seer",
        *module_args,
    ]


def network_env(network: str, nccl_debug: str | None = None, ib_hca: str | None = None) -> dict[str, str]:
    """NCCL/fabric environment for `tcp` (sockets), `efa` (AWS) or `ib` (InfiniBand/RoCE)."""
    if network not in NETWORKS:
        raise ConfigError(f"network {network!r} is unknown; use one of {', '.join(NETWORKS)}")
    env = {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "NCCL_SOCKET_IFNAME": "^lo",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    if network == "efa":
        env |= {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "NCCL_PROTO": "simple"}
    if network == "ib" and ib_hca:
        env["NCCL_IB_HCA"] = ib_hca
    if nccl_debug:
        env["NCCL_DEBUG"] = nccl_debug
    return env


def validate_name(name: str) -> str:
    """Check a job name is a DNS-1035 label short enough for the operator's pod and service names."""
    if not _NAME_RE.match(name) or len(name) > _MAX_NAME_LEN:
        raise ConfigError(
            f"job name {name!r} is not a valid Kubernetes name; use at most {_MAX_NAME_LEN} lowercase "
            "letters, digits and '-', starting with a letter (e.g. seer-rg10b-run1)"
        )
    return name


def spec_hash(job: Mapping[str, Any]) -> str:
    """sha256 of the job's spec: tells a re-attach whether an existing job is the same job."""
    return hashlib.sha256(json.dumps(job["spec"], sort_keys=True).encode()).hexdigest()


def render_pytorchjob(
    name: str,
    recipe: str,
    *,
    image: str,
    output_uri: str,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    procs_per_node: int | None = None,
    data_uri: str | None = None,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    entry: Sequence[str] | None = None,
    namespace: str = "seer",
    storage_secret: str | None = "seer-storage",
    service_account: str = "seer-trainer",
    gang_scheduler: str | None = None,
    queue: str | None = None,
    kueue_queue: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    resources: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    network: str = "tcp",
    network_devices: int = 0,
    rdma_resource: str = "rdma/ib",
    ib_hca: str | None = None,
    nccl_debug: str | None = None,
    shm_size: str | None = None,
    metrics_port: int = METRICS_PORT,
    max_faults: int = 10,
    backoff_limit: int | None = None,
    ttl_seconds_after_finished: int = 7 * 24 * 3600,
    active_deadline_seconds: int | None = None,
    clean_pod_policy: str = "Running",
    image_pull_secrets: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Render the PyTorchJob for `seer pretrain --recipe RECIPE [--data DATA_URI] --output OUTPUT_URI` as a dict.

    `entry` replaces `pretrain --recipe RECIPE` with another training command of the engine, e.g.
    `finetune_entry("in1k-384-rg10b")` (`seer finetune --recipe ...`); `recipe` is then the model
    preset it trains, which sizes the job. The shared arguments, torchrun and the restart policy are
    the same for every entry (both resume from their newest checkpoint and exit with the resumable
    code on SIGTERM). `nodes`/`gpus_per_node` default to the recipe's published shape (rg10b: 62×8).
    `resources` sets the per-pod cpu/memory requests (limits equal requests; GPUs are added as `nvidia.com/gpu`).
    `gang_scheduler` ("volcano" or "scheduler-plugins") makes all pods schedule together
    (`minAvailable = nodes`). Restarts follow `restart_settings(nodes, max_faults, ...)`;
    `backoff_limit` overrides its backoffLimit. `network` picks the NCCL fabric knobs: "tcp", "efa"
    (with `network_devices` EFA adapters per pod) or "ib" (`network_devices` of `rdma_resource`); with
    "efa" an init container first checks the image has the NCCL EFA plugin (`seer launch
    check-network efa`), so a missing plugin fails the pod instead of NCCL falling back to TCP.
    `kueue_queue` queues the job in that Kueue LocalQueue: the `kueue.x-k8s.io/queue-name` label and
    `runPolicy.suspend: true`, which Kueue lifts when it admits the job.
    """
    validate_name(name)
    if entry is not None and (not entry or entry[0] not in TRAINING_COMMANDS):
        raise ConfigError(
            f"entry {list(entry)!r} is not a training command; start it with one of {', '.join(TRAINING_COMMANDS)} "
            "(e.g. finetune --recipe in1k-384)"
        )
    shape = recipe_shape(recipe)
    if shape is None and (nodes is None or gpus_per_node is None):
        raise ConfigError(
            f"recipe {recipe!r} has no default node shape; pass nodes and gpus_per_node "
            f"(known recipes: {', '.join(RECIPE_SHAPES)})"
        )
    nodes = nodes if nodes is not None else shape.nodes
    gpus = gpus_per_node if gpus_per_node is not None else shape.gpus_per_node
    if nodes < 1:
        raise ConfigError(f"nodes must be at least 1 (got {nodes}); the Master pod is node 0")
    if gpus < 0:
        raise ConfigError(f"gpus_per_node must be 0 (CPU) or more (got {gpus})")
    nproc = procs_per_node or gpus or (shape.procs_per_node if shape and shape.procs_per_node else 1)
    if gpus and nproc != gpus:
        raise ConfigError(
            f"procs_per_node={nproc} differs from gpus_per_node={gpus}; SEER runs one process per GPU"
        )
    if gang_scheduler is not None and gang_scheduler not in GANG_SCHEDULERS:
        raise ConfigError(
            f"gang_scheduler {gang_scheduler!r} is unknown; use one of {', '.join(GANG_SCHEDULERS)}"
        )
    if any(o.split("=", 1)[0].strip() == "train.metrics_port" for o in overrides):
        raise ConfigError(
            "set the metrics port with metrics_port (--metrics-port), not train.metrics_port, "
            "so the container port the PodMonitor scrapes matches"
        )
    if not 0 < metrics_port < 65536 or metrics_port == 23456:
        raise ConfigError(
            f"metrics_port {metrics_port} is not usable; pick a free TCP port such as {METRICS_PORT}"
        )
    if kueue_queue and gang_scheduler:
        raise ConfigError(
            "kueue_queue and gang_scheduler both schedule the job; pick one (Kueue admits all pods at once)"
        )
    if queue and not gang_scheduler:
        raise ConfigError(f"queue {queue!r} only applies with a gang_scheduler; set gang_scheduler='volcano'")
    if clean_pod_policy not in ("All", "Running", "None"):
        raise ConfigError(f"clean_pod_policy {clean_pod_policy!r} is invalid; use All, Running or None")
    if network_devices and network == "tcp":
        raise ConfigError("network_devices needs network='efa' or 'ib'; sockets need no device resources")
    if not image or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        raise ConfigError(
            f"image {image!r} has no tag; pin it (e.g. registry.example.com/seer-trainer:0.1.0)"
        )

    host = dict(resources or {})
    host.setdefault("cpu", shape.cpu if shape else "8")
    host.setdefault("memory", shape.memory if shape else "64Gi")
    limits: dict[str, Any] = dict(host)
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    if network == "efa" and network_devices:
        limits["vpc.amazonaws.com/efa"] = network_devices
    if network == "ib" and network_devices:
        limits[rdma_resource] = network_devices

    container_env = network_env(network, nccl_debug, ib_hca) if gpus else {}
    container_env["OMP_NUM_THREADS"] = "1" if gpus else "2"
    container_env |= dict(env or {})
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]} if network == "ib" else {})},
    }
    restarts = restart_settings(nodes, max_faults, checkpoint_bytes(recipe))
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": torchrun_command(
            seer_args(
                pretrain_entry(recipe) if entry is None else entry,
                output_uri,
                [f"train.metrics_port={metrics_port}", *restarts.trainer_overrides(), *overrides],
                data_uri=data_uri,
                extra_args=extra_args,
            ),
            restarts,
            rdzv_id=name,
        ),
        "env": [{"name": k, "value": v} for k, v in container_env.items()],
        "ports": [
            {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": metrics_port, "protocol": "TCP"},
        ],
        "resources": {"requests": dict(host), "limits": limits},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": security,
    }
    if storage_secret:
        container["envFrom"] = [{"secretRef": {"name": storage_secret}}]

    common_labels = {
        "app.kubernetes.io/name": "seer",
        "app.kubernetes.io/component": "trainer",
        PART_OF_LABEL[0]: PART_OF_LABEL[1],
        "seer.kubeflow.org/recipe": re.sub(r"[^A-Za-z0-9_.-]", "-", recipe)[-63:].strip("-_.") or "custom",
        **(labels or {}),
    }
    shm: dict[str, Any] = {"medium": "Memory"}
    if shm_size or shape:
        shm["sizeLimit"] = shm_size or shape.shm
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": restarts.termination_grace_period_seconds,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": shm}],
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    if gang_scheduler:
        pod_spec["schedulerName"] = GANG_SCHEDULERS[gang_scheduler]
    if network == "efa":
        pod_spec["initContainers"] = [
            {
                "name": "network-check",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["seer", "launch", "check-network", "efa"],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "securityContext": security,
            }
        ]

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": restarts.restart_policy,
            "template": {
                "metadata": {
                    "labels": dict(common_labels),
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": json.loads(json.dumps(pod_spec)),
            },
        }

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    run_policy: dict[str, Any] = {
        "backoffLimit": restarts.backoff_limit if backoff_limit is None else backoff_limit,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "cleanPodPolicy": clean_pod_policy,
    }
    if active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = active_deadline_seconds
    if gang_scheduler:
        run_policy["schedulingPolicy"] = {"minAvailable": nodes, **({"queue": queue} if queue else {})}
    if kueue_queue:
        run_policy["suspend"] = True
        common_labels[KUEUE_QUEUE_LABEL] = kueue_queue
    job: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(common_labels), "annotations": {}},
        "spec": {"nprocPerNode": str(nproc), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }
    job["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(job)
    return job
