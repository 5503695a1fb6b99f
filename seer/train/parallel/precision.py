"""Mixed precision: the compute dtype, fp32 BatchNorm affine parameters under FSDP2's bf16 policy,
and, for one process on a GPU (nothing to shard), local mixed precision under autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seer.config import SeerConfig
from seer.models.swav_model import SwAVModel

_BN = nn.modules.batchnorm._BatchNorm


def resolve_precision(cfg: SeerConfig, device: torch.device) -> torch.dtype:
    """Compute dtype: `auto` is bf16 on GPU, fp32 on CPU."""
    precision = cfg.train.precision
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def use_channels_last(cfg: SeerConfig, device: torch.device) -> bool:
    mode = cfg.train.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class _Fp32AffineNorm:
    """BatchNorm mixin: run with fp32 affine parameters when FSDP gathered them in bf16.

    The kernels accept bf16 activations with fp32 weight, bias and running statistics (as under
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
