"""Parameter counts, forward FLOPs and sizes of every preset, computed on the meta device.

FLOPs follow reference/perf_baseline.md: `torch.utils.flop_counter.FlopCounterMode` on a forward
pass only (1 multiply-add = 2 FLOPs; BN, ReLU and pooling are not counted). Training costs about
3× the forward. Nothing is allocated, so rg10b costs the same as rg-tiny.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seer.models.heads import SwAVHead
from seer.models.presets import PRESETS, ModelPreset, StageSpec, get_preset
from seer.models.regnet import SeerRegNet
from seer.models.swav_model import build_swav_model

RESOLUTIONS: tuple[int, ...] = (96, 160, 224, 384)
# VISSL's default SwAV head (`configs/config/pretrain/swav/models/*.yaml`), which the published
# 156M / 693M counts include instead of the released heads (seer_spec §1.5).
VISSL_DEFAULT_EMBEDDING = 128
VISSL_DEFAULT_PROTOTYPES = 3000


@dataclass(frozen=True)
class ModelStats:
    """Sizes and forward cost of one preset. FLOPs are per image; sizes count parameters only."""

    name: str
    preset: ModelPreset
    feature_dim: int
    embedding_dim: int
    stages: tuple[StageSpec, ...]
    stage_params: tuple[int, ...]
    trunk_params: int
    head_params: int
    prototype_params: int
    total_params: int
    trunk_gflops: dict[int, float]
    head_gflops: float
    fp32_bytes: int
    bf16_bytes: int
    published_count: int | None
    published_includes: str

    def to_dict(self) -> dict:
        """JSON-ready dict (resolution keys become strings)."""
        out = asdict(self)
        out["trunk_gflops"] = {str(r): g for r, g in self.trunk_gflops.items()}
        return out


def forward_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of `module` on `inputs` (works on meta tensors)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def trunk_forward_flops(trunk: SeerRegNet, resolution: int) -> int:
    """Forward FLOPs of `trunk` on one `resolution`² image (free on a meta-device trunk).

    Blocks after the first in a stage have identical shapes, so each stage counts its first two
    blocks and multiplies the second (about 3× faster than a full pass on rg10b; same number).
    """
    x = torch.empty(1, 3, resolution, resolution, device=next(trunk.parameters()).device)
    total, x = _count(trunk.stem, x)
    for stage in trunk.trunk_output.children():
        blocks = list(stage.children())
        flops, x = _count(blocks[0], x)
        total += flops
        if len(blocks) > 1:
            flops, x = _count(blocks[1], x)
            total += flops * (len(blocks) - 1)
    return total


def _count(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(x)
    return counter.get_total_flops(), y


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_count(n: int) -> str:
    """Human parameter count: 99.84K, 141.33M, 9.32B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def format_bytes(n: int) -> str:
    """Human size in binary units: 390.0 KiB, 2.87 GiB."""
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def model_stats(name: str, resolutions: tuple[int, ...] = RESOLUTIONS) -> ModelStats:
    """Counts, FLOPs and sizes of preset `name`, from a meta-device model (allocates nothing).

    Results are cached per preset and resolutions; treat them as read-only.
    """
    return _stats(get_preset(name), tuple(resolutions))


@functools.lru_cache(maxsize=64)
def _stats(preset: ModelPreset, resolutions: tuple[int, ...]) -> ModelStats:
    name = preset.name
    model = build_swav_model(name, device="meta").eval()
    trunk_params = _numel(model.trunk)
    proto_params = _numel(model.head.prototypes)
    head_params = _numel(model.head) - proto_params
    total = trunk_params + head_params + proto_params
    gflops = {r: trunk_forward_flops(model.trunk, r) / 1e9 for r in resolutions}
    head_gflops = forward_flops(model.head, torch.empty(1, model.head.in_dim, device="meta")) / 1e9

    w = model.trunk.feature_dim
    with torch.device("meta"):
        default_head = SwAVHead([w, w, VISSL_DEFAULT_EMBEDDING], False, [VISSL_DEFAULT_PROTOTYPES])
    candidates = {
        "trunk": (trunk_params, "trunk only"),
        "trunk+head": (total, f"trunk + this head + {'+'.join(map(str, preset.num_prototypes))} prototypes"),
        "trunk+vissl_default_head": (
            trunk_params + _numel(default_head),
            f"trunk + VISSL default head [W,W,{VISSL_DEFAULT_EMBEDDING}] + {VISSL_DEFAULT_PROTOTYPES} prototypes",
        ),
    }
    note = f"; {preset.published_note}" if preset.published_note else ""
    if preset.published_params is None:
        count, includes = None, "-"
    elif preset.published_basis is None:
        trunk_n, head_n, vissl_n = (format_count(n) for n, _ in candidates.values())
        tried = f"trunk {trunk_n}; + head + prototypes {head_n}; + VISSL default head {vissl_n}"
        count, includes = None, f"NOT reproducible ({tried}){note}"
    else:
        count, text = candidates[preset.published_basis]
        includes = f"{format_count(count)} = {text}{note}"

    return ModelStats(
        name=name,
        preset=preset,
        feature_dim=model.trunk.feature_dim,
        embedding_dim=model.head.embedding_dim,
        stages=tuple(preset.stages()),
        stage_params=tuple(_numel(stage) for stage in model.trunk.trunk_output.children()),
        trunk_params=trunk_params,
        head_params=head_params,
        prototype_params=proto_params,
        total_params=total,
        trunk_gflops=gflops,
        head_gflops=head_gflops,
        fp32_bytes=4 * total,
        bf16_bytes=2 * total,
        published_count=count,
        published_includes=includes,
    )


def all_stats(resolutions: tuple[int, ...] = RESOLUTIONS) -> list[ModelStats]:
    """`model_stats` of every preset, in `PRESETS` order."""
    return [model_stats(name, resolutions) for name in PRESETS]
