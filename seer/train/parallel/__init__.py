"""Distributed setup and model parallelisation: FSDP2, mixed precision, SyncBN, activation checkpointing.

`parallelize(model, cfg, env)` takes a `SwAVModel` built on the meta device and returns it sharded
and materialised on `env.device`, so no rank ever holds the whole model (rg10b: 9.6B parameters):

1. SyncBatchNorm (GPU only; torch's SyncBN has no CPU kernels) in groups of `train.sync_bn_group`
   ranks, converted before sharding. One process, `sync_bn_group=1` or CPU: plain BatchNorm.
2. Activation checkpointing (`train.activation_checkpointing`): each stage becomes a
   `CheckpointedStage` that recomputes the preset's block groups (VISSL `stage_checkpoints`,
   rg10b `[[2],[7],[9,17],[]]`) in backward. Parameter names do not change. BatchNorm running
   statistics are updated once per forward, not again during recomputation.
3. FSDP2 `fully_shard`, innermost first (VISSL's nesting, seer_spec §3.2): every conv with ≥ 1e8
   parameters; every RegNet block; the stem; the projection MLP; each prototype matrix in fp32 (its
   scores feed Sinkhorn); finally the root. A stage holds no parameters of its own beyond its
   blocks, so its blocks are its units. bf16 policy: parameters bf16, gradient reduction fp32;
   fp16 policy (SEER's): parameters fp16, gradient reduction fp16, with `LossScaler` in the step.
   BatchNorm computes with fp32 affine parameters and fp32 running statistics on low-precision
   activations.
4. `to_empty` on `env.device`, then SEER init (`seer.models.init`) tensor by tensor: each full tensor
   is drawn from its name-derived generator and this rank keeps its dim-0 chunk, so the weights do
   not depend on the number of ranks.

One process has nothing to shard, and FSDP2's per-unit hooks (casts, copies, gradient "reduction") and
DTensor dispatch in every optimizer op only cost time there (CPU rg-tiny: ~20% of the step, bench/train_step.py),
so step 3 is replaced by local mixed precision: fp32 parameters,
the forward under bf16 (or fp16) autocast (BatchNorm keeps fp32 affine parameters and statistics), prototypes
scored in fp32 (embeddings cast up, as FSDP2's fp32 prototype unit does), and channels-last conv
weights when the run uses channels-last.
Parameter names, initial values and the checkpoint format are the same as with FSDP2 (DCP loads either
into the other).

`train.compile` compiles each RegNet block's `forward` with torch.compile (regional compilation: one
graph per block and crop size; FSDP2 and checkpointing hooks stay eager; names unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import init_device_mesh

from seer.config import SeerConfig
from seer.models.presets import get_preset
from seer.models.swav_model import SwAVModel, build_swav_model
from seer.train.parallel.checkpointing import CheckpointedStage, apply_activation_checkpointing
from seer.train.parallel.env import DistEnv, init_distributed
from seer.train.parallel.fsdp import Unit, apply_fsdp, fsdp_units, materialize_sharded_, shard_sizes
from seer.train.parallel.precision import (
    LossScaler,
    apply_local_precision,
    autocast_context,
    resolve_precision,
    use_channels_last,
)
from seer.train.parallel.sync_bn import apply_sync_bn, sync_bn_groups

__all__ = [
    "CheckpointedStage",
    "DistEnv",
    "LossScaler",
    "ParallelInfo",
    "apply_activation_checkpointing",
    "autocast_context",
    "build_model",
    "compile_blocks_",
    "fsdp_units",
    "init_distributed",
    "parallelize",
    "sync_bn_groups",
]


def compile_blocks_(model: SwAVModel) -> int:
    """torch.compile every RegNet block's forward in place (hooks around it stay eager); returns how many.

    All blocks share one code object (torchvision's block `forward`), so dynamo counts every distinct
    (width, stride, crop size) as a recompile of it: the limit is raised to cover them (default 8 would
    leave later blocks eager)."""
    blocks = [block for stage in model.trunk.trunk_output.children() for block in stage.children()]
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(blocks))
    return len(blocks)


def build_model(cfg: SeerConfig) -> SwAVModel:
    """The config's SwAV model on the meta device (nothing allocated); `model.num_prototypes` applies."""
    return build_swav_model(cfg.model.preset, "meta", num_prototypes=cfg.model.num_prototypes)


@dataclass
class ParallelInfo:
    """What `parallelize` did, for logs and the run summary."""

    param_dtype: str
    sync_bn: str
    checkpoint_groups: int
    fsdp_units: int  # 0: not sharded (one process; local mixed precision)
    channels_last: bool
    local_params: int
    global_params: int


def parallelize(
    model: SwAVModel, cfg: SeerConfig, env: DistEnv, materialize: bool = True, shard: bool | None = None
) -> tuple[SwAVModel, ParallelInfo]:
    """Shard a meta-device `SwAVModel` over all ranks (see the module docstring); in place.

    `materialize=False` leaves the shards on the meta device (memory planning, tests). `shard`: FSDP2
    or local mixed precision; None (default) shards when there is more than one process.
    """
    param_dtype = resolve_precision(cfg, env.device)
    if shard is None:
        shard = env.world_size > 1
    channels_last = use_channels_last(cfg, env.device)
    sync_bn = apply_sync_bn(model, cfg.train.sync_bn_group, env)
    groups = 0
    if cfg.train.activation_checkpointing:
        groups = apply_activation_checkpointing(model.trunk, get_preset(cfg.model.preset).checkpoint_groups())
    units: list[Unit] = []
    if shard:
        mesh = init_device_mesh(env.device.type, (env.world_size,))
        units = apply_fsdp(model, mesh, param_dtype)
    else:
        apply_local_precision(model, param_dtype)
    if materialize:
        materialize_sharded_(model, env.device, cfg.train.seed)
        if not shard and channels_last:
            model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        compile_blocks_(model)
    sizes = shard_sizes(model)
    info = ParallelInfo(
        param_dtype=str(param_dtype).removeprefix("torch."),
        sync_bn=sync_bn,
        checkpoint_groups=groups,
        fsdp_units=len(units) + 1 if shard else 0,
        channels_last=channels_last,
        local_params=sizes["local"],
        global_params=sizes["global"],
    )
    return model, info
