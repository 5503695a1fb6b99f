"""Sharding throughput: `seer shard` vs a naive sequential PIL open + convert + save into one tar.

Both read the same procedural corpora (all-JPEG, and mixed jpg/png/webp/bmp; 256–1024 px) and
write JPEG q90. The naive baseline does no validation, EXIF, dedup or sidecars; ours does all of
that (JPEGs that need no change pass through after a full entropy-decode check). Throughput is
images per CPU-second (this process plus its worker processes), so other load on a shared machine
does not count; wall-clock images/s are shown too. Each measurement runs in a fresh process (best
of --repeats interleaved rounds); peak memory is that process's peak RSS (VmHWM) and the largest
worker's. Worker start-up (spawn + imports) is included in the parallel run's CPU time. Prints a table, writes bench/results/shard.json.

The scaling table compares `--workers 1` with `--workers 2` per CPU-second (parallel efficiency:
1.0 means the second process costs no extra CPU per image) and in wall time (only meaningful on
an otherwise idle machine).

    .venv/bin/python bench/shard.py [--images 150] [--max-short-side 256]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import add_run_flags, peak_rss_mib, print_table, reset_peak_rss, result_header, write_results
from PIL import Image

from seer.data.shard import ShardSettings, shard

RESULTS = Path(__file__).parent / "results" / "shard.json"


def naive(files: list[Path], out: Path, max_short_side: int | None) -> None:
    """What a user writes without seer: open, convert, maybe resize, save, append to one tar."""
    with tarfile.open(out, "w") as tar:
        for i, path in enumerate(files):
            image = Image.open(path).convert("RGB")
            if max_short_side and min(image.size) > max_short_side:
                scale = max_short_side / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=90)
            info = tarfile.TarInfo(f"{i:010d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)


def measure(run: Callable[[], None]) -> dict[str, float]:
    """CPU seconds (self + waited-for children), wall seconds and peak RSS of one run."""
    reset_peak_rss()
    before, wall = os.times(), time.perf_counter()
    run()
    after, wall = os.times(), time.perf_counter() - wall
    cpu = sum(after[i] - before[i] for i in range(4))  # user, system, children user, children system
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": children_peak,
    }


def run_variant(args: argparse.Namespace) -> None:
    """One measurement in this fresh process (so peak memory is its own); prints a JSON line."""
    files = sorted(p for p in Path(args.input).rglob("*") if p.is_file())
    if args.variant == "naive":
        result = measure(lambda: naive(files, Path(args.output) / "naive.tar", args.max_short_side))
    else:
        settings = ShardSettings(max_short_side=args.max_short_side)
        workers = int(args.variant.removeprefix("seer-w"))
        result = measure(
            lambda: shard([args.input], args.output, settings, workers=workers, log=lambda _: None)
        )
    print(json.dumps(result))


def measure_in_subprocess(variant: str, corpus: Path, tmp: Path, side: int | None) -> dict[str, float]:
    """Run one measurement in a fresh interpreter; return its JSON result."""
    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"out-{corpus.name}-{variant}-{side}-"))
    cmd = [sys.executable, __file__, "--variant", variant, "--input", str(corpus), "--output", str(out)]
    cmd += ["--max-short-side", str(side)] if side else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, variants: list[str], corpus: Path, tmp: Path, side: int | None) -> dict[str, dict]:
    """Interleave ``repeats`` rounds over the variants; keep each one's least CPU and wall time.

    On a machine shared with other work, the minimum is the measurement least disturbed by it.
    """
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for variant in variants:
            r = measure_in_subprocess(variant, corpus, tmp, side)
            if variant in best:
                r = {k: (min if k.endswith("_s") else max)(v, best[variant][k]) for k, v in r.items()}
            best[variant] = r
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=150, help="corpus size")
    parser.add_argument(
        "--max-short-side", type=int, default=256, help="downscale target of the second scenario"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per measurement (best one kept)")
    parser.add_argument(
        "--scaling-images", type=int, default=600, help="JPEG corpus size of the 1-vs-N-process scaling row"
    )
    add_run_flags(parser, RESULTS, "--input", "--output")
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return

    from seer.data.synthetic import FORMATS, generate_corpus  # here: spawned workers need not import it

    rows = []
    pipelines = {"naive": "naive (1 process)", "seer-w1": "seer shard --workers 1"}
    pipelines[f"seer-w{args.workers}"] = f"seer shard --workers {args.workers}"
    corpora = {"jpeg": ("jpg",), "mixed": FORMATS}
    source_mib = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for corpus, formats in corpora.items():
            files = generate_corpus(
                tmp / corpus, args.images, seed=0, min_size=256, max_size=1024, formats=formats
            )
            source_mib[corpus] = round(sum(p.stat().st_size for p in files) / (1 << 20), 1)
            for side in (None, args.max_short_side):
                label = f"{corpus}, " + ("full size" if side is None else f"short<={side}")
                results = best_of(args.repeats, list(pipelines), tmp / corpus, tmp, side)
                base = args.images / results["naive"]["cpu_s"]
                for variant, r in results.items():
                    per_core = args.images / r["cpu_s"]
                    rows.append(
                        {"scenario": label, "pipeline": pipelines[variant], "img_per_cpu_s": round(per_core, 1),
                         "img_per_wall_s": round(args.images / r["wall_s"], 1), "ratio_per_core": round(per_core / base, 3),
                         "peak_rss_mib": round(r["peak_rss_mib"], 1), "worker_peak_rss_mib": round(r["worker_peak_rss_mib"], 1)}
                    )  # fmt: skip

        # Scaling: a larger JPEG corpus, so the workers' start-up (spawn + imports, ~0.2 CPU-s each)
        # weighs as little as it does in a real partition of millions of images.
        scaling = []
        big = args.scaling_images
        generate_corpus(tmp / "scaling", big, seed=1, min_size=256, max_size=1024, formats=("jpg",))
        side = args.max_short_side
        both = best_of(args.repeats, ["seer-w1", f"seer-w{args.workers}"], tmp / "scaling", tmp, side)
        one, many = both["seer-w1"], both[f"seer-w{args.workers}"]
        scaling.append(
            {"scenario": f"jpeg x{big}, short<={side}", "processes": f"1 -> {args.workers}",
             "img_per_cpu_s": [round(big / one["cpu_s"], 1), round(big / many["cpu_s"], 1)],
             "efficiency_per_cpu_s": round(one["cpu_s"] / many["cpu_s"], 3),
             "wall_speedup": round(one["wall_s"] / many["wall_s"], 3)}
        )  # fmt: skip

    header = f"{'scenario':<22} {'pipeline':<24} {'img/CPU-s':>9} {'img/wall-s':>10} {'ratio':>6} {'peak MiB':>9} {'worker MiB':>10}"
    print(
        f"sharding {args.images} images per corpus (jpeg: {source_mib['jpeg']} MiB, "
        f"mixed jpg/png/webp/bmp: {source_mib['mixed']} MiB; 256-1024 px) to JPEG q90"
    )
    print_table(header, (f"{r['scenario']:<22} {r['pipeline']:<24} {r['img_per_cpu_s']:>9.1f} {r['img_per_wall_s']:>10.1f} "
                         f"{r['ratio_per_core']:>6.2f} {r['peak_rss_mib']:>9.0f} {r['worker_peak_rss_mib']:>10.0f}"
                         for r in rows))  # fmt: skip
    print("ratio = images per CPU-second (process + workers, imports excluded for the main process only)")
    print(
        "        relative to the naive baseline of the same scenario; peak = main process, worker = largest worker"
    )
    print()
    print(f"{'scenario':<22} {'processes':>9} {'per-CPU-s efficiency':>21} {'wall speed-up':>14}")
    for r in scaling:
        print(
            f"{r['scenario']:<22} {r['processes']:>9} {r['efficiency_per_cpu_s']:>21.2f} {r['wall_speedup']:>14.2f}"
        )
    result = {
        **result_header("shard", "images per CPU-second (process + workers)"),
        "images": args.images,
        "source_mib": source_mib,
        "rows": rows,
        "scaling": scaling,
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
