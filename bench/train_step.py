"""SwAV training-step throughput: seer's engine step vs a plain torchvision SwAV step, in the same run.

Baseline (../shared/reference/perf_baseline.md): torchvision `RegNet` with the preset's RegNetY
numbers (= `regnet_y_32gf` / `regnet_y_128gf`), a [W, 8192, 256] MLP with BN, 16,000 prototypes,
Sinkhorn 3 iterations, plain SGD, bf16 autocast, channels-last, cuDNN defaults; on GPU also with
`cudnn.benchmark` on, so the table shows how much autotuning alone gives. On CPU: fp32, NCHW and the
preset's own head.
seer: `seer.train.engine.SwAVStep` for the preset's config (one process: unsharded, fp32 master
parameters; on GPU bf16 autocast with fp32 BatchNorm and prototypes, channels-last, fused LARC,
cudnn.benchmark), and the variants named in VARIANTS (activation checkpointing, plain SGD, fp16,
regional torch.compile of the RegNet blocks).

Every variant is built and warmed up first, then timed in --repeats rounds of --steps steps each,
variants interleaved (the order rotates each round) so that load on a shared machine hits all of them
alike; img/s uses the median over rounds of each round's median step, and the ratio column is the
median over rounds of seer / baseline within the same round. Model FLOPs per image = 3 × the forward
FLOPs counted by `FlopCounterMode` on the meta device (perf_baseline.md); MFU = model FLOP/s / a large
matmul measured in the same run (bf16 on GPU, fp32 on CPU). CPU runs use one thread, timed in
process CPU time. `--profile` adds each variant's time per step phase (`seer.train.engine.PHASES`:
forward, loss, backward, optimizer, prototypes, rest) and the overhead of seer over the baseline per
phase. Prints tables and writes bench/results/train_step_<device>.json (`seer plan` reads it).

    .venv/bin/python bench/train_step.py [--presets rg32gf:32 rg128gf:16] [--device cpu] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import print_table, write_results
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.regnet import RegNet

from seer.config import SeerConfig, load_config
from seer.models import build_swav_model, get_preset
from seer.ssl.swav import SwAVLoss, normalize_prototypes_
from seer.train.engine import PHASES, SwAVStep
from seer.train.parallel import init_distributed

RESULTS = Path(__file__).parent / "results"
GPU_PRESETS = ["rg32gf:32", "rg128gf:16"]
CPU_PRESETS = ["rg-tiny:16"]
# variant -> config overrides of the seer step (None: the plain baseline)
VARIANTS: dict[str, list[str] | None] = {
    "baseline": None,
    "baseline+cudnn.benchmark": None,
    "seer": [],
    "seer+act-ckpt": ["train.activation_checkpointing=true"],
    "seer (SGD, no LARC)": ["optim.larc=false"],
    "seer fp16": ["train.precision=fp16"],
    "seer+compile": ["train.compile=true"],
    "seer+compile fp16": ["train.compile=true", "train.precision=fp16"],
}
DEFAULT_VARIANTS = {
    "cpu": ["baseline", "seer", "seer+act-ckpt", "seer (SGD, no LARC)"],
    "cuda": ["baseline", "baseline+cudnn.benchmark", "seer", "seer+act-ckpt", "seer (SGD, no LARC)"],
}
REST = "step.rest"  # step time outside the labelled phases (LR schedule, crops to device, …)


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


def _config(preset: str, batch: int, overrides: list[str]) -> SeerConfig:
    return load_config(
        preset,
        [
            f"model.preset={preset}",
            f"train.batch_per_gpu={batch}",
            "train.activation_checkpointing=false",
            "train.iterations=100000",
            "train.global_batch=null",
            "optim.warmup_iters=10",
            "swav.freeze_prototypes_iters=0",
            *overrides,
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


@dataclass
class Runner:
    """One variant, built and warmed up: `step(i)` runs training step i."""

    variant: str
    step: Callable[[int], None]
    precision: str
    layout: str
    gflop: float  # forward GFLOP per image
    cudnn_benchmark: bool
    build_seconds: float = 0.0
    peak_mem_gib: float | None = None
    rounds: list[float] = field(default_factory=list)  # median step seconds per round
    next_step: int = 0

    def run(self, n: int, clock: Clock) -> list[float]:
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        times = []
        for _ in range(n):
            t0 = clock()
            self.step(self.next_step)
            times.append(clock() - t0)
            self.next_step += 1
        return times


def build_baseline(preset: str, batch: int, device: torch.device, tuned: bool) -> Runner:
    cuda = device.type == "cuda"
    cfg = _config(preset, batch, [])
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
    forward, loss_phase, backward, optim_phase, protos_phase = PHASES

    def step(_: int) -> None:
        with record_function(forward), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z, scores = model(crops)
        with record_function(loss_phase):
            loss = loss_fn(z, scores)
        with record_function(backward):
            loss.backward()
        with record_function(optim_phase):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function(protos_phase):
            normalize_prototypes_(model)

    variant = "baseline+cudnn.benchmark" if tuned else "baseline"
    precision = "bf16 autocast" if cuda else "fp32"
    layout = "channels_last" if cuda else "NCHW"
    return Runner(variant, step, precision, layout, gflop, tuned)


def build_seer(preset: str, batch: int, device: torch.device, variant: str) -> Runner:
    cfg = _config(preset, batch, VARIANTS[variant] or [])
    gflop = _forward_gflop(build_swav_model(preset, "meta"), cfg)
    swav = SwAVStep(cfg, init_distributed())
    crops = _crops(cfg, batch, device, swav.info.channels_last)
    precision = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[swav.info.param_dtype]
    layout = "channels_last" if swav.info.channels_last else "NCHW"
    return Runner(variant, lambda i: swav(crops, i), precision, layout, gflop, device.type == "cuda")


def build(preset: str, batch: int, device: torch.device, variant: str, warmup: int, clock: Clock) -> Runner:
    """Build `variant` and run its warm-up steps; its peak memory is what it adds to what was allocated."""
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if cuda else 0
    t0 = time.perf_counter()
    if VARIANTS[variant] is None:
        runner = build_baseline(preset, batch, device, tuned=variant.endswith("cudnn.benchmark"))
    else:
        runner = build_seer(preset, batch, device, variant)
    runner.run(warmup, clock)  # cuDNN autotuning, compilation, allocator
    runner.build_seconds = time.perf_counter() - t0
    if cuda:
        runner.peak_mem_gib = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return runner


def phase_times(runner: Runner, steps: int) -> dict[str, float]:
    """Milliseconds per step in each of PHASES and the rest: each phase's share of the profiled steps
    (CPU-side ranges) times the variant's timed median step, so profiler overhead and machine load
    shift the split, not the total."""
    with torch.profiler.profile() as prof:
        t0 = time.perf_counter()
        runner.run(steps, Clock(torch.device("cpu")))
        total = time.perf_counter() - t0
    spent = dict.fromkeys(PHASES, 0.0)
    for event in prof.events():
        if event.name in spent:
            spent[event.name] += event.cpu_time_total / 1e6
    spent[REST] = max(total - sum(spent.values()), 0.0)
    step_ms = statistics.median(runner.rounds) * 1e3
    return {name: seconds / total * step_ms for name, seconds in spent.items()}


def overheads(phases: dict[str, dict[str, float]], base: str = "baseline") -> dict[str, dict[str, float]]:
    """Per seer variant and phase: ms per step over the baseline, and that as a share of the variant's step."""
    if base not in phases:
        return {}
    out = {}
    for variant, spent in phases.items():
        if variant.startswith("seer"):
            step = sum(spent.values())
            out[variant] = {
                name: {"overhead_ms": ms - phases[base][name], "share": (ms - phases[base][name]) / step}
                for name, ms in spent.items()
            }
    return out


def _ratios(runners: list[Runner]) -> dict[str, float]:
    """Median over rounds of seer-variant img/s / baseline img/s in the same round."""
    bases = [r for r in runners if r.variant.startswith("baseline")]
    out = {}
    for seer in (r for r in runners if r.variant.startswith("seer")):
        for base in bases:
            pairs = zip(base.rounds, seer.rounds, strict=True)
            out[f"{seer.variant}/{base.variant}"] = statistics.median(b / s for b, s in pairs)
    return out


def bench_preset(preset: str, batch: int, device: torch.device, args: argparse.Namespace, peak: float, clock: Clock) -> dict[str, Any]:  # fmt: skip
    names = args.variants or DEFAULT_VARIANTS[device.type]
    runners = []
    for name in names:
        try:
            runners.append(build(preset, batch, device, name, args.warmup, clock))
        except torch.cuda.OutOfMemoryError as err:
            print(f"{preset} {name}: out of memory while building ({str(err)[:120]})", flush=True)
    for rnd in range(args.repeats):  # interleaved: every variant in every round, order rotated
        shift = rnd % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner.rounds.append(statistics.median(runner.run(args.steps, clock)))
    rows = []
    for r in runners:
        seconds = statistics.median(r.rounds)
        tflops = 3 * r.gflop * batch / seconds / 1e3
        rows.append({
            "preset": preset, "variant": r.variant, "device": device.type, "batch": batch,
            "crops": " + ".join(f"{c.count}x{c.size}" for c in _config(preset, batch, []).data.crops),
            "precision": r.precision, "layout": r.layout, "step_ms": seconds * 1e3,
            "step_ms_rounds": [t * 1e3 for t in r.rounds], "img_per_sec": batch / seconds,
            "model_gflop_per_image": 3 * r.gflop, "tflops": tflops, "mfu": tflops / peak,
            "peak_mem_gib": r.peak_mem_gib, "build_and_warmup_s": r.build_seconds,
        })  # fmt: skip
    result: dict[str, Any] = {"rows": rows, "ratios": _ratios(runners)}
    if args.profile:
        phases = {r.variant: phase_times(r, args.profile_steps) for r in runners}
        result["phases_ms"] = phases
        result["overhead_vs_baseline"] = overheads(phases)
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _print(result: dict[str, Any], device: torch.device, peak: float) -> None:
    kind = "bf16" if device.type == "cuda" else "fp32"
    print(f"\ndevice: {_device_name(device)}; measured {kind} matmul peak {peak:.3g} TFLOP/s")
    header = f"{'preset':8} {'variant':26} {'batch':>5} {'precision':>13} {'layout':>13} {'img/s':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak mem':>9}"
    lines = []
    for r in result["rows"]:
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "-"
        lines.append(
            f"{r['preset']:8} {r['variant']:26} {r['batch']:>5} {r['precision']:>13} {r['layout']:>13} "
            f"{r['img_per_sec']:>9.2f} {r['model_gflop_per_image']:>10.4g} {r['tflops']:>8.3g} {r['mfu']:>6.1%} {mem:>9}"
        )
    print_table(header, lines)
    for preset, ratios in result["ratios"].items():
        print(f"{preset} (median of per-round ratios):")
        for name, value in ratios.items():
            print(f"  {name} = {value:.3f}x")
    for preset, phases in result.get("phases_ms", {}).items():
        names = [*PHASES, REST]
        print(f"\n{preset}: ms per step by phase (profiled), and seer's overhead over the baseline")
        header = f"{'variant':26} " + " ".join(f"{n.removeprefix('step.'):>10}" for n in names)
        lines = [f"{v:26} " + " ".join(f"{spent[n]:>10.2f}" for n in names) for v, spent in phases.items()]
        for v, over in result["overhead_vs_baseline"].get(preset, {}).items():
            lines.append(f"{'Δ ' + v:26} " + " ".join(f"{over[n]['share']:>+10.1%}" for n in names))
        print_table(header, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=[],
        help="PRESET:BATCH_PER_GPU entries (default: rg32gf:32 rg128gf:16 on GPU, rg-tiny:16 on CPU)",
    )
    parser.add_argument("--preset", action="append", default=[], help="one more PRESET[:BATCH] entry")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu"],
        default="auto",
        help="cpu: ignore GPUs; auto: a GPU if there is one",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="variants to run (default: per device, see DEFAULT_VARIANTS)",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of interleaved timing (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (autotuning, compilation)")
    parser.add_argument("--profile", action="store_true", help="also profile each variant's step phases")
    parser.add_argument("--profile-steps", type=int, default=4, help="steps profiled per variant")
    parser.add_argument(
        "--out", type=Path, help="results file (default bench/results/train_step_<device>.json)"
    )
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything touches CUDA

    env = init_distributed()
    device = env.device
    if device.type != "cuda":
        torch.set_num_threads(1)
    clock = Clock(device)
    peak = matmul_peak_tflops(device, clock)
    entries = args.presets + args.preset or (GPU_PRESETS if device.type == "cuda" else CPU_PRESETS)
    out = args.out or RESULTS / f"train_step_{device.type}.json"
    result: dict[str, Any] = {
        "device": device.type, "device_name": _device_name(device), "torch": torch.__version__,
        "matmul_peak_tflops": peak, "threads": torch.get_num_threads(),
        "timing": "wall, CUDA-synchronised" if device.type == "cuda" else "process CPU time, 1 thread",
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
        "rows": [], "ratios": {}, "phases_ms": {}, "overhead_vs_baseline": {},
    }  # fmt: skip
    for entry in entries:
        preset, _, batch_text = entry.partition(":")
        one = bench_preset(preset, int(batch_text or 16), device, args, peak, clock)
        result["rows"] += one["rows"]
        result["ratios"][preset] = one["ratios"]
        if "phases_ms" in one:
            result["phases_ms"][preset] = one["phases_ms"]
            result["overhead_vs_baseline"][preset] = one["overhead_vs_baseline"]
        write_results(out, result)  # after every preset: a run cut short still leaves its numbers
    _print(result, device, peak)


if __name__ == "__main__":
    main()
