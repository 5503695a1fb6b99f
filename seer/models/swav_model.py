"""Trunk + SwAV head with VISSL's multi-resolution forward.

Parameter names: `trunk.*` (see `seer.models.regnet`), `head.projection_head.*`,
`head.prototypes.{k}.weight` (see `seer.models.heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from seer.errors import ConfigError
from seer.models.heads import SwAVHead
from seer.models.init import place_
from seer.models.presets import get_preset
from seer.models.regnet import SeerRegNet, build_trunk
from seer.ssl.multicrop import padded_trunk_features

if TYPE_CHECKING:
    from seer.data.padded import PaddedCrops


class SwAVModel(nn.Module):
    """`trunk` followed by `head`.

    `forward(crops)` takes a list of B×3×H×W batches (one per crop, crop-major as the multi-crop
    collate produces them), runs the trunk once per run of consecutive same-size crops, and the
    head once on all features. Returns `(embedding, [scores per prototype head])` with rows in
    crop-major order: rows `c·B … (c+1)·B − 1` belong to crop c.
    """

    def __init__(self, trunk: SeerRegNet, head: SwAVHead) -> None:
        super().__init__()
        if trunk.feature_dim != head.in_dim:
            raise ConfigError(
                f"trunk features are {trunk.feature_dim}-d but the head expects {head.in_dim}-d; "
                "build the trunk and head from the same preset"
            )
        self.trunk = trunk
        self.head = head

    def forward(self, crops: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[Tensor]]:
        if isinstance(crops, Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ConfigError("SwAVModel got an empty crop list; pass at least one B×3×H×W batch")
        feats = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            run = crops[start:end]
            feats.append(self.trunk(run[0] if len(run) == 1 else torch.cat(list(run))))
            start = end
        return self.head(feats[0] if len(feats) == 1 else torch.cat(feats))

    def padded_forward(self, crops: PaddedCrops) -> tuple[Tensor, list[Tensor]]:
        """SEER 10B single pass: all crops padded to one size, one trunk pass, masked pooling, the head."""
        return self.head(padded_trunk_features(self.trunk, crops))


Device = torch.device | str | None
Counts = Sequence[int] | None  # prototype counts per head; None: the preset's


def build_head(
    name: str, device: Device = None, seed: int | None = 0, num_prototypes: Counts = None
) -> SwAVHead:
    """The SwAV head of preset `name` with PyTorch's default init, as VISSL's (on the meta device when
    `device="meta"`), seeded by the names it has inside a `SwAVModel` (`head.*`); `num_prototypes`
    overrides the preset's prototype counts (config `model.num_prototypes`)."""
    preset = get_preset(name)
    with torch.device("meta"):
        head = SwAVHead(preset.head_dims, preset.head_use_bn, list(num_prototypes or preset.num_prototypes))
    return place_(head, device, seed, prefix="head")


def build_swav_model(
    name: str, device: Device = None, seed: int | None = 0, *, num_prototypes: Counts = None
) -> SwAVModel:
    """Trunk + SwAV head of preset `name`, built on the meta device and materialised on `device`.

    `device="meta"` allocates nothing; `device=None` means torch's current default device.
    Initialisation depends only on `seed` and parameter names (see `seer.models.init`): SEER init for
    the trunk, PyTorch's default for the head (as in VISSL).
    """
    model = SwAVModel(
        build_trunk(name, device="meta"), build_head(name, "meta", num_prototypes=num_prototypes)
    )
    return place_(model, device, seed)
