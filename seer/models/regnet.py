"""SEER RegNetY trunks on torchvision's `RegNet`, with VISSL-named feature taps.

Module layout is torchvision's, without `fc`: `stem` (VISSL `conv1`), `trunk_output.block{S}`
(stage S = VISSL `res{S+1}`) holding blocks `block{S}-{i}`, and `avgpool`. The state dict therefore
matches torchvision's `regnet_y_32gf` / `regnet_y_128gf` tensor for tensor, minus `fc.*`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.regnet import BlockParams, RegNet

from seer.errors import ConfigError
from seer.models.init import place_
from seer.models.presets import get_preset


class SeerRegNet(RegNet):
    """RegNetY trunk (SE 0.25 of the block input, BN eps 1e-5 / momentum 0.1) with no classifier.

    `forward(x)` returns pooled features (B × feature_dim); `forward(x, taps=[...])` returns a dict
    tap name → tensor for taps among `tap_names` (`conv1`, `res2`…`res5`, `avgpool` (B×W×1×1),
    `flatten` (B×W)), computing only up to the deepest requested tap.
    """

    def __init__(self, block_params: BlockParams, stem_width: int = 32) -> None:
        super().__init__(
            block_params,
            num_classes=1,
            stem_width=stem_width,
            norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1),
        )
        del self.fc
        self.feature_dim: int = block_params.widths[-1]
        self.tap_names: tuple[str, ...] = (
            "conv1",
            *(f"res{i + 2}" for i in range(len(block_params.widths))),
            "avgpool",
            "flatten",
        )

    def _steps(self) -> list:
        return [
            self.stem,
            *self.trunk_output.children(),
            self.avgpool,
            partial(torch.flatten, start_dim=1),
        ]

    def forward(self, x: Tensor, taps: Sequence[str] | str | None = None) -> Tensor | dict[str, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"trunk input must be a B×3×H×W image batch, got shape {tuple(x.shape)}")
        if taps is None:
            return self.avgpool(self.trunk_output(self.stem(x))).flatten(1)
        wanted = [taps] if isinstance(taps, str) else list(taps)
        unknown = [t for t in wanted if t not in self.tap_names]
        if unknown or not wanted:
            raise ConfigError(
                f"unknown feature tap(s) {unknown or wanted}; choose from {', '.join(self.tap_names)}"
            )
        last = max(self.tap_names.index(t) for t in wanted)
        found: dict[str, Tensor] = {}
        for name, step in zip(self.tap_names[: last + 1], self._steps(), strict=False):
            x = step(x)
            if name in wanted:
                found[name] = x
        return {t: found[t] for t in wanted}


def build_trunk(name: str, device: torch.device | str | None = None, seed: int | None = 0) -> SeerRegNet:
    """The trunk of preset `name`, built on the meta device and materialised on `device`.

    `device="meta"` allocates nothing (rg10b's 9.3B parameters included); materialise later with
    `materialize_`, whole or unit by unit. `device=None` means torch's current default device.
    """
    preset = get_preset(name)
    block_params = preset.block_params()
    with torch.device("meta"):
        trunk = SeerRegNet(block_params, stem_width=preset.stem_width)
    return place_(trunk, device, seed)
