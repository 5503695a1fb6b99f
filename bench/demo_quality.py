"""Demo recipe quality: does SwAV pretraining of rg-tiny beat a random-init rg-tiny on the demo's evaluations?

Builds the demo's inputs once (the generated corpus → shards, the generated counting and copy-detection
benchmarks), then for each recipe (a list of `--set` overrides of the rg-tiny preset) trains with
`seer pretrain` (one process), consolidates, and runs the demo's linear probe, kNN and copy detection
with exactly the demo's evaluation settings (pipelines/run/local_run.py DEMO_ARGUMENTS, components/evaluate.py).
The random-init baseline (same seed as the demo's) is evaluated once per work folder. Without
`--recipe`, the rg-tiny preset as the demo trains it (`preset`, batch 32) is the one recipe. Each recipe is
trained with `--seeds` training seeds (`train.seed`); prints one row per run, then per recipe the mean
and range over seeds and whether every seed beat random-init on all three metrics; appends rows to
bench/results/demo_quality.json. One process with batch 32 stands in for the demo's 2 ranks x 16.

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_quality.py --work /tmp/dq --seeds 3   # the preset
    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_quality.py --work /tmp/dq --seeds 3 \
        --recipe soft-codes="train.batch_per_gpu=32 swav.epsilon=0.05"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo_quality.json"
DEMO_RECIPE = "preset=train.batch_per_gpu=32"  # the demo's 2 ranks x 16 as one process


def prepare(work: Path, images: int, max_size: int) -> tuple[str, dict[str, str]]:
    """Corpus → shards (as the generate-corpus / shard-images steps do) and the generated benchmarks."""
    from seer.data.shard import ShardSettings, shard
    from seer.data.synthetic import generate_corpus
    from seer.data.synthetic_benchmarks import make_copy_detection_set, make_counting_set

    shards = work / f"shards-{images}-{max_size}"
    if not (shards / "manifest.json").exists():
        corpus = work / f"corpus-{images}-{max_size}"
        generate_corpus(corpus, images, 0, min_size=min(48, max_size), max_size=max_size)
        shard([str(corpus)], str(shards), ShardSettings(), workers=1)
    bench = work / "benchmarks"
    if not (bench / "done.json").exists():
        counting = make_counting_set(str(bench / "counting"))
        copy = make_copy_detection_set(str(bench / "copy"))
        (bench / "done.json").write_text(json.dumps({"counting": counting, "copy": copy}))
    sets = json.loads((bench / "done.json").read_text())
    return str(shards), sets


def train(work: Path, name: str, overrides: list[str], shards: str, nproc: int) -> tuple[str, float]:
    """`seer pretrain` with the overrides; returns (consolidated checkpoint, training wall seconds)."""
    from seer.checkpoints.consolidate import consolidate

    out = work / "runs" / name
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
    """The demo's linear (28 epochs, fast protocol), kNN and copy-detection evaluations: linear / knn top-1, copy mAP."""
    from seer.eval import copy_detection, knn, linear
    from seer.eval.features import parse_pool, parse_transform
    from seer.eval.linear import LinearConfig
    from seer.eval.setup import FeatureOptions

    cls = FeatureOptions(transform=parse_transform("shorter:64:64"))
    cp = FeatureOptions(tap="res4", pool=parse_pool("rmac:3"), transform=parse_transform("longer:96"))
    c = sets["counting"]
    docs = {
        "linear": linear.run(
            c["train"],
            c["val"],
            checkpoint,
            options=cls,
            config=LinearConfig.for_epochs(28),
            protocol="fast",
            preset=preset,
            device="cpu",
        ),
        "knn": knn.run(c["train"], c["val"], checkpoint, options=cls, preset=preset, device="cpu"),
        "copy": copy_detection.run(
            sets["copy"]["queries"],
            checkpoint,
            database_uri=sets["copy"]["database"],
            whitening_uri=sets["copy"]["train"],
            options=cp,
            preset=preset,
            device="cpu",
        ),
    }
    picks = {"linear": "top1", "knn": "top1", "copy": "mAP"}
    out = {ev: doc["metrics"][picks[ev]] for ev, doc in docs.items()}
    out["copy_strong"] = docs["copy"]["metrics"].get("strong.mAP", 0.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/demo-quality", help="folder for corpus, shards, runs")
    parser.add_argument("--images", type=int, default=256, help="images in the generated corpus")
    parser.add_argument("--max-size", type=int, default=128, help="largest side of the generated images")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (torchrun when > 1)")
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help=f"a recipe: name=space-separated --set overrides of rg-tiny (repeatable; default {DEMO_RECIPE})",
    )
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
    shards, sets = prepare(work, args.images, args.max_size)
    rows = []
    results = Path(args.results)
    if results.exists():
        rows = json.loads(results.read_text()).get("rows", [])
    baseline = None
    cached = work / "random-init.json"
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
                   "nproc": args.nproc, "train_seconds": round(seconds, 1), **evaluate(ckpt, sets)}  # fmt: skip
            new_rows.append(row)
            print(json.dumps(row), flush=True)
    rows += new_rows
    print(f"{'run':<18} {'linear':>7} {'knn':>7} {'copy':>7} {'strong':>7} {'train s':>8}")
    if baseline:
        print(
            f"{'random-init':<18} {baseline['linear']:>7.3f} {baseline['knn']:>7.3f} {baseline['copy']:>7.3f} "
            f"{baseline.get('copy_strong', 0):>7.3f}"
        )
    for r in new_rows:
        print(
            f"{r['name'] + ' s' + str(r['seed']):<18} {r['linear']:>7.3f} {r['knn']:>7.3f} {r['copy']:>7.3f} "
            f"{r.get('copy_strong', 0):>7.3f} {r['train_seconds']:>8.1f}"
        )
    for name in dict.fromkeys(r["name"] for r in new_rows):
        runs = [r for r in new_rows if r["name"] == name]
        cells = []
        for metric in ("linear", "knn", "copy"):
            values = [r[metric] for r in runs]
            cells.append(f"{metric} {sum(values) / len(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
        beats = baseline and all(r[m] > baseline[m] for r in runs for m in ("linear", "knn", "copy"))
        print(
            f"{name}: {len(runs)} seeds, " + ", ".join(cells) + f"; beats random-init in every seed: {beats}"
        )
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"rows": rows, "random-init": baseline}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
