"""Crops of mixed sizes as one zero-padded tensor with a validity mask (the SEER 10B single-pass
layout, seer_spec §2.3): what the multi-crop collate produces and `SwAVModel.padded_forward` takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
