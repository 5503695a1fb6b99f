"""`seer pretrain` end to end on CPU: 2-rank FSDP training, SIGKILL + resume, torn saves, /metrics.

One uninterrupted 2-rank run is the reference; every other run must reproduce its per-iteration
losses exactly (to 1e-5) after resuming, which needs the data order, crops, RNG, optimizer and BN
statistics all to come back from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from seer.train import checkpoint
from tests.pretrain_runs import env, events, losses, make_shards, process_tree, records, run, run_args

pytestmark = pytest.mark.slow

ITERATIONS = 12
RUN_ARGS = run_args(ITERATIONS)


def _torchrun(output: Path, data: Path, *extra: str) -> list[str]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "seer", "pretrain", *RUN_ARGS, *extra,
            "--data", str(data), "--output", str(output)]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank run."""
    output = tmp_path_factory.mktemp("reference") / "out"
    run(_torchrun(output, shards))
    return output


def test_two_rank_training_shards_the_model_and_lowers_the_loss(reference: Path) -> None:
    loss = losses(reference)
    assert sorted(loss) == list(range(1, ITERATIONS + 1))
    assert max(loss[i] for i in range(ITERATIONS - 2, ITERATIONS + 1)) < loss[1] - 0.2

    (start,) = events(reference, "start")
    assert start["world_size"] == 2 and start["device"] == "cpu"
    shards = {s["rank"]: s for s in start["shards"]}
    total = shards[0]["global_params"]
    assert shards[0]["local_params"] + shards[1]["local_params"] == total
    assert all(abs(s["local_params"] / total - 0.5) < 0.01 for s in shards.values())

    summary = json.loads((reference / "summary.json").read_text())
    assert (
        summary["iterations"] == ITERATIONS and summary["world_size"] == 2 and summary["global_batch"] == 16
    )
    assert summary["final_loss"] == pytest.approx(loss[ITERATIONS])
    assert summary["images_per_second"] > 0 and summary["wall_time_seconds"] > 0
    kept = [str(reference / "checkpoints" / f"iter-{i:08d}") for i in (9, 12)]  # keep_last=2
    assert summary["checkpoints"] == kept
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["iter-00000009", "iter-00000012"]
    marker = checkpoint.read_marker(kept[-1])
    assert marker["iteration"] == ITERATIONS and marker["world_size"] == 2 and marker["preset"] == "rg-tiny"


def test_sigkill_then_rerun_resumes_and_matches_the_uninterrupted_run(
    shards: Path, reference: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    cmd = _torchrun(output, shards)
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = output / "checkpoints" / "iter-00000003" / checkpoint.MARKER
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in process_tree(proc.pid):  # torchrun and its workers (own sessions), as when a pod dies
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (output / "summary.json").exists(), "the run must die mid-training"
    killed_at = checkpoint.latest_complete(str(output)).iteration

    run(cmd)
    (resume,) = events(output, "resume")
    assert resume["iteration"] == killed_at >= 3
    expected, got = losses(reference), losses(output)
    assert sorted(got) == list(range(1, ITERATIONS + 1))
    for i in range(killed_at + 1, ITERATIONS + 1):
        assert got[i] == pytest.approx(expected[i], abs=1e-5), f"iteration {i}"


def test_a_save_killed_midway_is_ignored_and_the_previous_checkpoint_used(
    shards: Path, reference: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    torn = output / "checkpoints" / "iter-00000012"  # simulate a kill during the final save:
    (torn / checkpoint.MARKER).unlink()  # no marker, and a data file cut short
    data_file = next(torn.glob("*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    # The previous checkpoint's marker points at the ones that exist (the copy kept 9 and 12).
    run(_torchrun(output, shards))
    resumes = events(output, "resume")
    assert resumes[-1]["iteration"] == 9
    assert checkpoint.latest_complete(str(output)).iteration == ITERATIONS
    expected, got = losses(reference), losses(output)
    for i in (10, 11, 12):
        assert got[i] == pytest.approx(expected[i], abs=1e-5)


def test_object_storage_output_checkpoints_resumes_and_summarises(shards: Path, s3_bucket: str) -> None:
    from seer import storage

    output = f"s3://{s3_bucket}/runs/tiny"
    cmd = [sys.executable, "-m", "seer", "pretrain", *RUN_ARGS, "--set", "train.checkpoint_every=2",
           "--data", str(shards), "--output", output]  # fmt: skip
    run([*cmd, "--set", "train.iterations=4"])
    run([*cmd, "--set", "train.iterations=6"])  # a longer run over the same output continues it
    assert [(c.iteration, c.complete) for c in checkpoint.list_checkpoints(output)] == [(4, True), (6, True)]
    log = records(output)
    assert [r["iteration"] for r in log if r["event"] == "resume"] == [4]
    assert [r["iteration"] for r in log if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    summary = storage.read_json(storage.join(output, "summary.json"))
    assert summary["iterations"] == 6 and summary["start_iteration"] == 4
    assert summary["checkpoints"] == [checkpoint.checkpoint_uri(output, i) for i in (4, 6)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_moves_during_a_run(shards: Path, tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "seer", "pretrain", *RUN_ARGS, "--set", "train.iterations=200",
           "--set", f"train.metrics_port={port}", "--data", str(shards), "--output", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    scrapes: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            values = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("seer_train_")
            }
            if values.get("seer_train_iteration", 0) >= 1:
                scrapes.append(values)
            if len({s["seer_train_iteration"] for s in scrapes}) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        stderr = proc.communicate()[1].decode()
    assert len({s["seer_train_iteration"] for s in scrapes}) >= 3, stderr[-3000:]
    first, last = scrapes[0], scrapes[-1]
    assert last["seer_train_iteration"] > first["seer_train_iteration"]
    assert last["seer_train_images_total"] > first["seer_train_images_total"]
    assert last["seer_train_images_per_second"] > 0 and last["seer_train_step_seconds"] > 0
    assert last["seer_train_learning_rate"] > 0 and last["seer_train_loss"] > 0
    assert "seer_train_data_wait_seconds" in last and "seer_train_gpu_memory_bytes" in last
    assert "seer_train_checkpoint_seconds" in last
