"""Fine-tuning as a `seer.train.engine.Task`: the classifier model, SGD, the LR steps and the loss.

The model is built on the meta device, sharded like pretraining (`seer.train.parallel`: FSDP2,
precision, activation checkpointing, SyncBN), then the pretrained trunk is copied in: a sliced
checkpoint FSDP unit by unit (`load_sliced_into_`, no rank holds the whole trunk; use it for rg10b),
any other format `load_trunk` reads whole, each rank keeping its own shard. The head keeps its init.

Optimizer (VISSL fulltune `OPTIMIZER`): SGD, momentum 0.9, Nesterov; weight decay on weights and
biases (`regularize_bias`) but not BatchNorm (`regularize_bn: False`); LR = base_lr × global batch /
base_batch, × gamma at each milestone epoch (`multistep`, `update_interval: epoch`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from seer.checkpoints.load import load_trunk, sliced_index_uri
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.finetune.config import FinetuneConfig, validate
from seer.finetune.data import LabelledLoader, LabelledSet, train_transform
from seer.finetune.model import ClassifierModel, build_classifier_model
from seer.train.parallel import DistEnv, parallelize
from seer.train.parallel.precision import LossScaler

_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class StepSchedule:
    """Multistep LR: `lr` × `gamma`^(milestones passed), milestones in iterations."""

    lr: float
    gamma: float
    milestones: list[int]

    def at(self, iteration: int) -> float:
        return self.lr * self.gamma ** sum(iteration >= m for m in self.milestones)

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        lr = self.at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


class ClassificationLoss(nn.Module):
    """Cross-entropy (with optional label smoothing) on fp32 logits; no extra per-step statistics."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.stats: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Decayed and non-decayed parameters as VISSL's `regularize_bn` / `regularize_bias` say."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            skip = (isinstance(module, _BN) and not cfg.optim.regularize_bn) or (
                name == "bias" and not cfg.optim.regularize_bias
            )
            (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}]
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


@torch.no_grad()
def load_pretrained_trunk_(model: ClassifierModel, checkpoint: str, preset: str) -> None:
    """Copy pretrained trunk weights into the (sharded) model; `random` keeps the init."""
    if checkpoint == "random":
        return
    index = sliced_index_uri(checkpoint)
    if index is not None:
        load_sliced_into_(model.trunk, index, optional=lambda fqn: fqn.endswith("num_batches_tracked"))
        return
    state = load_trunk(checkpoint, preset).trunk.state_dict()
    for name, tensor in [*model.trunk.named_parameters(), *model.trunk.named_buffers()]:
        full = state[name].to(tensor.dtype)
        if isinstance(tensor, DTensor):  # keep this rank's shard (no communication)
            full = distribute_tensor(
                full, tensor.device_mesh, tensor.placements, src_data_rank=None
            ).to_local()
            tensor = tensor.to_local()
        tensor.copy_(full)


class FinetuneStep:
    """Model, optimizer, LR schedule and loss of a fine-tune, and one optimizer step."""

    def __init__(self, cfg: FinetuneConfig, env: DistEnv, num_classes: int, batches_per_epoch: int) -> None:
        self.cfg, self.env = cfg, env
        self.global_batch = cfg.train.batch_per_gpu * env.world_size
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = build_classifier_model(cfg.model.preset, num_classes, "meta")
        self.model, self.info = parallelize(model, cfg, env)
        load_pretrained_trunk_(self.model, cfg.model.checkpoint, cfg.model.preset)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, cfg), lr=o.base_lr, momentum=o.momentum, nesterov=o.nesterov
        )
        lr = o.base_lr * self.global_batch / o.base_batch
        self.schedule = StepSchedule(lr, o.gamma, [m * batches_per_epoch for m in o.milestones])
        self.loss_fn = ClassificationLoss(o.label_smoothing)
        self.scaler = LossScaler(env.device) if self.info.param_dtype == "float16" else None

    def __call__(self, batch: tuple[Tensor, Tensor], iteration: int) -> tuple[Tensor, float]:
        """Train on one batch as iteration `iteration` (0-based); returns (local loss, learning rate)."""
        lr = self.schedule.apply(self.optimizer, iteration)
        images, labels = batch
        fmt = torch.channels_last if self.info.channels_last else torch.contiguous_format
        images = images.to(self.env.device, non_blocking=True).contiguous(memory_format=fmt)
        loss = self.loss_fn(self.model(images), labels.to(self.env.device, non_blocking=True))
        (loss if self.scaler is None else self.scaler.scaled(loss)).backward()
        if self.scaler is None or self.scaler.unscale_(self.model.parameters()):
            self.optimizer.step()  # skipped when fp16 gradients overflowed (the scale was halved)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), lr


class FinetuneTask:
    """A `seer.train.engine.Task` over a loaded labelled set."""

    def __init__(self, data: LabelledSet, batches_per_epoch: int) -> None:
        self.data, self.batches_per_epoch = data, batches_per_epoch

    def validate(self, cfg: FinetuneConfig, world_size: int) -> None:
        validate(cfg, world_size=world_size)

    def build_step(self, cfg: FinetuneConfig, env: DistEnv) -> FinetuneStep:
        return FinetuneStep(cfg, env, len(self.data.classes), self.batches_per_epoch)

    def build_loader(self, cfg: FinetuneConfig, data_uri: str, env: DistEnv) -> LabelledLoader:
        return make_loader(cfg, self.data, env)


def make_loader(cfg: FinetuneConfig, data: LabelledSet, env: DistEnv) -> LabelledLoader:
    return LabelledLoader(
        data.samples,
        train_transform(cfg),
        rank=env.rank,
        world_size=env.world_size,
        batch_size=cfg.train.batch_per_gpu,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
    )


def with_run_values(cfg: FinetuneConfig, data: LabelledSet, batches_per_epoch: int) -> FinetuneConfig:
    """`cfg` with what the run derives: iterations from the epochs, the classes (and cell locations)."""
    train = dataclasses.replace(cfg.train, iterations=cfg.optim.epochs * batches_per_epoch)
    head = dataclasses.replace(cfg.classifier, classes=list(data.classes), locations=data.locations)
    return dataclasses.replace(cfg, train=train, classifier=head)
