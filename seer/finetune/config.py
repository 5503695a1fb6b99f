"""Fine-tuning configs: dataclasses, YAML recipes under `seer/recipes/finetune/`, `--set` overrides.

Built like the pretraining config (`seer.config`): defaults < recipe (which may `inherit`) <
`section.key=value` overrides, validated with messages naming the key. `train` is the pretraining
`TrainConfig` (precision, sharding, checkpoints, faults, metrics); `train.iterations` is derived at
run time from `optim.epochs` and the size of the training set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from seer.config import TrainConfig, _build, apply_overrides, recipe_dict, require
from seer.config import list_recipes as list_config_recipes

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes" / "finetune"


@dataclass
class FinetuneModel:
    """The trunk to fine-tune and its pretrained weights (any format `seer.checkpoints.load` reads)."""

    preset: str = "rg-tiny"
    checkpoint: str = ""  # `random`: no pretraining (a from-scratch baseline)


@dataclass
class FinetuneData:
    """The labelled training set and its augmentation (VISSL fulltune transforms)."""

    train: str = ""
    # classification: `path,label` rows; geo: `path,lat,lon` rows labelled by their nearest cell of `cells`.
    task: Literal["classification", "geo"] = "classification"
    cells: str = ""  # geo: `cell,lat,lon` CSV of cell centres (e.g. S2 cells, given by their centres)
    crop_size: int = 384
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip_p: float = 0.5
    # VISSL ImgPilColorDistortion (strength, p 0.8, grayscale p 0.2) and ImgPilGaussianBlur (p).
    jitter_strength: float = 1.0
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    num_workers: int = 4
    max_bad_rows: str = "0"


@dataclass
class FinetuneOptim:
    """SGD (Nesterov) with a multistep LR per epoch, scaled by global batch / base_batch (VISSL)."""

    base_lr: float = 0.1
    base_batch: int = 256
    epochs: int = 105
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90, 100])
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    regularize_bn: bool = False
    regularize_bias: bool = True
    label_smoothing: float = 0.0


@dataclass
class FinetuneHead:
    """What the classifier file records (`seer.checkpoints.classifier`); classes come from the data."""

    tap: str = "avgpool"
    pool: str = "avg"
    classes: list[str] = field(default_factory=list)
    # geo: (lat, lon) predicted for each class (cell), the mean location of its training images.
    locations: list[list[float]] = field(default_factory=list)


@dataclass
class FinetuneConfig:
    """A whole fine-tuning run."""

    model: FinetuneModel = field(default_factory=FinetuneModel)
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    classifier: FinetuneHead = field(default_factory=FinetuneHead)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_per_gpu=32, checkpoint_every=500))


def list_recipes() -> list[str]:
    """Names of the bundled fine-tuning recipes."""
    return list_config_recipes(RECIPE_DIR)


def load_finetune_config(recipe: str = "in1k-384", overrides: list[str] | None = None) -> FinetuneConfig:
    """Build and validate a fine-tuning config from a recipe name or YAML path plus overrides."""
    cfg = _build(
        FinetuneConfig, apply_overrides(recipe_dict(recipe, RECIPE_DIR, "fine-tuning"), overrides or [])
    )
    validate(cfg)
    return cfg


def validate(cfg: FinetuneConfig, world_size: int | None = None) -> None:
    """Reject impossible values, naming the key and what is allowed."""
    from seer.config import SeerConfig
    from seer.config import validate as validate_train
    from seer.models import PRESETS

    require(
        cfg.model.preset in PRESETS,
        f"model.preset: unknown preset {cfg.model.preset!r}; use one of {', '.join(PRESETS)}",
    )
    d, o = cfg.data, cfg.optim
    require(d.crop_size >= 16, f"data.crop_size: must be >= 16 px, got {d.crop_size}")
    lo_hi = d.crop_scale
    require(
        len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1,
        f"data.crop_scale: must be [low, high] with 0 < low <= high <= 1, got {lo_hi}",
    )
    for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
        value = getattr(d, name)
        require(0 <= value <= 1, f"data.{name}: must be a probability in [0, 1], got {value}")
    require(o.base_lr > 0, f"optim.base_lr: must be > 0 (VISSL fulltune: 0.1 per 256), got {o.base_lr}")
    require(o.base_batch > 0, f"optim.base_batch: must be > 0, got {o.base_batch}")
    require(o.epochs >= 1, f"optim.epochs: must be >= 1, got {o.epochs}")
    require(
        o.milestones == sorted(set(o.milestones)) and all(0 < m < o.epochs for m in o.milestones),
        f"optim.milestones: {o.milestones} must be increasing epochs inside 1..{o.epochs - 1}",
    )
    require(0 < o.gamma <= 1, f"optim.gamma: must be in (0, 1], got {o.gamma}")
    require(0 <= o.momentum < 1, f"optim.momentum: must be in [0, 1), got {o.momentum}")
    require(o.weight_decay >= 0, f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    require(0 <= o.label_smoothing < 1, f"optim.label_smoothing: must be in [0, 1), got {o.label_smoothing}")
    # The shared train section is checked by the pretraining rules.
    validate_train(SeerConfig(train=cfg.train), world_size=world_size)
