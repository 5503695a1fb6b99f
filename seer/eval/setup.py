"""The evaluation harness every protocol shares: run settings, feature options, the skeleton.

A protocol module (linear, knn, copy_detection, geolocalization, fairness, test384) keeps only its
config dataclass and its scoring; `evaluate` does the rest in one order for all of them:
load the trunk → extract features for the checkpoint and each baseline → score every variant →
metrics document → report. The CLI flags (`add_fields`) and the KFP step parameters (checked
against `field_defaults`) come from the dataclasses here, so each default lives once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seer.checkpoints.load import LoadedTrunk, load_trunk
from seer.errors import ConfigError
from seer.eval import report, sharded
from seer.eval.datasets import EvalDataset, load_dataset
from seer.eval.features import (
    PUBLISHED,
    TAPS,
    FeatureSet,
    TransformSpec,
    extract,
    join_process_group,
    parse_pool,
    parse_transform,
)

BASELINES = ("random-init", "random-features")


def arg(help_text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: the CLI help and, optionally, `flag` (its name) and `parse` (text → value)."""
    return {"help": help_text, **extra}


def choice(default: str, choices: Mapping[str, str] | Sequence[str], help_text: str = "") -> Any:
    """A config field holding one of `choices`: the CLI flag's choices, and `check_choices` refuses
    any other value given from Python or a pipeline step. A mapping {choice: meaning} is the help."""
    if default not in choices:
        raise ValueError(f"default {default!r} is not one of {tuple(choices)}")
    if isinstance(choices, Mapping):
        help_text = "; ".join([*filter(None, [help_text]), *(f"{k}: {v}" for k, v in choices.items())])
    return field(default=default, metadata=arg(help_text, choices=tuple(choices)))


def ints(text: str) -> tuple[int, ...]:
    """`8,16,24` → (8, 16, 24)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def names(text: str) -> tuple[str, ...]:
    """`a, b` → ("a", "b")."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass
class RunSettings:
    """Which weights to evaluate, where, against which baselines, and where the report goes."""

    checkpoint: str
    preset: str | None = None  # model preset (seer.models.PRESETS) when the checkpoint records none
    device: str = "auto"
    baselines: tuple[str, ...] = ()
    fmt: str = "auto"
    max_bad_rows: str | int = 0
    output: str | None = None
    shard: str = "auto"  # FSDP2-sharded trunk under torchrun: auto | on | off (seer.eval.sharded)

    def load(self, uri: str, kind: str, classes: Sequence[str] | None = None) -> EvalDataset:
        """A dataset of `kind` with this run's format and bad-row policy."""
        return load_dataset(uri, kind, fmt=self.fmt, classes=classes, max_bad_rows=self.max_bad_rows)


@dataclass
class FeatureOptions:
    """What to extract and how; every field except the runtime ones (batch size, workers, device)
    goes into the cache key."""

    tap: str = choice(
        "avgpool",
        (*TAPS, PUBLISHED),
        "trunk output to use; published = the model's published linear-probe feature (seer_spec §5.1)",
    )
    pool: str = field(
        default="avg",
        metadata=arg(
            "pooling of the tap: avg (global average), adaptive:HxW (e.g. adaptive:2x1, the §5.1 res4/res5 "
            "features), none (whole map), rmac:LEVELS (R-MAC regions)"
        ),
    )
    transform: TransformSpec = field(
        default_factory=TransformSpec,
        metadata=arg(
            "test transform: shorter:RESIZE:CROP (resize shorter side, centre crop), square:SIZE (resize to "
            "SIZE×SIZE), longer:SIZE (resize longer side, no crop); append :bicubic for bicubic",
            parse=parse_transform,
        ),
    )
    precision: str = choice("auto", ("auto", "fp32", "bf16"), "auto = bf16 autocast on CUDA, fp32 on CPU")
    batch_size: int = field(default=64, metadata=arg("images per forward pass during extraction"))
    num_workers: int = field(
        default=4, metadata=arg("image-decoding worker processes (0 = in the main process)", flag="--workers")
    )
    cache: str | None = field(
        default=None,
        metadata=arg(
            "URI prefix of the feature cache, keyed by checkpoint sha256, dataset sha256, tap, pool, "
            "transform and precision; a re-run with the same key skips extraction"
        ),
    )

    def describe(self) -> dict[str, str]:
        """The fields that change the features (what a report's config records)."""
        return {
            "tap": self.tap,
            "pool": self.pool,
            "transform": self.transform.key(),
            "precision": self.precision,
        }

    def validate(self) -> None:
        check_choices(self)
        parse_pool(self.pool)
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("batch size must be >= 1 and workers >= 0")


# ---------------------------------------------------------------------------------------------
# Dataclass fields as CLI flags and KFP parameters


def check_choices(config: Any) -> None:
    """Reject a field value outside the `choices` of its metadata, naming the field and the choices."""
    for f in dataclasses.fields(config):
        value, choices = getattr(config, f.name), f.metadata.get("choices")
        if choices is not None and value not in choices:
            what = f.name.replace("_", " ")
            raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _dest(f: dataclasses.Field) -> str:
    return flag_name(f)[2:].replace("-", "_")


def field_defaults(cls: type) -> dict[str, Any]:
    """{field name: default} of a config dataclass (what KFP step parameters must match)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def add_fields(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    cls: type,
    skip: Sequence[str] = ("seed",),
    **defaults: Any,
) -> None:
    """One flag per field of `cls` (help, parser and default from the field; `defaults` override)."""
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        default = defaults.get(f.name, field_defaults(cls)[f.name])
        parse = f.metadata.get("parse") or (type(default) if isinstance(default, int | float) else None)
        if isinstance(default, TransformSpec):
            default = default.text()
        kwargs: dict[str, Any] = {"default": default, "help": f.metadata["help"], "dest": _dest(f)}
        if parse is not None:
            kwargs["type"] = parse
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag_name(f), **kwargs)


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of `cls` from the parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, _dest(f)) for f in dataclasses.fields(cls) if hasattr(args, _dest(f))}
    return cls(**values)


def split_kwargs(config_cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """The protocol config: `config`, or one built from the keyword arguments naming its fields
    (popped from `kwargs`, so the rest are run settings)."""
    own = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(config_cls) if f.name in kwargs}
    if config is not None and own:
        raise ConfigError(f"give either config= or {', '.join(own)}, not both")
    return config if config is not None else config_cls(**own)


# ---------------------------------------------------------------------------------------------
# The skeleton


def resolve_device(device: str) -> torch.device:
    """`auto` → CUDA when available (this rank's local GPU under torchrun), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N") from None


def is_main_rank() -> bool:
    """True in a single process and on rank 0 of a torchrun: the one that writes reports and files."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


@contextlib.contextmanager
def shared_tempdir(prefix: str) -> Iterator[str]:
    """A temporary local folder, the same path on every torchrun rank of this node (rank 0 makes it and
    removes it at the end; ranks still reading memory-mapped files from it keep them open)."""
    _, world = join_process_group()
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)) if is_main_rank() else ""
        if world > 1:
            shared = [path]
            torch.distributed.broadcast_object_list(shared, src=0)
            path = shared[0]
        yield path
        if world > 1:
            torch.distributed.barrier()


def load_model(settings: RunSettings, seed: int = 0) -> LoadedTrunk:
    """The trunk to evaluate: FSDP2-sharded over the torchrun ranks when `settings.shard` says so
    (`seer.eval.sharded`), else whole on this rank's device."""
    device = resolve_device(settings.device)
    _, world = join_process_group()
    if sharded.should_shard(settings.shard, settings.checkpoint, settings.preset, device, world):
        if settings.checkpoint == "random":
            return sharded.random_sharded_trunk(settings.preset, device, seed)
        return sharded.load_sharded_trunk(settings.checkpoint, settings.preset, device)
    return load_trunk(settings.checkpoint, settings.preset, device, seed)


def random_features(like: FeatureSet, seed: int = 0) -> FeatureSet:
    """The chance baseline: i.i.d. Gaussian features with the same shapes as `like`."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(a.shape).astype(np.float32) for a in like.arrays]
    return FeatureSet(arrays, {**like.meta, "baseline": "random-features", "seed": seed})


@dataclass
class Streamed:
    """A role whose features the protocol computes itself while it runs (the VISSL linear probe's
    per-epoch random crops): the trunk to run (None for the random-features baseline) and the set."""

    loaded: LoadedTrunk | None
    dataset: EvalDataset
    options: FeatureOptions


def extract_variants(
    loaded: LoadedTrunk,
    datasets: dict[str, EvalDataset],
    options: FeatureOptions,
    baselines: tuple[str, ...] = (),
    seed: int = 0,
    streamed: Sequence[str] = (),
    spill_dir: str | None = None,
) -> dict[str, dict[str, FeatureSet | Streamed]]:
    """Features of each dataset for the checkpoint (`"model"`) and for each requested baseline:
    `random-init` (a freshly initialised trunk of the same preset) and `random-features` (chance).
    Roles in `streamed` get a `Streamed` instead of extracted features; `spill_dir` memory-maps them."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")

    def features(trunk: LoadedTrunk) -> dict[str, FeatureSet | Streamed]:
        return {
            role: Streamed(trunk, ds, options) if role in streamed else extract(trunk, ds, options, spill_dir)
            for role, ds in datasets.items()
        }

    out = {"model": features(loaded)}
    if "random-init" in baselines:
        device = next(loaded.trunk.parameters()).device
        if loaded.shard_sizes is not None:
            fresh = sharded.random_sharded_trunk(loaded.preset, device, seed)
        else:
            fresh = load_trunk("random", loaded.preset, device=device, seed=seed)
        out["random-init"] = features(fresh)
    if "random-features" in baselines:
        out["random-features"] = {
            role: Streamed(None, feats.dataset, options)
            if isinstance(feats, Streamed)
            else random_features(feats, seed + i)
            for i, (role, feats) in enumerate(out["model"].items())
        }
    return out


@dataclass
class Scored:
    """One variant's score: flat metrics, the details the document keeps, and (lazily) the plots."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    plots: Callable[[], dict[str, bytes]] = dict
    result: Any = None  # the protocol's own result object (e.g. the trained probe)


def evaluate(
    name: str,
    settings: RunSettings,
    options: FeatureOptions,
    datasets: Mapping[str, EvalDataset],
    score: Callable[[dict[str, Any]], Scored],
    config: Mapping[str, Any],
    *,
    seed: int = 0,
    lower_is_better: Sequence[str] = (),
    loaded: LoadedTrunk | None = None,
    streamed: Sequence[str] = (),
    spill_dir: str | None = None,
) -> tuple[dict, Scored, LoadedTrunk]:
    """Trunk → features (checkpoint and baselines) → `score` per variant → metrics document → report.

    `config` is what the document records besides the feature options; `streamed` and `spill_dir`
    are `extract_variants`'. Returns the document, the checkpoint's `Scored` and the loaded trunk."""
    loaded = loaded or load_model(settings, seed)
    variants = extract_variants(
        loaded, dict(datasets), options, settings.baselines, seed, streamed, spill_dir
    )
    results = {variant: score(features) for variant, features in variants.items()}
    main = results.pop("model")
    doc = report.metrics_document(
        name,
        main.metrics,
        checkpoint=loaded.describe(),
        datasets={role: ds.describe() for role, ds in datasets.items()},
        config={**options.describe(), **config},
        lower_is_better=lower_is_better,
        baselines={variant: r.metrics for variant, r in results.items()},
        details=main.details,
    )
    if settings.output and is_main_rank():
        report.write_report(settings.output, doc, main.plots())
    return doc, main, loaded


def classification_scored(result: Mapping[str, Any], classes: Sequence[str], **extra: Any) -> Scored:
    """A classification result (metrics, per_class, confusion) as a `Scored`, with its plots."""
    per_class, confusion = result["per_class"], result["confusion"]
    return Scored(
        metrics=result["metrics"],
        details={
            "classes": list(classes),
            "per_class_accuracy": dict(zip(classes, per_class, strict=True)),
            "confusion": confusion,
            **extra,
        },
        plots=lambda: report.classification_plots(per_class, confusion, classes),
    )


def prepare(
    checkpoint: str,
    config_cls: type,
    kwargs: dict[str, Any],
    default_options: Callable[[], FeatureOptions] = FeatureOptions,
) -> tuple[RunSettings, FeatureOptions, Any]:
    """Run settings, validated feature options and validated protocol config of one `run` call, before
    any data is loaded or features are extracted. `kwargs`: `options=`, `config=` (or its fields one
    by one) and `RunSettings` fields."""
    options = kwargs.pop("options", None)
    config = split_kwargs(config_cls, kwargs.pop("config", None), kwargs)
    settings = RunSettings(checkpoint, **kwargs)
    options = options or default_options()
    options.validate()
    if hasattr(config, "validate"):
        config.validate()
    return settings, options, config
