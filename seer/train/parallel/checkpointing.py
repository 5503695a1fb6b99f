"""Activation checkpointing by the preset's block groups (VISSL `stage_checkpoints`); BatchNorm
running statistics are updated once per forward, not again during recomputation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seer.errors import ConfigError
from seer.models.regnet import SeerRegNet

_BN = nn.modules.batchnorm._BatchNorm


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
