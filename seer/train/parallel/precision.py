"""Mixed precision: the compute dtype, FSDP2's policies, fp32 BatchNorm affine parameters under a
low-precision policy, local mixed precision under autocast for one process (nothing to shard), and
the dynamic loss scale fp16 needs (`LossScaler`)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from seer.config import SeerConfig
from seer.models.swav_model import SwAVModel

_BN = nn.modules.batchnorm._BatchNorm


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(cfg: SeerConfig, device: torch.device) -> torch.dtype:
    """Compute dtype: `auto` is bf16 on GPU, fp32 on CPU; else `train.precision` (fp32, bf16, fp16)."""
    precision = cfg.train.precision
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


def fsdp_policies(param_dtype: torch.dtype) -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """(main, prototypes) FSDP2 policies. Prototypes gather and reduce in fp32 (VISSL wraps them with
    `mixed_precision=False`, seer_spec §2.4); the rest computes in `param_dtype` and reduces in fp32,
    except fp16, which reduces in fp16 as SEER 10B did (`fp32_reduce_scatter: False`, seer_spec §3.2)."""
    reduce = torch.float16 if param_dtype == torch.float16 else torch.float32
    main = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce)
    return main, MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


class LossScaler:
    """Dynamic loss scaling for fp16 (torch's GradScaler rule: start 2^16, halve and skip the step on an
    inf/NaN gradient, double after 2000 clean steps), on local shards, so it works on FSDP2 DTensor
    gradients; the found-inf flag is all-reduced so every rank skips the same steps. One host sync per
    step (skip or not), as apex and GradScaler."""

    def __init__(
        self, device: torch.device, init_scale: float = 2.0**16, growth_interval: int = 2000
    ) -> None:
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.growth_interval = growth_interval

    def scaled(self, loss: Tensor) -> Tensor:
        return loss * self.scale

    def unscale_(self, params: Iterable[Tensor]) -> bool:
        """Divide every gradient by the scale; True when all are finite (on every rank)."""
        found_inf = torch.zeros(1, dtype=torch.float32, device=self.scale.device)
        inv = self.scale.double().reciprocal().float()
        grads = [_local(p.grad) for p in params if p.grad is not None]
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for g in grads:
            by_kind.setdefault((g.device, g.dtype), []).append(g)
        for group in by_kind.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
        torch._amp_update_scale_(self.scale, self.growth_tracker, found_inf, 2.0, 0.5, self.growth_interval)
        return not bool(found_inf.item())

    def state_dict(self) -> dict[str, Tensor]:
        return {"scale": self.scale.clone(), "growth_tracker": self.growth_tracker.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def use_channels_last(cfg: SeerConfig, device: torch.device) -> bool:
    mode = cfg.train.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class _Fp32AffineNorm:
    """BatchNorm mixin: run with fp32 affine parameters when FSDP gathered them in bf16 or fp16.

    The kernels accept bf16/fp16 activations with fp32 weight, bias and running statistics (as under
    autocast), not bf16 weights with fp32 statistics. The cast is part of the module's own forward,
    so activation-checkpoint recomputation repeats it exactly.
    """

    def forward(self, x: Tensor) -> Tensor:
        params = self._parameters
        low = {
            n: p for n in ("weight", "bias") if (p := params.get(n)) is not None and p.dtype != torch.float32
        }
        for name, p in low.items():
            params[name] = p.float()
        try:
            return super().forward(x)
        finally:
            params.update(low)


_FP32_AFFINE: dict[type, type] = {}


def apply_fp32_norms(model: nn.Module) -> int:
    """Give every BatchNorm fp32 affine parameters at compute time (see `_Fp32AffineNorm`); returns how many."""
    count = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, _BN) and not isinstance(module, _Fp32AffineNorm):
            if cls not in _FP32_AFFINE:
                _FP32_AFFINE[cls] = type(f"Fp32Affine{cls.__name__}", (_Fp32AffineNorm, cls), {})
            module.__class__ = _FP32_AFFINE[cls]
            count += 1
    return count


class _AutocastForward:
    """Model mixin: `forward` and `padded_forward` run under autocast to `compute_dtype` (set by `apply_local_precision`)."""

    compute_dtype: torch.dtype

    def forward(self, *args: object, **kwargs: object) -> object:
        with autocast_context(self):
            return super().forward(*args, **kwargs)

    def padded_forward(self, *args: object, **kwargs: object) -> object:
        with autocast_context(self):
            return super().padded_forward(*args, **kwargs)


class _Fp32Prototypes(nn.Linear):
    """A prototype matrix that scores in fp32 under autocast (its scores feed Sinkhorn)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


_AUTOCAST: dict[type, type] = {}


def autocast_context(model: nn.Module) -> AbstractContextManager:
    """Autocast to the model's compute dtype when `apply_local_precision` gave it one, else a no-op."""
    dtype = getattr(model, "compute_dtype", None)
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype)


def apply_local_precision(model: SwAVModel, param_dtype: torch.dtype) -> None:
    """Unsharded mixed precision (see the module docstring); the parameters stay fp32."""
    if param_dtype == torch.float32:
        return
    cls = type(model)
    if cls not in _AUTOCAST:
        _AUTOCAST[cls] = type(f"Autocast{cls.__name__}", (_AutocastForward, cls), {})
    model.__class__ = _AUTOCAST[cls]
    model.compute_dtype = param_dtype
    for proto in getattr(model.head, "prototypes", model.head.modules()):  # or a classifier's Linear
        if type(proto) is nn.Linear:
            proto.__class__ = _Fp32Prototypes
