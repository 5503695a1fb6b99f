"""SyncBatchNorm in groups of `train.sync_bn_group` ranks (GPU only; torch has no CPU SyncBN kernels)."""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from seer.errors import ConfigError
from seer.train.parallel.env import DistEnv


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
