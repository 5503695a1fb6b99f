"""SGD + LARC with FSDP-aware norms, LR scaling and the warmup + cosine schedule (seer_spec §3.1).

LARC (VISSL ``LARC_FSDP``, scale mode): for each parameter with ‖p‖ > 0 and ‖g‖ > 0,
``adaptive = η‖p‖ / (‖g‖ + wd‖p‖ + eps)`` and ``g ← (g + wd·p)·adaptive``; then plain SGD (momentum
0.9) runs with the scheduled LR and weight decay removed. Norms are over the *whole* parameter: for
FSDP2 / DTensor parameters the local sums of squares are all-reduced over the sharding process
groups, so a parameter split across ranks gets exactly the update it would get unsplit.

A parameter with ‖p‖ = 0 or ‖g‖ = 0 is left unscaled and undecayed, as apex's ``LARC`` (and so VISSL)
does: its step is the raw ``lr·g``, at the full LR. SEER relies on that only for BN biases; a zero bias
feeding the embedding would jump on step 0 (seer issue 11), so the SwAV head keeps PyTorch's non-zero
default bias (`seer.models.init`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.sgd import sgd as sgd_update

from seer.errors import ConfigError


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds (a DTensor's local tensor, or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def _reduce_groups(t: torch.Tensor) -> tuple[dist.ProcessGroup, ...]:
    """Process groups over which a DTensor's local sums must be added (its Shard / Partial mesh dims)."""
    if not (hasattr(t, "placements") and hasattr(t, "device_mesh")):
        return ()
    mesh = t.device_mesh
    return tuple(mesh.get_group(i) for i, pl in enumerate(t.placements) if pl.is_shard() or pl.is_partial())


def global_sq_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of each (possibly sharded) tensor, in fp32 (fp64 if any tensor is), one all-reduce
    per process group. Local norms come from one multi-tensor kernel per (device, dtype) and nothing
    waits for the host."""
    if not tensors:
        return torch.zeros(0)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    local = [_local(t).detach() for t in tensors]
    sq = _foreach_sq_norms([t if t.dtype == dtype else t.to(dtype) for t in local])
    by_groups: dict[tuple[dist.ProcessGroup, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        by_groups.setdefault(_reduce_groups(t), []).append(i)
    for groups, idx in by_groups.items():
        if not groups:
            continue
        part = sq if len(idx) == len(tensors) else sq[idx]
        for group in groups:
            dist.all_reduce(part, group=group)
        if part is not sq:
            sq[idx] = part
    return sq


def _foreach_sq_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norms as one 1-d tensor, from one multi-tensor norm per (device, dtype) group."""
    groups = _by_device_dtype(tensors)
    if len(groups) == 1:
        return torch.stack(torch._foreach_norm(tensors)).square()
    out = torch.empty(len(tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    for idx in groups.values():
        norms = torch.stack(torch._foreach_norm([tensors[i] for i in idx])).to(out.device)
        out[torch.tensor(idx, device=out.device)] = norms.square()
    return out


def _by_device_dtype(tensors: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


class LARC(torch.optim.SGD):
    """SGD with LARC trust-ratio scaling (scale mode unless ``clip``), weight decay folded into the
    gradient before scaling, and norms taken over whole (sharded) parameters.

    One step is: one multi-tensor norm pass over parameters and gradients together (one all-reduce for
    sharded ones), the scaling as two multi-tensor ops, then torch's functional SGD on the local shards
    (no DTensor dispatch), fused on CUDA unless ``fused=False``. Momentum buffers keep the parameters'
    type (DTensor under FSDP2), so optimizer checkpoints are unchanged.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        clip: bool = False,
        fused: bool | None = None,
    ) -> None:
        if trust_coefficient <= 0 or eps < 0:
            raise ConfigError(
                f"LARC needs trust_coefficient > 0 and eps >= 0, got {trust_coefficient} and {eps}"
            )
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.trust_coefficient = trust_coefficient
        self.eps = eps
        self.clip = clip
        self.fused = fused

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._scale(params, group["weight_decay"], group["lr"])
                self._sgd(params, group)
        return loss

    def _scale(self, params: list[torch.Tensor], wd: float, lr: float) -> None:
        """``g ← (g + wd·p)·η‖p‖ / (‖g‖ + wd‖p‖ + eps)`` where ‖p‖, ‖g‖ > 0; else g is left as is."""
        n = len(params)
        norms = global_sq_norms([*params, *(p.grad for p in params)]).sqrt()
        p_norm, g_norm = norms[:n], norms[n:]
        ok = (p_norm > 0) & (g_norm > 0)
        adaptive = self.trust_coefficient * p_norm / (g_norm + wd * p_norm + self.eps)
        if self.clip:
            adaptive = (adaptive / lr).clamp(max=1.0)
        adaptive = torch.where(ok, adaptive, torch.ones_like(adaptive))
        _scale_grads_(params, ok.to(p_norm.dtype) * wd, adaptive)

    def _sgd(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """torch's SGD update without weight decay (LARC folded it in), on the local shards."""
        local = [_local(p) for p in params]
        grads = [_local(p.grad) for p in params]
        momentum = group["momentum"]
        old = [self.state[p].get("momentum_buffer") for p in params] if momentum else []
        bufs = [None if b is None else _local(b) for b in old]
        fused = self.fused
        if fused is None:
            fused = all(t.is_cuda for t in local) and len(_by_device_dtype(local)) == 1
        sgd_update(
            local, grads, bufs, weight_decay=0.0, momentum=momentum, lr=group["lr"],
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
            foreach=None if fused else group["foreach"], fused=fused,
        )  # fmt: skip
        for p, was, buf in zip(params, old, bufs, strict=False):
            if was is None:  # created by this step from the local gradient: give it the parameter's type
                self.state[p]["momentum_buffer"] = _like(p, buf)


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`local` as a tensor of `param`'s kind: a DTensor with its mesh and placements, or `local` itself."""
    if hasattr(param, "placements") and hasattr(param, "device_mesh"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            local,
            param.device_mesh,
            param.placements,
            run_check=False,
            shape=param.shape,
            stride=param.stride(),
        )
    return local


def _scale_grads_(params: list[torch.Tensor], decay: torch.Tensor, adaptive: torch.Tensor) -> None:
    """``g_i ← (g_i + decay_i·p_i)·adaptive_i`` for every parameter, on local shards, with multi-tensor
    kernels per (device, dtype) of the gradients; the per-parameter factors stay on the device."""
    grads = [_local(p.grad) for p in params]
    for (device, dtype), idx in _by_device_dtype(grads).items():
        g = [grads[i] for i in idx]
        p = [_local(params[i]).detach() for i in idx]
        p = [t if t.dtype == dtype else t.to(dtype) for t in p]
        sel = torch.tensor(idx, device=decay.device) if len(idx) != len(grads) else None
        d = decay if sel is None else decay[sel]
        a = adaptive if sel is None else adaptive[sel]
        torch._foreach_addcmul_(g, p, d.to(device=device, dtype=dtype).unbind())
        torch._foreach_mul_(g, a.to(device=device, dtype=dtype).unbind())


_OPTIM_KEYS = ("lr", "momentum", "weight_decay", "larc", "larc_trust", "larc_eps", "larc_clip")


def build_optimizer(
    params_or_model: nn.Module | Iterable[torch.Tensor], optim_cfg: Any = None, **overrides: Any
) -> torch.optim.SGD:
    """SEER's optimizer: LARC-SGD over one parameter group holding every trainable parameter (biases and
    BN included, as in SEER), or plain SGD when ``larc`` is False.

    Settings come from defaults (lr 0.3, momentum 0.9, weight_decay 1e-5, larc True, larc_trust 0.001,
    larc_eps 1e-8, larc_clip False), then ``optim_cfg`` (e.g. ``SeerConfig.optim``: its attributes of
    those names; lr from ``start_lr``), then keyword ``overrides``. The LR is set per step by
    :class:`LRSchedule`.
    """
    settings: dict[str, Any] = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-5, "larc": True,
                                "larc_trust": 0.001, "larc_eps": 1e-8, "larc_clip": False}  # fmt: skip
    if optim_cfg is not None:
        start_lr = getattr(optim_cfg, "start_lr", None)
        settings["lr"] = settings["lr"] if start_lr is None else start_lr
        settings.update({k: getattr(optim_cfg, k) for k in _OPTIM_KEYS[1:] if hasattr(optim_cfg, k)})
    unknown = sorted(set(overrides) - set(_OPTIM_KEYS))
    if unknown:
        raise ConfigError(f"unknown optimizer setting(s) {unknown}; allowed: {list(_OPTIM_KEYS)}")
    settings.update(overrides)
    if isinstance(params_or_model, nn.Module):
        params = [p for p in params_or_model.parameters() if p.requires_grad]
    else:
        params = [p for p in params_or_model if p.requires_grad]
    if not params:
        raise ConfigError(
            "no trainable parameters given to the optimizer; check that the model requires grad"
        )
    if settings["larc"]:
        return LARC(params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"],
                    trust_coefficient=settings["larc_trust"], eps=settings["larc_eps"], clip=settings["larc_clip"])  # fmt: skip
    return torch.optim.SGD(
        params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"]
    )


def scaled_lr(base_lr: float, global_batch: int, base_batch: int = 256) -> float:
    """Linear LR scaling: base_lr per base_batch images (0.3 per 256: 8192 → 9.6, 7936 → 9.3)."""
    if global_batch < 1 or base_batch < 1:
        raise ConfigError(
            f"batch sizes must be >= 1, got global_batch={global_batch}, base_batch={base_batch}"
        )
    return base_lr * global_batch / base_batch


@dataclass(frozen=True)
class LRSchedule:
    """Per-step LR as VISSL's composite schedule (linear warmup, then cosine; ``interval_scaling:
    [rescaled, fixed]``): the warmup is linear from ``start_lr`` to ``peak_lr`` over its own interval,
    and the cosine from ``peak_lr`` to ``peak_lr · final_ratio`` is evaluated on whole-run progress
    ``step / total_steps`` — so at the end of the warmup the LR steps down to the cosine's value there
    (seer2021: 9.6 → 9.50), as VISSL's does. ``warmup_steps == 0`` is a plain cosine over the run."""

    peak_lr: float
    total_steps: int
    warmup_steps: int
    start_lr: float = 0.3
    final_ratio: float = 0.001

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(
                f"LR schedule needs total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps}; shorten optim.warmup_iters"
            )
        if self.peak_lr <= 0 or self.start_lr < 0 or not 0 <= self.final_ratio <= 1:
            raise ConfigError(
                f"LR schedule needs peak_lr > 0, start_lr >= 0 and 0 <= final_ratio <= 1, got "
                f"{self.peak_lr}, {self.start_lr}, {self.final_ratio}"
            )

    @classmethod
    def from_config(
        cls, optim_cfg: Any, global_batch: int, total_steps: int, batch_per_node: int | None = None
    ) -> LRSchedule:
        """From an ``OptimConfig`` as VISSL's ``infer_learning_rate`` resolves it: peak =
        scaled_lr(base_lr, global_batch, base_batch); warmup = warmup_iters, or round(warmup_fraction ·
        total_steps) when warmup_iters is None; start = ``start_lr`` when set, else VISSL's rule
        ``resolve_linear_schedule``: base_lr · batch_per_node / base_batch (0.15 for 16 img/GPU × 8 GPUs),
        and on one node (batch_per_node ≥ global batch) a warmup that would not rise is dropped.
        ``batch_per_node`` defaults to the global batch (one node)."""
        peak = scaled_lr(optim_cfg.base_lr, global_batch, optim_cfg.base_batch)
        warmup = optim_cfg.warmup_iters
        if warmup is None:
            warmup = round(optim_cfg.warmup_fraction * total_steps)
        start = optim_cfg.start_lr
        if start is None:
            per_node = global_batch if batch_per_node is None else min(batch_per_node, global_batch)
            start = scaled_lr(optim_cfg.base_lr, per_node, optim_cfg.base_batch)
            if per_node >= global_batch and start >= peak:
                warmup = 0
        return cls(
            peak_lr=peak,
            total_steps=total_steps,
            warmup_steps=int(warmup),
            start_lr=start,
            final_ratio=optim_cfg.final_lr_ratio,
        )

    def __call__(self, step: int) -> float:
        step = min(max(step, 0), self.total_steps)
        if step < self.warmup_steps:
            return self.start_lr + (self.peak_lr - self.start_lr) * step / self.warmup_steps
        end = self.peak_lr * self.final_ratio
        return end + 0.5 * (self.peak_lr - end) * (1 + math.cos(math.pi * step / self.total_steps))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's LR for `step` (call before ``optimizer.step()``); returns it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
