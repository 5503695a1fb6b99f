"""Trunk + linear classifier, named as VISSL's fine-tuning model (`trunk.*`, `head.clf.0.*`).

VISSL fine-tunes with an `mlp` head of dims [trunk width, classes] (`vissl/models/heads/mlp.py`): a
`clf` Sequential holding one Linear with PyTorch's default init. The same names make the training
checkpoint consolidate into the classifier file format (`seer.checkpoints.classifier`) unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seer.models.init import keep_torch_default_init, place_
from seer.models.presets import get_preset
from seer.models.regnet import SeerRegNet, build_trunk


class ClassifierHead(nn.Module):
    """`clf.0`: Linear(width → classes) on the pooled trunk features."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.clf = nn.Sequential(nn.Linear(width, num_classes))
        keep_torch_default_init(self)

    def forward(self, feats: Tensor) -> Tensor:
        return self.clf(feats)


class ClassifierModel(nn.Module):
    """`forward(images) -> logits` (B × classes)."""

    def __init__(self, trunk: SeerRegNet, head: ClassifierHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images))


def build_classifier_model(
    preset: str, num_classes: int, device: torch.device | str | None = None, seed: int | None = 0
) -> ClassifierModel:
    """Trunk of `preset` + a `num_classes`-way head, built on meta and materialised on `device`."""
    trunk = build_trunk(get_preset(preset).name, device="meta")
    with torch.device("meta"):
        head = ClassifierHead(trunk.feature_dim, num_classes)
    return place_(ClassifierModel(trunk, head), device, seed)
