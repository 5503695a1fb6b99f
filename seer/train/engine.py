"""The SwAV pretraining loop: one small function per concern, the same code on 1 process or 496 GPUs.

`run_pretraining(cfg, output_uri, data_uri)` joins the torchrun job (or starts a 1-process group),
builds the model on the meta device and shards it (`seer.train.parallel`), resumes from the newest
complete checkpoint under `output_uri` (`seer.train.checkpoint`), then trains:

    batch ← ShardLoader (deterministic order and crops; position saved in checkpoints)
    LR ← schedule(iteration); loss ← SwAV(model(crops)); backward
    prototypes frozen for the first `swav.freeze_prototypes_iters`; LARC + SGD step
    prototypes L2-normalised; metrics / log / checkpoint

Outputs under `output_uri`: `checkpoints/iter-<N>/` (see `seer.train.checkpoint`),
`train_log.jsonl` (rank 0: `start`, `resume`, `step`, `checkpoint`, `end` events) and
`summary.json` (written at the end). Rank 0 of each node serves Prometheus `/metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
import types
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.fsdp import register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from seer import storage
from seer.config import SeerConfig, config_to_dict, validate
from seer.data.stream import ShardLoader, ShardStream, build_loader
from seer.data.transforms import MultiCropTransform
from seer.errors import ConfigError, SeerError
from seer.metrics import JsonlLog, TrainMetrics
from seer.models.swav_model import SwAVModel
from seer.ssl.multicrop import PaddedCrops, padded_trunk_features
from seer.ssl.optim import LRSchedule, build_optimizer
from seer.ssl.swav import PrototypeFreezer, SwAVLoss, normalize_prototypes_
from seer.train import checkpoint
from seer.train.parallel import (
    DistEnv,
    ParallelInfo,
    autocast_context,
    build_model,
    init_distributed,
    parallelize,
)

log = logging.getLogger(__name__)


class TrainingError(SeerError):
    """Training diverged (the loss is not finite)."""


LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "summary.json"


def manifest_uri(data_uri: str) -> str:
    """`data_uri` itself when it names a .json manifest, else `<data_uri>/manifest.json`."""
    return data_uri if data_uri.endswith(".json") else storage.join(data_uri, "manifest.json")


def _padded_forward(self: SwAVModel, crops: PaddedCrops) -> tuple[Tensor, list[Tensor]]:
    """SEER 10B single pass: all crops padded to one size, masked pooling, then the head."""
    with autocast_context(self):  # a no-op unless the model runs unsharded in mixed precision
        return self.head(padded_trunk_features(self.trunk, crops))


def build_data(cfg: SeerConfig, data_uri: str, env: DistEnv) -> ShardLoader:
    """This rank's loader: deterministic order (seed, epoch) and crops (seed, epoch, sample key)."""
    transform = MultiCropTransform(cfg.data.crops, seed=cfg.train.seed)
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
        if cfg.data.padded_single_pass:
            self.model.padded_forward = types.MethodType(_padded_forward, self.model)
            register_fsdp_forward_method(self.model, "padded_forward")
        self.optimizer = build_optimizer(self.model, cfg.optim)
        per_node = cfg.train.batch_per_gpu * int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        self.schedule = LRSchedule.from_config(cfg.optim, self.global_batch, cfg.train.iterations, per_node)
        sw = cfg.swav
        self.loss_fn = SwAVLoss(
            num_crops=sum(c.count for c in cfg.data.crops),
            crops_for_assign=sw.crops_for_assign,
            temperature=sw.temperature,
            epsilon=sw.epsilon,
            sinkhorn_iterations=sw.sinkhorn_iterations,
            queue_length=sw.queue_length,
            queue_start_iter=sw.queue_start_iter,
            embedding_dim=self.model.head.embedding_dim,
        ).to(env.device)
        self.freezer = PrototypeFreezer(cfg.swav.freeze_prototypes_iters)

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
        if isinstance(crops, PaddedCrops):
            embedding, scores = self.model.padded_forward(crops)
        else:
            embedding, scores = self.model(crops)
        prototypes = None
        if self.loss_fn.queue_length > 0:  # queued embeddings are scored with the current prototypes
            prototypes = [_full(p.weight) for p in self.model.head.prototypes]
        loss = self.loss_fn(embedding, scores, iteration, prototypes)
        loss.backward()
        self.freezer(self.model, iteration)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.swav.normalize_prototypes:
            normalize_prototypes_(self.model)
        return loss.detach(), lr


class Trainer:
    """State of one pretraining run on this rank; `run()` trains to `cfg.train.iterations`."""

    def __init__(self, cfg: SeerConfig, output_uri: str, data_uri: str, env: DistEnv) -> None:
        self.cfg, self.output, self.env = cfg, output_uri.rstrip("/"), env
        torch.manual_seed(cfg.train.seed + env.rank)
        self.step = SwAVStep(cfg, env)
        self.global_batch = self.step.global_batch
        self.model, self.optimizer, self.loss_fn, self.info = (
            self.step.model,
            self.step.optimizer,
            self.step.loss_fn,
            self.step.info,
        )
        self.loader = build_data(cfg, data_uri, env)
        self.iteration = 0
        self.resumed_from: str | None = None
        self.checkpoints: list[str] = []

    # ---- state ------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest complete checkpoint, if any (interrupted saves are deleted first)."""
        if self.env.is_main:
            for uri in checkpoint.remove_incomplete(self.output):
                log.warning("deleted interrupted checkpoint %s", uri)
        dist.barrier()
        ref = checkpoint.latest_complete(self.output)
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
        else:
            log.warning(
                "%s was saved by %s ranks, not %s: the data order restarts at this epoch's beginning",
                ref.uri,
                marker.get("world_size"),
                self.env.world_size,
            )
        self.resumed_from = ref.uri

    def save(self, metrics: TrainMetrics, jlog: JsonlLog | None) -> None:
        start = time.perf_counter()
        uri = checkpoint.save(
            self.output,
            self.iteration,
            self.model,
            self.optimizer,
            scheduler=dataclasses.asdict(self.step.schedule),
            rank_state={
                "loader": self.loader.state_dict(),
                "swav_queue": self.loss_fn.state_dict(),
                "rng": checkpoint.rng_state(),
            },
            marker={"preset": self.cfg.model.preset, "config": config_to_dict(self.cfg)},
            keep_last=self.cfg.train.keep_last,
        )
        seconds = time.perf_counter() - start
        metrics.record_checkpoint(seconds)
        self.checkpoints = [*self.checkpoints, uri][-self.cfg.train.keep_last :]
        if jlog is not None:
            jlog.write("checkpoint", iteration=self.iteration, uri=uri, seconds=round(seconds, 3))
            jlog.flush()

    def _global_mean(self, value: Tensor) -> float:
        value = value.float().clone()
        dist.all_reduce(value)
        return value.item() / self.env.world_size

    # ---- loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        total = cfg.train.iterations
        metrics = TrainMetrics(cfg.train.metrics_port if env.local_rank == 0 else 0)
        jlog = JsonlLog(storage.join(self.output, LOG_NAME)) if env.is_main else None
        shards = [None] * env.world_size
        dist.all_gather_object(shards, {"rank": env.rank, **_shard_counts(self.info)})
        wall0 = time.perf_counter()
        start_iteration = self.iteration
        if jlog is not None:
            jlog.write(
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
                jlog.write("resume", iteration=self.iteration, checkpoint=self.resumed_from)
            jlog.flush()
        bar = tqdm(total=total, initial=self.iteration, disable=None if env.is_main else True, unit="it")
        images_per_s: list[float] = []
        last_loss = float("nan")
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
                logging_step = self.iteration % cfg.train.log_every == 0 or self.iteration == total
                if logging_step:
                    last_loss = self._global_mean(loss)
                    if not math.isfinite(last_loss):
                        raise TrainingError(
                            f"the loss is {last_loss} at iteration {self.iteration}; lower optim.base_lr or "
                            "raise optim.warmup_iters, then rerun (it resumes from the last checkpoint)"
                        )
                elif env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                step_s = time.perf_counter() - t0
                images_per_s.append(self.global_batch / step_s)
                mem = torch.cuda.max_memory_allocated(env.device) if env.device.type == "cuda" else 0
                metrics.record_step(self.iteration, self.global_batch, step_s, data_wait, last_loss, lr, mem)
                bar.update(1)
                if logging_step:
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}")
                    if jlog is not None:
                        jlog.write(
                            "step",
                            iteration=self.iteration,
                            loss=last_loss,
                            lr=lr,
                            step_seconds=round(step_s, 4),
                            data_wait_seconds=round(data_wait, 4),
                            images_per_second=round(self.global_batch / step_s, 2),
                            gpu_memory_bytes=mem,
                        )
                if self.iteration % cfg.train.checkpoint_every == 0 or self.iteration == total:
                    self.save(metrics, jlog)
            summary = self._summary(
                start_iteration, last_loss, images_per_s, time.perf_counter() - wall0, shards
            )
            if jlog is not None:
                jlog.write("end", **{k: v for k, v in summary.items() if k != "config"})
                storage.write_json(storage.join(self.output, SUMMARY_NAME), summary)
            return summary
        finally:
            bar.close()
            metrics.close()
            if jlog is not None:
                jlog.close()

    def _summary(
        self, start: int, final_loss: float, images_per_s: list[float], wall: float, shards: list
    ) -> dict[str, Any]:
        steady = images_per_s[1:] or images_per_s  # the first step includes warm-up
        if self.env.is_main:  # what exists, including checkpoints of runs before a restart
            self.checkpoints = [c.uri for c in checkpoint.list_checkpoints(self.output) if c.complete]
        return {
            "preset": self.cfg.model.preset,
            "iterations": self.iteration,
            "start_iteration": start,
            "resumed_from": self.resumed_from,
            "final_loss": final_loss if math.isfinite(final_loss) else None,
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
    own_group = not dist.is_initialized()
    env = init_distributed()
    try:
        validate(cfg, world_size=env.world_size)
        if env.is_main:
            logging.basicConfig(
                level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
            )
        trainer = Trainer(cfg, output_uri, data_uri, env)
        trainer.resume()
        return trainer.run()
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
