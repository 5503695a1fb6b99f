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
   BatchNorm computes with fp32 affine parameters and fp32 running statistics on bf16 activations.
4. `to_empty` on `env.device`, then SEER init (`seer.models.init`) tensor by tensor: each full tensor
   is drawn from its name-derived generator and this rank keeps its dim-0 chunk, so the weights do
   not depend on the number of ranks.

One process on a GPU has nothing to shard, and FSDP2's per-unit hooks (casts, copies, gradient
"reduction") only cost time there, so step 3 is replaced by local mixed precision: fp32 parameters,
the forward under bf16 autocast (BatchNorm keeps fp32 affine parameters and statistics), prototypes
scored in fp32 (embeddings cast up, as FSDP2's fp32 prototype unit does), and channels-last conv
weights when the run uses channels-last.
Parameter names, initial values and the checkpoint format are the same as with FSDP2 (DCP loads either
into the other); CPU runs keep FSDP2 on every world size.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from seer.config import SeerConfig
from seer.errors import ConfigError
from seer.models.heads import SwAVHead
from seer.models.init import init_weights_
from seer.models.presets import get_preset
from seer.models.regnet import SeerRegNet
from seer.models.swav_model import SwAVModel

log = logging.getLogger(__name__)

# VISSL `AUTO_WRAP_THRESHOLD`: a conv this large gets its own FSDP unit (rg10b stages 3-4).
LARGE_CONV_PARAMS = 100_000_000
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global/local rank, world size, device and collective backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _attempt_store(timeout: datetime.timedelta) -> tuple[dist.Store, int, int]:
    """torchrun's store with a prefix per restart attempt (`TORCHELASTIC_RESTART_COUNT`).

    torchrun's workers share the agent's c10d store, which outlives worker-group restarts and keeps
    the previous attempt's keys: a restarted rank that starts faster than its peers reads their old
    gloo/NCCL addresses and fails or hangs in `init_process_group` (seen with torch 2.14 --max-restarts).
    """
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(
        rendezvous("env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), timeout=timeout)
    )
    return dist.PrefixStore(f"seer/attempt-{os.environ['TORCHELASTIC_RESTART_COUNT']}", store), rank, world


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    """Join the torchrun job (env `RANK`, `WORLD_SIZE`, …), or start a 1-process group without torchrun.

    nccl with one GPU per local rank when CUDA is available, gloo on CPU.
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:  # under torchrun: see _attempt_store
            store, rank, world = _attempt_store(timeout)
            dist.init_process_group(
                backend,
                store=store,
                rank=rank,
                world_size=world,
                timeout=timeout,
                device_id=device if cuda else None,
            )
        elif "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None)
        else:
            dist.init_process_group(
                backend,
                store=dist.HashStore(),
                rank=0,
                world_size=1,
                timeout=timeout,
                device_id=device if cuda else None,
            )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def build_model(cfg: SeerConfig) -> SwAVModel:
    """The config's SwAV model on the meta device (nothing allocated); `model.num_prototypes` applies."""
    preset = get_preset(cfg.model.preset)
    protos = cfg.model.num_prototypes or list(preset.num_prototypes)
    block_params = preset.block_params()
    with torch.device("meta"):
        return SwAVModel(
            SeerRegNet(block_params, stem_width=preset.stem_width),
            SwAVHead(preset.head_dims, preset.head_use_bn, protos),
        )


def resolve_precision(cfg: SeerConfig, device: torch.device) -> torch.dtype:
    """Compute dtype: `auto` is bf16 on GPU, fp32 on CPU."""
    precision = cfg.train.precision
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def use_channels_last(cfg: SeerConfig, device: torch.device) -> bool:
    mode = cfg.train.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


# ----------------------------------------------------------------------------------------------
# SyncBatchNorm


def sync_bn_groups(world_size: int, group_size: int) -> list[list[int]] | None:
    """Rank lists of the SyncBN groups; None means one group of all ranks.

    `group_size` 0 (or ≥ world size) = all ranks; 1 = no synchronisation (empty list).
    """
    if group_size == 1 or world_size == 1:
        return []
    if group_size == 0 or group_size >= world_size:
        return None
    if world_size % group_size:
        raise ConfigError(
            f"train.sync_bn_group={group_size} does not divide the world size {world_size}; "
            "use a divisor of the world size, 0 (all ranks) or 1 (plain BatchNorm)"
        )
    return [list(range(s, s + group_size)) for s in range(0, world_size, group_size)]


def apply_sync_bn(model: nn.Module, group_size: int, env: DistEnv) -> str:
    """Convert BatchNorm to SyncBatchNorm for `group_size` (see `sync_bn_groups`); returns what was done."""
    groups = sync_bn_groups(env.world_size, group_size)
    if groups == []:
        return "plain BatchNorm (1 process or sync_bn_group=1)"
    if env.device.type != "cuda":
        return "plain BatchNorm per rank (torch SyncBatchNorm needs CUDA)"
    group = None
    if groups is not None:
        for ranks in groups:  # every rank must create every group, in the same order
            pg = dist.new_group(ranks)
            if env.rank in ranks:
                group = pg
    nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    size = env.world_size if groups is None else len(groups[0])
    return f"SyncBatchNorm over groups of {size} ranks"


# ----------------------------------------------------------------------------------------------
# Activation checkpointing


@contextmanager
def _frozen_bn_stats(modules: list[nn.Module]) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged (for recomputation; batch statistics still apply).

    Momentum 0 leaves the running averages as they are while saving the same tensors for backward
    as the first forward did (which `torch.utils.checkpoint` checks).
    """
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, _BN) and m.track_running_stats]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, (momentum, tracked) in zip(bns, saved, strict=True):
                bn.momentum = momentum
                bn.num_batches_tracked.copy_(tracked)


class CheckpointedStage(nn.Sequential):
    """A RegNet stage whose block groups `groups` (ranges of block indices) are recomputed in backward.

    Children keep their names (`block3-0`, …), so parameter names equal the plain stage's.
    """

    def __init__(self, stage: nn.Sequential, groups: list[range]) -> None:
        super().__init__(OrderedDict(stage.named_children()))
        self.groups = [g for g in groups if len(g)]

    def forward(self, x: Tensor) -> Tensor:
        blocks = list(self)
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        done = 0
        for group in self.groups:
            for block in blocks[done : group.start]:
                x = block(x)
            x = self._checkpointed(blocks[group.start : group.stop], x)
            done = group.stop
        for block in blocks[done:]:
            x = block(x)
        return x

    @staticmethod
    def _checkpointed(blocks: list[nn.Module], x: Tensor) -> Tensor:
        calls = 0

        def run(inp: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:
                for block in blocks:
                    inp = block(inp)
                return inp
            with _frozen_bn_stats(blocks):
                for block in blocks:
                    inp = block(inp)
                return inp

        # RegNet has no randomness, so the RNG state need not be replayed.
        return checkpoint(run, x, use_reentrant=False, preserve_rng_state=False)


def apply_activation_checkpointing(trunk: SeerRegNet, groups: list[list[range]]) -> int:
    """Replace each stage that has groups by a `CheckpointedStage`; returns the number of groups."""
    stages = list(trunk.trunk_output.named_children())
    if len(groups) != len(stages):
        raise ConfigError(
            f"activation-checkpoint groups cover {len(groups)} stages but the trunk has {len(stages)}; "
            "fix the preset's stage_checkpoints"
        )
    count = 0
    for (name, stage), stage_groups in zip(stages, groups, strict=True):
        if stage_groups:
            setattr(trunk.trunk_output, name, CheckpointedStage(stage, stage_groups))
            count += len(stage_groups)
    return count


# ----------------------------------------------------------------------------------------------
# FSDP units


@dataclass(frozen=True)
class Unit:
    """One FSDP unit: qualified name, module, kind (`conv`, `block`, `stem`, `mlp`, `prototypes`)."""

    name: str
    module: nn.Module
    kind: str


def fsdp_units(model: SwAVModel) -> list[Unit]:
    """The modules `parallelize` shards, innermost first (the root is sharded last, not listed)."""
    units: list[Unit] = []

    def large_convs(prefix: str, module: nn.Module) -> None:
        for name, sub in module.named_modules(prefix=prefix):
            if isinstance(sub, nn.Conv2d) and sum(p.numel() for p in sub.parameters()) >= LARGE_CONV_PARAMS:
                units.append(Unit(name, sub, "conv"))

    large_convs("trunk.stem", model.trunk.stem)
    units.append(Unit("trunk.stem", model.trunk.stem, "stem"))
    for sname, stage in model.trunk.trunk_output.named_children():
        for bname, block in stage.named_children():
            name = f"trunk.trunk_output.{sname}.{bname}"
            large_convs(name, block)
            units.append(Unit(name, block, "block"))
    large_convs("head.projection_head", model.head.projection_head)
    units.append(Unit("head.projection_head", model.head.projection_head, "mlp"))
    for i, proto in enumerate(model.head.prototypes):
        units.append(Unit(f"head.prototypes.{i}", proto, "prototypes"))
    return units


class _Fp32AffineNorm:
    """BatchNorm mixin: run with fp32 affine parameters when FSDP gathered them in bf16.

    The kernels accept bf16 activations with fp32 weight, bias and running statistics (as under
    autocast), not bf16 weights with fp32 statistics. The cast is part of the module's own forward,
    so activation-checkpoint recomputation repeats it exactly.
    """

    def forward(self, x: Tensor) -> Tensor:
        params = self._parameters
        low = {
            n: p for n in ("weight", "bias") if (p := params.get(n)) is not None and p.dtype != torch.float32
        }
        for name, p in low.items():
            params[name] = p.float()
        try:
            return super().forward(x)
        finally:
            params.update(low)


_FP32_AFFINE: dict[type, type] = {}


def apply_fp32_norms(model: nn.Module) -> int:
    """Give every BatchNorm fp32 affine parameters at compute time (see `_Fp32AffineNorm`); returns how many."""
    count = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, _BN) and not isinstance(module, _Fp32AffineNorm):
            if cls not in _FP32_AFFINE:
                _FP32_AFFINE[cls] = type(f"Fp32Affine{cls.__name__}", (_Fp32AffineNorm, cls), {})
            module.__class__ = _FP32_AFFINE[cls]
            count += 1
    return count


def apply_fsdp(model: SwAVModel, mesh: DeviceMesh, param_dtype: torch.dtype) -> list[Unit]:
    """`fully_shard` every unit of `fsdp_units`, then the root; returns the units.

    On one rank nothing is sharded, so parameters stay gathered between forward and backward.
    """
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    main = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if param_dtype != torch.float32:
        apply_fp32_norms(model)
    reshard = mesh.size() > 1
    units = fsdp_units(model)
    for unit in units:
        policy = fp32 if unit.kind == "prototypes" else main
        fully_shard(unit.module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=main, reshard_after_forward=reshard)
    return units


# ----------------------------------------------------------------------------------------------
# One GPU: no FSDP, local mixed precision


class _AutocastForward:
    """Model mixin: `forward` runs under autocast to `compute_dtype` (set by `apply_local_precision`)."""

    compute_dtype: torch.dtype

    def forward(self, *args: object, **kwargs: object) -> object:
        with autocast_context(self):
            return super().forward(*args, **kwargs)


class _Fp32Prototypes(nn.Linear):
    """A prototype matrix that scores in fp32 under autocast (its scores feed Sinkhorn)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


_AUTOCAST: dict[type, type] = {}


def autocast_context(model: nn.Module) -> AbstractContextManager:
    """Autocast to the model's compute dtype when `apply_local_precision` gave it one, else a no-op."""
    dtype = getattr(model, "compute_dtype", None)
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype)


def apply_local_precision(model: SwAVModel, param_dtype: torch.dtype) -> None:
    """Unsharded mixed precision (see the module docstring); the parameters stay fp32."""
    if param_dtype == torch.float32:
        return
    cls = type(model)
    if cls not in _AUTOCAST:
        _AUTOCAST[cls] = type(f"Autocast{cls.__name__}", (_AutocastForward, cls), {})
    model.__class__ = _AUTOCAST[cls]
    model.compute_dtype = param_dtype
    for proto in model.head.prototypes:
        if type(proto) is nn.Linear:
            proto.__class__ = _Fp32Prototypes


def materialize_sharded_(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate the local shards on `device` and fill them with SEER init, independent of world size."""
    model.to_empty(device=device)
    for mname, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own and not isinstance(module, _BN):
            continue
        sharded = {n: p for n, p in own.items() if isinstance(p, DTensor)}
        for pname, param in sharded.items():  # initialise full tensors, keep this rank's chunk
            full = torch.empty(param.shape, dtype=param.dtype, device=device)
            module._parameters[pname] = nn.Parameter(full, requires_grad=param.requires_grad)
        init_weights_(module, recurse=False, seed=seed, prefix=mname)
        with torch.no_grad():
            for pname, param in sharded.items():
                full = module._parameters[pname]
                local = param.to_local()
                if local.numel():
                    mesh = param.device_mesh
                    chunk = full.chunk(mesh.size(), dim=0)[mesh.get_local_rank()]
                    local.copy_(chunk)
                module._parameters[pname] = param


def shard_sizes(model: nn.Module) -> dict[str, int]:
    """Parameters held by this rank (`local`) and in the whole model (`global`)."""
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return {"local": local, "global": total}


@dataclass
class ParallelInfo:
    """What `parallelize` did, for logs and the run summary."""

    param_dtype: str
    sync_bn: str
    checkpoint_groups: int
    fsdp_units: int  # 0: not sharded (one process on a GPU; local mixed precision)
    channels_last: bool
    local_params: int
    global_params: int


def parallelize(
    model: SwAVModel, cfg: SeerConfig, env: DistEnv, materialize: bool = True, shard: bool | None = None
) -> tuple[SwAVModel, ParallelInfo]:
    """Shard a meta-device `SwAVModel` over all ranks (see the module docstring); in place.

    `materialize=False` leaves the shards on the meta device (memory planning, tests). `shard`: FSDP2
    or local mixed precision; None (default) shards unless this is one process on a GPU.
    """
    param_dtype = resolve_precision(cfg, env.device)
    if shard is None:
        shard = env.world_size > 1 or env.device.type != "cuda"
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
