"""The `trainjob` backend (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1) and Kueue queueing,
against the fake API server in tests/fake_kube.py through the real `kubernetes` client.

Relied on (kubeflow/trainer, pkg/apis/trainer/v1alpha1/trainjob_types.go and pkg/constants): TrainJob
spec fields `runtimeRef{name,kind,apiGroup}`, `trainer{image,command,numNodes,numProcPerNode,
resourcesPerNode,env}`, `runtimePatches[{manager,trainingRuntimeSpec.template.spec.replicatedJobs}]`
(pod patches: serviceAccountName, volumes, containers[{name,volumeMounts,securityContext}],
securityContext, nodeSelector, tolerations, imagePullSecrets; no envFrom, no initContainers),
`suspend`, `activeDeadlineSeconds`; status conditions `Complete`/`Failed`/`Suspended` (copied from the
JobSet: `AllJobsCompleted`, `FailedJobs`); the torch plugin injects PET_NNODES/PET_NPROC_PER_NODE/
PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT into the `node` container; the metadata.name rule
(RFC 1035, <= 63). Kueue (kueue.sigs.k8s.io "Run A TrainJob", "Run a Kubeflow Job"): the LocalQueue
is the `kueue.x-k8s.io/queue-name` label, the job is created suspended and Kueue un-suspends it on
admission, so a queued job may wait far longer than any pod-scheduling timeout.
"""

from __future__ import annotations

import re

import pytest

from seer.errors import ConfigError
from seer.launch import TrainJobLauncher, job_name, render_job
from seer.launch.kube import JobFailedError, JobHandle, LaunchError, PyTorchJobLauncher
from tests.fake_kube import FakeKube, Pod, Step
from tests.trainer_api import RUNTIME_PATCH_POD_FIELDS

IMAGE = "registry.example.com/seer/trainer:0.1.0"


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


def launcher(fake: FakeKube, cls=TrainJobLauncher):
    clock = {"t": 0.0}

    def sleep(s: float) -> None:
        clock["t"] += s

    return cls(
        fake.api_client(), poll_interval_s=1.0, max_poll_interval_s=8.0, sleep=sleep, clock=lambda: clock["t"]
    )


def trainjob(name: str = "seer-tj", preset: str = "rg-tiny", **kw):
    kw.setdefault("image", IMAGE)
    kw.setdefault("output_uri", "s3://b/run")
    return render_job("trainjob", name, preset, **kw)


def running(n_workers: int = 1, logs: list[str] | None = None) -> Step:
    pods = [Pod("master")] + [Pod("worker", i) for i in range(n_workers)]
    return Step("Running", "", "", pods, logs or [])


def test_62x8_trainjob_runs_the_same_command_and_pod_settings_as_the_pytorchjob() -> None:
    job = trainjob("seer-rg10b", "rg10b", data_uri="s3://b/shards", node_selector={"gpu": "true"})
    pj = render_job(
        "pytorchjob",
        "seer-rg10b",
        "rg10b",
        image=IMAGE,
        output_uri="s3://b/run",
        data_uri="s3://b/shards",
        node_selector={"gpu": "true"},
    )
    master = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    t = job["spec"]["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (62, 8)
    assert t["image"] == IMAGE and t["command"] == master["containers"][0]["command"]
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert job["spec"]["runtimeRef"] == {
        "name": "seer-torch",
        "kind": "TrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    # The torch plugin owns PET_*; the Trainer API rejects them in trainer.env.
    names = [e["name"] for e in t["env"]]
    assert not [n for n in names if n.startswith("PET_")] and len(names) == len(set(names))
    # Credentials by secretKeyRef only (no envFrom in the Trainer API), never as values.
    secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in t["env"] if "valueFrom" in e}
    assert secret["AWS_ACCESS_KEY_ID"] == {
        "name": "seer-storage",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": False,
    }
    assert not any("AWS_SECRET" in e["name"] and "value" in e for e in t["env"])
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]
    assert rjob["name"] == "node" and set(pod["spec"]) <= RUNTIME_PATCH_POD_FIELDS
    assert pod["spec"]["serviceAccountName"] == master["serviceAccountName"] == "seer-trainer"
    assert pod["spec"]["nodeSelector"] == {"gpu": "true"}
    assert pod["spec"]["containers"] == [
        {
            "name": "node",
            "volumeMounts": master["containers"][0]["volumeMounts"],
            "securityContext": master["containers"][0]["securityContext"],
        }
    ]
    assert set(pod["spec"]["containers"][0]) <= {"name", "env", "volumeMounts", "securityContext"}
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_trainjob_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(ConfigError, match="podGroupPolicy"):
        trainjob(gang_scheduler="volcano")
    with pytest.raises(ConfigError, match="runtime_kind"):
        trainjob(runtime_kind="Runtime")
    with pytest.raises(ConfigError, match="only applies to backend trainjob"):
        render_job("pytorchjob", "x", "rg-tiny", image=IMAGE, output_uri="s3://b/r", runtime="seer-torch")


def test_efa_trainjob_checks_the_plugin_before_torchrun() -> None:
    """No init containers can be added by a runtime patch, so the check wraps the command; the kubelet
    still expands $(PET_*) in it."""
    cmd = trainjob("seer-efa", "rg10b", network="efa", network_devices=4)["spec"]["trainer"]["command"]
    assert cmd[:4] == ["sh", "-c", 'seer launch check-network efa && exec "$@"', "sh"]
    assert cmd[4:7] == ["python", "-m", "seer.launch.elastic"] and "--rdzv-backend=c10d" in cmd


def test_kueue_queue_labels_and_suspends_both_kinds() -> None:
    tj = trainjob(kueue_queue="team-a")
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and tj["spec"]["suspend"] is True
    pj = render_job("pytorchjob", "x", "rg-tiny", image=IMAGE, output_uri="s3://b/r", kueue_queue="team-a")
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pj["spec"]["runPolicy"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in trainjob()["metadata"]["labels"]
    with pytest.raises(ConfigError, match="pick one"):
        render_job(
            "pytorchjob",
            "x",
            "rg-tiny",
            image=IMAGE,
            output_uri="s3://b/r",
            kueue_queue="q",
            gang_scheduler="volcano",
        )


def test_trainjob_success_streams_the_node_container_log(kube) -> None:
    kube.script(
        "seer-tj",
        [
            Step("Created", pods=[Pod("master", phase="Pending")]),
            running(1, ["step 1 loss 8.0"]),
            Step("Succeeded", "", "jobset completed", [Pod("master", phase="Succeeded")], ["saved"]),
        ],
    )
    lines: list[str] = []
    result = launcher(kube).run(trainjob(), on_progress=lines.append)
    assert result.state == "Succeeded" and result.reason == "AllJobsCompleted" and kube.deleted == []
    assert [ln for ln in lines if ln.startswith("[master]")] == ["[master] step 1 loss 8.0", "[master] saved"]
    assert any("/apis/trainer.kubeflow.org/v1alpha1/namespaces/seer/trainjobs" in p for _, p in kube.calls)
    logs = [p for _, p in kube.calls if p.endswith("/log")]
    assert logs and all("seer-tj-node-0-0-" in p for p in logs)  # rank 0 = completion index 0


def test_trainjob_failure_raises_with_the_jobset_reason(kube) -> None:
    kube.script(
        "seer-tj",
        [
            running(1),
            Step(
                "Failed",
                "",
                "jobset failed due to one or more job failures",
                [Pod("master", phase="Failed", last_exit_code=3)],
            ),
        ],
    )
    with pytest.raises(JobFailedError, match=r"FailedJobs: jobset failed .*exited 3"):
        launcher(kube).run(trainjob(), on_progress=lambda _: None)


def test_trainjob_cancel_and_reattach(kube) -> None:
    kube.script("seer-tj", [running(1)])
    first = launcher(kube).submit(trainjob())
    assert not first.attached
    again = launcher(kube).submit(trainjob())  # a retried step finds its own job and watches it
    assert again.attached and kube.created == ["seer-tj"]
    with pytest.raises(LaunchError, match="a different job named seer/seer-tj"):
        launcher(kube).submit(trainjob(nodes=2))
    assert launcher(kube).cancel(again) is True and kube.deleted == ["seer-tj"]
    assert launcher(kube).cancel(again) is False  # 404: already gone


def test_missing_trainer_crd_is_one_clear_error() -> None:
    with FakeKube(crds=("pytorchjobs",)) as fake, pytest.raises(LaunchError, match="Trainer v2") as err:
        launcher(fake).submit(trainjob())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_a_job_queued_by_kueue_is_not_timed_out_as_pending(kube, backend) -> None:
    """Kueue keeps the job suspended until quota frees; that wait is not a stuck pod (on today's code
    the pending timeout deleted the queued job)."""
    cls = TrainJobLauncher if backend == "trainjob" else PyTorchJobLauncher
    job = render_job(backend, "seer-q", "rg-tiny", image=IMAGE, output_uri="s3://b/r", kueue_queue="team-a")
    queued = Step("Suspended", "" if backend == "trainjob" else "JobSuspended", "queued by Kueue")
    done = Step("Succeeded", "", "done", [Pod("master", phase="Succeeded")])
    kube.script("seer-q", [queued] * 12 + [running(0), done])
    result = launcher(kube, cls).run(job, pending_timeout_s=30.0, on_progress=lambda _: None)
    assert result.state == "Succeeded" and kube.deleted == []


def test_job_name_is_shared_and_valid() -> None:
    """One naming function for the pretrain and exit-handler steps (both call seer.launch.job_name)."""
    assert job_name("ABC_123-def", "") == "seer-abc-123-def"
    assert job_name("x" * 80) == "seer-" + "x" * 43 and job_name("r1", "mine") == "mine"
    assert (
        launcher
    )  # the pretrain and cleanup components both call seer.launch.job_name (tests/test_components.py)
    assert JobHandle(job_name("r1"), "seer").name == "seer-r1"
