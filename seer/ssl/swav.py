"""SwAV loss with distributed Sinkhorn-Knopp, as VISSL computes it for SEER (seer_spec §2.1–§2.2).

Per prototype head and per assignment crop c: codes Q_c = SinkhornKnopp(S_c) over the global batch
(no gradient); loss_c = mean over the other crops p of −mean_b Σ_k Q_c[b, k]·log_softmax(S_p/τ)[b, k].
The loss is averaged over assignment crops, then over prototype heads. Also here: re-normalising
prototypes after each optimizer step and freezing them for the first iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch import nn

from seer.errors import ConfigError, SeerError
from seer.ssl.collapse import code_entropy_ratio, mean_pairwise_cosine

PROTOTYPES_KEY = "prototypes"


class SwAVError(SeerError, ValueError):
    """Inputs the SwAV loss cannot use (shapes, crop counts)."""


def _world(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(
    t: torch.Tensor, op: dist.ReduceOp.RedOpType, group: dist.ProcessGroup | None
) -> torch.Tensor:
    if _world(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _replace_inf_(t: torch.Tensor) -> torch.Tensor:
    """Replace +inf by the largest and −inf by the smallest finite value (VISSL's guard), in place.

    Without finite values both become 0. Branch-free: nothing waits for the device.
    """
    inf = torch.isinf(t)
    hi = torch.where(inf, float("-inf"), t).amax()
    lo = torch.where(inf, float("inf"), t).amin()
    any_finite = ~inf.all()
    hi, lo = torch.where(any_finite, hi, 0.0), torch.where(any_finite, lo, 0.0)
    return t.copy_(torch.where(inf, torch.where(t > 0, hi, lo), t))


def _nudge_if_zero_(
    q: torch.Tensor, sums: torch.Tensor, recompute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """If any of `sums` is 0, add 1e-12 to `q` and return `recompute()`; else `sums` (no host sync)."""
    zero = (sums == 0).any()
    q += zero.to(q.dtype) * 1e-12
    return torch.where(zero, recompute(), sums)


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float, n_iters: int, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Equipartitioned soft assignments (B×K, rows sum to 1) for local scores (B×K) of a global batch.

    fp32; exp(S/ε − global max); Q normalised by its global sum; n_iters rounds of row scaling
    (row sums all-reduced, rows → 1/K) and local column scaling (columns → 1/(B·world)); finally each
    sample's codes are normalised to sum 1. Works without torch.distributed (world = 1).
    """
    if scores.ndim != 2:
        raise SwAVError(f"Sinkhorn-Knopp needs B×K scores, got shape {tuple(scores.shape)}")
    if epsilon <= 0 or n_iters < 0:
        raise ConfigError(f"Sinkhorn-Knopp needs epsilon > 0 and n_iters >= 0, got {epsilon} and {n_iters}")
    q = _replace_inf_(scores.float() / epsilon)  # fp16 scores may hold ±inf; VISSL would return NaN
    top = _all_reduce(q.max().reshape(1), dist.ReduceOp.MAX, group)
    q = torch.exp(q - top).t().contiguous()  # K×B
    _replace_inf_(q)
    q /= _all_reduce(q.sum().reshape(1), dist.ReduceOp.SUM, group)
    k, b = q.shape
    r, c = 1.0 / k, 1.0 / (b * _world(group))

    def row_sums() -> torch.Tensor:  # q is only ever updated in place
        return _all_reduce(q.sum(dim=1), dist.ReduceOp.SUM, group)

    def col_sums() -> torch.Tensor:
        return q.sum(dim=0)

    for _ in range(n_iters):
        # u is global, so every rank nudges together; a zero column is a sample whose scores all
        # underflowed (VISSL would return NaN). The guards are arithmetic, not branches: no host sync.
        u = _nudge_if_zero_(q, row_sums(), row_sums)
        q *= _replace_inf_(r / u).unsqueeze(1)
        col = _nudge_if_zero_(q, col_sums(), col_sums)
        q *= (c / col).unsqueeze(0)
    q /= q.sum(dim=0, keepdim=True)
    return q.t().float()


class SwAVLoss(nn.Module):
    """SwAV swapped-prediction loss over crop-major multi-crop outputs (VISSL ``swav_loss``).

    ``loss(embedding, scores, iteration=0, prototypes=None)``: ``embedding`` is (num_crops·B)×D (only
    used by the queue), ``scores`` one (num_crops·B)×K tensor per prototype head. With a queue
    (``queue_length`` > 0, split evenly over ranks), the last ``queue_length/world`` embeddings of each
    assignment crop are kept; from ``queue_start_iter`` on, once the queue is full, their scores under
    the *current* prototypes (pass ``prototypes``: one K×D weight per head, plain or FSDP2-sharded) are
    prepended to the Sinkhorn input and dropped from its output. The queue stores embeddings, which all
    heads share; it is a buffer, so it is saved and restored with the loss module's state dict.
    For the first ``hard_codes_iters`` iterations (0 in SEER; a small-scale option) the targets are the
    one-hot argmax of the Sinkhorn codes instead of the soft codes.

    After each call, ``stats`` holds collapse diagnostics of that batch (local, detached, no host sync;
    see `seer.ssl.collapse`): ``embedding_cosine`` of the first assignment crop's embeddings and
    ``code_entropy`` (mean per-sample entropy of the codes / ln K, over heads and assignment crops).
    """

    def __init__(
        self,
        num_crops: int,
        crops_for_assign: Sequence[int] = (0, 1),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_length: int = 0,
        queue_start_iter: int = 0,
        embedding_dim: int = 256,
        group: dist.ProcessGroup | None = None,
        hard_codes_iters: int = 0,
    ) -> None:
        super().__init__()
        if hard_codes_iters < 0:
            raise ConfigError(f"swav.hard_codes_iters must be >= 0, got {hard_codes_iters}")
        self.hard_codes_iters = hard_codes_iters
        self.crops_for_assign = [int(c) for c in crops_for_assign]
        if (
            num_crops < 2
            or not self.crops_for_assign
            or any(not 0 <= c < num_crops for c in self.crops_for_assign)
        ):
            raise ConfigError(
                f"swav needs num_crops >= 2 and crops_for_assign within [0, {num_crops}), got "
                f"num_crops={num_crops}, crops_for_assign={self.crops_for_assign}"
            )
        if temperature <= 0:
            raise ConfigError(f"swav.temperature must be > 0, got {temperature}")
        self.num_crops, self.temperature, self.epsilon = num_crops, temperature, epsilon
        self.sinkhorn_iterations, self.queue_start_iter, self.group = (
            sinkhorn_iterations,
            queue_start_iter,
            group,
        )
        world = _world(group)
        if queue_length < 0 or queue_length % world:
            raise ConfigError(
                f"swav.queue_length ({queue_length}) must be >= 0 and divisible by the world size {world}"
            )
        local = queue_length // world
        self.register_buffer(
            "queue", torch.zeros(len(self.crops_for_assign), local, embedding_dim), persistent=True
        )
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=True)
        self.stats: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(
        cls, swav_cfg: Any, num_crops: int, embedding_dim: int, group: dist.ProcessGroup | None = None
    ) -> SwAVLoss:
        """From a ``SwAVConfig`` (epsilon, sinkhorn_iterations, temperature, crops_for_assign, queue_*)."""
        names = (
            "crops_for_assign",
            "temperature",
            "epsilon",
            "sinkhorn_iterations",
            "queue_length",
            "queue_start_iter",
            "hard_codes_iters",
        )
        settings = {name: getattr(swav_cfg, name) for name in names}
        return cls(num_crops, embedding_dim=embedding_dim, group=group, **settings)

    @property
    def queue_length(self) -> int:
        """Per-rank queue length."""
        return self.queue.shape[1]

    def forward(
        self,
        embedding: torch.Tensor,
        scores: torch.Tensor | Sequence[torch.Tensor],
        iteration: int = 0,
        prototypes: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        heads = [scores] if isinstance(scores, torch.Tensor) else list(scores)
        if not heads:
            raise SwAVError("no prototype scores given; pass one (num_crops·B)×K tensor per prototype head")
        n = heads[0].shape[0]
        if n % self.num_crops or any(s.ndim != 2 or s.shape[0] != n for s in heads):
            raise SwAVError(
                f"scores shaped {[tuple(s.shape) for s in heads]} are not (num_crops·B)×K with "
                f"num_crops={self.num_crops}; stack crops crop-major (collate_multicrop) and check data.crops"
            )
        bs = n // self.num_crops
        use_queue = self.queue_length > 0 and iteration >= self.queue_start_iter and self._queue_full()
        if use_queue and (prototypes is None or len(prototypes) != len(heads)):
            raise SwAVError("the SwAV queue is active: pass prototypes=[K×D weight per head] to the loss")

        total = embedding.new_zeros((), dtype=torch.float32)
        entropy = embedding.new_zeros((), dtype=torch.float32)
        # one row-wise log-softmax per head, sliced per crop
        log_probs = [nnf.log_softmax(s.float() / self.temperature, dim=1).split(bs) for s in heads]
        for h, s in enumerate(heads):
            head_loss = embedding.new_zeros((), dtype=torch.float32)
            for i, c in enumerate(self.crops_for_assign):
                with torch.no_grad():
                    crop_scores = s[c * bs : (c + 1) * bs].detach()
                    if use_queue:
                        weight = prototypes[h].detach()
                        if hasattr(weight, "full_tensor"):  # FSDP2-sharded prototypes
                            weight = weight.full_tensor()
                        queue_scores = self.queue[i].to(weight.dtype) @ weight.t()
                        crop_scores = torch.cat([queue_scores.to(crop_scores.dtype), crop_scores])
                    q = sinkhorn_knopp(crop_scores, self.epsilon, self.sinkhorn_iterations, self.group)[-bs:]
                    entropy += code_entropy_ratio(q)
                    if iteration < self.hard_codes_iters:  # warm-up: one-hot argmax of the Sinkhorn codes
                        q = nnf.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
                sub = sum(-(q * log_probs[h][p]).sum(dim=1).mean() for p in range(self.num_crops) if p != c)
                head_loss = head_loss + sub / (self.num_crops - 1)
            total = total + head_loss / len(self.crops_for_assign)
        first = self.crops_for_assign[0]
        self.stats = {
            "embedding_cosine": mean_pairwise_cosine(embedding.detach()[first * bs : (first + 1) * bs]),
            "code_entropy": entropy / (len(heads) * len(self.crops_for_assign)),
        }
        if self.queue_length > 0:
            self._enqueue(embedding.detach(), bs)
        return total / len(heads)

    def _queue_full(self) -> bool:
        return int(self.queue_filled) >= self.queue_length

    @torch.no_grad()
    def _enqueue(self, embedding: torch.Tensor, bs: int) -> None:
        """Shift the queue by one batch and put this batch's assignment-crop embeddings in front."""
        keep = max(self.queue_length - bs, 0)
        for i, c in enumerate(self.crops_for_assign):
            new = embedding[c * bs : (c + 1) * bs][: self.queue_length].to(self.queue.dtype)
            self.queue[i, bs : bs + keep] = self.queue[i, :keep].clone()
            self.queue[i, : new.shape[0]] = new
        self.queue_filled.fill_(min(int(self.queue_filled) + bs, self.queue_length))


def prototype_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter whose name contains "prototypes"."""
    return [(name, p) for name, p in model.named_parameters() if PROTOTYPES_KEY in name]


@torch.no_grad()
def normalize_prototypes_(model_or_weights: nn.Module | Iterable[torch.Tensor]) -> int:
    """L2-normalise each prototype row (dim 1 of every K×D prototype weight) in place; returns how many
    weights were normalised. Accepts a model (parameters named "*prototypes*") or the weights.

    FSDP2 parameters (DTensor) sharded on dim 0 or replicated are normalised shard-locally, which is
    exact because every row lives whole on one rank.
    """
    if isinstance(model_or_weights, nn.Module):
        weights = [p for _, p in prototype_parameters(model_or_weights)]
    else:
        weights = list(model_or_weights)
    for w in weights:
        local = w
        if hasattr(w, "to_local") and hasattr(w, "placements"):
            if any(pl.is_shard() and pl.dim != 0 for pl in w.placements):
                raise SwAVError(
                    f"prototype weight sharded as {w.placements}; shard prototypes on dim 0 (FSDP2 default) "
                    "so that each prototype row lives on one rank"
                )
            local = w.to_local()
        if local.ndim != 2:
            raise SwAVError(
                f"prototype weight has shape {tuple(local.shape)}; expected K×D (nn.Linear(D, K).weight)"
            )
        local.copy_(nnf.normalize(local.float(), dim=1).to(local.dtype))
    return len(weights)


class PrototypeFreezer:
    """Keeps the prototypes fixed for the first `n_iters` iterations (313 in SEER) by dropping their
    gradients (``grad = None``) between backward and the optimizer step; the optimizer then skips them
    entirely (no momentum, no weight decay), as VISSL's ``TEMP_FROZEN_PARAMS_ITER_MAP`` does."""

    def __init__(self, n_iters: int) -> None:
        if n_iters < 0:
            raise ConfigError(f"swav.freeze_prototypes_iters must be >= 0, got {n_iters}")
        self.n_iters = n_iters

    def frozen(self, iteration: int) -> bool:
        return iteration < self.n_iters

    def __call__(self, model: nn.Module, iteration: int) -> bool:
        """Call after backward, before ``optimizer.step()``; returns whether the prototypes were frozen."""
        if not self.frozen(iteration):
            return False
        params = prototype_parameters(model)
        if not params:
            raise SwAVError(
                "no parameter name contains 'prototypes'; build the model with seer.models.build_swav_model "
                "or set swav.freeze_prototypes_iters=0"
            )
        for _, p in params:
            p.grad = None
        return True
