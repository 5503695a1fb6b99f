"""render_pytorchjob: the PyTorchJob a 62×8 (or 1-node CPU) SEER run is submitted as."""

from __future__ import annotations

import json

import pytest

from seer.errors import ConfigError
from seer.launch.pytorchjob import SPEC_HASH_ANNOTATION, render_pytorchjob

IMAGE = "registry.example.com/seer/trainer:0.1.0"


def render(name: str = "seer-run", recipe: str = "rg10b", **kw):
    kw.setdefault("image", IMAGE)
    kw.setdefault("output_uri", "s3://seer/runs/r1")
    return render_pytorchjob(name, recipe, **kw)


def container(job, rtype: str = "Master"):
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]


def env_of(c) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


def test_rg10b_defaults_to_62_nodes_of_8_gpus() -> None:
    job = render(overrides=["train.lr=0.3"], data_uri="s3://seer/shards")
    spec = job["spec"]
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 61
    assert spec["nprocPerNode"] == "8"
    c = container(job, "Worker")
    assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert c["command"] == [
        "python",
        "-m",
        "seer.launch.elastic",
        "--nnodes=$(PET_NNODES)",
        "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
        "--rdzv-id=seer-run",
        "--rdzv-conf=join_timeout=1800",
        "--max-restarts=10",
        "--shutdown-timeout=180",
        "-m",
        "seer",
        "pretrain",
        "--recipe",
        "rg10b",
        "--set",
        "train.metrics_port=9090",
        "--set",
        "train.max_faults=10",
        "--set",
        "train.grace_seconds=150",
        "--set",
        "train.lr=0.3",
        "--data",
        "s3://seer/shards",
        "--output",
        "s3://seer/runs/r1",
    ]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    env = env_of(c)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["NCCL_SOCKET_IFNAME"] == "^lo"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "NCCL_DEBUG" not in env
    template = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert template["spec"]["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "128Gi"}}
    ]
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] == "ExitCode"
    assert job["spec"]["runPolicy"] == {
        "backoffLimit": 621,
        "ttlSecondsAfterFinished": 604800,
        "cleanPodPolicy": "Running",
    }


def test_single_node_cpu_preset_has_no_workers_gpus_or_nccl() -> None:
    job = render(recipe="rg-tiny")
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert job["spec"]["nprocPerNode"] == "2"
    c = container(job)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert not any(k.startswith(("NCCL", "TORCH_NCCL")) for k in env_of(c))


def test_storage_credentials_only_come_from_the_secret(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-never-rendered")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    job = render(storage_secret="my-creds", env={"SEER_LOG_LEVEL": "debug"})
    text = json.dumps(job)
    assert "s3cr3t-value-never-rendered" not in text and "AKIAEXAMPLEKEY" not in text
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        c = rspec["template"]["spec"]["containers"][0]
        assert c["envFrom"] == [{"secretRef": {"name": "my-creds"}}]
        assert not any("KEY" in e["name"] or "SECRET" in e["name"] for e in c["env"])
    assert "envFrom" not in container(render(storage_secret=None))


@pytest.mark.parametrize(
    ("gang", "scheduler"), [("volcano", "volcano"), ("scheduler-plugins", "scheduler-plugins-scheduler")]
)
def test_gang_scheduling_covers_every_pod(gang: str, scheduler: str) -> None:
    job = render(nodes=4, gang_scheduler=gang)
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4}
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        assert rspec["template"]["spec"]["schedulerName"] == scheduler
    assert "schedulingPolicy" not in render()["spec"]["runPolicy"]


def test_placement_network_and_env_options() -> None:
    job = render(
        nodes=2,
        node_selector={"pool": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        resources={"cpu": "40", "memory": "500Gi"},
        network="ib",
        network_devices=1,
        ib_hca="mlx5",
        nccl_debug="INFO",
        env={"NCCL_SOCKET_IFNAME": "eth0"},
        image_pull_secrets=["regcred"],
    )
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["resources"]["requests"] == {"cpu": "40", "memory": "500Gi"}
    assert c["resources"]["limits"] == {"cpu": "40", "memory": "500Gi", "nvidia.com/gpu": 8, "rdma/ib": 1}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    env = env_of(c)
    assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_DEBUG"] == "INFO"
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"  # the caller's env wins
    efa = render(network="efa", network_devices=4)
    assert container(efa)["resources"]["limits"]["vpc.amazonaws.com/efa"] == 4
    assert env_of(container(efa))["FI_PROVIDER"] == "efa"


def test_spec_hash_identifies_the_job() -> None:
    a, b = render(), render(overrides=["train.lr=0.1"])
    assert (
        a["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        == render()["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    )
    assert (
        a["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        != b["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(nodes=0), "nodes must be at least 1"),
        (dict(name="Seer_Run"), "not a valid Kubernetes name"),
        (dict(recipe="my/config.yaml"), "has no default node shape; pass nodes and gpus_per_node"),
        (dict(image="registry.example.com/seer-trainer"), "has no tag; pin it"),
        (dict(gang_scheduler="kueue"), "gang_scheduler 'kueue' is unknown"),
        (dict(queue="q"), "only applies with a gang_scheduler"),
        (dict(network_devices=2), "network_devices needs network='efa' or 'ib'"),
        (dict(network="roce"), "network 'roce' is unknown"),
        (dict(overrides=["train.lr"]), "is not KEY=VALUE"),
        (dict(overrides=["train.metrics_port=1"]), "set the metrics port with metrics_port"),
        (dict(procs_per_node=4), "differs from gpus_per_node=8"),
        (dict(clean_pod_policy="Sometimes"), "clean_pod_policy"),
        (dict(metrics_port=0), "metrics_port 0 is not usable"),
    ],
)
def test_bad_input_names_the_problem_and_the_fix(kwargs, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        render(**kwargs)


def test_config_path_recipe_with_explicit_shape() -> None:
    job = render(recipe="s3://cfg/my.yaml", nodes=2, gpus_per_node=4)
    assert job["spec"]["nprocPerNode"] == "4" and job["metadata"]["labels"]["seer.kubeflow.org/recipe"]
    assert container(job)["command"][container(job)["command"].index("--recipe") + 1] == "s3://cfg/my.yaml"


# ---- restarts, as the training operator counts them --------------------------------------------
# A model of kubeflow/training-operator v1.9 (read in its sources, not copied):
# - pkg/core/pod.go SetRestartPolicy: replica restartPolicy ExitCode → the pod's restartPolicy Never.
# - pkg/controller.v1/common/pod.go ReconcilePods + pkg/util/train IsRetryableExitCode: a Failed pod is
#   deleted and recreated under OnFailure/Always, or under ExitCode when exitCode >= 128; under
#   ExitCode with 1-127 the job fails.
# - pkg/core/job.go PastBackoffLimit: the sum of container restartCounts of Running pods, job failed
#   when it reaches backoffLimit (any restart when backoffLimit is 0). Recreated pods start at 0.


def _operator_restarts_pod(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "ExitCode":
        return exit_code >= 128
    return restart_policy in ("OnFailure", "Always")


def _past_backoff_limit(backoff_limit: int, running_pod_restart_counts: list[int]) -> bool:
    total = sum(running_pod_restart_counts)
    return total > 0 if backoff_limit == 0 else total >= backoff_limit


def test_62x8_restart_fields_survive_the_faults_the_operator_counts() -> None:
    from seer.launch.pytorchjob import CHECKPOINT_BYTES_PER_PARAM, SAVE_BYTES_PER_S_PER_NODE, restart_settings
    from seer.train.faults import PERMANENT_EXIT_CODE, RESUMABLE_EXIT_CODE

    job = render(max_faults=4)
    spec = job["spec"]
    nodes = 62
    replicas = spec["pytorchReplicaSpecs"]
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}
    # Which exit codes restart the pod: the trainer's "preempted/lost a peer, resume me" does; a
    # SeerError (bad config, diverged, fault budget spent) fails the job at once.
    assert _operator_restarts_pod("ExitCode", RESUMABLE_EXIT_CODE)
    assert not _operator_restarts_pod("ExitCode", PERMANENT_EXIT_CODE)
    assert not _operator_restarts_pod("ExitCode", 1)  # why pods run seer.launch.elastic, not bare torchrun

    # Backoff: one fault restarts every pod's container once where restarts are counted.
    backoff = spec["runPolicy"]["backoffLimit"]
    assert backoff == nodes * 4 + 1
    assert not _past_backoff_limit(backoff, [4] * nodes)  # 4 faults survived
    assert _past_backoff_limit(backoff, [5] * nodes)  # the 5th fails the job
    assert _past_backoff_limit(3, [1] * nodes)  # the old OnFailure/backoffLimit 3 died at the first fault
    # Under ExitCode recreated pods restart at 0, so the trainer enforces the same budget itself.
    command = container(job, "Worker")["command"]
    assert "--max-restarts=4" in command and "train.max_faults=4" in command

    # Grace: trainer budget < torchrun's SIGKILL of workers < the kubelet's SIGKILL, and covers a 10B save.
    settings = restart_settings(nodes, 4, 10e9 * CHECKPOINT_BYTES_PER_PARAM)
    pod = replicas["Master"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == settings.termination_grace_period_seconds
    assert f"train.grace_seconds={settings.grace_seconds}" in command
    assert f"--shutdown-timeout={settings.shutdown_timeout}" in command
    assert settings.grace_seconds < settings.shutdown_timeout < settings.termination_grace_period_seconds
    ten_b_save = 10e9 * CHECKPOINT_BYTES_PER_PARAM / (nodes * SAVE_BYTES_PER_S_PER_NODE)
    assert (
        settings.save_seconds == pytest.approx(ten_b_save) and settings.grace_seconds >= 60 + 2 * ten_b_save
    )


def test_max_faults_zero_fails_at_the_first_fault_and_backoff_can_be_overridden() -> None:
    job = render(max_faults=0)
    assert job["spec"]["runPolicy"]["backoffLimit"] == 1
    assert not _past_backoff_limit(1, [0] * 62) and _past_backoff_limit(1, [1] + [0] * 61)
    assert render(backoff_limit=7)["spec"]["runPolicy"]["backoffLimit"] == 7
    with pytest.raises(ConfigError, match="max_faults >= 0"):
        render(max_faults=-1)
