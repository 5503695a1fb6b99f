"""Collapse diagnostics for SwAV: is the embedding still spread out, are the codes still sharp?

A collapsed SwAV run maps every image to (almost) the same embedding; Sinkhorn's equipartition then
forces every sample's codes towards uniform, and the loss settles at or below ln K, so the loss alone
does not reveal it. Two batch statistics do:

- ``mean_pairwise_cosine``: mean cosine over distinct pairs of embeddings (≈0.2–0.4 for a fresh
  model, → 1 when collapsed);
- ``code_entropy_ratio``: mean per-sample entropy of the codes divided by ln K (small when each
  image is assigned to few prototypes, → 1 when every image is assigned uniformly).

The thresholds below are where the trainer warns (seer issue 11: a collapsed rg-tiny run sits at
cosine 0.975–1.000 with uniform codes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COSINE_WARN = 0.9
ENTROPY_WARN = 0.95


@torch.no_grad()
def mean_pairwise_cosine(embedding: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the distinct row pairs of an N×D batch (0-d fp32; 1.0 when N < 2)."""
    z = F.normalize(embedding.float(), dim=1)
    n = z.shape[0]
    if n < 2:
        return z.new_ones(())
    total = z.sum(dim=0)
    return (total @ total - (z * z).sum()) / (n * (n - 1))


@torch.no_grad()
def code_entropy_ratio(codes: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the entropy of B×K codes (rows sum to 1), divided by ln K (0-d fp32)."""
    q = codes.float()
    k = q.shape[1]
    if k < 2:
        return q.new_zeros(())
    entropy = -(q * q.clamp_min(1e-30).log()).sum(dim=1).mean()
    return entropy / math.log(k)


def collapse_warnings(embedding_cosine: float, code_entropy: float) -> list[str]:
    """Human-readable reasons the statistics look collapsed (empty when they do not)."""
    out = []
    if embedding_cosine > COSINE_WARN:
        out.append(f"mean pairwise embedding cosine {embedding_cosine:.3f} > {COSINE_WARN}")
    if code_entropy > ENTROPY_WARN:
        out.append(f"code entropy {code_entropy:.3f}·ln K > {ENTROPY_WARN}·ln K")
    return out
