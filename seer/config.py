"""Typed run configuration: dataclasses loaded from YAML recipes and overridden from the command line.

A config is built in three layers, each validated before any work starts:

1. the dataclass defaults below (the SEER 2021 recipe where one exists),
2. a YAML pretraining recipe (``seer/recipes/pretrain/<name>.yaml``, or any YAML path), which may
   ``inherit`` another recipe,
3. ``--set section.key=value`` overrides (values parsed as YAML: ``0.3``, ``[0, 1]``, ``true``).

Unknown keys, wrong types and impossible values raise :class:`seer.errors.ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seer.errors import ConfigError

RECIPE_DIR = Path(__file__).parent / "recipes" / "pretrain"


@dataclass
class CropSpec:
    """`count` random-resized crops of `size` px, area fraction drawn from `scale`."""

    size: int = 224
    count: int = 2
    scale: list[float] = field(default_factory=lambda: [0.14, 1.0])


def _seer2021_crops() -> list[CropSpec]:
    return [CropSpec(224, 2, [0.14, 1.0]), CropSpec(96, 4, [0.05, 0.14])]


@dataclass
class ModelConfig:
    """Which trunk + SwAV head to build (see `seer models`)."""

    preset: str = "rg-tiny"
    # None keeps the preset's released prototype count(s); a list overrides it (one entry per head).
    num_prototypes: list[int] | None = None


@dataclass
class DataConfig:
    """Where the shards are and how samples become multi-crop batches."""

    shards: str = ""
    crops: list[CropSpec] = field(default_factory=_seer2021_crops)
    num_workers: int = 8
    shuffle_buffer: int = 2048
    # SEER 10B `create_multidimensional_tensor`: pad all crops to the largest size, one trunk pass.
    padded_single_pass: bool = False
    # Augmentation strength (SEER: colour jitter 0.8/0.8/0.8/0.2 → strength 1.0, Gaussian blur p 0.5).
    jitter_strength: float = 1.0
    blur_p: float = 0.5


@dataclass
class SwAVConfig:
    """SwAV loss and Sinkhorn-Knopp settings (seer_spec §2.2)."""

    epsilon: float = 0.05
    sinkhorn_iterations: int = 10
    temperature: float = 0.1
    crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])
    queue_length: int = 0
    queue_start_iter: int = 0
    freeze_prototypes_iters: int = 313
    normalize_prototypes: bool = True
    # Not in SEER (0): one-hot argmax codes as targets for the first N iterations (small-batch warm-up).
    hard_codes_iters: int = 0


@dataclass
class OptimConfig:
    """SGD + LARC with linear warmup then cosine decay, LR scaled by global batch (seer_spec §3.1)."""

    base_lr: float = 0.3
    base_batch: int = 256
    # Warmup start LR; null = VISSL's rule: base_lr × (batch per node) / base_batch (0.15 for SEER's
    # 16 img/GPU × 8 GPUs), with the warmup dropped on one node when it would not rise.
    start_lr: float | None = None
    final_lr_ratio: float = 0.001
    # Warmup length: an absolute iteration count, or a fraction of the run when warmup_iters is None.
    warmup_iters: int | None = 8000
    warmup_fraction: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 1e-5
    larc: bool = True
    larc_trust: float = 0.001
    larc_eps: float = 1e-8


@dataclass
class TrainConfig:
    """Loop length, batch, precision, sharding, checkpoints and observability."""

    batch_per_gpu: int = 16
    # If set, the global batch the run must have; checked against the world size at launch.
    global_batch: int | None = None
    iterations: int = 122_000
    seed: int = 0
    # Compute precision. auto: bf16 on GPU, fp32 on CPU. bf16 (the GPU default): bf16 compute, fp32 master
    # weights and gradient reduction; bench/sinkhorn_precision.py measured bf16 within 1% relative L1 of
    # fp32 on the Sinkhorn codes at epsilon 0.03 (fp16 about 8x closer), and bf16 needs no loss scaling.
    # fp16: as SEER trained (2021 apex O1; 10B FSDP fp16 compute and fp16 gradient reduce-scatter):
    # fp16 compute and reduction with a dynamic loss scale; BatchNorm and prototypes stay fp32 in both.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Regional torch.compile: each RegNet block compiled on its own (names and checkpoints unchanged).
    compile: bool = False
    activation_checkpointing: bool = True
    # SyncBatchNorm process-group size: 0 = all ranks, 1 = plain BatchNorm, N = groups of N ranks.
    sync_bn_group: int = 64
    channels_last: Literal["auto", "on", "off"] = "auto"
    checkpoint_every: int = 1000
    keep_last: int = 2
    log_every: int = 10
    metrics_port: int = 9090
    # Faults (seer.train.faults): restarts after failures the run survives before it gives up, seconds
    # after SIGTERM within which the preemption checkpoint must complete (keep it below the pod's
    # terminationGracePeriodSeconds), and how long a save retries an unreachable object store.
    max_faults: int = 10
    grace_seconds: float = 120.0
    save_retry_seconds: float = 300.0


@dataclass
class SeerConfig:
    """A whole pretraining run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# Building from dicts


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        keys = ", ".join(f.name for f in dataclasses.fields(tp))
        return f"a mapping with keys {keys}"
    return getattr(tp, "__name__", str(tp))


def _one_item_hint(value: Any) -> str:
    """The fix for a scalar given where a list belongs (`--set model.num_prototypes=256`)."""
    return f"; write [{value!r}] for a list of one" if isinstance(value, (int, float, str)) else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        lists = any(typing.get_origin(option) is list for option in typing.get_args(tp))
        hint = _one_item_hint(value) if lists else ""
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{hint}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{_one_item_hint(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _unknown_key_error(cls: type, prefix: str, name: str) -> ConfigError:
    allowed = [f.name for f in dataclasses.fields(cls)]
    where = f"{prefix}.{name}" if prefix else name
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        suggestion = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"
    else:
        # The key may belong to another section, or be a short form (`lr` for `optim.base_lr`).
        elsewhere = [
            f"{section.name}.{f.name}"
            for section in dataclasses.fields(SeerConfig)
            for f in dataclasses.fields(typing.get_type_hints(SeerConfig)[section.name])
            if f.name == name or f.name.endswith(f"_{name}")
        ]
        suggestion = f" (did you mean {' or '.join(elsewhere[:2])}?)" if elsewhere else ""
    return ConfigError(f"unknown key {where!r}{suggestion}; allowed keys: {', '.join(allowed)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in names:
            raise _unknown_key_error(cls, prefix, name)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable) of a config."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Recipes and overrides


def list_recipes(directory: Path = RECIPE_DIR) -> list[str]:
    """Names of the bundled recipes in `directory` (default: the pretraining recipes)."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def recipe_dict(
    recipe_or_path: str, directory: Path = RECIPE_DIR, kind: str = "", seen: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The settings of a recipe of `directory` (`kind` names them in errors, e.g. "fine-tuning") or
    of a YAML file, with the recipes it `inherit`s merged below it."""
    path = Path(recipe_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = directory / f"{recipe_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown {kind + ' ' if kind else ''}recipe {recipe_or_path!r}; use one of "
                f"{', '.join(list_recipes(directory))} or a path to a YAML file"
            )
    if str(path) in seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join([*seen, str(path)])}")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    return _merge(recipe_dict(str(parent), directory, kind, (*seen, str(path))), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into a key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.base_lr=0.3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return `data` with each ``section.key=value`` override set."""
    out = _merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def load_config(
    recipe_or_path: str = "rg-tiny", overrides: list[str] | None = None, world_size: int | None = None
) -> SeerConfig:
    """Build and validate a config from a recipe name or YAML path plus ``key=value`` overrides."""
    data = apply_overrides(recipe_dict(recipe_or_path), overrides or [])
    cfg = _build(SeerConfig, data)
    validate(cfg, world_size=world_size)
    return cfg


def from_dict(data: dict[str, Any], world_size: int | None = None) -> SeerConfig:
    """Rebuild a config from :func:`config_to_dict` output (e.g. a checkpoint's copy)."""
    cfg = _build(SeerConfig, data)
    validate(cfg, world_size=world_size)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation of values


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(`message`) unless `ok`."""
    if not ok:
        raise ConfigError(message)


def validate(cfg: SeerConfig, world_size: int | None = None) -> None:
    """Reject impossible values, naming the key and what is allowed."""
    from seer.models import PRESETS

    require(
        cfg.model.preset in PRESETS,
        f"model.preset: unknown preset {cfg.model.preset!r}; use one of {', '.join(PRESETS)}",
    )
    if cfg.model.num_prototypes is not None:
        require(
            len(cfg.model.num_prototypes) > 0 and all(k > 0 for k in cfg.model.num_prototypes),
            f"model.num_prototypes: {cfg.model.num_prototypes} must be a non-empty list of positive counts",
        )

    crops = cfg.data.crops
    require(len(crops) > 0, "data.crops: the crops list is empty; give at least one {size, count, scale}")
    for i, crop in enumerate(crops):
        key = f"data.crops[{i}]"
        require(crop.size > 0, f"{key}.size: must be a positive pixel size, got {crop.size}")
        require(crop.count > 0, f"{key}.count: must be >= 1, got {crop.count}")
        lo_hi = crop.scale
        require(
            len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1,
            f"{key}.scale: must be [low, high] with 0 < low <= high <= 1, got {lo_hi}",
        )
    require(
        cfg.data.jitter_strength >= 0, f"data.jitter_strength: must be >= 0, got {cfg.data.jitter_strength}"
    )
    require(0 <= cfg.data.blur_p <= 1, f"data.blur_p: must be a probability in [0, 1], got {cfg.data.blur_p}")
    require(cfg.data.num_workers >= 0, f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    require(cfg.data.shuffle_buffer >= 0, f"data.shuffle_buffer: must be >= 0, got {cfg.data.shuffle_buffer}")

    n_crops = sum(c.count for c in crops)
    swav = cfg.swav
    require(swav.epsilon > 0, f"swav.epsilon: must be > 0 (SEER uses 0.05, 10B 0.03), got {swav.epsilon}")
    require(
        swav.sinkhorn_iterations >= 1,
        f"swav.sinkhorn_iterations: must be >= 1, got {swav.sinkhorn_iterations}",
    )
    require(swav.temperature > 0, f"swav.temperature: must be > 0 (SEER uses 0.1), got {swav.temperature}")
    require(len(swav.crops_for_assign) > 0, "swav.crops_for_assign: empty; SEER assigns from crops [0, 1]")
    require(
        all(0 <= c < n_crops for c in swav.crops_for_assign),
        f"swav.crops_for_assign: {swav.crops_for_assign} must be crop indices in 0..{n_crops - 1} "
        f"(data.crops makes {n_crops} crops)",
    )
    require(n_crops >= 2, f"data.crops: SwAV needs at least 2 crops per image, got {n_crops}")
    require(swav.queue_length >= 0, f"swav.queue_length: must be >= 0, got {swav.queue_length}")
    require(swav.freeze_prototypes_iters >= 0, "swav.freeze_prototypes_iters: must be >= 0")
    require(swav.hard_codes_iters >= 0, f"swav.hard_codes_iters: must be >= 0, got {swav.hard_codes_iters}")

    opt = cfg.optim
    for name in (
        "base_lr",
        "final_lr_ratio",
        "weight_decay",
        "momentum",
        "larc_trust",
        "larc_eps",
    ):
        value = getattr(opt, name)
        require(value >= 0, f"optim.{name}: must be >= 0, got {value}")
    if opt.start_lr is not None:
        require(opt.start_lr >= 0, f"optim.start_lr: must be >= 0 or null, got {opt.start_lr}")
    require(opt.base_lr > 0, f"optim.base_lr: must be > 0 (SEER uses 0.3 per 256 images), got {opt.base_lr}")
    require(opt.base_batch > 0, f"optim.base_batch: must be > 0, got {opt.base_batch}")
    require(opt.momentum < 1, f"optim.momentum: must be in [0, 1), got {opt.momentum}")
    require(
        0 <= opt.warmup_fraction < 1, f"optim.warmup_fraction: must be in [0, 1), got {opt.warmup_fraction}"
    )
    if opt.warmup_iters is not None:
        require(opt.warmup_iters >= 0, f"optim.warmup_iters: must be >= 0 or null, got {opt.warmup_iters}")

    tr = cfg.train
    require(tr.batch_per_gpu > 0, f"train.batch_per_gpu: must be >= 1, got {tr.batch_per_gpu}")
    require(tr.iterations > 0, f"train.iterations: must be >= 1, got {tr.iterations}")
    require(tr.checkpoint_every > 0, f"train.checkpoint_every: must be >= 1, got {tr.checkpoint_every}")
    require(tr.keep_last >= 1, f"train.keep_last: must keep at least 1 checkpoint, got {tr.keep_last}")
    require(tr.log_every >= 1, f"train.log_every: must be >= 1, got {tr.log_every}")
    require(
        tr.sync_bn_group >= 0, f"train.sync_bn_group: must be >= 0 (0 = all ranks), got {tr.sync_bn_group}"
    )
    require(tr.max_faults >= 0, f"train.max_faults: must be >= 0, got {tr.max_faults}")
    require(tr.grace_seconds > 0, f"train.grace_seconds: must be > 0 seconds, got {tr.grace_seconds}")
    require(
        tr.save_retry_seconds >= 0,
        f"train.save_retry_seconds: must be >= 0 seconds (0 = no retry), got {tr.save_retry_seconds}",
    )
    require(
        0 <= tr.metrics_port < 65536,
        f"train.metrics_port: must be 0 (off) or a TCP port, got {tr.metrics_port}",
    )
    if world_size is not None:
        require(world_size >= 1, f"world size must be >= 1, got {world_size}")
        if tr.global_batch is not None:
            require(
                tr.global_batch % world_size == 0,
                f"train.global_batch: {tr.global_batch} is not divisible by the world size {world_size}; "
                f"use a multiple of {world_size} (e.g. {world_size * tr.batch_per_gpu})",
            )
            require(
                tr.global_batch // world_size == tr.batch_per_gpu,
                f"train.global_batch: {tr.global_batch} over {world_size} ranks is "
                f"{tr.global_batch // world_size} per rank, but train.batch_per_gpu is {tr.batch_per_gpu}; "
                "set one consistently with the other",
            )
        if tr.sync_bn_group > 1:
            require(
                world_size % tr.sync_bn_group == 0 or world_size < tr.sync_bn_group,
                f"train.sync_bn_group: {tr.sync_bn_group} does not divide the world size {world_size}; "
                "use a divisor of the world size, 0 (all ranks) or 1 (no sync)",
            )


def global_batch(cfg: SeerConfig, world_size: int) -> int:
    """Images per optimizer step across all ranks."""
    return cfg.train.batch_per_gpu * world_size
