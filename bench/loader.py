"""Loader throughput with SwAV multi-crop: ShardStream + MultiCropTransform vs ImageFolder + PIL + v1.

Same JPEG corpus (procedural, 400–1080 px, quality 90), same crops (default SEER 2021: 2×224 + 4×96
with the full colour/blur augmentations), same batch size, DataLoader in both. The baseline is
what a user writes without seer: torchvision ImageFolder, PIL decode, one torchvision v1 chain per
crop, crop-major collation. Ours streams the tar shards `seer shard` made from the same files (full
size, re-encoded at q90) and decodes each JPEG once, at reduced DCT scale where that is lossless for
every crop. A third row streams shards made with --max-short-side (a common preprocessing choice;
different input bytes, so shown separately).

Throughput is images per CPU-second of the loader process and its workers, one torch thread, so
other load on a shared machine does not count. Each row runs in a fresh process; peak memory is
its peak RSS (VmHWM) and the largest worker's. Prints a table, writes bench/results/loader.json.

    .venv/bin/python bench/loader.py [--images 40] [--preset seer2021] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    add_run_flags,
    peak_rss_mib,
    print_table,
    reset_peak_rss,
    result_header,
    vissl_crop_chains,
    write_results,
)

RESULTS = Path(__file__).parent / "results" / "loader.json"


def baseline_loader(root: str, preset: str, batch_size: int, workers: int):
    """ImageFolder + PIL + one torchvision v1 chain per crop (VISSL's ImgPilToMultiCrop recipe)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets

    from seer.data.transforms import CROP_PRESETS

    chains = vissl_crop_chains(CROP_PRESETS[preset])

    def multicrop(image):
        return [chain(image) for chain in chains]

    def collate(batch):
        return [torch.stack([crops[i] for crops, _ in batch]) for i in range(len(batch[0][0]))]

    dataset = datasets.ImageFolder(root, transform=multicrop)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate
    )


def run_variant(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    if args.variant == "baseline":
        loader = baseline_loader(args.input, args.preset, args.batch_size, args.workers)
    else:
        from seer.data.stream import ShardStream, build_loader
        from seer.data.transforms import MultiCropTransform

        stream = ShardStream(args.input, MultiCropTransform(args.preset, seed=0), shuffle_buffer=64)
        loader = build_loader(stream, args.batch_size, num_workers=args.workers)
    next(iter(loader))  # warm-up: lazy imports, first allocations
    reset_peak_rss()
    images, before, wall = 0, os.times(), time.perf_counter()
    while True:
        for crops in loader:
            images += crops[0].shape[0] if args.variant == "baseline" else len(crops[1])
        spent = sum(b - a for a, b in zip(before[:4], os.times()[:4], strict=True))
        if spent >= args.seconds:
            break
    result = {
        "images": images,
        "cpu_s": spent,
        "wall_s": time.perf_counter() - wall,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if args.workers
        else 0.0,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40, help="corpus size (JPEG, 400-1080 px)")
    parser.add_argument("--preset", default="seer2021", help="crop preset (seer2021, seer10b, tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum CPU seconds per measurement")
    parser.add_argument(
        "--short-side", type=int, default=320, help="--max-short-side of the third row's shards"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers in every row (0: in-process)"
    )
    add_run_flags(parser, RESULTS, "--input")
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return

    from seer.data.shard import ShardSettings, shard
    from seer.data.synthetic import generate_corpus

    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        generate_corpus(tmp / "in", args.images, seed=0, min_size=400, max_size=1080, formats=("jpg",))
        shard([str(tmp / "in")], str(tmp / "full"), workers=2, log=lambda _: None)
        small = ShardSettings(max_short_side=args.short_side)
        shard([str(tmp / "in")], str(tmp / "small"), small, workers=2, log=lambda _: None)
        variants = {
            "ImageFolder + PIL + v1": ("baseline", str(tmp / "in")),
            "ShardStream + MultiCrop": ("seer", str(tmp / "full" / "manifest.json")),
            f"  same, shards <= {args.short_side} px": ("seer", str(tmp / "small" / "manifest.json")),
        }
        results = {}
        for name, (variant, source) in variants.items():
            cmd = [sys.executable, __file__, "--variant", variant, "--input", source, "--preset", args.preset,
                   "--batch-size", str(args.batch_size), "--seconds", str(args.seconds), "--workers", str(args.workers)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = None
    for name, r in results.items():
        per_core = r["images"] / r["cpu_s"]
        base = base or per_core
        rows.append(
            {"loader": name.strip(), "img_per_cpu_s": round(per_core, 2), "img_per_wall_s": round(r["images"] / r["wall_s"], 2),
             "ratio_per_core": round(per_core / base, 3), "peak_rss_mib": round(r["peak_rss_mib"], 1),
             "worker_peak_rss_mib": round(r["worker_peak_rss_mib"], 1)}
        )  # fmt: skip

    header = (
        f"{'loader':<28} {'img/CPU-s':>9} {'img/wall-s':>10} {'ratio':>6} {'peak MiB':>9} {'worker MiB':>10}"
    )
    print(
        f"multi-crop loading ({args.preset}), {args.images} JPEGs 400-1080 px, batch {args.batch_size}, "
        f"{args.workers} workers, 1 torch thread"
    )
    print_table(header, (f"{name:<28} {r['img_per_cpu_s']:>9.1f} {r['img_per_wall_s']:>10.1f} {r['ratio_per_core']:>6.2f} "
                         f"{r['peak_rss_mib']:>9.0f} {r['worker_peak_rss_mib']:>10.0f}"
                         for name, r in zip(results, rows, strict=True)))  # fmt: skip
    print("ratio = images per CPU-second relative to ImageFolder + PIL + v1")
    result = {
        **result_header("loader", "images per CPU-second (loader process + workers), 1 torch thread"),
        "preset": args.preset,
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "rows": rows,
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
