"""PyTorchJobLauncher against the fake Kubernetes API server in tests/fake_kube.py (HTTP, real client)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from seer.launch.kube import (
    ImagePullError,
    JobCancelledError,
    JobFailedError,
    JobHandle,
    JobTimeoutError,
    LaunchError,
    PyTorchJobLauncher,
)
from seer.launch.pytorchjob import render_pytorchjob
from tests.fake_kube import FakeKube, Pod, Step, running

IMAGE = "registry.example.com/seer-trainer:0.1.0"


@pytest.fixture
def kube():
    with FakeKube() as fake:
        yield fake


def make_launcher(fake: FakeKube, **kw) -> PyTorchJobLauncher:
    clock = {"t": 0.0}

    def sleep(s: float) -> None:
        clock["t"] += s  # virtual time: timeouts are exercised without waiting

    return PyTorchJobLauncher(
        fake.api_client(),
        poll_interval_s=1.0,
        max_poll_interval_s=8.0,
        sleep=sleep,
        clock=lambda: clock["t"],
        **kw,
    )


def job(name: str = "seer-test", nodes: int = 2, **kw):
    return render_pytorchjob(
        name, "rg-tiny", image=IMAGE, output_uri="s3://b/run", nodes=nodes, namespace="seer", **kw
    )


def test_success_streams_conditions_pods_and_master_log(kube):
    kube.script(
        "seer-test",
        [
            Step("Created", pods=[Pod("master", phase="Pending"), Pod("worker", phase="Pending")]),
            running(1, logs=["step 1 loss 8.1"]),
            running(1, logs=["step 2 loss 7.9", "step 3 loss 7.5"]),
            Step("Succeeded", "PyTorchJobSucceeded", "done", [Pod("master", phase="Succeeded")], ["saved"]),
        ],
    )
    lines: list[str] = []
    result = make_launcher(kube).run(job(), on_progress=lines.append)
    assert result.state == "Succeeded" and not result.attached
    assert kube.created == ["seer-test"] and kube.deleted == []
    text = "\n".join(lines)
    assert "job Running (PyTorchJobRunning: job is running)" in text
    assert "pods: 2 Pending" in text and "pods: 2 Running" in text
    # each log line once, in order, even though the tail is re-read every poll
    logs = [line for line in lines if line.startswith("[master]")]
    assert logs == [
        "[master] step 1 loss 8.1",
        "[master] step 2 loss 7.9",
        "[master] step 3 loss 7.5",
        "[master] saved",
    ]


def test_failure_raises_with_operator_reason_and_pod_exit(kube):
    kube.script(
        "seer-test",
        [
            running(1),
            Step(
                "Restarting",
                "PyTorchJobRestarting",
                "worker restarting",
                [Pod(restarts=1, last_exit_code=137)],
            ),
            Step(
                "Failed",
                "PyTorchJobFailed",
                "PyTorchJob seer-test is failed because 1 Worker replica(s) failed.",
                [Pod("master", phase="Failed", last_exit_code=1)],
                ["Traceback: CUDA out of memory"],
            ),
        ],
    )
    lines: list[str] = []
    with pytest.raises(
        JobFailedError, match=r"PyTorchJobFailed: PyTorchJob seer-test is failed because 1 Worker"
    ) as err:
        make_launcher(kube).run(job(), on_progress=lines.append)
    assert "seer-test-master-0: pytorch exited 1 (Error)" in str(err.value)
    assert any("restarted (1 restarts; pytorch exited 137" in line for line in lines)
    assert "[master] Traceback: CUDA out of memory" in lines
    assert kube.deleted == []  # a failed job is kept for debugging; ttlSecondsAfterFinished removes it


def test_pending_timeout_names_the_scheduling_problem_and_deletes_the_job(kube):
    stuck = Pod(phase="Pending", unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    kube.script("seer-test", [Step("Created", pods=[stuck, Pod("worker", phase="Pending")])])
    with pytest.raises(JobTimeoutError, match=r"Insufficient nvidia\.com/gpu") as err:
        make_launcher(kube).run(job(), pending_timeout_s=30, on_progress=lambda _: None)
    assert "still pending after" in str(err.value) and "gang scheduling" in str(err.value)
    assert kube.deleted == ["seer-test"]


def test_pending_timeout_without_pods_points_at_the_operator(kube):
    quota = "pods is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=8"
    kube.script("seer-test", [Step(""), Step("Created", warnings=[("seer-test", "FailedCreatePod", quota)])])
    lines: list[str] = []
    with pytest.raises(JobTimeoutError, match="no pods were created; check the training operator") as err:
        make_launcher(kube).run(job(), pending_timeout_s=5, on_progress=lines.append)
    assert f"Last warning: seer-test: FailedCreatePod: {quota}" in str(err.value)
    assert lines.count(f"warning seer-test: FailedCreatePod: {quota}") == 1  # streamed once


def test_overall_timeout(kube):
    kube.script("seer-test", [running(1)])
    with pytest.raises(JobTimeoutError, match=r"still Running after \d+s \(timeout 20s\)"):
        make_launcher(kube).run(job(), timeout_s=20, on_progress=lambda _: None)
    assert kube.deleted == ["seer-test"]


def test_image_pull_error_fails_fast_with_image_name(kube):
    bad = "registry.example.com/seer-trainer:does-not-exist"
    kube.script(
        "seer-test",
        [
            Step(
                "Created",
                pods=[
                    Pod(phase="Pending", waiting="ImagePullBackOff", waiting_message="not found", image=bad)
                ],
            )
        ],
    )
    with pytest.raises(ImagePullError, match=f"cannot pull image {bad}"):
        make_launcher(kube).run(job(), on_progress=lambda _: None)
    assert kube.deleted == ["seer-test"]
    assert sum(1 for m, p in kube.calls if m == "GET" and p.endswith("/pytorchjobs/seer-test")) == 1


def test_keyboard_interrupt_deletes_the_job(kube):
    kube.script("seer-test", [running(1)])

    def interrupt(line: str) -> None:
        if line.startswith("pods:"):
            raise KeyboardInterrupt

    with pytest.raises(JobCancelledError, match="deleted job seer/seer-test"):
        make_launcher(kube).run(job(), on_progress=interrupt)
    assert kube.deleted == ["seer-test"] and not kube.jobs


def test_sigterm_deletes_the_job(kube):
    kube.script("seer-test", [running(1)])
    launcher = PyTorchJobLauncher(kube.api_client(), poll_interval_s=0.05, max_poll_interval_s=0.05)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobCancelledError):
        launcher.run(job(), on_progress=lambda _: None)
    timer.join()
    assert kube.deleted == ["seer-test"]
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_reattach_after_launcher_restart(kube):
    kube.script(
        "seer-test",
        [
            running(1, logs=["step 1"]),
            running(1, logs=["step 2"]),
            running(1),
            Step("Succeeded", pods=[Pod(phase="Succeeded")]),
        ],
    )
    first = make_launcher(kube)
    handle = first.submit(job())
    assert handle == JobHandle("seer-test", "seer", attached=False)
    first._get("seer-test", "seer")  # the first launcher saw it running, then its pod was killed

    lines: list[str] = []
    result = make_launcher(kube).run(job(), on_progress=lines.append)  # a fresh launcher, same job
    assert result.attached and result.state == "Succeeded"
    assert lines[0] == "re-attached to existing job seer/seer-test"
    assert kube.created == ["seer-test"] and kube.deleted == []
    assert sum(1 for m, _ in kube.calls if m == "POST") == 2  # second create got 409 and re-attached


def test_same_name_different_spec_is_refused(kube):
    kube.script("seer-test", [running(1)])
    launcher = make_launcher(kube)
    launcher.submit(job())
    with pytest.raises(LaunchError, match="a different job named seer/seer-test already exists"):
        launcher.submit(job(overrides=["train.lr=0.1"]))


def test_existing_failed_job_is_not_reattached(kube):
    kube.script("seer-test", [Step("Failed", "PyTorchJobFailed", "boom")])
    launcher = make_launcher(kube)
    launcher.submit(job())
    launcher._get("seer-test", "seer")
    with pytest.raises(
        JobFailedError, match=r"already exists and failed \(PyTorchJobFailed: boom\); delete it"
    ):
        launcher.submit(job())


def test_transient_server_errors_are_retried(kube):
    kube.script("seer-test", [Step("Succeeded", pods=[Pod(phase="Succeeded")])])
    kube.fail_next = [500, 503]
    assert make_launcher(kube).run(job(), on_progress=lambda _: None).state == "Succeeded"


def test_forbidden_explains_rbac(kube):
    kube.fail_next = [403]
    with pytest.raises(LaunchError, match=r"forbidden.*seer-launcher Role"):
        make_launcher(kube).submit(job())


def test_cancel_missing_job_returns_false(kube):
    assert make_launcher(kube).cancel(JobHandle("nope", "seer")) is False


def test_rerun_after_the_job_already_succeeded_returns_success_without_a_new_job(kube):
    kube.script("seer-test", [Step("Succeeded", "PyTorchJobSucceeded", "done", [Pod(phase="Succeeded")])])
    launcher = make_launcher(kube)
    launcher.submit(job())
    result = make_launcher(kube).run(job(), on_progress=lambda _: None)
    assert result.attached and result.state == "Succeeded"
    assert kube.created == ["seer-test"] and kube.deleted == []


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch):
    from seer.launch.kube import load_api_client

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LaunchError, match=r"no Kubernetes credentials.*point KUBECONFIG at a kubeconfig"):
        load_api_client()
