"""Checkpoint conversion throughput and memory: `consolidate` (DCP → one file) and `slice` (one file →
one file per tensor) on a synthetic checkpoint shaped like rg10b's stage-4 block plus its SwAV head
(8.59 GB of fp32 at full size; `--gb` scales every tensor's first dimension), against a plain file
copy (`shutil.copyfile`) of the same bytes in the same run.

The checkpoint is generated on the fly (file-backed tensors saved with torch.distributed.checkpoint,
one chunk per tensor, so the 3.2 GB `f.c` conv is a single stored item) and deleted afterwards, with
everything else under a temporary folder in --workdir. The copy is timed right before and right
after each step (same source bytes) and averaged. Each measured step runs in a fresh process;
its peak RSS is that process's VmHWM (torch import included). GB/s = checkpoint bytes / wall
seconds. Prints a table and writes bench/results/ckpt.json.

    .venv/bin/python bench/ckpt.py [--gb 8.6] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ckpt.json"
FULL_GB = 8.591203368  # rg10b trunk_output.block4 + head tensors, fp32


def synthetic_shapes(gb: float) -> dict[str, tuple[int, ...]]:
    """rg10b stage-4 + head tensor shapes, first dimension scaled so the total is about `gb` GB."""
    from seer.models.swav_model import build_swav_model

    model = build_swav_model("rg10b", "meta")
    scale = gb / FULL_GB
    shapes = {}
    for name, t in model.state_dict().items():
        if name.startswith(("trunk.trunk_output.block4.", "head.")):
            shape = tuple(t.shape)
            shapes[name] = (max(1, math.ceil(shape[0] * scale)), *shape[1:]) if shape and scale < 1 else shape
    return shapes


def generate(folder: Path, gb: float) -> int:
    """Write a DCP checkpoint + seer manifest; tensors are file-backed so RAM stays small."""
    import torch
    import torch.distributed.checkpoint as dcp

    backing = folder.parent / "backing"
    backing.mkdir()
    pattern = torch.randn(1 << 22)
    state, total = {}, 0
    for i, (name, shape) in enumerate(synthetic_shapes(gb).items()):
        numel = math.prod(shape)
        dtype = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        t = torch.from_file(str(backing / f"{i}.bin"), shared=True, size=max(numel, 1), dtype=dtype)[:numel]
        for start in range(0, numel, pattern.numel()):
            n = min(pattern.numel(), numel - start)
            t[start : start + n] = (pattern[:n] + i).to(dtype)
        state[name] = t.view(shape)
        total += numel * t.element_size()
    dcp.save({"model": state}, checkpoint_id=str(folder), no_dist=True)
    del state
    shutil.rmtree(backing)
    manifest = {
        "iteration": 0,
        "preset": None,
        "config": None,
        "world_size": 1,
        "created": "bench",
        "format": "seer-dcp-v1",
    }
    (folder / "seer_checkpoint.json").write_text(json.dumps(manifest))
    return total


def measured(step: str, *args: str) -> dict[str, float]:
    """Run one step in a fresh process; returns its wall seconds and peak RSS (bytes)."""
    out = subprocess.run(
        [sys.executable, __file__, "--step", step, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_step(step: str, args: list[str]) -> None:
    """One measured step; imports happen before the clock starts (they count in peak RSS)."""
    from seer.checkpoints.consolidate import consolidate
    from seer.checkpoints.slice import slice_checkpoint

    start = time.perf_counter()
    if step == "consolidate":
        consolidate(args[0], args[1])
    elif step == "slice":
        slice_checkpoint(args[0], args[1])
    elif step == "copy":
        src, dst = Path(args[0]), Path(args[1])
        for path in sorted(src.rglob("*") if src.is_dir() else [src]):
            if path.is_file():
                target = dst / path.relative_to(src) if src.is_dir() else dst
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    seconds = time.perf_counter() - start
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"seconds": seconds, "peak_rss": int(hwm.split()[1]) * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gb", type=float, default=FULL_GB, help="checkpoint size in GB (default: full 8.59 GB)"
    )
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="folder for the temporary files")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one measured step
    args, rest = parser.parse_known_args()
    if args.step:
        run_step(args.step, rest)
        return

    need = 3.2 * args.gb * 1e9
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        sys.exit(
            f"bench/ckpt.py: {args.workdir} has {free / 1e9:.1f} GB free, needs ~{need / 1e9:.1f} GB; use --gb or --workdir"
        )
    work = Path(tempfile.mkdtemp(prefix="seer-bench-ckpt-", dir=args.workdir))
    rows = []
    try:
        t0 = time.perf_counter()
        nbytes = generate(work / "dcp", args.gb)
        print(
            f"generated {nbytes / 1e9:.2f} GB synthetic DCP checkpoint in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
        copies = [measured("copy", str(work / "dcp"), str(work / "dcp-copy"))]
        shutil.rmtree(work / "dcp-copy")
        cons = measured("consolidate", str(work / "dcp"), str(work / "model.pt"))
        copies.append(measured("copy", str(work / "dcp"), str(work / "dcp-copy")))
        shutil.rmtree(work / "dcp-copy")
        shutil.rmtree(work / "dcp")
        rows.append(("consolidate", cons, copies))
        copies = [measured("copy", str(work / "model.pt"), str(work / "model-copy.pt"))]
        (work / "model-copy.pt").unlink()
        sliced = measured("slice", str(work / "model.pt"), str(work / "sliced"))
        copies.append(measured("copy", str(work / "model.pt"), str(work / "model-copy.pt")))
        rows.append(("slice", sliced, copies))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gb = nbytes / 1e9
    results = {
        "checkpoint_gb": round(gb, 3),
        "largest_tensor_gb": round(
            max(math.prod(s) for s in synthetic_shapes(args.gb).values()) * 4 / 1e9, 3
        ),
        "machine": f"{platform.node()} {platform.machine()}, python {platform.python_version()}",
        "targets": {"speed_vs_copy": 0.5, "peak_rss_gb": 1.5},
        "steps": {},
    }
    print(
        f"\n{'step':<12} {'GB/s':>6} {'copy GB/s':>10} {'ratio':>6} {'peak RSS GB':>12} {'copy RSS GB':>12}"
    )
    for name, ours, copies in rows:
        base = {
            "seconds": sum(c["seconds"] for c in copies) / 2,
            "peak_rss": max(c["peak_rss"] for c in copies),
        }
        entry = {
            "seconds": round(ours["seconds"], 2),
            "gb_per_s": round(gb / ours["seconds"], 3),
            "copy_seconds": round(base["seconds"], 2),
            "copy_gb_per_s": round(gb / base["seconds"], 3),
            "speed_vs_copy": round(base["seconds"] / ours["seconds"], 3),
            "peak_rss_gb": round(ours["peak_rss"] / 1e9, 3),
            "copy_peak_rss_gb": round(base["peak_rss"] / 1e9, 3),
        }
        results["steps"][name] = entry
        print(
            f"{name:<12} {entry['gb_per_s']:>6.2f} {entry['copy_gb_per_s']:>10.2f} {entry['speed_vs_copy']:>6.2f} "
            f"{entry['peak_rss_gb']:>12.2f} {entry['copy_peak_rss_gb']:>12.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
