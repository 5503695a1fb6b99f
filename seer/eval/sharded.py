"""A trunk too big for one device, evaluated as SEER evaluates its 10B model: sharded over the torchrun
ranks with FSDP2 and initialised from a sliced checkpoint, never whole on one rank.

The trunk is built on the meta device, sharded with the training code's units
(`seer.train.parallel.fsdp.shard_trunk`: stem, every block, large convs, then the trunk as root),
allocated shard by shard on the rank's device and filled by `load_sliced_into_`, which keeps only this
rank's dim-0 rows of each parameter. In a forward each unit is all-gathered, run and freed, so a rank
holds its parameter shards plus one gathered unit. On GPU the units compute in bf16 (BatchNorm keeps
fp32 affine parameters), as SEER's inference instructions; on CPU in fp32.

`--shard auto` shards when the run has more than one rank, the checkpoint is sliced and the fp32 trunk
would take more than `FIT_FRACTION` of the memory one rank has (GPU memory, or the host's available
memory divided among the node's ranks).
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist

from seer.checkpoints.io import sha256_uri
from seer.checkpoints.load import CheckpointLoadError, LoadedTrunk, checked_preset, sliced_index_uri
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.checkpoints.mapping import ArchitectureMismatchError
from seer.checkpoints.slice import open_sliced
from seer.errors import ConfigError
from seer.models import build_trunk, get_preset

SHARD_MODES = ("auto", "on", "off")
FIT_FRACTION = 0.5  # the rest of a device is left for activations, the data loader and the probe


def trunk_param_bytes(preset: str, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the preset's trunk parameters and buffers in `dtype` (built on the meta device)."""
    trunk = build_trunk(get_preset(preset).name, device="meta")
    numel = sum(t.numel() for t in (*trunk.parameters(), *trunk.buffers()))
    return numel * torch.empty((), dtype=dtype).element_size()


def rank_memory_bytes(device: torch.device) -> int:
    """Memory one rank can use: the GPU's total, or the host's available memory over the node's ranks."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    return available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def should_shard(mode: str, checkpoint: str, preset: str | None, device: torch.device, world: int) -> bool:
    """Whether to load `checkpoint` sharded (see the module docstring for `auto`)."""
    if mode not in SHARD_MODES:
        raise ConfigError(f"unknown --shard {mode!r}; choose auto, on or off")
    if mode == "off":
        return False
    index = None if checkpoint == "random" else sliced_index_uri(checkpoint)
    if mode == "on":
        if world < 2:
            raise ConfigError("--shard on needs several ranks; run under torchrun --nproc-per-node N")
        if index is None and checkpoint != "random":
            raise ConfigError(
                f"--shard on reads a sliced checkpoint, {checkpoint} is not one; "
                "run `seer ckpt slice` on it first or use --shard off"
            )
        return True
    if world < 2 or index is None:
        return False
    name = preset or open_sliced(index).preset
    if name is None:
        return False  # load_trunk names the missing preset
    return trunk_param_bytes(name) > FIT_FRACTION * rank_memory_bytes(device)


def _sharded_meta_trunk(preset: str, device: torch.device) -> torch.nn.Module:
    """The preset's trunk on the meta device, FSDP2-sharded over the default process group."""
    from torch.distributed.device_mesh import init_device_mesh

    from seer.train.parallel.fsdp import shard_trunk

    if not dist.is_initialized():
        raise ConfigError("sharded evaluation runs under torchrun; start it with torchrun --nproc-per-node N")
    trunk = build_trunk(get_preset(preset).name, device="meta")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    shard_trunk(trunk, mesh, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return trunk


def random_sharded_trunk(preset: str, device: torch.device, seed: int) -> LoadedTrunk:
    """A freshly initialised sharded trunk, equal to `load_trunk("random", preset, seed=seed)`'s."""
    from seer.train.parallel.fsdp import materialize_sharded_, shard_sizes

    trunk = _sharded_meta_trunk(preset, device)
    materialize_sharded_(trunk, device, seed)
    digest = hashlib.sha256(f"random:{preset}:{seed}".encode()).hexdigest()
    trunk = trunk.eval().requires_grad_(False)
    return LoadedTrunk(trunk, preset, digest, f"random:{preset}:{seed}", shard_sizes=shard_sizes(trunk))


def load_sharded_trunk(checkpoint: str, preset: str | None, device: torch.device) -> LoadedTrunk:
    """The sliced `checkpoint`'s trunk, FSDP2-sharded over the default process group (see module doc)."""
    from seer.train.parallel.fsdp import shard_sizes

    uri = sliced_index_uri(checkpoint)
    if uri is None:
        raise ConfigError(
            f"sharded evaluation reads a sliced checkpoint, {checkpoint} is not one; run `seer ckpt slice`"
        )
    name = checked_preset(checkpoint, preset, open_sliced(uri).preset)
    trunk = _sharded_meta_trunk(name, device)
    trunk.to_empty(device=device)
    # BatchNorm's step counter is bookkeeping, not a weight: released checkpoints often lack it.
    for module in trunk.modules():
        if getattr(module, "num_batches_tracked", None) is not None:
            module.num_batches_tracked.zero_()
    try:
        load_sliced_into_(trunk, uri, optional=lambda fqn: fqn.endswith("num_batches_tracked"))
    except ArchitectureMismatchError as e:
        raise CheckpointLoadError(f"{checkpoint} does not fit preset {name!r} ({e})") from None
    trunk = trunk.eval().requires_grad_(False)
    return LoadedTrunk(trunk, name, sha256_uri(uri), checkpoint, shard_sizes=shard_sizes(trunk))
