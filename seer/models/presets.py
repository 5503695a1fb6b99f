"""The SEER model zoo: RegNetY generator numbers, SwAV heads and what the published counts mean.

Numbers come from the VISSL configs that define the released SEER models (reference/seer_spec.md
§1.2 trunks, §2.1 heads, §3.2 activation-checkpoint groups, §1.5 published parameter counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.models.regnet import BlockParams

from seer.errors import ConfigError

# How a published parameter count is reached from our modules (see `flops.model_stats`):
#   "trunk"                    trunk only
#   "trunk+head"               trunk + this preset's SwAV MLP + its prototypes
#   "trunk+vissl_default_head" trunk + VISSL's default SwAV head [W, W, 128] (no BN) + 3000 prototypes
#   None                       no module combination we know reproduces the number
PublishedBasis = Literal["trunk", "trunk+head", "trunk+vissl_default_head"]
AVGPOOL_FEATURE = ("avgpool", "avg")  # (tap, pool): the globally average-pooled last stage


@dataclass(frozen=True)
class StageSpec:
    """One RegNet stage as built: output width, number of blocks, groups and group width of the 3×3 conv."""

    width: int
    depth: int
    group_width: int
    groups: int


_GENERATOR = ("depth", "w_0", "w_a", "w_m", "group_width", "bottleneck_multiplier", "se_ratio")


@dataclass(frozen=True)
class ModelPreset:
    """A SEER model: RegNetY generator parameters (§1.1), SwAV head (§2.1) and bookkeeping."""

    name: str
    description: str
    # RegNetY generator (torchvision `BlockParams.from_init_params` arguments).
    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.25
    stem_width: int = 32
    # SwAV head: MLP dims from the trunk feature width to the embedding, BN after hidden Linears,
    # then one prototype matrix (embedding → K, no bias) per entry of `num_prototypes`.
    head_dims: tuple[int, ...] = ()
    head_use_bn: bool = False
    num_prototypes: tuple[int, ...] = (16000,)
    # Activation-checkpoint groups: per stage, the exclusive end indices of consecutive block
    # groups; an empty list leaves that stage unchecked (VISSL `stage_checkpoints`).
    stage_checkpoints: tuple[tuple[int, ...], ...] = ()
    # Linear-probe feature (tap, pool) SEER published for the model [VISSL MODEL_ZOO.md; benchmark/
    # linear_image_classification/imagenet1k/models/regnet{32Gf,64Gf_3,128Gf,256Gf_1,10B}.yaml; seer_spec
    # §5.1]: 32Gf "res5" = res5 AdaptiveAvgPool (3, 1) → 11136; 64–256Gf "res5avg" = avgpool; 10B "res4" =
    # res4 AdaptiveAvgPool (2, 1). Models SEER did not publish (rg-tiny, rg-small) take avgpool too.
    linear_feature: tuple[str, str] = AVGPOOL_FEATURE
    published_params: str | None = None
    published_basis: PublishedBasis | None = None
    published_note: str = ""
    notes: str = ""

    def block_params(self) -> BlockParams:
        """torchvision `BlockParams` for this trunk.

        Computed on the CPU even inside a `torch.device("meta")` context: torchvision's generator
        calls `.tolist()` on tensors, which fails for meta tensors.
        """
        with torch.device("cpu"):
            return BlockParams.from_init_params(**{k: getattr(self, k) for k in _GENERATOR})

    def stages(self) -> list[StageSpec]:
        """Per-stage width, depth and 3×3-conv grouping, as the trunk builds them."""
        bp = self.block_params()
        out = []
        for width, depth, gw, b in zip(
            bp.widths, bp.depths, bp.group_widths, bp.bottleneck_multipliers, strict=True
        ):
            w_b = round(width * b)
            out.append(StageSpec(width=width, depth=depth, group_width=gw, groups=w_b // gw))
        return out

    @property
    def feature_dim(self) -> int:
        """Width of the pooled trunk features (the first head dim)."""
        return self.stages()[-1].width

    def checkpoint_groups(self) -> list[list[range]]:
        """Per stage, the block-index ranges wrapped together for activation checkpointing.

        `rg10b`'s `[[2], [7], [9, 17], []]` gives `[[range(0, 2)], [range(0, 7)],
        [range(0, 9), range(9, 17)], []]`: stage 4 is not checkpointed.
        """
        stages = self.stages()
        if len(self.stage_checkpoints) != len(stages):
            raise ConfigError(
                f"preset {self.name!r}: stage_checkpoints has {len(self.stage_checkpoints)} entries but the "
                f"trunk has {len(stages)} stages; give one list of block end indices per stage"
            )
        groups: list[list[range]] = []
        for i, (ends, stage) in enumerate(zip(self.stage_checkpoints, stages, strict=True), start=1):
            if ends and (list(ends) != sorted(set(ends)) or ends[0] <= 0 or ends[-1] != stage.depth):
                raise ConfigError(
                    f"preset {self.name!r}: stage {i} checkpoint ends {list(ends)} must increase strictly "
                    f"and end at the stage depth {stage.depth} (or be empty for no checkpointing)"
                )
            starts = (0, *ends)[: len(ends)]
            groups.append([range(s, e) for s, e in zip(starts, ends, strict=True)])
        return groups


_SEER_2021_PROTOS_NOTE = (
    "16,000 prototypes assumed: the released checkpoint's prototype count is UNVERIFIED for this "
    "model (seer_spec §2.1, §7.3)."
)

_OURS_2021 = _SEER_2021_PROTOS_NOTE + " Checkpoint groups are ours (VISSL's 2021 split is UNVERIFIED)."
_FROM_10B = "Checkpoint groups copied from rg10b (same stage depths)."
_DEFAULT_HEAD = {"published_basis": "trunk+vissl_default_head", "published_note": "not the released head"}

# One model a row (timm style): name, description, RegNetY generator (depth, w_0, w_a, w_m, group
# width), then the SwAV head, the activation-checkpoint groups and the bookkeeping.
# fmt: off
PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    ModelPreset("rg-tiny", "Tiny RegNetY for tests and the CPU demo (64 px + 32 px crops train in seconds).",
                6, 16, 16.0, 2.0, 8, stem_width=16, head_dims=(128, 64, 32), head_use_bn=True,
                num_prototypes=(64,), stage_checkpoints=((1,), (1,), (3,), ()), notes="Not a SEER model."),
    ModelPreset("rg-small", "RegNetY-400MF shape with SEER's SE/stem settings, for small GPU runs.",
                16, 48, 27.89, 2.09, 8, head_dims=(440, 2048, 128), head_use_bn=True, num_prototypes=(3000,),
                stage_checkpoints=((1,), (3,), (6,), ()),
                notes="Not a SEER model; head is VISSL's ResNet-50 SwAV default shape (BN, 128-d, 3000 prototypes)."),
    ModelPreset("rg32gf", "SEER 2021 RegNetY-32GF (= torchvision regnet_y_32gf, timm regnety_320).",
                20, 232, 115.89, 2.53, 232, head_dims=(3712, 4096, 4096, 256), head_use_bn=True,
                stage_checkpoints=((2,), (5,), (6, 12), ()), linear_feature=("res5", "adaptive:3x1"),
                published_params="156M", **_DEFAULT_HEAD, notes=_OURS_2021),
    ModelPreset("rg64gf", "SEER 2021 RegNetY-64GF (= timm regnety_640).",
                20, 352, 147.48, 2.4, 328, head_dims=(4920, 8192, 8192, 256), head_use_bn=False,
                stage_checkpoints=((2,), (5,), (6, 12), ()), published_params="250M", notes=_OURS_2021),
    ModelPreset("rg128gf", "SEER 2021 RegNetY-128GF (= torchvision regnet_y_128gf, timm regnety_1280).",
                27, 456, 160.83, 2.52, 264, head_dims=(7392, 8192, 8192, 256), head_use_bn=False,
                stage_checkpoints=((2,), (7,), (9, 17), ()), published_params="693M", **_DEFAULT_HEAD,
                notes="Released head has 16,000 prototypes (checkpoint name `proto16k`). " + _FROM_10B),
    ModelPreset("rg256gf", "SEER 2021 RegNetY-256GF, VISSL `regnet256Gf_1` shape (= timm regnety_2560).",
                27, 640, 230.83, 2.53, 373, head_dims=(10444, 8192, 8192, 256), head_use_bn=False,
                stage_checkpoints=((2,), (7,), (9, 17), ()), published_params="1.5B",
                published_note="the paper's and VISSL docs' 1.3B is about the trunk alone",
                notes="timm reports the released pretrained checkpoint does not load into this shape "
                "(fine-tuned one does); inspect tensor shapes before loading it (seer_spec §7.2). " + _FROM_10B),
    ModelPreset("rg10b", "SEER 2022 RegNetY-10B (VISSL regnet10B.yaml; = HF regnet-y-10b-seer).",
                27, 1744, 620.83, 2.52, 1010, head_dims=(28280, 8192, 8192, 256), head_use_bn=False,
                stage_checkpoints=((2,), (7,), (9, 17), ()), linear_feature=("res4", "adaptive:2x1"),
                published_params="10B", published_basis="trunk+head",
                published_note="36 GiB in fp32, as the README's 36 GB checkpoint"),
)}
# fmt: on


def get_preset(name: str) -> ModelPreset:
    """The preset called `name`; a ConfigError lists the valid names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
