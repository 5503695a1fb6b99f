"""A 2-rank run survives faults (CPU, gloo, real torchrun through `python -m seer.launch.elastic`).

Every faulted run must reproduce the per-iteration losses of one uninterrupted run (1e-5), which
holds only if the resumed checkpoint carries the model, optimizer, data position and RNG exactly.

What the tests rely on from upstream (read in the sources, not copied):

- torch.distributed.run / elastic agent (torch 2.14): a worker that exits non-zero or is killed marks
  the local worker group FAILED; the agent stops the other workers (SIGTERM, then SIGKILL after
  `--shutdown-timeout`), re-runs the c10d rendezvous (the store lives in the agent, so it survives
  worker restarts) and starts the group again while `--max-restarts` allows; after that it raises
  `ChildFailedError` with each worker's exit code (negative = killed by that signal), and torchrun
  itself exits 1. A SIGTERM to the agent is forwarded to the workers and re-raised as
  `SignalException` (exit 1 again), which is why the pod runs `seer.launch.elastic`.
- kubeflow training-operator v1.9 (`pkg/util/train/train_util.go` `IsRetryableExitCode`): under
  `restartPolicy: ExitCode` an exit code >= 128 recreates the pod, 1-127 fails the job.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seer.metrics import read_jsonl
from seer.train import checkpoint
from seer.train.faults import (
    RESUMABLE_EXIT_CODE,
    RETRYABLE_EXIT_CODES,
    FaultBudgetExceeded,
    FaultHistory,
    Preempted,
    exit_code,
    group_exit_code,
)
from tests.pretrain_runs import env, events, losses, make_shards, process_tree, records, run, run_args

ITERATIONS = 9
RUN_ARGS = run_args(ITERATIONS)


def _launch(output: str, data: Path, max_restarts: int = 0, *extra: str) -> list[str]:
    """The pod's command: torchrun (via seer.launch.elastic), c10d rendezvous, `seer pretrain`."""
    return [sys.executable, "-m", "seer.launch.elastic", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", str(max_restarts), "--monitor-interval", "0.5", "-m", "seer", "pretrain",
            *RUN_ARGS, *extra, "--data", str(data), "--output", output]  # fmt: skip


def _assert_losses_match(output: str, reference: str) -> None:
    expected, got = losses(reference), losses(output)
    assert sorted(got) == list(range(1, ITERATIONS + 1))
    for i in got:
        assert got[i] == pytest.approx(expected[i], abs=1e-5), f"iteration {i}"


def _worker_pid(root: int, rank: int) -> int | None:
    """The pid of the worker with RANK=`rank` under process `root` (torchrun starts workers as children)."""
    for pid in process_tree(root)[1:]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _steps_logged(output: Path) -> int:
    log = output / "train_log.jsonl"
    if not log.exists():
        return 0
    return max((r["iteration"] for r in read_jsonl(str(log)) if r["event"] == "step"), default=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An uninterrupted 2-rank run."""
    output = str(tmp_path_factory.mktemp("reference") / "out")
    run(_launch(output, shards))
    return output


def test_exit_codes_are_what_the_operator_retries() -> None:
    """training-operator v1 IsRetryableExitCode: exitCode >= 128 restarts the pod, 1-127 fails the job."""
    assert RESUMABLE_EXIT_CODE in RETRYABLE_EXIT_CODES and RESUMABLE_EXIT_CODE > 128 + 64  # not 128+signal
    assert group_exit_code([RESUMABLE_EXIT_CODE, RESUMABLE_EXIT_CODE]) == RESUMABLE_EXIT_CODE
    assert (
        group_exit_code([-signal.SIGKILL, 1]) == RESUMABLE_EXIT_CODE
    )  # a lost rank; its peer's error follows
    assert group_exit_code([2, 2]) == 2  # a SeerError (bad config) on every rank: permanent
    assert group_exit_code([1]) == 1


def test_a_preempted_training_command_exits_resumable_and_others_pass_through(capsys) -> None:
    """`seer pretrain` / `seer finetune` turn a Preempted stop into RESUMABLE_EXIT_CODE (with a line on
    stderr), a finished run into 0; any other error is not theirs to hide."""

    def preempted() -> None:
        raise Preempted(7, "s3://b/run/checkpoints/iter-00000007")

    def over_budget() -> None:
        raise FaultBudgetExceeded("failed 3 times")

    assert exit_code("pretrain", preempted) == RESUMABLE_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("seer pretrain: stopped by SIGTERM at iteration 7") and "(exit 200)" in err
    assert exit_code("finetune", lambda: None) == 0 and capsys.readouterr().err == ""
    with pytest.raises(FaultBudgetExceeded):
        exit_code("finetune", over_budget)


def test_fault_history_counts_restarts_and_faults_from_the_log() -> None:
    events = ["start", "step", "checkpoint", "step",  # killed: a fault
              "start", "resume", "checkpoint", "preempted",  # SIGTERM: a restart, not a fault
              "start", "resume", "checkpoint_failed", "end", "start"]  # fmt: skip
    records = [{"event": e, "checkpoint": "x"} if e == "preempted" else {"event": e} for e in events]
    records[5]["time_lost_seconds"] = 12.5
    history = FaultHistory.from_records(records)
    assert (history.restarts, history.faults, history.preemption_saves, history.failed_saves) == (3, 1, 1, 1)
    assert history.time_lost_seconds == 12.5
    history.check_budget(1)
    with pytest.raises(Exception, match=r"failed 1 times \(train.max_faults=0\).*raise train.max_faults"):
        history.check_budget(0)


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_that_iteration_and_exits_resumable(
    shards: Path, reference: str, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    cmd = _launch(str(output), shards)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _steps_logged(output) >= 4, proc, "iteration 4")
        os.kill(_worker_pid(proc.pid, 1), signal.SIGTERM)  # rank 1 only; rank 0 learns it by the collective
        stderr = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == RESUMABLE_EXIT_CODE, stderr[-3000:]
    (stop,) = events(str(output), "preempted")
    at = stop["iteration"]
    assert 4 <= at < ITERATIONS and stop["checkpoint"] == checkpoint.checkpoint_uri(str(output), at)
    assert checkpoint.latest_complete(str(output)).iteration == at  # saved at the iteration it stopped
    assert _steps_logged(output) == at  # nothing trained after the agreed stop

    run(cmd)
    (resume,) = events(str(output), "resume")
    assert resume["iteration"] == at  # no step repeated
    _assert_losses_match(str(output), reference)


@pytest.mark.slow
def test_sigterm_to_the_agent_is_forwarded_and_the_pod_exits_resumable(shards: Path, tmp_path: Path) -> None:
    """The kubelet's SIGTERM reaches the container's PID 1 (the launcher): the agent forwards it to every
    worker and waits up to --shutdown-timeout; the workers save and exit; the pod exits retryable."""
    output = tmp_path / "out"
    cmd = _launch(str(output), shards)
    cmd.insert(cmd.index("--max-restarts"), "--shutdown-timeout=60")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _steps_logged(output) >= 4, proc, "iteration 4")
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == RESUMABLE_EXIT_CODE, stderr[-3000:]
    (stop,) = events(str(output), "preempted")
    assert stop["checkpoint"] == checkpoint.checkpoint_uri(str(output), stop["iteration"])
    assert checkpoint.latest_complete(str(output)).iteration == stop["iteration"] == _steps_logged(output)


def test_fault_counters_are_served_on_metrics() -> None:
    from prometheus_client import generate_latest

    from seer.metrics import TrainMetrics

    metrics = TrainMetrics(0)
    metrics.record_faults(restarts=3, faults=1, preemption_saves=2, failed_saves=1, time_lost_s=42.5)
    metrics.failed_saves.inc()
    text = generate_latest(metrics.registry).decode()
    for line in ("seer_train_restarts_total 3.0", "seer_train_faults_total 1.0", "seer_train_failed_saves_total 2.0",
                 "seer_train_preemption_saves_total 2.0", "seer_train_time_lost_seconds_total 42.5"):  # fmt: skip
        assert line in text


@pytest.mark.slow
def test_sigkill_of_one_worker_restarts_the_group_which_resumes(
    shards: Path, reference: str, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    proc = subprocess.Popen(
        _launch(str(output), shards, 1),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _steps_logged(output) >= 4, proc, "iteration 4")
        os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)  # the worker, not the agent
        stderr = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]  # torchrun restarted the group once and it finished
    starts, (resume,) = events(str(output), "start"), events(str(output), "resume")
    assert len(starts) == 2 and resume["iteration"] in (3, 6) and resume["time_lost_seconds"] > 0
    history = FaultHistory.from_records(records(str(output)))
    assert (history.restarts, history.faults) == (1, 1)
    _assert_losses_match(str(output), reference)


@pytest.mark.slow
def test_object_store_outage_during_a_save_is_survived(
    shards: Path, reference: str, s3_server, s3_bucket: str
) -> None:
    """moto's S3 server stops while a checkpoint uploads and comes back seconds later."""
    output = f"s3://{s3_bucket}/runs/outage"
    cmd = _launch(output, shards, 0, "--set", "train.save_retry_seconds=2")
    proc = subprocess.Popen(
        cmd, env=env(SEER_S3_RETRY_SECONDS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:

        def uploading() -> bool:
            found = s3_server.client.list_objects(
                s3_bucket, prefix="runs/outage/checkpoints/", recursive=True
            )
            return any(True for _ in found)

        _wait_for(uploading, proc, "the first checkpoint upload")
        s3_server.stop()
        try:
            _wait_for(
                lambda: any("failed, training goes on" in line for line in lines), proc, "a failed save", 120
            )
            time.sleep(2)
        finally:
            s3_server.start()
        proc.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines)[-3000:]
    failed = events(output, "checkpoint_failed")
    assert len(failed) >= 1 and "was not saved" in failed[0]["error"]
    refs = checkpoint.list_checkpoints(output)
    assert refs and all(ref.complete for ref in refs)  # the failed save was never marked, and is gone
    assert refs[-1].iteration == ITERATIONS and failed[0]["iteration"] not in [r.iteration for r in refs]
    _assert_losses_match(output, reference)


@pytest.mark.slow
def test_a_corrupted_newest_checkpoint_is_skipped_on_resume(
    shards: Path, reference: str, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    newest = output / "checkpoints" / f"iter-{ITERATIONS:08d}"
    data = sorted(newest.glob("*.distcp"))[0]
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped byte
    data.write_bytes(bytes(blob))
    done = run(_launch(str(output), shards))
    assert f"checkpoint {newest} is corrupt (1 file(s) fail their checksum: {data.name})" in done.stderr
    assert events(str(output), "resume")[-1]["iteration"] == ITERATIONS - 3
    _assert_losses_match(str(output), reference)
