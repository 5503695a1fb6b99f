"""Demo recipe quality: does SwAV pretraining of rg-tiny beat a random-init rg-tiny on the demo's evaluations?

Builds the demo's inputs once (the generated corpus → shards, the generated counting and copy-detection
benchmarks at the demo's sizes), then for each recipe (a list of `--set` overrides of the rg-tiny recipe)
trains with `seer pretrain` (`--nproc` ranks under torchrun), consolidates, and runs the demo's linear
probe, kNN and copy detection with the demo's evaluation settings (pipelines/run/local_run.py
DEMO_ARGUMENTS). The random-init baseline (same seed as the demo's) is evaluated once per benchmark set. Without `--recipe`, the rg-tiny
recipe as the demo trains it is the one recipe. Each recipe is trained with `--seeds` training seeds
(`train.seed`); prints one row per run, then per recipe the mean and range over seeds and whether every
seed beat random-init on every metric (linear top-1, kNN top-1, copy mAP and strong.mAP); appends rows to
bench/results/demo_quality.json. The defaults are the demo's set-up (DEMO_ARGUMENTS: the corpus sharded
in `shard_parallelism` partitions, `nproc_per_node` ranks): seed 0 of the plain recipe is what `make demo`
trains, and reproduces its numbers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_quality.py --work /tmp/dq --seeds 3   # the recipe
    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_quality.py --work /tmp/dq --seeds 3 \
        --recipe soft-codes="swav.epsilon=0.05"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo_quality.json"
DEMO_RECIPE = "demo="  # rg-tiny as the demo trains it


def prepare(
    work: Path, images: int, max_size: int, partitions: int, sizes: dict
) -> tuple[str, dict[str, str]]:
    """Corpus → shards in `partitions` partitions (as the generate-corpus, list-images, shard-partition and
    merge-shards steps do) and the generated benchmarks (`sizes`: generator keyword arguments per
    benchmark, as the pipeline's `benchmark_sizes`)."""
    from seer.data.listing import list_inputs
    from seer.data.merge import merge_partitions
    from seer.data.shard import ShardSettings, shard_partition
    from seer.data.synthetic import generate_corpus
    from seer.data.synthetic_benchmarks import make_copy_detection_set, make_counting_set

    shards = work / f"shards-{images}-{max_size}-p{partitions}"
    if not (shards / "manifest.json").exists():
        corpus = work / f"corpus-{images}-{max_size}"
        if not corpus.exists():
            generate_corpus(corpus, images, 0, min_size=min(48, max_size), max_size=max_size)
        list_inputs([str(corpus)], str(shards), partitions)
        for partition in range(partitions):
            shard_partition([], str(shards), partition, partitions, ShardSettings(), workers=1)
        merge_partitions(str(shards), partitions)
    bench = work / (
        "benchmarks-" + hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:8]
    )
    if not (bench / "done.json").exists():
        counting = make_counting_set(str(bench / "counting"), **sizes.get("counting", {}))
        copy = make_copy_detection_set(str(bench / "copy"), **sizes.get("copy-detection", {}))
        (bench / "done.json").write_text(json.dumps({"counting": counting, "copy": copy}))
    sets = json.loads((bench / "done.json").read_text())
    return str(shards), sets


def train(work: Path, name: str, overrides: list[str], shards: str, nproc: int) -> tuple[str, float]:
    """`seer pretrain` with the overrides; returns (consolidated checkpoint, training wall seconds)."""
    from seer.checkpoints.consolidate import consolidate

    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an old one of this name would be resumed
    cmd = [sys.executable, "-m", "seer", "pretrain", "--recipe", "rg-tiny"]
    if nproc > 1:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "seer", "pretrain", "--recipe", "rg-tiny"]
    for item in overrides:
        cmd += ["--set", item]
    cmd += ["--data", shards, "--output", str(out)]
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    summary = json.loads((out / "summary.json").read_text())
    consolidated = str(out / "consolidated")
    consolidate(summary["checkpoints"][-1], consolidated)
    return consolidated, seconds


def evaluate(checkpoint: str, sets: dict, preset: str | None = None) -> dict[str, float]:
    """The demo's linear, kNN and copy-detection evaluations: linear / knn top-1, copy mAP and strong.mAP."""
    from pipelines.run.local_run import DEMO_ARGUMENTS as demo
    from seer.eval import copy_detection, knn, linear
    from seer.eval.features import parse_pool, parse_transform
    from seer.eval.linear import LinearConfig
    from seer.eval.setup import FeatureOptions

    workers = demo["eval_workers"]
    cls = FeatureOptions(transform=parse_transform(demo["eval_transform"]), num_workers=workers)
    cp = FeatureOptions(
        tap="res4",
        pool=parse_pool("rmac:3"),
        transform=parse_transform(demo["copy_transform"]),
        num_workers=workers,
    )
    c, q = sets["counting"], sets["copy"]
    config = LinearConfig.for_epochs(demo["linear_epochs"])
    common = {"checkpoint": checkpoint, "preset": preset, "device": "cpu"}
    lin = linear.run(
        c["train"], c["val"], options=cls, config=config, protocol=demo["linear_protocol"], **common
    )
    near = knn.run(c["train"], c["val"], options=cls, **common)
    copy = copy_detection.run(
        q["queries"], database_uri=q["database"], whitening_uri=q["train"], options=cp, **common
    )["metrics"]
    return {
        "linear": lin["metrics"]["top1"],
        "knn": near["metrics"]["top1"],
        "copy": copy["mAP"],
        "copy_strong": copy["strong.mAP"],
    }


def main() -> int:
    from pipelines.run.local_run import DEMO_ARGUMENTS as demo
    from pipelines.run.local_run import DEMO_BENCHMARK_SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/demo-quality", help="folder for corpus, shards, runs")
    parser.add_argument(
        "--images", type=int, default=demo["synth_images"], help="images in the generated corpus"
    )
    parser.add_argument("--max-size", type=int, default=128, help="largest side of the generated images")
    parser.add_argument(
        "--nproc", type=int, default=demo["nproc_per_node"], help="training processes (torchrun when > 1)"
    )
    parser.add_argument(
        "--partitions", type=int, default=demo["shard_parallelism"], help="shard partitions of the corpus"
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help=f"a recipe: name=space-separated --set overrides of rg-tiny (repeatable; default {DEMO_RECIPE})",
    )
    parser.add_argument("--sizes", help="benchmark sizes as JSON (default: the demo's DEMO_BENCHMARK_SIZES)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per recipe")
    parser.add_argument("--first-seed", type=int, default=0, help="the first training seed")
    parser.add_argument("--results", default=str(RESULTS), help="JSON file the rows are appended to")
    parser.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = json.loads(args.sizes) if args.sizes else DEMO_BENCHMARK_SIZES
    shards, sets = prepare(work, args.images, args.max_size, args.partitions, sizes)
    rows = []
    results = Path(args.results)
    if results.exists():
        rows = json.loads(results.read_text()).get("rows", [])
    baseline = None
    cached = Path(sets["counting"]["train"]).parent.parent / "random-init.json"
    if not args.no_baseline:
        if not cached.exists():
            cached.write_text(json.dumps(evaluate("random", sets, preset="rg-tiny")))
        baseline = json.loads(cached.read_text())
        print(json.dumps({"name": "random-init", **baseline}), flush=True)
    new_rows = []
    for spec in args.recipe or [DEMO_RECIPE]:
        name, _, text = spec.partition("=")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            overrides = [*shlex.split(text), f"train.seed={seed}"]
            ckpt, seconds = train(work, f"{name}-s{seed}", overrides, shards, args.nproc)
            row = {"name": name, "seed": seed, "overrides": overrides, "images": args.images,
                   "nproc": args.nproc, "partitions": args.partitions, "train_seconds": round(seconds, 1), **evaluate(ckpt, sets)}  # fmt: skip
            new_rows.append(row)
            print(json.dumps(row), flush=True)
    rows += new_rows
    metrics = ("linear", "knn", "copy", "copy_strong")
    print(f"{'run':<18}" + "".join(f" {m:>11}" for m in metrics) + f" {'train s':>8}")
    for r in ([{"name": "random-init", **baseline}] if baseline else []) + new_rows:
        label = r["name"] + (f" s{r['seed']}" if "seed" in r else "")
        seconds = f" {r['train_seconds']:>8.1f}" if "train_seconds" in r else ""
        print(f"{label:<18}" + "".join(f" {r[m]:>11.3f}" for m in metrics) + seconds)
    for name in dict.fromkeys(r["name"] for r in new_rows):
        runs = [r for r in new_rows if r["name"] == name]
        cells = []
        for metric in metrics:
            values = [r[metric] for r in runs]
            cells.append(f"{metric} {sum(values) / len(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
        beats = baseline is not None and all(r[m] > baseline[m] for r in runs for m in metrics)
        print(
            f"{name}: {len(runs)} seeds, " + ", ".join(cells) + f"; beats random-init in every seed: {beats}"
        )
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"rows": rows, "random-init": baseline}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
