"""SEER 10B single-pass multi-crop, model side (seer_spec §2.3, VISSL ``create_multidimensional_tensor``).

The crops arrive as one ``seer.data.padded.PaddedCrops``: all crops are zero-padded (bottom/right) to the largest crop size and stacked crop-major with a
validity mask; the trunk runs once up to ``res5``; the mask is resized (nearest) to the res5 grid and
the padded cells are dropped by a masked average pool. The result feeds the SwAV head as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from seer.data.padded import MultiCropError, PaddedCrops


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
