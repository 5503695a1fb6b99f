"""Sharded vs whole-trunk evaluation on CPU: load time, features/s (all ranks together) and peak memory per process.

whole: one process, `seer eval --shard off` (`load_trunk` reads every slice, the whole fp32 trunk on the
rank). sharded: `torchrun --nproc-per-node 2`, `--shard on` (`seer.eval.sharded`: FSDP2 shards, each
rank keeps only its rows; forwards all-gather one unit at a time). Both read the same sliced checkpoint
of --preset (random weights) and extract avgpool features of the same --images generated images.
Each variant runs --repeats times, interleaved, in fresh processes; the table shows medians, the ratio
column is sharded / whole. Writes bench/results/eval_sharded.json.

    .venv/bin/python bench/eval_sharded.py [--preset rg-small] [--images 64] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent))


def _measure(args: argparse.Namespace) -> None:
    """One variant in this process (under torchrun for `sharded`); appends a JSON line per rank."""
    import torch.distributed as dist
    from _common import peak_rss_mib

    from seer.eval.datasets import load_dataset
    from seer.eval.features import extract, parse_transform
    from seer.eval.setup import FeatureOptions, RunSettings, load_model

    sliced, images = args.input.split(",")
    options = FeatureOptions(transform=parse_transform(f"square:{args.size}"), batch_size=16, num_workers=0)
    dataset = load_dataset(images)
    start = time.perf_counter()
    loaded = load_model(RunSettings(sliced, shard="on" if args.variant == "sharded" else "off", device="cpu"))
    loaded_at = time.perf_counter()
    extract(loaded, dataset, options)
    done = time.perf_counter()
    sizes = loaded.shard_sizes or {"local": sum(p.numel() for p in loaded.trunk.parameters())}
    row = {
        "variant": args.variant,
        "rank": dist.get_rank() if dist.is_initialized() else 0,
        "load_s": loaded_at - start,
        "images_per_s": len(dataset) / (done - loaded_at),
        "rank_params_mib": sizes["local"] * 4 / 2**20,
        "peak_rss_mib": peak_rss_mib(),
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()


def _prepare(preset: str, images: int, size: int, root: Path) -> str:
    import torch

    from seer.checkpoints.slice import slice_checkpoint
    from seer.data.synthetic_benchmarks import make_counting_set
    from seer.models import build_trunk

    state = build_trunk(preset, seed=0).state_dict()
    consolidated = root / "conso.pt"
    torch.save(
        {"format": "seer-consolidated-v1", "preset": preset, "iteration": 0, "trunk": state}, consolidated
    )
    slice_checkpoint(str(consolidated), str(root / "sliced"))
    sets = make_counting_set(str(root / "set"), n_train=images, n_val=1, max_count=2, size=size, seed=0)
    return f"{root / 'sliced'},{sets['train']}"


def main() -> None:
    from _common import add_run_flags, print_table, write_results

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="rg-small", help="model preset (architecture)")
    parser.add_argument("--images", type=int, default=64, help="images to extract")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (interleaved)")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun ranks of the sharded variant")
    add_run_flags(parser, RESULTS / "eval_sharded.json", "--input")
    args = parser.parse_args()
    if args.variant:
        _measure(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-eval-sharded-") as tmp:
        root = Path(tmp)
        inputs = _prepare(args.preset, args.images, args.size, root)
        lines = root / "rows.jsonl"
        common = ["--input", inputs, "--size", str(args.size), "--out", str(lines)]
        commands = {
            "whole": [sys.executable, __file__, "--variant", "whole", *common],
            "sharded": [
                *(
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    str(args.ranks),
                ),
                *(__file__, "--variant", "sharded", *common),
            ],
        }
        for _ in range(args.repeats):
            for command in commands.values():
                subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = [json.loads(line) for line in lines.read_text().splitlines()]
    summary = {}
    for variant in commands:
        mine = [r for r in rows if r["variant"] == variant]
        summary[variant] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("load_s", "images_per_s", "rank_params_mib", "peak_rss_mib")
        }
    ratio = {k: summary["sharded"][k] / summary["whole"][k] for k in summary["whole"]}
    header = f"{'variant':<8} {'load s':>7} {'img/s':>10} {'params MiB/rank':>15} {'peak RSS MiB/rank':>17}"
    table = [
        f"{name:<8} {s['load_s']:>7.2f} {s['images_per_s']:>10.1f} {s['rank_params_mib']:>15.1f} {s['peak_rss_mib']:>17.0f}"
        for name, s in (*summary.items(), ("ratio", ratio))
    ]
    print_table(header, table)
    write_results(
        args.out,
        {
            "preset": args.preset,
            "images": args.images,
            "size": args.size,
            "ranks": args.ranks,
            **summary,
            "ratio": ratio,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
