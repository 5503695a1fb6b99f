"""The SwAV pretraining loop: one small function per concern, the same code on 1 process or 496 GPUs.

`run_pretraining(cfg, output_uri, data_uri)` joins the torchrun job (or starts a 1-process group),
builds the model on the meta device and shards it (`seer.train.parallel`), resumes from the newest
complete checkpoint under `output_uri` (`seer.train.checkpoint`), then trains:

    batch ← ShardLoader (deterministic order and crops; position saved in checkpoints)
    LR ← schedule(iteration); loss ← SwAV(model(crops)); backward
    prototypes frozen for the first `swav.freeze_prototypes_iters`; LARC + SGD step
    prototypes L2-normalised; metrics / log / checkpoint

The loop is task-agnostic: a `Task` builds the step (model, optimizer, schedule, loss and one
optimizer step) and the loader; `SWAV` is pretraining, `seer.finetune` supplies fine-tuning.

Outputs under `output_uri`: `checkpoints/iter-<N>/` (see `seer.train.checkpoint`),
`train_log.jsonl` (`seer.train.monitor`; rank 0: `start`, `resume`, `step`, `checkpoint`, `end` events) and
`summary.json` (written at the end). Rank 0 of each node serves Prometheus `/metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.profiler import record_function

from seer import storage
from seer.config import SeerConfig, config_to_dict, validate
from seer.data.padded import PaddedCrops
from seer.data.stream import ShardLoader, ShardStream, build_loader
from seer.data.transforms import MultiCropTransform
from seer.errors import ConfigError
from seer.metrics import JsonlLog, TrainMetrics
from seer.ssl.optim import LRSchedule, build_optimizer
from seer.ssl.swav import PrototypeFreezer, SwAVLoss, normalize_prototypes_
from seer.train import checkpoint, faults
from seer.train.monitor import LOG_NAME, StepReporter
from seer.train.parallel import (
    DistEnv,
    LossScaler,
    ParallelInfo,
    build_model,
    init_distributed,
    parallelize,
)

log = logging.getLogger(__name__)


SUMMARY_NAME = "summary.json"
# Profiler labels of a step's phases (bench/train_step.py --profile attributes time to them).
PHASES = ("step.forward", "step.loss", "step.backward", "step.optimizer", "step.prototypes")


def manifest_uri(data_uri: str) -> str:
    """`data_uri` itself when it names a .json manifest, else `<data_uri>/manifest.json`."""
    return data_uri if data_uri.endswith(".json") else storage.join(data_uri, "manifest.json")


def build_data(cfg: SeerConfig, data_uri: str, env: DistEnv) -> ShardLoader:
    """This rank's loader: deterministic order (seed, epoch) and crops (seed, epoch, sample key)."""
    transform = MultiCropTransform(
        cfg.data.crops,
        seed=cfg.train.seed,
        jitter_strength=cfg.data.jitter_strength,
        blur_p=cfg.data.blur_p,
    )
    stream = ShardStream(
        manifest_uri(data_uri),
        transform,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.train.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )
    return build_loader(
        stream,
        cfg.train.batch_per_gpu,
        cfg.data.num_workers,
        persistent_workers=True,
        pin_memory=env.device.type == "cuda",
        pad=cfg.data.padded_single_pass,
    )


class SwAVStep:
    """Model, optimizer, LR schedule and loss of a run, and `__call__`: one SwAV optimizer step.

    The model is built on the meta device and sharded (`parallelize`); `bench/train_step.py`
    times exactly this step.
    """

    def __init__(self, cfg: SeerConfig, env: DistEnv) -> None:
        self.cfg, self.env = cfg, env
        self.global_batch = cfg.train.batch_per_gpu * env.world_size
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: autotune the (grouped) convs once
        self.model, self.info = parallelize(build_model(cfg), cfg, env)
        if cfg.swav.normalize_prototypes:  # unit rows from the start, as after every update
            normalize_prototypes_(self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        per_node = cfg.train.batch_per_gpu * int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        self.schedule = LRSchedule.from_config(cfg.optim, self.global_batch, cfg.train.iterations, per_node)
        num_crops = sum(c.count for c in cfg.data.crops)
        self.loss_fn = SwAVLoss.from_config(cfg.swav, num_crops, self.model.head.embedding_dim).to(env.device)
        self.freezer = PrototypeFreezer(cfg.swav.freeze_prototypes_iters)
        # fp16 (SEER's precision) needs a loss scale; bf16 and fp32 do not
        self.scaler = LossScaler(env.device) if self.info.param_dtype == "float16" else None

    def to_device(self, crops: list[Tensor] | PaddedCrops) -> list[Tensor] | PaddedCrops:
        """Crops on this rank's device, channels-last when the run uses it."""
        dev = self.env.device
        fmt = torch.channels_last if self.info.channels_last else torch.contiguous_format
        if isinstance(crops, PaddedCrops):
            moved = crops.to(dev, non_blocking=True)
            return dataclasses.replace(moved, tensor=moved.tensor.contiguous(memory_format=fmt))
        return [c.to(dev, non_blocking=True).contiguous(memory_format=fmt) for c in crops]

    def __call__(self, crops: list[Tensor] | PaddedCrops, iteration: int) -> tuple[Tensor, float]:
        """Train on one batch as iteration `iteration` (0-based); returns (local loss, learning rate)."""
        lr = self.schedule.apply(self.optimizer, iteration)
        crops = self.to_device(crops)
        with record_function(PHASES[0]):
            if isinstance(crops, PaddedCrops):
                embedding, scores = self.model.padded_forward(crops)
            else:
                embedding, scores = self.model(crops)
        with record_function(PHASES[1]):
            prototypes = None
            if self.loss_fn.queue_length > 0:  # queued embeddings are scored with the current prototypes
                prototypes = [_full(p.weight) for p in self.model.head.prototypes]
            loss = self.loss_fn(embedding, scores, iteration, prototypes)
        with record_function(PHASES[2]):
            (loss if self.scaler is None else self.scaler.scaled(loss)).backward()
        with record_function(PHASES[3]):
            self.freezer(self.model, iteration)
            if self.scaler is None or self.scaler.unscale_(self.model.parameters()):
                self.optimizer.step()  # skipped when fp16 gradients overflowed (the scale was halved)
            self.optimizer.zero_grad(set_to_none=True)
        with record_function(PHASES[4]):
            if self.cfg.swav.normalize_prototypes:
                normalize_prototypes_(self.model)
        return loss.detach(), lr


class Task(Protocol):
    """What a training run is about; the loop, sharding, checkpoints, faults and metrics are shared.

    `cfg` has at least `model.preset` and `train` (a `TrainConfig`). The step has `model`, `optimizer`,
    `info`, `global_batch`, `schedule` (a dataclass), `scaler` (a `LossScaler` under fp16, else None),
    `loss_fn` (a module with `stats`, a dict of per-step tensors, and a state dict saved per rank) and
    `__call__(batch, iteration) -> (loss, lr)`.
    The loader yields `(batch, keys)` and has `state_dict()` / `load_state_dict()`.
    """

    def validate(self, cfg: Any, world_size: int) -> None: ...

    def build_step(self, cfg: Any, env: DistEnv) -> Any: ...

    def build_loader(self, cfg: Any, data_uri: str, env: DistEnv) -> Any: ...


class SwAVTask:
    """SwAV pretraining on tar shards."""

    def validate(self, cfg: SeerConfig, world_size: int) -> None:
        validate(cfg, world_size=world_size)

    def build_step(self, cfg: SeerConfig, env: DistEnv) -> SwAVStep:
        return SwAVStep(cfg, env)

    def build_loader(self, cfg: SeerConfig, data_uri: str, env: DistEnv) -> ShardLoader:
        return build_data(cfg, data_uri, env)


SWAV = SwAVTask()


class Trainer:
    """State of one training run on this rank; `run()` trains to `cfg.train.iterations`."""

    def __init__(
        self, cfg: SeerConfig, output_uri: str, data_uri: str, env: DistEnv, task: Task = SWAV
    ) -> None:
        self.cfg, self.output, self.env = cfg, output_uri.rstrip("/"), env
        torch.manual_seed(cfg.train.seed + env.rank)
        self.step = task.build_step(cfg, env)
        self.global_batch = self.step.global_batch
        self.model, self.optimizer, self.loss_fn, self.info = (
            self.step.model,
            self.step.optimizer,
            self.step.loss_fn,
            self.step.info,
        )
        self.loader = task.build_loader(cfg, data_uri, env)
        self.iteration = 0
        self.resumed_from: str | None = None
        self.checkpoints: list[str] = []
        self.last_save_seconds: float | None = None

    # ---- state ------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest complete checkpoint, if any (interrupted saves are deleted first)."""
        if self.env.is_main:
            for uri in checkpoint.remove_incomplete(self.output):
                log.warning("deleted interrupted checkpoint %s", uri)
        dist.barrier()
        ref = checkpoint.latest_verified(self.output)  # skips a newest one that fails its checksums
        if ref is None:
            return
        marker = checkpoint.read_marker(ref.uri)
        if marker.get("preset") != self.cfg.model.preset:
            raise ConfigError(
                f"{ref.uri} holds a {marker.get('preset')!r} model but the config trains "
                f"{self.cfg.model.preset!r}: use another --output, or the matching config"
            )
        restored = checkpoint.load(ref.uri, self.model, self.optimizer)
        self.iteration = restored.iteration
        if restored.rank_state is not None:
            self.loader.load_state_dict(restored.rank_state["loader"])
            self.loss_fn.load_state_dict(restored.rank_state["swav_queue"])
            checkpoint.set_rng_state(restored.rank_state["rng"])
            if self.step.scaler is not None and "loss_scale" in restored.rank_state:
                self.step.scaler.load_state_dict(restored.rank_state["loss_scale"])
        else:
            log.warning(
                "%s was saved by %s ranks, not %s: the data order restarts at this epoch's beginning",
                ref.uri,
                marker.get("world_size"),
                self.env.world_size,
            )
        self.resumed_from = ref.uri

    def save(self, metrics: TrainMetrics, jlog: JsonlLog | None, deadline: float | None = None) -> str | None:
        """Checkpoint this iteration; None (counted and logged) when storage stayed unreachable."""
        start = time.perf_counter()
        try:
            uri = self._save(deadline)
        except checkpoint.SaveFailed as err:
            faults.record_failed_save(err, self.iteration, metrics, jlog)
            return None
        seconds = self.last_save_seconds = time.perf_counter() - start
        metrics.record_checkpoint(seconds)
        self.checkpoints = [*self.checkpoints, uri][-self.cfg.train.keep_last :]
        if jlog is not None:
            jlog.write("checkpoint", iteration=self.iteration, uri=uri, seconds=round(seconds, 3))
            faults.flush_log(jlog)
        return uri

    def _save(self, deadline: float | None) -> str:
        return checkpoint.save(
            self.output,
            self.iteration,
            self.model,
            self.optimizer,
            scheduler=dataclasses.asdict(self.step.schedule),
            rank_state={
                "loader": self.loader.state_dict(),
                "swav_queue": self.loss_fn.state_dict(),
                "rng": checkpoint.rng_state(),
                **({} if self.step.scaler is None else {"loss_scale": self.step.scaler.state_dict()}),
            },
            marker={"preset": self.cfg.model.preset, "config": config_to_dict(self.cfg)},
            keep_last=self.cfg.train.keep_last,
            retry_seconds=self.cfg.train.save_retry_seconds,
            deadline=deadline,
        )

    def _global_mean(self, value: Tensor) -> float:
        value = value.float().clone()
        dist.all_reduce(value)
        return value.item() / self.env.world_size

    # ---- loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        total = cfg.train.iterations
        reporter = StepReporter(
            self.output, rank=env.rank, local_rank=env.local_rank, world_size=env.world_size,
            device=env.device, metrics_port=cfg.train.metrics_port, log_every=cfg.train.log_every,
            total=total, initial=self.iteration, global_batch=self.global_batch,
        )  # fmt: skip
        history = faults.start_attempt(self, reporter.metrics, storage.join(self.output, LOG_NAME))
        watch = faults.PreemptionWatch(env.device)
        shards = [None] * env.world_size
        dist.all_gather_object(shards, {"rank": env.rank, **_shard_counts(self.info)})
        wall0 = time.perf_counter()
        start_iteration = self.iteration
        if reporter.jlog is not None:
            reporter.jlog.write(
                "start",
                preset=cfg.model.preset,
                world_size=env.world_size,
                device=env.device.type,
                iteration=self.iteration,
                iterations=total,
                global_batch=self.global_batch,
                parallel=dataclasses.asdict(self.info),
                shards=shards,
            )
            if self.resumed_from:
                reporter.jlog.write(
                    "resume",
                    iteration=self.iteration,
                    checkpoint=self.resumed_from,
                    time_lost_seconds=round(history.time_lost_now, 3),
                )
            reporter.jlog.flush()
        try:
            batches = iter(self.loader)
            while self.iteration < total:
                t0 = time.perf_counter()
                try:
                    crops, _keys = next(batches)
                except StopIteration:
                    batches = iter(self.loader)  # next epoch
                    continue
                data_wait = time.perf_counter() - t0
                loss, lr = self.step(crops, self.iteration)
                self.iteration += 1
                reporter.step(self.iteration, t0, data_wait, loss, lr, self.loss_fn.stats)
                if self.iteration % cfg.train.checkpoint_every == 0 or self.iteration == total:
                    self.save(reporter.metrics, reporter.jlog)
                if self.iteration < total and watch.stop_agreed():  # SIGTERM reached some rank
                    raise faults.preempt(self, reporter.metrics, reporter.jlog, watch)
            summary = self._summary(start_iteration, reporter, time.perf_counter() - wall0, shards)
            if reporter.jlog is not None:
                reporter.jlog.write("end", **{k: v for k, v in summary.items() if k != "config"})
                storage.write_json(storage.join(self.output, SUMMARY_NAME), summary)
            return summary
        finally:
            watch.close()
            reporter.close()

    def _summary(self, start: int, reporter: StepReporter, wall: float, shards: list) -> dict[str, Any]:
        final_loss, images_per_s = reporter.last_loss, reporter.images_per_s
        steady = images_per_s[1:] or images_per_s  # the first step includes warm-up
        if self.env.is_main:  # what exists, including checkpoints of runs before a restart
            self.checkpoints = [c.uri for c in checkpoint.list_checkpoints(self.output) if c.complete]
        return {
            "preset": self.cfg.model.preset,
            "iterations": self.iteration,
            "start_iteration": start,
            "resumed_from": self.resumed_from,
            "final_loss": final_loss if math.isfinite(final_loss) else None,
            **{f"final_{name}": value for name, value in reporter.collapse.items()},
            "images_per_second": sum(steady) / len(steady) if steady else None,
            "wall_time_seconds": round(wall, 3),
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "checkpoints": self.checkpoints,
            "parallel": dataclasses.asdict(self.info),
            "shards": shards,
            "config": config_to_dict(self.cfg),
        }


def _shard_counts(info: ParallelInfo) -> dict[str, int]:
    return {"local_params": info.local_params, "global_params": info.global_params}


def _full(weight: Tensor) -> Tensor:
    """The whole tensor of a (possibly sharded) parameter, detached."""
    weight = weight.detach()
    return weight.full_tensor() if isinstance(weight, DTensor) else weight


def run_pretraining(cfg: SeerConfig, output_uri: str, data_uri: str | None = None) -> dict[str, Any]:
    """Pretrain to `cfg.train.iterations`, resuming from `output_uri`'s newest complete checkpoint.

    Returns the run summary (also written to `<output_uri>/summary.json` by rank 0).
    """
    data_uri = data_uri or cfg.data.shards
    if not data_uri:
        raise ConfigError("no training data: pass --data URI (a `seer shard` output) or set data.shards")
    return run_training(cfg, output_uri, data_uri, SWAV)


def run_training(cfg: Any, output_uri: str, data_uri: str, task: Task) -> dict[str, Any]:
    """Join (or start) the process group, then train `task` to `cfg.train.iterations`, resuming from
    `output_uri`'s newest complete checkpoint; returns the run summary."""
    own_group = not dist.is_initialized()
    env = init_distributed()
    try:
        task.validate(cfg, env.world_size)
        if env.is_main:
            logging.basicConfig(
                level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
            )
        trainer = Trainer(cfg, output_uri, data_uri, env, task)
        trainer.resume()
        return trainer.run()
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
