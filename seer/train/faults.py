"""Surviving faults: SIGTERM → save and exit resumable, a fault budget, and the run's fault history.

Preemption (a pod deleted or a node drained) sends SIGTERM. `PreemptionWatch` only notes it; after
every step all ranks agree by a collective (`stop_agreed`, a MAX all-reduce of "got SIGTERM"), so a
signal that reached one rank stops every rank after the same step. The trainer then writes a
checkpoint at that iteration within `train.grace_seconds` of the signal (`SaveBudget`; a save that
cannot finish in time is abandoned without its completion marker, so it never looks complete) and
exits with `RESUMABLE_EXIT_CODE`.

Exit codes, as the Kubeflow Training Operator v1 reads them under `restartPolicy: ExitCode`
(`IsRetryableExitCode`: 128-255 retryable, the pod is recreated; 1-127 permanent, the job fails):

- `RESUMABLE_EXIT_CODE` (200): stopped on request or by an infrastructure fault; resume from the
  newest complete checkpoint. 200 is above 128 + the highest signal number, so it is never confused
  with "killed by signal N" (128 + N).
- 2: a `SeerError` (bad config, bad data, diverged loss, fault budget spent): retrying cannot help.

The fault history comes from `train_log.jsonl`: every `start` after the first is a restart; a restart
whose previous attempt did not end with `end` or `preempted` is a fault. More than `train.max_faults`
faults stops the run with a permanent error (the operator does not count recreated pods against
`backoffLimit` under ExitCode, kubeflow/trainer#2045, so the trainer keeps the bound itself).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from seer import storage
from seer.errors import SeerError, StorageError
from seer.metrics import JsonlLog, TrainMetrics, read_jsonl
from seer.train import checkpoint

log = logging.getLogger(__name__)

RESUMABLE_EXIT_CODE = 200
PERMANENT_EXIT_CODE = 2  # what `seer` returns for a SeerError
RETRYABLE_EXIT_CODES = range(128, 256)  # training-operator v1 `IsRetryableExitCode`: exitCode >= 128


class Preempted(SeerError):
    """The run stopped on SIGTERM after saving (or abandoning) a checkpoint; rerun it to resume."""

    def __init__(self, iteration: int, checkpoint_uri: str | None) -> None:
        where = f"checkpoint {checkpoint_uri}" if checkpoint_uri else "the previous complete checkpoint"
        super().__init__(f"stopped by SIGTERM at iteration {iteration}; a rerun resumes from {where}")
        self.iteration, self.checkpoint_uri = iteration, checkpoint_uri


def exit_code(command: str, run: Callable[[], object]) -> int:
    """The exit code of a training command (`seer pretrain`, `seer finetune`): 0 when `run` finishes;
    a `Preempted` stop is not an error: report it on stderr and return RESUMABLE_EXIT_CODE, so that
    torchrun / the job's restart policy restart the process, which resumes."""
    try:
        run()
    except Preempted as stop:
        print(f"seer {command}: {stop} (exit {RESUMABLE_EXIT_CODE})", file=sys.stderr)
        return RESUMABLE_EXIT_CODE
    return 0


class FaultBudgetExceeded(SeerError):
    """The run failed more often than `train.max_faults` allows."""


class PreemptionWatch:
    """Notes SIGTERM (never acts in the handler); `stop_agreed()` is the collective decision."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.received_at: float | None = None
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()

    def stop_agreed(self) -> bool:
        """Collective: True on every rank when any rank got SIGTERM."""
        flag = torch.tensor([1.0 if self.received_at is not None else 0.0], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
        if stop and self.received_at is None:  # another rank was signalled: our budget starts now
            self.received_at = time.monotonic()
        return stop

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@dataclass(frozen=True)
class SaveBudget:
    """The time left for a preemption save, agreed by all ranks, and whether the save fits in it."""

    deadline: float  # time.monotonic() by which the marker must be written
    expected_seconds: float | None  # the slowest rank's last save duration, if any

    @classmethod
    def agree(
        cls, received_at: float, grace_seconds: float, last_save_seconds: float | None, device: torch.device
    ) -> SaveBudget:
        """Collective: the least time left over the ranks (each counts from its own SIGTERM) and the
        slowest rank's last save, so every rank takes the same decision."""
        left = received_at + grace_seconds - time.monotonic()
        values = torch.tensor([left, -(last_save_seconds or 0.0)], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(values, op=dist.ReduceOp.MIN)
        left, slowest = float(values[0].item()), -float(values[1].item())
        return cls(time.monotonic() + left, slowest if last_save_seconds is not None else None)

    def fits(self) -> bool:
        """False when the time is up, or the last save took longer than what is left."""
        left = self.deadline - time.monotonic()
        return left > 0 and (self.expected_seconds is None or self.expected_seconds < left)


@dataclass
class FaultHistory:
    """What `train_log.jsonl` says about earlier attempts of this run (totals over the whole run)."""

    restarts: int = 0
    faults: int = 0
    preemption_saves: int = 0
    failed_saves: int = 0
    time_lost_seconds: float = 0.0
    time_lost_now: float = 0.0  # this attempt's share of time_lost_seconds
    last_event: str | None = None

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> FaultHistory:
        history, previous = cls(), None
        for record in records:
            event = record.get("event")
            if event == "start":
                if previous is not None:
                    history.restarts += 1
                    history.faults += previous not in ("end", "preempted")
            elif event == "preempted" and record.get("checkpoint"):
                history.preemption_saves += 1
            elif event == "checkpoint_failed":
                history.failed_saves += 1
            elif event == "resume":
                history.time_lost_seconds += float(record.get("time_lost_seconds") or 0.0)
            previous = event
        history.last_event = previous
        return history

    def check_budget(self, max_faults: int) -> None:
        if self.faults > max_faults:
            raise FaultBudgetExceeded(
                f"the run has failed {self.faults} times (train.max_faults={max_faults}); read the logs of "
                "the last failed attempt, fix the cause, then raise train.max_faults to continue"
            )


def load_history(log_uri: str, is_main: bool, resumed_iteration: int | None) -> FaultHistory:
    """Collective: rank 0 reads the run's log before this attempt writes to it, counts this attempt
    (a restart when the log has earlier attempts) and, when it resumed, the time lost since the
    resumed checkpoint was saved; every rank gets the result."""
    box: list[Any] = [None]
    if is_main:
        records = read_jsonl(log_uri) if storage.exists(log_uri) else []
        history = FaultHistory.from_records([*records, {"event": "start"}])
        saved = [
            r["time"]
            for r in records
            if r.get("event") == "checkpoint" and r.get("iteration") == resumed_iteration
        ]
        if resumed_iteration is not None and saved:
            history.time_lost_now = max(0.0, time.time() - saved[-1])
            history.time_lost_seconds += history.time_lost_now
        box[0] = history
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def start_attempt(trainer: Any, metrics: TrainMetrics, log_uri: str) -> FaultHistory:
    """Collective, at the start of `Trainer.run`: the fault history, the fault budget, the totals in /metrics."""
    resumed = trainer.iteration if trainer.resumed_from else None
    history = load_history(log_uri, trainer.env.is_main, resumed)
    history.check_budget(trainer.cfg.train.max_faults)
    metrics.record_faults(
        history.restarts,
        history.faults,
        history.preemption_saves,
        history.failed_saves,
        history.time_lost_seconds,
    )
    if history.restarts:
        log.warning(
            "restart %d of this run (%d after failures, train.max_faults=%d)%s",
            history.restarts,
            history.faults,
            trainer.cfg.train.max_faults,
            f"; {history.time_lost_now:.0f} s lost since the resumed checkpoint"
            if resumed is not None
            else "",
        )
    return history


def flush_log(jlog: JsonlLog | None) -> None:
    """Upload the log if possible; an unreachable object store only delays it to the next flush."""
    if jlog is None:
        return
    try:
        jlog.flush()
    except StorageError as err:
        log.warning("could not upload %s (%s); it is uploaded at the next checkpoint", jlog.uri, err)


def record_failed_save(err: Exception, iteration: int, metrics: TrainMetrics, jlog: JsonlLog | None) -> None:
    """A save failed on every rank: count it, log it; training goes on and the next save retries."""
    log.warning("checkpoint at iteration %d failed, training goes on: %s", iteration, err)
    metrics.failed_saves.inc()
    if jlog is not None:
        jlog.write("checkpoint_failed", iteration=iteration, error=str(err))
        flush_log(jlog)


def preempt(trainer: Any, metrics: TrainMetrics, jlog: JsonlLog | None, watch: PreemptionWatch) -> Preempted:
    """Collective, after the step in flight when SIGTERM reached any rank: save at this iteration
    within the grace budget (unless saved already, or the last save shows it cannot fit), log it,
    and return the `Preempted` to raise."""
    cfg = trainer.cfg.train
    uri: str | None = checkpoint.checkpoint_uri(trainer.output, trainer.iteration)
    if uri not in trainer.checkpoints:
        budget = SaveBudget.agree(
            watch.received_at, cfg.grace_seconds, trainer.last_save_seconds, trainer.env.device
        )
        if budget.fits():
            uri = trainer.save(metrics, jlog, deadline=budget.deadline)
        else:
            log.warning(
                "SIGTERM: no checkpoint at iteration %d; the last save took %.0f s and %.0f s of "
                "train.grace_seconds are left (resuming from the previous checkpoint)",
                trainer.iteration,
                budget.expected_seconds or 0.0,
                max(0.0, budget.deadline - time.monotonic()),
            )
            uri = None
    if uri is not None:
        metrics.preemption_saves.inc()
    if jlog is not None:
        jlog.write(
            "preempted",
            iteration=trainer.iteration,
            checkpoint=uri,
            seconds_after_signal=round(time.monotonic() - (watch.received_at or time.monotonic()), 3),
        )
        flush_log(jlog)
    return Preempted(trainer.iteration, uri)


def group_exit_code(worker_exit_codes: list[int]) -> int:
    """One exit code for a failed worker group, as the operator should read it.

    Retryable (`RESUMABLE_EXIT_CODE`) when any worker exited resumable or was killed by a signal
    (negative code from torchrun, e.g. SIGKILL by the OOM killer or a lost node): the other workers'
    errors are then consequences. Otherwise the first worker's own code (1-127: permanent).
    """
    if any(code == RESUMABLE_EXIT_CODE or code < 0 or code >= 128 for code in worker_exit_codes):
        return RESUMABLE_EXIT_CODE
    first = next((code for code in worker_exit_codes if code > 0), 1)
    return first if first < 128 else RESUMABLE_EXIT_CODE
