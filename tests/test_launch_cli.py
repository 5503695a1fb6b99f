"""`seer launch render|submit|cancel` through the real `seer` entry point; submit/cancel talk to the
fake Kubernetes API (tests/fake_kube.py) through a kubeconfig, as a user's would."""

from __future__ import annotations

import pytest
import yaml

from seer.cli import main
from tests.fake_kube import Pod, Step, running

JOB_ARGS = [
    "--recipe",
    "rg-tiny",
    "--image",
    "registry.example.com/seer/trainer:0.1.0",
    "--output",
    "s3://seer/runs/cli",
]


def test_render_prints_the_job_yaml(capsys) -> None:
    rc = main(
        [
            "launch",
            "render",
            "seer-cli",
            "--recipe",
            "rg10b",
            *JOB_ARGS[2:],
            "--gang-scheduler",
            "volcano",
            "--toleration",
            "nvidia.com/gpu:NoSchedule",
            "--node-selector",
            "pool=gpu",
            "--set",
            "train.lr=0.2",
        ]
    )
    assert rc == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["kind"] == "PyTorchJob" and job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 61
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"pool": "gpu"} and "train.lr=0.2" in pod["containers"][0]["command"]


def test_render_a_finetune_job_sized_by_its_model_preset(capsys) -> None:
    """`--finetune RECIPE` renders the same job shape around `seer finetune`: in1k-384-rg10b fine-tunes
    rg10b, so the job is rg10b's 62 x 8, and passes the checks every training job passes."""
    from test_manifests import check_pytorchjob

    ckpt = "model.checkpoint=s3://seer/runs/rg10b/sliced"
    argv = ["launch", "render", "seer-ft", "--finetune", "in1k-384-rg10b", *JOB_ARGS[2:], "--set", ckpt]
    assert main(argv) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    check_pytorchjob(job)
    assert (
        job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 61 and job["spec"]["nprocPerNode"] == "8"
    )
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    seer = command[command.index("seer") :]
    assert seer[:3] == ["seer", "finetune", "--recipe"] and seer[3] == "in1k-384-rg10b" and ckpt in seer
    with pytest.raises(SystemExit):  # argparse: "--recipe: not allowed with argument --finetune"
        main(["launch", "render", "seer-ft", "--finetune", "x", "--recipe", "rg10b", *JOB_ARGS[2:]])


def test_render_bad_flag_is_a_one_line_error(capsys) -> None:
    assert main(["launch", "render", "seer-cli", *JOB_ARGS, "--toleration", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KEY[=VALUE]:EFFECT" in err


def test_submit_watches_to_success(kube, capsys) -> None:
    kube.script(
        "seer-cli", [running(0, logs=["hello from rank 0"]), Step("Succeeded", pods=[Pod(phase="Succeeded")])]
    )
    assert main(["launch", "submit", "seer-cli", *JOB_ARGS, "--poll-interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "created job seer/seer-cli" in out and "[master] hello from rank 0" in out
    assert "job seer/seer-cli Succeeded" in out


def test_submit_failure_exits_nonzero_with_reason(kube, capsys) -> None:
    kube.script("seer-cli", [Step("Failed", "PyTorchJobFailed", "master exited 1")])
    assert main(["launch", "submit", "seer-cli", *JOB_ARGS, "--poll-interval", "0.01"]) == 2
    assert "PyTorchJobFailed: master exited 1" in capsys.readouterr().err


def test_detach_then_cancel(kube, capsys) -> None:
    assert main(["launch", "submit", "seer-cli", *JOB_ARGS, "--detach"]) == 0
    assert main(["launch", "cancel", "seer-cli"]) == 0
    assert main(["launch", "cancel", "seer-cli"]) == 0
    out = capsys.readouterr().out
    assert "created job seer/seer-cli" in out and "deleted job seer/seer-cli" in out and "no such job" in out
    assert kube.deleted == ["seer-cli"]


def test_trainjob_backend_submits_watches_and_cancels_through_the_cli(kube, capsys) -> None:
    """`--backend trainjob` drives a Trainer v2 TrainJob end to end; `--kueue-queue` queues it."""
    kube.script(
        "seer-tj", [running(n_workers=0), Step("Succeeded", "", "done", [Pod("master", phase="Succeeded")])]
    )
    args = [
        "seer-tj",
        "--backend",
        "trainjob",
        "--kueue-queue",
        "team-a",
        *JOB_ARGS,
        "--poll-interval",
        "0.01",
    ]
    assert main(["launch", "submit", *args]) == 0
    assert "job seer/seer-tj Succeeded" in capsys.readouterr().out
    job = kube.jobs[("seer", "seer-tj")]
    assert job["kind"] == "TrainJob" and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert main(["launch", "cancel", "seer-tj", "--backend", "trainjob"]) == 0
    assert kube.deleted == ["seer-tj"] and "deleted job seer/seer-tj" in capsys.readouterr().out
    assert main(["launch", "cancel", "seer-tj", "--backend", "pytorchjob"]) == 0
    assert "no such job" in capsys.readouterr().out
