"""ShardStream set-up cost vs manifest size: memory and time grow with shards, not samples or records.

Synthetic manifests (``seer.data.synthetic_manifest``: fake shard records, no tars) from 1k to 100k
shards of 10k samples (100k shards = 1B samples, the SEER corpus), plus per-sample reject records
kept in a compressed side file. The baseline in the same run is the previous manifest layout
(``seer-shards/1``), which held every reject inline, at 1M records. Each set-up (read the manifest,
build one rank's stream and loader, compute a worker's span) runs in a fresh process: peak Python
allocations (tracemalloc), peak RSS growth, wall and CPU seconds. Prints a table, writes
bench/results/manifest_scale.json.

    .venv/bin/python bench/manifest_scale.py [--max-shards 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _common import peak_rss_mib, print_table, write_results

RESULTS = Path(__file__).parent / "results" / "manifest_scale.json"


def measure(manifest_uri: str) -> dict[str, float]:
    """One set-up in this process: a rank of 64 with batch 32, and its first worker's span."""
    from seer.data.stream import ShardStream, build_loader

    before_rss = peak_rss_mib()
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    stream = ShardStream(manifest_uri, None, rank=3, world_size=64)
    build_loader(stream, 32, num_workers=0)
    stream._pieces(0, 3, stream.samples_per_worker())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"setup_wall_s": wall, "setup_cpu_s": cpu, "py_peak_mib": peak / (1 << 20),
            "rss_growth_mib": peak_rss_mib() - before_rss}  # fmt: skip


def write_inline_manifest(output: Path, shards: int, samples_per_shard: int, records: int) -> str:
    """The seer-shards/1 layout: shards plus every reject inline in manifest.json."""
    output.mkdir(parents=True)
    entries = ",".join(
        f'{{"name": "shard-{i:06d}.tar", "samples": {samples_per_shard}, "bytes": 1, "sha256": "{i:064x}"}}'
        for i in range(shards)
    )
    rejected = ",".join(
        f'{{"source": "s3://bucket/images/{i:012d}.jpg", "reason": "corrupt", "detail": "decoding failed"}}'
        for i in range(records)
    )
    (output / "manifest.json").write_text(
        f'{{"format": "seer-shards/1", "shards": [{entries}], "rejected": [{rejected}], "duplicates": []}}'
    )
    return str(output / "manifest.json")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--max-shards", type=int, default=100_000, help="largest manifest (shards of 10k samples)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one set-up in this process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    from seer.data.synthetic_manifest import write_synthetic_manifest

    cases = [("seer-shards/1 (records inline)", 1_000, 10_000, 1_000_000)]
    shard_counts = [n for n in (1_000, 10_000, 100_000) if n <= args.max_shards]
    cases += [("seer-shards/2", 1_000, 10_000, 1_000_000)]
    cases += [("seer-shards/2", n, 10_000, 1_000) for n in shard_counts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for index, (layout, shards, per_shard, records) in enumerate(cases):
            folder = Path(tmp_dir) / str(index)
            if layout.startswith("seer-shards/1"):
                uri = write_inline_manifest(folder, shards, per_shard, records)
            else:
                uri = write_synthetic_manifest(
                    str(folder), shards=shards, samples_per_shard=per_shard, records=records
                )
            done = subprocess.run(
                [sys.executable, __file__, "--measure", uri], capture_output=True, text=True, check=True
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"layout": layout, "shards": shards, "samples": shards * per_shard, "records": records,
                         "manifest_mib": round(Path(uri).stat().st_size / (1 << 20), 2),
                         **{k: round(v, 3) for k, v in result.items()}})  # fmt: skip
    base = rows[0]
    header = (f"{'layout':<31} {'shards':>7} {'samples':>13} {'records':>9} {'manifest MiB':>12} "
              f"{'setup s':>8} {'CPU s':>6} {'py peak MiB':>11} {'RSS +MiB':>9} {'KiB/shard':>9}")  # fmt: skip
    for r in rows:
        r["py_peak_kib_per_shard"] = round(r["py_peak_mib"] * 1024 / r["shards"], 2)
        r["py_peak_vs_inline"] = round(r["py_peak_mib"] / base["py_peak_mib"], 4)
    print("ShardStream set-up (one rank of 64, batch 32) vs manifest size; fresh process per row")
    print_table(header, (f"{r['layout']:<31} {r['shards']:>7} {r['samples']:>13,} {r['records']:>9,} {r['manifest_mib']:>12.2f} "
                         f"{r['setup_wall_s']:>8.3f} {r['setup_cpu_s']:>6.3f} {r['py_peak_mib']:>11.2f} "
                         f"{r['rss_growth_mib']:>9.1f} {r['py_peak_kib_per_shard']:>9.2f}" for r in rows))  # fmt: skip
    same = rows[1]
    print(f"1M records: {same['py_peak_mib']:.2f} MiB with records in side files vs {base['py_peak_mib']:.1f} MiB "
          f"inline ({same['py_peak_vs_inline']:.4f}x)")  # fmt: skip
    result = {"bench": "manifest_scale", "machine": platform.processor() or platform.machine(), "rows": rows}
    write_results(args.out, result)


if __name__ == "__main__":
    main()
