"""SEER weight initialisation and meta-device materialisation, usable one submodule at a time.

Rules (VISSL `regnet_fsdp.init_weights`, seer_spec §1.1 item 9): Conv2d weight ~ N(0, sqrt(2 / (k·k·C_out))),
BatchNorm weight 1 / bias 0 (running stats reset), Linear weight ~ N(0, 0.01) / bias 0; no zero-init of
the last BN. Conv biases (only the SE convs have one) keep PyTorch's default U(±1/sqrt(fan_in)), as
in VISSL, which never re-initialises them.

These rules are the *trunk's*. VISSL applies them in the RegNet trunk only; its SwAV head
(`swav_prototypes_head.py`) keeps PyTorch's default init: Linear weight and bias
U(±1/sqrt(fan_in)), BatchNorm weight 1 / bias 0. Modules marked with :func:`keep_torch_default_init`
(the SwAV head marks all of its own) get that default instead, drawn from the same per-name generators.
A zero Linear bias in the head is not harmless: LARC leaves a zero-norm parameter's step unscaled, so
on step 0 it jumps at the full LR and every embedding becomes ≈ normalize(bias) (seer issue 11).

With a `seed`, every tensor draws from its own generator seeded by `(seed, qualified name)`, so a
model gets the same weights whether it is initialised whole or unit by unit (pass the unit's
qualified name as `prefix`), on any number of processes.
"""

from __future__ import annotations

import hashlib
import math
from typing import TypeVar

import torch
from torch import nn

from seer.errors import ConfigError

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_TORCH_DEFAULT = "_seer_torch_default_init"
M = TypeVar("M", bound=nn.Module)


def keep_torch_default_init(module: M) -> M:
    """Mark `module` and its children for PyTorch's default init instead of the SEER trunk rules."""
    for sub in module.modules():
        setattr(sub, _TORCH_DEFAULT, True)
    return module


def _generator(seed: int | None, name: str, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return gen


def _init_one(module: nn.Module, prefix: str, seed: int | None) -> None:
    """Initialise the parameters and buffers `module` owns directly (not its children's)."""
    own_params = dict(module.named_parameters(recurse=False))
    if any(t.is_meta for t in [*own_params.values(), *module.buffers(recurse=False)]):
        return
    if not own_params and not isinstance(module, _BN_TYPES):
        return

    def gen(pname: str) -> torch.Generator | None:
        return _generator(seed, prefix + pname, own_params[pname].device)

    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            nn.init.normal_(
                module.weight, 0.0, math.sqrt(2.0 / (kh * kw * module.out_channels)), generator=gen("weight")
            )
            if module.bias is not None:
                fan_in = module.in_channels // module.groups * kh * kw
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=gen("bias"))
        elif isinstance(module, _BN_TYPES):
            if module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if module.track_running_stats:
                module.reset_running_stats()
        elif isinstance(module, nn.Linear) and getattr(module, _TORCH_DEFAULT, False):
            bound = 1.0 / math.sqrt(module.in_features)  # nn.Linear.reset_parameters, seeded per name
            nn.init.uniform_(module.weight, -bound, bound, generator=gen("weight"))
            if module.bias is not None:
                nn.init.uniform_(module.bias, -bound, bound, generator=gen("bias"))
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01, generator=gen("weight"))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            raise ConfigError(
                f"cannot initialise {type(module).__name__} at {prefix or '<root>'!r}: SEER init knows "
                "Conv2d, BatchNorm and Linear; initialise this module yourself before materialising"
            )


def init_weights_(module: M, recurse: bool = True, seed: int | None = None, prefix: str = "") -> M:
    """Initialise `module` in place with the SEER rules; meta tensors are left alone.

    `recurse=False` touches only the tensors `module` owns directly (for per-unit materialisation).
    `seed=None` draws from torch's global RNG; an int makes each tensor depend only on
    `(seed, prefix + its name)`. `prefix` is the module's qualified name in the full model
    (e.g. `"trunk.trunk_output.block3"`; a trailing dot is optional).
    """
    if prefix and not prefix.endswith("."):
        prefix += "."
    modules = module.named_modules(prefix=prefix.rstrip(".")) if recurse else [(prefix.rstrip("."), module)]
    for name, sub in modules:
        _init_one(sub, f"{name}." if name else "", seed)
    return module


def materialize_(
    module: M,
    device: torch.device | str = "cpu",
    seed: int | None = 0,
    prefix: str = "",
    recurse: bool = True,
) -> M:
    """Allocate `module`'s (meta) tensors on `device` and initialise them: `to_empty` + `init_weights_`.

    Call it on the whole model or on one unit at a time (with the unit's qualified name as
    `prefix`, and `recurse=False` for a unit whose children are materialised separately).
    """
    module.to_empty(device=device, recurse=recurse)
    return init_weights_(module, recurse=recurse, seed=seed, prefix=prefix)


def place_(module: M, device: torch.device | str | None = None, seed: int | None = 0, prefix: str = "") -> M:
    """Materialise a meta-device `module` (named `prefix` in the full model) on `device` (None: torch's
    current default device), or leave it on meta when that is the target."""
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type != "meta":
        materialize_(module, target, seed=seed, prefix=prefix)
    return module
