"""SwAV training-step throughput: seer's engine step vs a plain torchvision SwAV step, in the same run.

Baseline (../shared/reference/perf_baseline.md): torchvision `RegNet` with the preset's RegNetY
numbers (= `regnet_y_32gf` / `regnet_y_128gf`), a [W, 8192, 256] MLP with BN, 16,000 prototypes,
Sinkhorn 3 iterations, plain SGD, bf16 autocast, channels-last, cuDNN defaults. It is run twice:
as is, and with `cudnn.benchmark` on, so the table shows how much autotuning alone gives.
seer: `seer.train.engine.SwAVStep` for the preset's config (on one GPU unsharded: fp32 parameters,
bf16 autocast, fp32 BatchNorm affine/statistics and prototypes, channels-last weights; on CPU FSDP2 as
on every multi-process run; LARC, the preset's Sinkhorn iterations, cudnn.benchmark), without and
with activation checkpointing, and once with plain SGD instead of LARC to show what LARC costs.

Random data, crops from the preset's config (SEER 2021: 2×224 + 4×96). img/s = batch / median
step time over --steps steps after --warmup. Model FLOPs per image = 3 × the forward FLOPs counted
by `FlopCounterMode` on the meta device (perf_baseline.md: never count the backward pass); MFU =
model FLOP/s / a large matmul measured in the same run (bf16 on GPU, fp32 on CPU). On CPU the
default is rg-tiny in fp32, one thread, timed in process CPU time so machine load does not count.
Prints a table and writes bench/results/train_step_<device>.json (`seer plan` reads it).

    .venv/bin/python bench/train_step.py [--presets rg32gf:32 rg128gf:16] [--steps 8] [--warmup 4]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.regnet import RegNet

from seer.config import SeerConfig, load_config
from seer.models import build_swav_model, get_preset
from seer.ssl.swav import SwAVLoss, normalize_prototypes_
from seer.train.engine import SwAVStep
from seer.train.parallel import init_distributed

RESULTS = Path(__file__).parent / "results"
GPU_PRESETS = ["rg32gf:32", "rg128gf:16"]
CPU_PRESETS = ["rg-tiny:16"]


class PlainSwAV(nn.Module):
    """torchvision RegNetY trunk + [W, hidden, dim] BN MLP + one prototype matrix (the plain baseline)."""

    def __init__(self, preset: str, hidden: int, dim: int, prototypes: int) -> None:
        super().__init__()
        spec = get_preset(preset)
        self.trunk = RegNet(spec.block_params(), stem_width=spec.stem_width)
        self.trunk.fc = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(spec.feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )
        self.prototypes = nn.Linear(dim, prototypes, bias=False)

    def forward(self, crops: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        feats, start = [], 0
        while start < len(crops):  # one trunk pass per run of same-size crops
            end = start + 1
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            feats.append(self.trunk(torch.cat(crops[start:end])))
            start = end
        z = F.normalize(self.head(torch.cat(feats)), dim=1)
        return z, [self.prototypes(z)]


def _baseline_head(preset: str, cuda: bool) -> tuple[int, int, int]:
    """(hidden, dim, prototypes): perf_baseline.md's on GPU; the preset's own (tiny) head on CPU."""
    if cuda:
        return 8192, 256, 16000
    spec = get_preset(preset)
    return spec.head_dims[1], spec.head_dims[-1], spec.num_prototypes[0]


def _config(preset: str, batch: int, checkpointing: bool, larc: bool = True) -> SeerConfig:
    return load_config(
        preset,
        [
            f"model.preset={preset}",
            f"train.batch_per_gpu={batch}",
            f"train.activation_checkpointing={str(checkpointing).lower()}",
            "train.iterations=100000",
            "train.global_batch=null",
            "optim.warmup_iters=10",
            "swav.freeze_prototypes_iters=0",
            f"optim.larc={str(larc).lower()}",
        ],
    )


def _crops(cfg: SeerConfig, batch: int, device: torch.device, channels_last: bool) -> list[Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.randn(batch, 3, c.size, c.size, device=device).contiguous(memory_format=fmt)
        for c in cfg.data.crops
        for _ in range(c.count)
    ]


def _forward_gflop(model: nn.Module, cfg: SeerConfig) -> float:
    """Forward GFLOP per image (all crops), counted on the meta device."""
    crops = [torch.empty(1, 3, c.size, c.size, device="meta") for c in cfg.data.crops for _ in range(c.count)]
    with FlopCounterMode(display=False) as counter:
        model(crops)
    return counter.get_total_flops() / 1e9


class Clock:
    """Wall time with CUDA synchronisation on GPU; this process's CPU time on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


PROFILE = False  # --profile: print where the timed steps spend their time


def _median_step(step: Callable[[int], None], clock: Clock, warmup: int, steps: int) -> float:
    for i in range(warmup):
        step(i)
    times = []
    with torch.profiler.profile(record_shapes=False) if PROFILE else contextlib.nullcontext() as prof:
        for i in range(steps):
            t0 = clock()
            step(warmup + i)
            times.append(clock() - t0)
    if prof is not None:
        sort = "self_cuda_time_total" if clock.device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60), flush=True)
    return statistics.median(times)


def matmul_peak_tflops(device: torch.device, clock: Clock) -> float:
    """A large square matmul (bf16 on GPU, fp32 on CPU), in TFLOP/s."""
    n, reps = (8192, 20) if device.type == "cuda" else (512, 5)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = clock()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (clock() - t0) / 1e12


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_baseline(
    preset: str, batch: int, device: torch.device, clock: Clock, args: argparse.Namespace, tuned: bool
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = tuned
    cfg = _config(preset, batch, False)
    hidden, dim, protos = _baseline_head(preset, cuda)
    with torch.device("meta"):
        gflop = _forward_gflop(PlainSwAV(preset, hidden, dim, protos), cfg)
    with torch.device(device):  # initialise on the device (seconds, not minutes, for rg128gf)
        model = PlainSwAV(preset, hidden, dim, protos)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = SwAVLoss(sum(c.count for c in cfg.data.crops), [0, 1], 0.1, 0.05, sinkhorn_iterations=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    crops = _crops(cfg, batch, device, cuda)

    def step(_: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z, scores = model(crops)
        loss_fn(z, scores).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        normalize_prototypes_(model)

    seconds = _median_step(step, clock, args.warmup, args.steps)
    row = _row(
        preset, "baseline+cudnn.benchmark" if tuned else "baseline", device, batch, cfg, gflop, seconds
    )
    row["precision"] = "bf16 autocast" if cuda else "fp32"
    return row


def bench_seer(
    preset: str,
    batch: int,
    device: torch.device,
    clock: Clock,
    args: argparse.Namespace,
    checkpointing: bool,
    larc: bool = True,
) -> dict[str, Any]:
    cfg = _config(preset, batch, checkpointing, larc)
    gflop = _forward_gflop(build_swav_model(preset, "meta"), cfg)
    swav = SwAVStep(cfg, init_distributed())
    crops = _crops(cfg, batch, device, swav.info.channels_last)
    seconds = _median_step(lambda i: swav(crops, i), clock, args.warmup, args.steps)
    variant = "seer" + ("+act-ckpt" if checkpointing else "") + ("" if larc else " (SGD, no LARC)")
    row = _row(preset, variant, device, batch, cfg, gflop, seconds)
    row["precision"] = {"bfloat16": "bf16", "float32": "fp32"}[swav.info.param_dtype]
    return row


def _row(
    preset: str, variant: str, device: torch.device, batch: int, cfg: SeerConfig, gflop: float, seconds: float
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "preset": preset,
        "variant": variant,
        "device": device.type,
        "batch": batch,
        "crops": " + ".join(f"{c.count}x{c.size}" for c in cfg.data.crops),
        "layout": "channels_last" if cuda else "NCHW",
        "step_ms": seconds * 1e3,
        "img_per_sec": batch / seconds,
        "model_gflop_per_image": 3 * gflop,
        "tflops": 3 * gflop * batch / seconds / 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    ratios = {}
    for preset in dict.fromkeys(r["preset"] for r in rows):
        by = {r["variant"]: r for r in rows if r["preset"] == preset and "img_per_sec" in r}
        if "seer" in by:
            ratios[preset] = {
                f"seer/{base}": by["seer"]["img_per_sec"] / by[base]["img_per_sec"]
                for base in ("baseline", "baseline+cudnn.benchmark")
                if base in by
            }
    return ratios


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _write_results(rows: list[dict[str, Any]], device: torch.device, peak: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"train_step_{device.type}.json"
    out.write_text(
        json.dumps(
            {
                "device": device.type,
                "device_name": _device_name(device),
                "torch": torch.__version__,
                "matmul_peak_tflops": peak,
                "timing": "wall, CUDA-synchronised"
                if device.type == "cuda"
                else "process CPU time, 1 thread",
                "rows": rows,
                "ratios": _ratios(rows),
            },
            indent=2,
        )
    )
    return out


def _print_table(rows: list[dict[str, Any]], device: torch.device, peak: float) -> None:
    print(
        f"\ndevice: {_device_name(device)}; measured {'bf16' if device.type == 'cuda' else 'fp32'} matmul peak {peak:.1f} TFLOP/s"
    )
    header = f"{'preset':8} {'variant':26} {'batch':>5} {'precision':>13} {'img/s':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak mem':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:8} {r['variant']:26} {r['batch']:>5} {r['error']}")
            continue
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "-"
        print(
            f"{r['preset']:8} {r['variant']:26} {r['batch']:>5} {r['precision']:>13} {r['img_per_sec']:>9.2f} "
            f"{r['model_gflop_per_image']:>10.4g} {r['tflops']:>8.3g} {r['mfu']:>6.1%} {mem:>9}"
        )
    for preset, ratio in _ratios(rows).items():
        print(f"{preset}: " + ", ".join(f"{k} = {v:.2f}x" for k, v in ratio.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        help="PRESET:BATCH_PER_GPU entries (default: rg32gf:32 rg128gf:16 on GPU, rg-tiny:16 on CPU)",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (median reported)")
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed steps first (cuDNN autotuning, allocator)"
    )
    parser.add_argument(
        "--no-act-ckpt", action="store_true", help="skip the seer variant with activation checkpointing"
    )
    parser.add_argument(
        "--no-sgd", action="store_true", help="skip the seer variant with plain SGD instead of LARC"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print the top operators of each variant's timed steps"
    )
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile

    env = init_distributed()
    device = env.device
    if device.type != "cuda":
        torch.set_num_threads(1)
    clock = Clock(device)
    peak = matmul_peak_tflops(device, clock)
    rows = []
    for entry in args.presets or (GPU_PRESETS if device.type == "cuda" else CPU_PRESETS):
        preset, _, batch_text = entry.partition(":")
        batch = int(batch_text or 16)
        common = (preset, batch, device, clock, args)
        runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("baseline", partial(bench_baseline, *common, tuned=False)),
            ("seer", partial(bench_seer, *common, checkpointing=False)),
        ]
        if device.type == "cuda":  # cuDNN autotuning only exists on GPU
            runs.insert(1, ("baseline+cudnn.benchmark", partial(bench_baseline, *common, tuned=True)))
        if not args.no_act_ckpt:
            runs.append(("seer+act-ckpt", partial(bench_seer, *common, checkpointing=True)))
        if not args.no_sgd:  # the same step with plain SGD: how much of the step the LARC update costs
            runs.append(
                ("seer (SGD, no LARC)", partial(bench_seer, *common, checkpointing=False, larc=False))
            )
        for variant, run in runs:
            _release(device)
            try:
                row = run()
            except torch.cuda.OutOfMemoryError as err:
                row = {
                    "preset": preset,
                    "batch": batch,
                    "variant": variant,
                    "error": f"out of memory: {err}"[:200],
                }
            row["mfu"] = row["tflops"] / peak if "tflops" in row else None
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write_results(rows, device, peak)  # after every row: a run cut short still leaves its numbers

    out = _write_results(rows, device, peak)
    _print_table(rows, device, peak)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
