"""Offline validation of manifests/: `kubectl kustomize` → kubernetes-validate, plus explicit checks of
the CRD objects kubernetes-validate has no schema for (PyTorchJob: the fields the training operator
reads; TrainJob/TrainingRuntime: the fields Kubeflow Trainer v2 reads; PodMonitor: the fields
prometheus-operator reads), and the install overlays against how Kubeflow really runs pipeline steps."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from seer.config import TrainConfig
from seer.errors import ConfigError
from seer.launch.pytorchjob import (
    checkpoint_bytes,
    finetune_entry,
    render_pytorchjob,
    restart_settings,
    spec_hash,
)
from seer.launch.trainjob import render_trainjob
from tests.trainer_api import RUNTIME_PATCH_POD_FIELDS

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["local", "prod-62x8", "kfp-standalone", "kubeflow-profile", "trainer-v2"]
# Overlays that create namespace seer themselves (clusters without Kubeflow profiles).
CREATES_NAMESPACE = {"local", "kfp-standalone"}
# The account KFP runs pipeline steps as, per install type (overlay → (namespace, service account)).
STEP_ACCOUNTS = {
    "kfp-standalone": ("kubeflow", "pipeline-runner"),
    "kubeflow-profile": ("seer", "default-editor"),
    "prod-62x8": ("seer", "default-editor"),
    "trainer-v2": ("seer", "default-editor"),
}
K8S_VERSION = "1.32"
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "PersistentVolumeClaim",
    "PyTorchJob",
    "TrainJob",
    "TrainingRuntime",
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
        # a command of the training engine: it resumes from its newest checkpoint, saves on SIGTERM
        seer = launcher[launcher.index("-m") + 1 : launcher.index("-m") + 3]
        assert seer in (["seer", "pretrain"], ["seer", "finetune"]), seer
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


def check_trainjob(job: dict[str, Any]) -> None:
    """What Kubeflow Trainer v2 reads or rejects (trainer.kubeflow.org/v1alpha1 trainjob_types.go)."""
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    name = job["metadata"]["name"]
    assert len(name) <= 63 and name[0].isalpha() and name.replace("-", "").isalnum() and name.islower()
    spec = job["spec"]
    assert set(spec) <= {
        "runtimeRef",
        "initializer",
        "trainer",
        "runtimePatches",
        "suspend",
        "activeDeadlineSeconds",
        "managedBy",
    }
    ref = spec["runtimeRef"]
    assert ref["apiGroup"] == "trainer.kubeflow.org" and ref["kind"] in (
        "TrainingRuntime",
        "ClusterTrainingRuntime",
    )
    t = spec["trainer"]
    assert set(t) <= {"image", "command", "args", "env", "numNodes", "resourcesPerNode", "numProcPerNode"}
    assert t["numNodes"] >= 1 and t["numProcPerNode"] >= 1
    assert ":" in t["image"].rsplit("/", 1)[-1], "image must be pinned by tag"
    assert "seer.launch.elastic" in t["command"] and "--nproc-per-node=$(PET_NPROC_PER_NODE)" in t["command"]
    gpus = int(t["resourcesPerNode"]["limits"].get("nvidia.com/gpu", 0))
    assert gpus in (0, t["numProcPerNode"]), "one process per GPU"
    for env in t["env"]:
        assert not env["name"].startswith("PET_"), "the torch plugin owns PET_*"
        assert "value" in env or "secretKeyRef" in env.get("valueFrom", {})
        if any(word in env["name"] for word in ("SECRET", "ACCESS_KEY", "TOKEN")):
            assert "valueFrom" in env, f"credential {env['name']} set inline"
    for patch in spec.get("runtimePatches", []):
        assert patch["manager"]
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            pod = rjob["template"]["spec"]["template"]
            assert set(pod["spec"]) <= RUNTIME_PATCH_POD_FIELDS
            for c in pod["spec"].get("containers", []):
                assert set(c) <= {"name", "env", "volumeMounts", "securityContext"}
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert job["metadata"]["annotations"]["seer.kubeflow.org/spec-sha256"] == spec_hash(job)


def check_trainingruntime(rt: dict[str, Any]) -> None:
    """The runtime's torch policy, the trainer container `node` with the metrics port, restart limits."""
    assert rt["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and rt["kind"] == "TrainingRuntime"
    assert "torch" in rt["spec"]["mlPolicy"]
    (rjob,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    assert rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = rjob["template"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "node" and any(p["name"] == "metrics" for p in c["ports"])
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert rt["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] >= 0


def check_podmonitor(pm: dict[str, Any]) -> None:
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selector = pm["spec"]["selector"]
    (expr,) = selector["matchExpressions"]
    assert expr["operator"] == "Exists"
    assert expr["key"] in ("training.kubeflow.org/job-name", "jobset.sigs.k8s.io/jobset-name")
    return selector["matchLabels"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(f"manifests/overlays/{request.param}")


def test_every_object_validates(overlay) -> None:
    name, objs = overlay
    kinds = [o["kind"] for o in objs]
    assert {"ServiceAccount", "Role", "RoleBinding", "PodMonitor"} <= set(kinds)
    assert ("Secret" in kinds) == (name == "local"), "only the dev overlay carries the Secret template"
    for obj in objs:
        if obj["kind"] in NAMESPACED_KINDS:
            assert obj["metadata"]["namespace"] == "seer", f"{name}: {obj['kind']} outside namespace seer"
        if obj["kind"] == "PyTorchJob":
            check_pytorchjob(obj)
        elif obj["kind"] == "TrainJob":
            check_trainjob(obj)
        elif obj["kind"] == "TrainingRuntime":
            check_trainingruntime(obj)
        elif obj["kind"] == "PodMonitor":
            labels = check_podmonitor(obj)
            templates = [
                r["template"]
                for o in objs
                if o["kind"] == "PyTorchJob"
                for r in o["spec"]["pytorchReplicaSpecs"].values()
            ] + [
                rj["template"]["spec"]["template"]
                for o in objs
                if o["kind"] == "TrainJob"
                for p in o["spec"]["runtimePatches"]
                for rj in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            ]
            for template in templates:
                pod_labels = template["metadata"]["labels"]
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
        ("kubeflow.org", "pytorchjobs"): {"create", "get", "delete"},
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "delete"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"list"},
    }
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    assert all(b["roleRef"]["name"] == role["metadata"]["name"] for b in bindings)
    subjects = [s for b in bindings for s in b["subjects"]]
    assert {"kind": "ServiceAccount", "name": "seer-launcher", "namespace": "seer"} in subjects
    (trainer_sa,) = [
        o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "seer-trainer"
    ]
    assert trainer_sa["automountServiceAccountToken"] is False


def test_storage_secret_is_a_marked_template_with_the_keys_storage_reads(overlay) -> None:
    from seer.storage import _s3

    name, objs = overlay
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if name != "local":
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


# The prod-62x8 PyTorchJob and the trainer-v2 TrainJob samples render the same 62x8 rg10b run.
PROD_RG10B: dict[str, Any] = dict(
    name="seer-rg10b",
    recipe="rg10b",
    output_uri="s3://seer/runs/rg10b",
    data_uri="s3://seer/shards",
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    network="efa",
    network_devices=4,
)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        (
            "manifests/overlays/prod-62x8/pytorchjob-rg10b.yaml",
            dict(PROD_RG10B, gang_scheduler="volcano"),
        ),
        (
            "manifests/overlays/trainer-v2/trainjob-rg10b.yaml",
            PROD_RG10B,
        ),
        (
            "manifests/overlays/local/pytorchjob-rg-tiny.yaml",
            dict(
                name="seer-rg-tiny",
                recipe="rg-tiny",
                data_uri="s3://seer/shards",
                output_uri="s3://seer/runs/rg-tiny",
            ),
        ),
    ],
)
def test_sample_jobs_match_what_the_launcher_renders(path: str, kwargs: dict[str, Any]) -> None:
    """The checked-in samples are regenerated output of `seer launch render`, not hand edits."""
    render = render_trainjob if "trainjob" in path else render_pytorchjob
    expected = render(image="registry.example.com/seer/trainer:0.1.0", **kwargs)
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


@pytest.mark.parametrize("gang", [None, "volcano"])
def test_rendered_62x8_finetune_job_passes_the_same_checks_as_pretraining(gang: str | None) -> None:
    """`seer finetune` of rg10b runs as pretraining does: 62×8, torchrun through seer.launch.elastic,
    the same restart policy, backoff and grace (sized by the rg10b checkpoint), only the entry differs."""
    common: dict[str, Any] = dict(
        image="reg.example.com/seer-trainer:1.0", output_uri="s3://b/ft", data_uri="s3://b/in1k.csv"
    )
    job = render_pytorchjob(
        "seer-ft-check",
        "rg10b",
        entry=finetune_entry("in1k-384-rg10b"),
        overrides=["model.checkpoint=s3://b/sliced/index.json"],
        gang_scheduler=gang,
        **common,
    )
    check_pytorchjob(job)
    pretrain = render_pytorchjob("seer-ft-check", "rg10b", gang_scheduler=gang, **common)
    replicas, pre = job["spec"]["pytorchReplicaSpecs"], pretrain["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == 61 and job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["runPolicy"] == pretrain["spec"]["runPolicy"]
    for rtype in ("Master", "Worker"):
        assert replicas[rtype]["restartPolicy"] == pre[rtype]["restartPolicy"] == "ExitCode"
        pod, pre_pod = replicas[rtype]["template"]["spec"], pre[rtype]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == pre_pod["terminationGracePeriodSeconds"]
        cmd, pre_cmd = pod["containers"][0]["command"], pre_pod["containers"][0]["command"]
        at, pre_at = cmd.index("seer") + 1, pre_cmd.index("seer") + 1
        assert cmd[:at] == pre_cmd[:pre_at], "the same torchrun (restarts, rendezvous, shutdown timeout)"
        assert cmd[at : at + 3] == ["finetune", "--recipe", "in1k-384-rg10b"]
        args = cmd[at + 3 :]
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        # the trainer's own fault budget and grace, as for pretraining; then the user's overrides
        assert sets[:3] == [a for i, a in enumerate(pre_cmd) if i and pre_cmd[i - 1] == "--set"][:3]
        assert sets[-1] == "model.checkpoint=s3://b/sliced/index.json"
        assert args[-4:] == ["--data", "s3://b/in1k.csv", "--output", "s3://b/ft"]


def test_rendered_62x8_finetune_trainjob_passes_the_trainjob_checks() -> None:
    job = render_trainjob(
        "seer-ft-check",
        "rg10b",
        image="reg.example.com/seer-trainer:1.0",
        output_uri="s3://b/ft",
        entry=finetune_entry("in1k-384-rg10b"),
    )
    check_trainjob(job)
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (62, 8)
    cmd = trainer["command"]
    assert cmd[cmd.index("seer") + 1 : cmd.index("seer") + 4] == ["finetune", "--recipe", "in1k-384-rg10b"]


def test_a_job_runs_only_a_training_command() -> None:
    with pytest.raises(ConfigError, match="not a training command"):
        render_pytorchjob(
            "seer-x", "rg10b", image="r.example.com/t:1", output_uri="s3://b/r", entry=["eval", "linear"]
        )


def test_pod_template_validation_catches_schema_errors() -> None:
    job = render_pytorchjob(
        "seer-bad", "rg10b", image="reg.example.com/seer-trainer:1.0", output_uri="s3://b/r"
    )
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resourcez"):
        check_pytorchjob(job)


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_overlay_relabels_a_kubeflow_profile_namespace(name: str) -> None:
    """Kubeflow's profile controller labels a profile namespace (app.kubernetes.io/part-of:
    kubeflow-profile, pipelines.kubeflow.org/enabled, ...; kubeflow/manifests
    applications/profiles/upstream/base/namespace-labels.yaml) and KFP's SeaweedFS NetworkPolicy admits
    only namespaces with that part-of label. Applying a Namespace over it would strip or overwrite them,
    so only the overlays for clusters without profiles create one, and it carries no part-of label."""
    namespaces = [o for o in kustomize(f"manifests/overlays/{name}") if o["kind"] == "Namespace"]
    if name not in CREATES_NAMESPACE:
        assert namespaces == [], f"{name} must not apply a Namespace over a Kubeflow profile"
        return
    (ns,) = namespaces
    assert "app.kubernetes.io/part-of" not in ns["metadata"].get("labels", {})
    assert not [o for o in kustomize("manifests/base") if o["kind"] == "Namespace"]


def test_standalone_overlay_lets_seer_reach_the_kfp_object_store() -> None:
    """Standalone KFP's SeaweedFS NetworkPolicy (kubeflow/manifests seaweedfs-networkpolicy.yaml: pods
    app=seaweedfs, port 8333, from profile namespaces, istio-system and its own namespace) would drop
    the seer namespace's traffic; policies add up, so a second one admits namespace seer."""
    objs = kustomize("manifests/overlays/kfp-standalone")
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert policy["metadata"]["namespace"] == "kubeflow"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "seaweedfs"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8333}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "seer"}}}]


def _launcher_flows(fake) -> None:
    """Everything seer.launch does on a cluster: both backends' run to success, a failed run's cleanup
    (logs copied, job kept), a cancelled run's cleanup (job deleted)."""
    from seer.launch import make_launcher, render_job
    from seer.launch.finish import clean_up_job
    from seer.launch.kube import JobHandle
    from tests.fake_kube import Pod, Step

    def quick(backend: str):
        return make_launcher(backend, fake.api_client(), poll_interval_s=0.0, sleep=lambda s: None)

    for backend in ("pytorchjob", "trainjob"):
        ok, failed, live = (f"{backend[:5]}-{s}" for s in ("ok", "failed", "live"))
        for name in (ok, failed, live):
            job = render_job(backend, name, "rg-tiny", image="r.test/t:1", output_uri="s3://b/r")
            if name == ok:
                fake.script(
                    name,
                    [
                        Step("Running", pods=[Pod("master")], logs=["x"]),
                        Step("Succeeded", pods=[Pod("master", phase="Succeeded")]),
                    ],
                )
                quick(backend).run(job, on_progress=lambda _: None)
            else:
                state = "Failed" if name == failed else "Running"
                fake.script(name, [Step(state, pods=[Pod("master", phase=state)], logs=["boom"])])
                quick(backend).submit(job)
                clean_up_job(quick(backend), JobHandle(name, "seer"), "")


@pytest.mark.parametrize("name", sorted(STEP_ACCOUNTS))
def test_rbac_covers_exactly_what_the_launcher_calls_for_the_account_steps_run_as(name: str) -> None:
    """KFP runs steps as pipeline-runner (standalone, namespace kubeflow) or default-editor (profile
    namespace; kubeflow/manifests pipelines-profile-controller sync.py), and a step switched to another
    account loses KFP's kfp-launcher ConfigMap and artifact Secret. So the launcher Role must be bound to
    that account, and grant exactly the verbs seer.launch calls: the fake API server enforces the rendered
    Role like the RBAC authorizer (403 Forbidden otherwise) and records every verb asked for."""
    from tests.fake_kube import FakeKube

    objs = kustomize(f"manifests/overlays/{name}")
    (role,) = [o for o in objs if o["kind"] == "Role"]
    ns, account = STEP_ACCOUNTS[name]
    subjects = [
        (s.get("namespace") or b["metadata"]["namespace"], s["name"])
        for b in objs
        if b["kind"] == "RoleBinding" and b["roleRef"]["name"] == role["metadata"]["name"]
        for s in b["subjects"]
    ]
    assert (ns, account) in subjects, f"{name}: the Role is not bound to {ns}/{account}"
    with FakeKube(rbac=role["rules"]) as fake:
        _launcher_flows(fake)
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert fake.verbs_used == granted


def test_trainjob_runtime_restarts_like_the_pytorchjob_exit_code_policy() -> None:
    """Trainer v2 has no ExitCode policy of its own: the `seer-torch` runtime expresses it with the
    Kubernetes Job ``podFailurePolicy`` (action FailJob on exit codes, needs pod restartPolicy Never) and
    the JobSet ``failurePolicy`` (``maxRestarts`` recreates every replicated job; a rule with
    ``onJobFailureReasons: [PodFailurePolicy]`` fails the JobSet at once). The codes that fail at once are
    the training operator's permanent ones (``IsRetryableExitCode``: >= 128 is retryable, so 1..127 are
    not), the restart budget is ``train.max_faults`` and the grace period the rendered 62-node rg10b job's."""
    (runtime,) = [
        o
        for o in kustomize("manifests/overlays/trainer-v2")
        if o["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime")
    ]
    jobset = runtime["spec"]["template"]["spec"]
    settings = restart_settings(62, TrainConfig().max_faults, checkpoint_bytes("rg10b"))
    assert jobset["failurePolicy"]["maxRestarts"] == settings.max_restarts
    assert {"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]} in jobset["failurePolicy"][
        "rules"
    ]
    (node,) = jobset["replicatedJobs"]
    job = node["template"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
    assert rule["onExitCodes"]["values"] == list(range(1, 128))
    assert job["backoffLimit"] == 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    assert (
        job["template"]["spec"]["terminationGracePeriodSeconds"] == settings.termination_grace_period_seconds
    )
