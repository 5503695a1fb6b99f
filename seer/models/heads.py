"""SwAV projection head with prototypes (VISSL `swav_head`, seer_spec §2.1).

Parameter names: `projection_head.{i}.weight/bias` (a flat Sequential: Linear, [BatchNorm1d],
ReLU, …, Linear — the same indices as VISSL's `projection_head`) and `prototypes.{k}.weight`
(K_k × embedding_dim, no bias; VISSL calls it `prototypes{k}`).

Initialisation: PyTorch's default (as VISSL's head, which never re-initialises it), not the trunk's
SEER init: the head marks itself with `keep_torch_default_init` so `seer.models.init` leaves it so.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from seer.errors import ConfigError
from seer.models.init import keep_torch_default_init


class SwAVHead(nn.Module):
    """MLP `dims[0] → … → dims[-1]` (Linear with bias, BN1d if `use_bn`, ReLU between layers, nothing
    after the last Linear), L2-normalised embedding, and one bias-free prototype Linear per entry
    of `num_prototypes`.

    `forward(feats)` returns `(embedding, [scores per prototype head])`.
    """

    def __init__(
        self,
        dims: Sequence[int],
        use_bn: bool,
        num_prototypes: Sequence[int],
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        dims = list(dims)
        num_prototypes = list(num_prototypes)
        if len(dims) < 2 or any(d <= 0 for d in dims):
            raise ConfigError(
                f"SwAV head dims {dims} must list at least 2 positive sizes (input, …, embedding)"
            )
        if not num_prototypes or any(k <= 0 for k in num_prototypes):
            raise ConfigError(f"num_prototypes {num_prototypes} must list at least one positive count")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out, bias=True))
            if i < len(dims) - 2:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out, eps=bn_eps, momentum=bn_momentum))
                layers.append(nn.ReLU(inplace=True))
        self.in_dim = dims[0]
        self.embedding_dim = dims[-1]
        self.projection_head = nn.Sequential(*layers)
        self.prototypes = nn.ModuleList(nn.Linear(dims[-1], k, bias=False) for k in num_prototypes)
        keep_torch_default_init(self)

    def forward(self, feats: Tensor) -> tuple[Tensor, list[Tensor]]:
        if feats.dim() != 2 or feats.shape[1] != self.in_dim:
            raise ConfigError(
                f"SwAV head expects B×{self.in_dim} trunk features, got shape {tuple(feats.shape)}; "
                "build the trunk and head from the same preset"
            )
        embedding = F.normalize(self.projection_head(feats), p=2, dim=1)
        return embedding, [proto(embedding) for proto in self.prototypes]
