"""SEER 10B single-pass multi-crop layout (seer_spec §2.3, VISSL ``create_multidimensional_tensor``).

All crops are zero-padded (bottom/right) to the largest crop size and stacked crop-major with a
validity mask; the trunk runs once up to ``res5``; the mask is resized (nearest) to the res5 grid and
the padded cells are dropped by a masked average pool. The result feeds the SwAV head as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from seer.errors import SeerError


class MultiCropError(SeerError, ValueError):
    """Crops or a trunk that the padded single-pass path cannot use."""


@dataclass
class PaddedCrops:
    """Crops of mixed sizes as one tensor.

    ``tensor``: (num_crops·B)×C×S×S, crop-major, each crop in the top-left corner, zeros elsewhere.
    ``valid``: (num_crops·B)×S×S bool, True on real pixels. ``sizes``: the crop size per crop index.
    """

    tensor: torch.Tensor
    valid: torch.Tensor
    sizes: list[int]

    @property
    def batch_size(self) -> int:
        return self.tensor.shape[0] // len(self.sizes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PaddedCrops:
        return PaddedCrops(
            self.tensor.to(device, non_blocking=non_blocking),
            self.valid.to(device, non_blocking=non_blocking),
            self.sizes,
        )

    def pin_memory(self) -> PaddedCrops:
        """Called by ``DataLoader(pin_memory=True)``."""
        return PaddedCrops(self.tensor.pin_memory(), self.valid.pin_memory(), self.sizes)


def pad_crops(crops: list[torch.Tensor]) -> PaddedCrops:
    """Crop-major list of B×C×h×w batches (square or not) → one zero-padded :class:`PaddedCrops`."""
    if not crops:
        raise MultiCropError("no crops to pad; pass one B×C×H×W tensor per crop index")
    b, c = crops[0].shape[:2]
    if any(t.ndim != 4 or t.shape[:2] != (b, c) for t in crops):
        shapes = [tuple(t.shape) for t in crops]
        raise MultiCropError(
            f"crop batches {shapes} differ in batch size or channels; collate with one transform"
        )
    height = max(t.shape[2] for t in crops)
    width = max(t.shape[3] for t in crops)
    tensor = crops[0].new_zeros((len(crops) * b, c, height, width))
    valid = torch.zeros((len(crops) * b, height, width), dtype=torch.bool, device=crops[0].device)
    for i, t in enumerate(crops):
        tensor[i * b : (i + 1) * b, :, : t.shape[2], : t.shape[3]] = t
        valid[i * b : (i + 1) * b, : t.shape[2], : t.shape[3]] = True
    return PaddedCrops(tensor, valid, [t.shape[2] for t in crops])


def masked_avgpool(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of N×C×h×w features over the cells where the N×H×W pixel mask, resized (nearest) to h×w,
    is True. Nearest resizing samples pixel (0, 0) for cell (0, 0), so every crop keeps at least one cell."""
    mask = nnf.interpolate(valid[:, None].to(features.dtype), size=features.shape[-2:], mode="nearest")
    return (features * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def padded_trunk_features(trunk: nn.Module, crops: PaddedCrops) -> torch.Tensor:
    """One trunk pass over all padded crops → pooled features (num_crops·B)×C, padding excluded.

    ``trunk(x, taps=["res5"])`` must return ``{"res5": N×C×h×w}`` (``seer.models.SeerRegNet``).
    """
    out = trunk(crops.tensor, taps=["res5"])
    if not isinstance(out, dict) or "res5" not in out:
        raise MultiCropError(
            f"{type(trunk).__name__}(x, taps=['res5']) did not return a dict with 'res5'; "
            "the padded single-pass path needs a trunk with feature taps (seer.models.build_trunk)"
        )
    return masked_avgpool(out["res5"], crops.valid)


def padded_swav_forward(model: nn.Module, crops: PaddedCrops) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``SwAVModel`` forward for the padded layout: one trunk pass, masked pooling, then the head once.
    Returns ``(embedding, [scores per prototype head])`` in crop-major order, like ``model(crop_list)``."""
    return model.head(padded_trunk_features(model.trunk, crops))
