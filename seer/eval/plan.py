"""Evaluation memory plan: per-GPU memory of frozen-trunk inference, sharded or whole, at 224 and 384 px.

Per GPU, for a trunk of P parameters evaluated on W GPUs at batch B and resolution R:

- parameters: sharded (W > 1), each rank keeps fp32 shards, P·4/W bytes (`seer.eval.sharded`); whole
  (W = 1), the fp32 trunk P·4 plus the bf16 copies autocast keeps for the forward, P·2.
- gathered units (sharded only): FSDP2 all-gathers a unit in bf16 for its forward and prefetches the
  next, so two of the largest units, 2·U·2 bytes.
- activations: no autograd graph in inference, so a few tensors are live at once; estimated as
  `ACTIVATION_FACTOR` × the largest single layer output (measured by a meta-device forward at R) × B
  in bf16.
- `RUNTIME_BYTES` for the CUDA context, cuDNN workspaces and the allocator's slack.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from seer.models import build_trunk, get_preset

ACTIVATION_FACTOR = 3  # a layer's input, its output and one branch (the SE or shortcut) live at once
RUNTIME_BYTES = 2 * 2**30
GIB = 2**30


@dataclass(frozen=True)
class EvalMemory:
    """One evaluation set-up's per-GPU memory, in bytes."""

    preset: str
    gpus: int
    gpu_bytes: int
    resolution: int
    batch: int
    params: int
    gathered: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.gathered + self.activations + RUNTIME_BYTES

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes


@cache
def _trunk_sizes(preset: str) -> tuple[int, int]:
    """(trunk parameters, largest FSDP unit's parameters) of `preset`, from a meta-device trunk."""
    from seer.train.parallel.fsdp import trunk_units

    trunk = build_trunk(get_preset(preset).name, device="meta")
    total = sum(p.numel() for p in trunk.parameters())
    claimed: set[int] = set()
    owned = []
    for unit in trunk_units(trunk, prefix=""):  # innermost first: a block's large convs are their own units
        mine = [p for p in unit.module.parameters() if id(p) not in claimed]
        claimed.update(id(p) for p in mine)
        owned.append(sum(p.numel() for p in mine))
    return total, max(owned)


@cache
def largest_activation(preset: str, resolution: int) -> int:
    """Elements of the largest single layer output for one image at `resolution` (meta forward)."""
    trunk = build_trunk(get_preset(preset).name, device="meta").eval()
    largest = 0

    def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())

    for module in trunk.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(record)
    with torch.no_grad():
        trunk(torch.empty(1, 3, resolution, resolution, device="meta"), taps=["avgpool"])
    return largest


def eval_memory(preset: str, gpus: int, gpu_gib: float, resolution: int, batch: int) -> EvalMemory:
    """Per-GPU memory of evaluating `preset` on `gpus` GPUs of `gpu_gib` GiB (see the module docstring)."""
    total, unit = _trunk_sizes(preset)
    sharded = gpus > 1
    return EvalMemory(
        preset=get_preset(preset).name,
        gpus=gpus,
        gpu_bytes=int(gpu_gib * GIB),
        resolution=resolution,
        batch=batch,
        params=-(-total * 4 // gpus) if sharded else total * 6,
        gathered=2 * unit * 2 if sharded else 0,
        activations=ACTIVATION_FACTOR * largest_activation(preset, resolution) * batch * 2,
    )


def format_eval_plan(rows: list[EvalMemory]) -> str:
    """A table: one row per set-up, GiB per GPU by part, and whether it fits."""
    header = f"{'preset':<8} {'GPUs':>4} {'GiB/GPU':>7} {'px':>4} {'batch':>5} {'params':>7} {'gathered':>8} "
    header += f"{'activ.':>7} {'total':>7}  fits"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.preset:<8} {r.gpus:>4} {r.gpu_bytes / GIB:>7.0f} {r.resolution:>4} {r.batch:>5} "
            f"{r.params / GIB:>7.1f} {r.gathered / GIB:>8.1f} {r.activations / GIB:>7.1f} {r.total / GIB:>7.1f}  "
            + ("yes" if r.fits else "NO")
        )
    lines.append(
        "params: fp32 shards (P*4/GPUs) when sharded, fp32 trunk + bf16 autocast copies (P*6) on one GPU; "
        "gathered: two bf16 FSDP units; activations: 3 x largest layer output x batch, bf16; "
        f"+{RUNTIME_BYTES / GIB:.0f} GiB CUDA runtime"
    )
    return "\n".join(lines)
