"""`seer shard` and `seer synth` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from seer import storage
from seer.errors import ConfigError

_ACTIONS = ("list", "merge")

# ShardSettings field → (flag, help); the default is the field's. A boolean setting (on by default)
# gets a --no-… flag that turns it off.
_SETTING_FLAGS = {
    "shard_size_mb": ("--shard-size-mb", "close a shard before it exceeds this size"),
    "max_samples_per_shard": ("--max-samples-per-shard", "close a shard at this many samples"),
    "max_short_side": (
        "--max-short-side",
        "downscale so the short side is at most N pixels (default: keep size)",
    ),
    "quality": ("--quality", "JPEG quality of the re-encoded samples, 1-100"),
    "max_pixels": ("--max-pixels", "reject images with more pixels as decompression bombs"),
    "dedup": ("--no-dedup", "keep exact duplicates (default: drop them, first one wins)"),
    "write_json": ("--no-json", "do not write the <key>.json sidecar with source and size info"),
    "pass_through": (
        "--no-pass-through",
        "re-encode every image (default: valid baseline RGB JPEGs within limits keep their coded bytes)",
    ),
}


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    """The `_SETTING_FLAGS` of `seer shard`, typed and defaulted by `ShardSettings`."""
    from seer.data.shard import ShardSettings

    for f in dataclasses.fields(ShardSettings):
        flag, help_text = _SETTING_FLAGS[f.name]
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action="store_false", help=help_text)
        elif f.default is None:
            p.add_argument(flag, dest=f.name, type=int, help=help_text)
        else:
            kind = type(f.default)
            p.add_argument(
                flag, dest=f.name, type=kind, default=f.default, help=f"{help_text} (default {f.default})"
            )


def _shard(args: argparse.Namespace) -> int:
    from seer.data.shard import ShardSettings, shard, shard_partition

    action = args.inputs[0] if args.inputs and args.inputs[0] in _ACTIONS else None
    inputs = args.inputs[1:] if action else args.inputs
    if args.plan:
        return _plan(args)
    if action == "list":
        return _list(args, inputs)
    if action == "merge":
        return _merge(args, inputs)
    settings = ShardSettings(**{name: getattr(args, name) for name in _SETTING_FLAGS})
    if args.output is None:
        raise ConfigError("--output is required: the prefix for shards and manifest.json")
    if args.partition:
        shard_partition(
            inputs, args.output, args.partition, settings=settings, workers=args.workers,
            overwrite=args.overwrite, command=sys.argv,
        )  # fmt: skip
        return 0
    if not inputs:
        raise ConfigError("no inputs given: pass folders, tar files, list files or s3:// prefixes")
    shard(inputs, args.output, settings, workers=args.workers, overwrite=args.overwrite, command=sys.argv)
    return 0


def _list(args: argparse.Namespace, inputs: list[str]) -> int:
    from seer.data.listing import list_inputs

    if args.output is None or args.partitions is None:
        raise ConfigError(
            "`seer shard list INPUTS --output PREFIX --partitions N` needs --output and --partitions"
        )
    listing = list_inputs(inputs, args.output, args.partitions)
    print(f"listed {listing['total']} inputs into {args.partitions} partitions under {args.output}/_lists")
    return 0


def _merge(args: argparse.Namespace, inputs: list[str]) -> int:
    from seer.data.merge import merge_partitions

    if inputs or args.output is None or args.partitions is None:
        raise ConfigError(
            "`seer shard merge --output PREFIX --partitions N` takes no inputs and needs both flags"
        )
    merge_partitions(args.output, args.partitions, command=sys.argv)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from seer.data.shard_plan import plan_sharding, print_plan

    print_plan(
        plan_sharding(
            args.images, pods=args.pods, cores=args.cores, rate=args.rate, target_hours=args.target_hours
        )
    )
    return 0


def _synth(args: argparse.Namespace) -> int:
    from seer.data.synthetic import generate_corpus, generate_nasty_corpus

    if storage.is_remote(args.output):
        raise ConfigError(
            f"seer synth writes to a local folder, got {args.output}: generate locally, then shard it into S3"
        )
    out = storage.local_path(args.output)
    paths = generate_corpus(
        out,
        args.count,
        args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
    )
    print(f"wrote {len(paths)} images to {out}")
    if args.nasty:
        cases = generate_nasty_corpus(out / "nasty", seed=args.seed)
        print(f"wrote {len(cases)} bad-input cases to {out / 'nasty'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `shard` and `synth` to the `seer` command."""
    p = subparsers.add_parser(
        "shard",
        help="turn images (folders, lists, tars, s3 prefixes) into tar shards + manifest.json",
        description="Decode, validate, convert to RGB JPEG, deduplicate and pack images into "
        "webdataset-style tar shards. Re-running the same command resumes an interrupted run.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="a folder or s3:// prefix (all images below it), a .tar file, a .txt/.csv list of paths "
        "or URIs (relative entries are relative to the list), or one image file. "
        "`seer shard list INPUTS --output P --partitions N` streams the listing into N list files; "
        "`seer shard merge --output P --partitions N` writes the manifest over N partitions "
        "(a folder literally named list or merge: write ./list)",
    )
    p.add_argument(
        "--output",
        help="prefix (local folder or s3://bucket/key) for shards and manifest.json",
    )
    p.add_argument(
        "--partition",
        metavar="I/N",
        help="fan-out: shard only partition I of N (inputs dealt round robin in listing order), into "
        "OUTPUT/pIIIII-of-NNNNN/; inputs may be omitted after `seer shard list`; then `seer shard merge`",
    )
    p.add_argument("--partitions", type=int, help="N for `seer shard list` and `seer shard merge`")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the wall time and pod count to shard --images N at --pods x --cores (no sharding)",
    )
    p.add_argument("--images", type=float, default=1e9, help="--plan: corpus size (default 1e9)")
    p.add_argument("--pods", type=int, default=100, help="--plan: shard pods (default 100)")
    p.add_argument(
        "--cores", type=int, default=8, help="--plan: cores (worker processes) per pod (default 8)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="--plan: images per core-second (default: the JPEG row of bench/results/shard.json)",
    )
    p.add_argument(
        "--target-hours",
        type=float,
        default=24.0,
        help="--plan: wall time to size the pod count for (default 24)",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all CPU cores)")
    _add_setting_flags(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete shards/manifest a different command left under --output first",
    )
    p.set_defaults(func=_shard)

    s = subparsers.add_parser(
        "synth",
        help="write a procedural image corpus (demo and tests)",
        description="Write varied procedural images (shapes, textures, gradients, noise) in several sizes and formats.",
    )
    s.add_argument("--output", required=True, help="local folder to write class_k/img_NNNNNN.<fmt> into")
    s.add_argument("--count", type=int, required=True, help="number of images")
    s.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed writes the same files (default 0)"
    )
    s.add_argument("--min-size", type=int, default=48, help="smallest side length in pixels (default 48)")
    s.add_argument("--max-size", type=int, default=512, help="largest side length in pixels (default 512)")
    s.add_argument(
        "--formats", default="jpg,png,webp,bmp", help="comma-separated formats to cycle through (default all)"
    )
    s.add_argument("--nasty", action="store_true", help="also write the bad-input corpus into OUTPUT/nasty")
    s.set_defaults(func=_synth)
