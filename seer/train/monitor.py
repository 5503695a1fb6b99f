"""Per-step reporting of a pretraining run: loss check, Prometheus metrics, JSON log, progress bar and
collapse warnings, so that `Trainer.run` only trains.

At every `train.log_every`-th iteration (and the last) the loss and the collapse statistics
(`seer.ssl.collapse`: mean pairwise embedding cosine, code entropy / ln K) are averaged over ranks in
one all-reduce, checked (a non-finite loss stops the run), exported on `/metrics`, written to the JSON
log's `step` record and, when they cross a collapse threshold, logged as a warning (once per crossing).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from seer import storage
from seer.errors import SeerError
from seer.metrics import JsonlLog, TrainMetrics
from seer.ssl.collapse import collapse_warnings

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"


class TrainingError(SeerError):
    """Training diverged (the loss is not finite)."""


class StepReporter:
    """Metrics server (local rank 0), JSON log and progress bar (rank 0) of one run on this rank."""

    def __init__(
        self, output: str, *, rank: int, local_rank: int, world_size: int, device: torch.device,
        metrics_port: int, log_every: int, total: int, initial: int, global_batch: int,
    ) -> None:  # fmt: skip
        self.world_size, self.device = world_size, device
        self.log_every, self.total, self.global_batch = log_every, total, global_batch
        self.metrics = TrainMetrics(metrics_port if local_rank == 0 else 0)
        self.jlog = JsonlLog(storage.join(output, LOG_NAME)) if rank == 0 else None
        self.bar = tqdm(total=total, initial=initial, disable=None if rank == 0 else True, unit="it")
        self.images_per_s: list[float] = []
        self.last_loss = float("nan")
        self.collapse: dict[str, float] = {}
        self._collapsed = False

    def event(self, name: str, **fields: Any) -> None:
        """A record in the JSON log (rank 0 only), made visible at once."""
        if self.jlog is not None:
            self.jlog.write(name, **fields)
            self.jlog.flush()

    def step(
        self, iteration: int, t0: float, data_wait: float, loss: Tensor, lr: float, stats: dict[str, Tensor]
    ) -> None:
        """Report iteration `iteration` (1-based, just finished; started at `perf_counter()` `t0`)."""
        logging_step = iteration % self.log_every == 0 or iteration == self.total
        if logging_step:
            self._reduce(loss, stats)
            if not math.isfinite(self.last_loss):
                raise TrainingError(
                    f"the loss is {self.last_loss} at iteration {iteration}; lower optim.base_lr or "
                    "raise optim.warmup_iters, then rerun (it resumes from the last checkpoint)"
                )
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        step_s = time.perf_counter() - t0
        self.images_per_s.append(self.global_batch / step_s)
        mem = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        self.metrics.record_step(iteration, self.global_batch, step_s, data_wait, self.last_loss, lr, mem)
        self.bar.update(1)
        if not logging_step:
            return
        warnings = self._check_collapse(iteration)
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{lr:.3g}")
        if self.jlog is not None:
            self.jlog.write(
                "step",
                iteration=iteration,
                loss=self.last_loss,
                lr=lr,
                **self.collapse,
                **({"collapse_warnings": warnings} if warnings else {}),
                step_seconds=round(step_s, 4),
                data_wait_seconds=round(data_wait, 4),
                images_per_second=round(self.global_batch / step_s, 2),
                gpu_memory_bytes=mem,
            )

    def _reduce(self, loss: Tensor, stats: dict[str, Tensor]) -> None:
        """Mean over ranks of the loss and the collapse statistics, in one all-reduce."""
        names = sorted(stats)
        values = torch.stack([loss.detach().float().reshape(()), *(stats[n].float() for n in names)])
        dist.all_reduce(values)
        means = (values / self.world_size).tolist()
        self.last_loss = means[0]
        self.collapse = {n: round(v, 5) for n, v in zip(names, means[1:], strict=True)}

    def _check_collapse(self, iteration: int) -> list[str]:
        if not self.collapse:
            return []
        warnings = collapse_warnings(self.collapse["embedding_cosine"], self.collapse["code_entropy"])
        self.metrics.record_collapse(
            self.collapse["embedding_cosine"], self.collapse["code_entropy"], bool(warnings)
        )
        if warnings and not self._collapsed:
            log.warning("SwAV may be collapsing at iteration %d: %s", iteration, "; ".join(warnings))
        self._collapsed = bool(warnings)
        return warnings

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        if self.jlog is not None:
            self.jlog.close()
