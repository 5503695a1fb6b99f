"""Offline validation of manifests/: `kubectl kustomize` → kubernetes-validate, plus explicit checks of
the CRD objects kubernetes-validate has no schema for (PyTorchJob: the fields the training operator
reads; PodMonitor: the fields prometheus-operator reads)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from seer.launch.pytorchjob import render_pytorchjob, spec_hash

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["local", "prod-62x8"]
K8S_VERSION = "1.32"
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "PersistentVolumeClaim",
    "PyTorchJob",
    "PodMonitor",
}


def kustomize(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate_pod_template(template: dict[str, Any], where: str) -> None:
    """Strict schema validation of a pod template, plus the security rules every pod follows."""
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
        K8S_VERSION,
        strict=True,
    )
    spec = template["spec"]
    assert spec["securityContext"].get("runAsNonRoot") is True, where
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        assert sc.get("privileged") is not True, f"{where}: container {c['name']} is privileged"
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert "SYS_ADMIN" not in (sc.get("capabilities") or {}).get("add", []), where
        for env in c.get("env") or []:
            assert "value" in env or "secretKeyRef" in env.get("valueFrom", {}), where
            assert not any(word in env["name"] for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")), (
                f"{where}: credential {env['name']} set inline; it must come from a Secret"
            )


def check_pytorchjob(job: dict[str, Any]) -> None:
    """What the training operator (v1) reads or rejects, checked explicitly."""
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1, "the webhook requires exactly one Master"
    nodes = 1 + replicas.get("Worker", {}).get("replicas", 0)
    nproc = spec["nprocPerNode"]
    assert isinstance(nproc, str) and (nproc.isdigit() or nproc in ("auto", "cpu", "gpu"))
    assert "elasticPolicy" not in spec
    run_policy = spec["runPolicy"]
    assert run_policy["cleanPodPolicy"] in ("All", "Running", "None")
    assert run_policy["backoffLimit"] >= 0 and run_policy["ttlSecondsAfterFinished"] > 0
    if "schedulingPolicy" in run_policy:
        assert run_policy["schedulingPolicy"]["minAvailable"] == nodes, "gang must cover every pod"
    for rtype, rspec in replicas.items():
        where = f"{job['metadata']['name']}/{rtype}"
        assert rspec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        template = rspec["template"]
        validate_pod_template(template, where)
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        pod = template["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "pytorch"]
        assert c["image"] and ":" in c["image"].rsplit("/", 1)[-1], "image must be pinned by tag"
        # torchrun through seer.launch.elastic, whose exit codes the operator reads under ExitCode
        assert c["command"][:3] == ["python", "-m", "seer.launch.elastic"]
        launcher = c["command"][3:]
        assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in launcher and "--rdzv-backend=c10d" in launcher
        assert launcher[launcher.index("-m") + 1 : launcher.index("-m") + 3] == ["seer", "pretrain"]
        assert pod["terminationGracePeriodSeconds"] > 30, "the preemption save needs more than the default"
        gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert gpus == 0 or str(gpus) == nproc, "one process per GPU"
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert any(p["name"] == "metrics" for p in c["ports"]), (
            "the PodMonitor scrapes the port named metrics"
        )
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert job["metadata"]["annotations"]["seer.kubeflow.org/spec-sha256"] == spec_hash(job)


def check_podmonitor(pm: dict[str, Any]) -> None:
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selector = pm["spec"]["selector"]
    assert {"key": "training.kubeflow.org/job-name", "operator": "Exists"} in selector["matchExpressions"]
    return selector["matchLabels"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(f"manifests/overlays/{request.param}")


def test_every_object_validates(overlay) -> None:
    name, objs = overlay
    kinds = [o["kind"] for o in objs]
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PodMonitor", "PyTorchJob"} <= set(kinds)
    assert ("Secret" in kinds) == (name == "local"), "only the dev overlay carries the Secret template"
    for obj in objs:
        if obj["kind"] in NAMESPACED_KINDS:
            assert obj["metadata"]["namespace"] == "seer", f"{name}: {obj['kind']} outside namespace seer"
        if obj["kind"] == "PyTorchJob":
            check_pytorchjob(obj)
        elif obj["kind"] == "PodMonitor":
            labels = check_podmonitor(obj)
            for job in (o for o in objs if o["kind"] == "PyTorchJob"):
                for rspec in job["spec"]["pytorchReplicaSpecs"].values():
                    pod_labels = rspec["template"]["metadata"]["labels"]
                    assert labels.items() <= pod_labels.items(), "PodMonitor must select the training pods"
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_rbac_is_least_privilege(overlay) -> None:
    _, objs = overlay
    (role,) = [o for o in objs if o["kind"] == "Role"]
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "delete", "patch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"list"},
    }
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": "seer-launcher", "namespace": "seer"} in binding["subjects"]
    (trainer_sa,) = [
        o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "seer-trainer"
    ]
    assert trainer_sa["automountServiceAccountToken"] is False


def test_storage_secret_is_a_marked_template_with_the_keys_storage_reads(overlay) -> None:
    from seer.storage import _s3

    name, objs = overlay
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if name == "prod-62x8":
        assert secrets == [], "a prod apply must never overwrite real credentials with the template"
        secrets = kustomize("manifests/overlays/local")
        secrets = [o for o in secrets if o["kind"] == "Secret"]
    (secret,) = secrets
    data = secret["stringData"]
    assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SEER_S3_ENDPOINT"}
    assert "AWS_ACCESS_KEY_ID" in _s3.ACCESS_VARS and "AWS_SECRET_ACCESS_KEY" in _s3.SECRET_VARS
    assert "SEER_S3_ENDPOINT" in _s3.ENDPOINT_VARS
    assert all(v.startswith("REPLACE_ME") for v in data.values()), "template values must be placeholders"
    for job in (o for o in objs if o["kind"] == "PyTorchJob"):
        for rspec in job["spec"]["pytorchReplicaSpecs"].values():
            (c,) = rspec["template"]["spec"]["containers"]
            assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]


def test_prod_overlay_is_the_62x8_gang_scheduled_gpu_job() -> None:
    objs = kustomize("manifests/overlays/prod-62x8")
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8" and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 61
    assert spec["runPolicy"]["schedulingPolicy"]["minAvailable"] == 62
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["schedulerName"] == "volcano"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 8 and limits["vpc.amazonaws.com/efa"] == 4


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        (
            "manifests/overlays/prod-62x8/pytorchjob-rg10b.yaml",
            dict(
                name="seer-rg10b",
                preset="rg10b",
                output_uri="s3://seer/runs/rg10b",
                data_uri="s3://seer/shards",
                gang_scheduler="volcano",
                node_selector={"nvidia.com/gpu.present": "true"},
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                network="efa",
                network_devices=4,
            ),
        ),
        (
            "manifests/overlays/local/pytorchjob-rg-tiny.yaml",
            dict(
                name="seer-rg-tiny",
                preset="rg-tiny",
                data_uri="s3://seer/shards",
                output_uri="s3://seer/runs/rg-tiny",
            ),
        ),
    ],
)
def test_sample_jobs_match_what_the_launcher_renders(path: str, kwargs: dict[str, Any]) -> None:
    """The checked-in samples are regenerated output of `seer launch render`, not hand edits."""
    expected = render_pytorchjob(image="registry.example.com/seer/trainer:0.1.0", **kwargs)
    assert yaml.safe_load((ROOT / path).read_text()) == expected


@pytest.mark.parametrize("gang", [None, "volcano", "scheduler-plugins"])
def test_rendered_62x8_job_passes_the_same_checks(gang: str | None) -> None:
    job = render_pytorchjob(
        "seer-rg10b-check",
        "rg10b",
        image="reg.example.com/seer-trainer:1.0",
        output_uri="s3://b/r",
        gang_scheduler=gang,
    )
    check_pytorchjob(job)


def test_pod_template_validation_catches_schema_errors() -> None:
    job = render_pytorchjob(
        "seer-bad", "rg10b", image="reg.example.com/seer-trainer:1.0", output_uri="s3://b/r"
    )
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resourcez"):
        check_pytorchjob(job)
