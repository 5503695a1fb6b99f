"""Will a run fit, and how long will it take? Per-GPU memory, batch, LR and time for a pretraining plan.

Memory per GPU, with FSDP sharding every parameter over all N GPUs (`seer.train.parallel`):

- sharded state: fp32 parameters, fp32 gradients and the fp32 SGD momentum: 12 bytes × P / N;
- gathered units: while a unit computes, its full parameters (compute dtype) for it and the
  prefetched next unit, its full gradient, and (mixed precision) the fp32 copy reduce-scattered:
  10 bytes (bf16) or 12 bytes (fp32) × the largest unit's own parameters;
- activations: the tensors autograd keeps for backward, counted per RegNet block from the stage
  widths and spatial sizes at every crop size (see `block_activations`); with activation
  checkpointing only each checkpointed group's input stays, plus one group recomputed at a time;
- activations and gathered units peak together: the estimate takes the worst backward phase
  (the start of backward without checkpointing; with it, the worst of the unchecked blocks and
  each recomputed group, each with the largest unit it gathers);
- head + loss: projection inputs, prototype scores and the Sinkhorn/softmax buffers (fp32);
- a fixed reserve for the CUDA context, NCCL and cuDNN workspaces, plus allocator fragmentation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seer.config import SeerConfig
from seer.errors import ConfigError
from seer.launch.pytorchjob import (
    CHECKPOINT_BYTES_PER_PARAM,
    SAVE_BYTES_PER_S_PER_NODE,
    checkpoint_bytes,
    restart_settings,
)
from seer.models.presets import get_preset
from seer.ssl.optim import LRSchedule
from seer.train.parallel import build_model, fsdp_units

GIB = 1 << 30
RESERVE_GIB = 3.0  # CUDA context, NCCL buffers, cuDNN workspaces
FRAGMENTATION = 0.10  # caching-allocator slack on top of live tensors
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"


def _conv_out(size: int, stride: int) -> int:
    """Output side of a 3×3 (pad 1) or 1×1 conv with `stride`."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class BlockActivations:
    """Elements one block keeps for backward: in the compute dtype, and at BatchNorm inputs."""

    stage: int
    index: int
    compute: int
    bn: int
    input_elems: int


def block_activations(
    preset_name: str, crops: list[tuple[int, int]], batch: int
) -> tuple[list[BlockActivations], int]:
    """Per-block saved elements for `batch` images of `crops` [(size, count)], and the stem's.

    For a RegNetY block (w_in → w_b → w_out, input H×W, output h×w) autograd keeps: the ReLU
    outputs of `a` (w_b·H·W) and `b` (w_b·h·w), the SE product (w_b·h·w) and the block output
    (w_out·h·w) in the compute dtype; the BatchNorm inputs of `a`, `b`, `c` and the projection
    (w_b·H·W, w_b·h·w, w_out·h·w, w_out·h·w). The block input is the previous block's output.
    Returns (blocks, stem elements).
    """
    preset = get_preset(preset_name)
    blocks: list[BlockActivations] = []
    stem = 0
    for size, count in crops:
        n = batch * count
        side = _conv_out(size, 2)
        stem += n * (3 * size * size + 2 * preset.stem_width * side * side)
    w_in = preset.stem_width
    for s, stage in enumerate(preset.stages(), start=1):
        w_b = stage.width  # bottleneck multiplier 1.0 for every SEER preset
        for i in range(stage.depth):
            stride = 2 if i == 0 else 1
            proj = i == 0 and (stride != 1 or w_in != stage.width)
            compute = bn = inp = 0
            for size, count in crops:
                n = batch * count
                side_in = _conv_out(size, 2)
                for _ in range(s - 1):
                    side_in = _conv_out(side_in, 2)
                side_in = side_in if i == 0 else _conv_out(side_in, 2)
                side_out = _conv_out(side_in, stride)
                big, small = side_in * side_in, side_out * side_out
                compute += n * (w_b * big + 2 * w_b * small + stage.width * small)
                bn += n * (w_b * big + w_b * small + stage.width * small * (2 if proj else 1))
                inp += n * w_in * big
            blocks.append(BlockActivations(s, i, compute, bn, inp))
            w_in = stage.width
    return blocks, stem


@dataclass
class Plan:
    """Every number `seer plan` prints; bytes are per GPU."""

    preset: str
    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float
    batch_per_gpu: int
    crops: list[tuple[int, int]]
    precision: str
    activation_checkpointing: bool
    params: int
    largest_unit: str
    largest_unit_params: int
    sharded_params_bytes: float
    sharded_grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float  # at the peak, without checkpointing
    gathered_bytes: float  # full units gathered at that peak
    peak_phase: str
    activations_checkpointed_bytes: float  # at the peak, with checkpointing
    gathered_checkpointed_bytes: float
    peak_phase_checkpointed: str
    head_loss_bytes: float
    reserve_bytes: float
    global_batch: int
    lr: float
    start_lr: float
    warmup_iters: int
    final_lr: float
    images: float
    iterations: int
    img_per_sec_per_gpu: float | None
    throughput_source: str
    notes: list[str] = field(default_factory=list)
    restarts: dict[str, Any] = field(default_factory=dict)  # `restart_settings` for this plan

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def total_bytes(self, checkpointing: bool) -> float:
        live = (
            self.sharded_params_bytes
            + self.sharded_grads_bytes
            + self.optimizer_bytes
            + (self.activations_checkpointed_bytes if checkpointing else self.activations_bytes)
            + (self.gathered_checkpointed_bytes if checkpointing else self.gathered_bytes)
            + self.head_loss_bytes
        )
        return live * (1 + FRAGMENTATION) + self.reserve_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes(self.activation_checkpointing) <= self.gpu_mem_gib * GIB

    @property
    def days(self) -> float | None:
        if not self.img_per_sec_per_gpu:
            return None
        return self.images / (self.img_per_sec_per_gpu * self.gpus) / 86400

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            gpus=self.gpus,
            total_bytes=self.total_bytes(self.activation_checkpointing),
            total_bytes_without_checkpointing=self.total_bytes(False),
            total_bytes_with_checkpointing=self.total_bytes(True),
            fits=self.fits,
            days=self.days,
        )
        return out


def measured_throughput(preset: str, bench_dir: Path = BENCH_DIR) -> tuple[float, str] | None:
    """img/s per GPU for `preset` from the newest GPU `bench/train_step.py` result, if any."""
    best: tuple[float, float, str] | None = None
    for path in sorted(bench_dir.glob("train_step*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for row in data.get("rows", []):
            if row.get("preset") == preset and row.get("variant") == "seer" and row.get("device") == "cuda":
                stamp = path.stat().st_mtime
                if best is None or stamp > best[0]:
                    best = (
                        stamp,
                        float(row["img_per_sec"]),
                        f"{path.name} ({data.get('device_name', 'GPU')})",
                    )
    return (best[1], best[2]) if best else None


def estimate(
    cfg: SeerConfig,
    nodes: int,
    gpus_per_node: int,
    gpu_mem_gib: float,
    images: float = 1e9,
    img_per_sec_per_gpu: float | None = None,
) -> Plan:
    """The plan for `cfg` (model, crops, batch, precision, checkpointing, optimizer) on nodes × GPUs."""
    if nodes < 1 or gpus_per_node < 1 or gpu_mem_gib <= 0 or images <= 0:
        raise ConfigError(
            f"nodes ({nodes}), GPUs per node ({gpus_per_node}), GPU memory ({gpu_mem_gib} GiB) and "
            f"images ({images}) must all be positive"
        )
    world = nodes * gpus_per_node
    batch = cfg.train.batch_per_gpu
    mixed = cfg.train.precision != "fp32"
    compute_bytes = 2 if mixed else 4
    crops = [(c.size, c.count) for c in cfg.data.crops]
    notes: list[str] = []
    if cfg.data.padded_single_pass:
        largest = max(size for size, _ in crops)
        crops = [(largest, sum(count for _, count in crops))]
        notes.append(f"data.padded_single_pass: every crop runs padded to {largest} px")

    model = build_model(cfg)
    units = fsdp_units(model)
    owner: dict[int, str] = {}
    unit_params: dict[str, int] = {}
    for unit in units:  # innermost first: a parameter belongs to the first unit that holds it
        own = [p for p in unit.module.parameters() if id(p) not in owner]
        for p in own:
            owner[id(p)] = unit.name
        unit_params[unit.name] = sum(p.numel() for p in own)
    params = sum(p.numel() for p in model.parameters())
    largest_unit = max(unit_params, key=unit_params.__getitem__)
    largest_params = unit_params[largest_unit]

    def largest_in(prefix: str) -> int:
        return max(v for k, v in unit_params.items() if k == prefix or k.startswith(prefix + "."))

    def name(b: BlockActivations) -> str:
        return f"trunk.trunk_output.block{b.stage}.block{b.stage}-{b.index}"

    blocks, stem = block_activations(cfg.model.preset, crops, batch)
    act = {name(b): (b.compute + b.bn) * compute_bytes for b in blocks}
    stem_bytes = stem * compute_bytes
    per_param = (2 * 2 + 2 + 4) if mixed else (2 * 4 + 4)  # 2 gathered units + grad (+ fp32 reduce copy)
    head_units = max(largest_in("head.projection_head"), largest_in("head.prototypes"))
    last_stage = max(b.stage for b in blocks)
    # Without checkpointing the peak is at the start of backward: every activation is alive while
    # the head's and last stage's units are gathered.
    tail = max([head_units] + [largest_in(name(b)) for b in blocks if b.stage == last_stage])
    full_peak = (sum(act.values()) + stem_bytes, tail * per_param, "start of backward")
    # With checkpointing: group inputs and unchecked blocks stay; one group is recomputed at a time.
    groups = get_preset(cfg.model.preset).checkpoint_groups()
    unchecked = [b for b in blocks if not any(b.index in g for g in groups[b.stage - 1])]
    group_blocks = [
        [b for b in blocks if b.stage == s and b.index in g] for s, gs in enumerate(groups, 1) for g in gs
    ]
    persistent = stem_bytes + sum(act[name(b)] for b in unchecked)
    persistent += sum(g[0].input_elems * compute_bytes for g in group_blocks)
    phases = [
        (
            persistent,
            max([head_units] + [largest_in(name(b)) for b in unchecked]) * per_param,
            "backward of the unchecked blocks",
        )
    ]
    for g in group_blocks:
        where = f"recomputing {name(g[0])}..{g[-1].index}"
        phases.append(
            (
                persistent + sum(act[name(b)] for b in g),
                max(largest_in(name(b)) for b in g) * per_param,
                where,
            )
        )
    ckpt_peak = max(phases, key=lambda ph: ph[0] + ph[1])

    preset = get_preset(cfg.model.preset)
    n_rows = batch * sum(count for _, count in crops)
    protos = sum(cfg.model.num_prototypes or preset.num_prototypes)
    dims = preset.head_dims
    head_loss = (
        n_rows * (dims[0] + 2 * sum(dims[1:-1])) * compute_bytes + n_rows * (dims[-1] + 4 * protos) * 4
    )

    global_batch = batch * world
    iterations = math.ceil(images / global_batch)
    schedule = LRSchedule.from_config(cfg.optim, global_batch, iterations, batch * gpus_per_node)
    source = "given"
    if img_per_sec_per_gpu is None:
        measured = measured_throughput(cfg.model.preset)
        if measured:
            img_per_sec_per_gpu, source = measured[0], f"measured: {measured[1]}"
        else:
            source = "none (pass --img-per-sec-per-gpu or run bench/train_step.py on a GPU)"
    if cfg.train.global_batch is not None and cfg.train.global_batch != global_batch:
        notes.append(f"the config's train.global_batch {cfg.train.global_batch} differs from {global_batch}")
    return Plan(
        preset=cfg.model.preset,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        gpu_mem_gib=gpu_mem_gib,
        batch_per_gpu=batch,
        crops=crops,
        precision="bf16" if mixed else "fp32",
        activation_checkpointing=cfg.train.activation_checkpointing,
        params=params,
        largest_unit=largest_unit,
        largest_unit_params=largest_params,
        sharded_params_bytes=params * 4 / world,
        sharded_grads_bytes=params * 4 / world,
        optimizer_bytes=params * 4 / world,
        activations_bytes=full_peak[0],
        gathered_bytes=full_peak[1],
        peak_phase=full_peak[2],
        activations_checkpointed_bytes=ckpt_peak[0],
        gathered_checkpointed_bytes=ckpt_peak[1],
        peak_phase_checkpointed=ckpt_peak[2],
        head_loss_bytes=head_loss,
        reserve_bytes=RESERVE_GIB * GIB,
        global_batch=global_batch,
        lr=schedule.peak_lr,
        start_lr=schedule.start_lr,
        warmup_iters=schedule.warmup_steps,
        final_lr=schedule.peak_lr * schedule.final_ratio,
        images=images,
        iterations=iterations,
        img_per_sec_per_gpu=img_per_sec_per_gpu,
        throughput_source=source,
        notes=notes,
        # the same checkpoint size the rendered job assumes (published size; counted for other models)
        restarts=asdict(
            restart_settings(
                nodes,
                cfg.train.max_faults,
                checkpoint_bytes(cfg.model.preset) or params * CHECKPOINT_BYTES_PER_PARAM,
            )
        ),
    )


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f} GiB"


def format_plan(plan: Plan) -> str:
    """Human-readable plan with the verdict and the reason."""
    crops = " + ".join(f"{count}×{size}px" for size, count in plan.crops)
    with_ckpt, without = plan.total_bytes(True), plan.total_bytes(False)
    limit = plan.gpu_mem_gib * GIB
    lines = [
        f"plan: {plan.preset} on {plan.nodes} nodes × {plan.gpus_per_node} GPUs = {plan.gpus} GPUs "
        f"({plan.gpu_mem_gib:g} GiB each), {plan.batch_per_gpu} img/GPU, crops {crops}, {plan.precision}",
        f"  parameters          {plan.params:,} ({plan.params * 4 / GIB:.1f} GiB fp32), sharded over {plan.gpus} GPUs",
        "per-GPU memory",
        f"  params (fp32 shard) {_gib(plan.sharded_params_bytes)}",
        f"  grads (fp32 shard)  {_gib(plan.sharded_grads_bytes)}",
        f"  SGD momentum (fp32) {_gib(plan.optimizer_bytes)}",
        f"  largest FSDP unit   {plan.largest_unit} ({plan.largest_unit_params / 1e6:,.0f}M params)",
        "  without checkpointing, peak at the start of backward:",
        f"    activations       {_gib(plan.activations_bytes)}",
        f"    gathered units    {_gib(plan.gathered_bytes)}",
        f"  with checkpointing (preset groups), peak {plan.peak_phase_checkpointed}:",
        f"    activations       {_gib(plan.activations_checkpointed_bytes)}",
        f"    gathered units    {_gib(plan.gathered_checkpointed_bytes)}",
        f"  head + SwAV loss    {_gib(plan.head_loss_bytes)}",
        f"  reserve             {_gib(plan.reserve_bytes)}   CUDA context, NCCL, cuDNN; +{FRAGMENTATION:.0%} fragmentation",
        f"  total               {_gib(with_ckpt)} with checkpointing, {_gib(without).strip()} without "
        f"(limit {plan.gpu_mem_gib:g} GiB)",
        "schedule",
        f"  global batch        {plan.global_batch:,}",
        f"  learning rate       {plan.lr:.4g} (base LR × global batch / base batch)",
        f"  warmup              {plan.warmup_iters:,} iterations from {plan.start_lr:.4g} (VISSL: base LR × "
        f"batch per node / base batch), then cosine on whole-run progress to {plan.final_lr:.4g}",
        f"  iterations          {plan.iterations:,} for {plan.images:,.0f} images",
    ]
    if plan.days is not None:
        lines.append(
            f"  time                {plan.days:.2f} days at {plan.img_per_sec_per_gpu:g} img/s/GPU "
            f"({plan.throughput_source}; assumes linear scaling)"
        )
    else:
        lines.append(f"  time                unknown: throughput {plan.throughput_source}")
    lines += [f"  note: {n}" for n in plan.notes]
    if plan.restarts:
        r = plan.restarts
        lines += [
            f"faults (train.max_faults = {r['max_faults']}; see seer.train.faults)",
            f"  restart policy      {r['restart_policy']}: exit 200 (preempted, lost a peer) recreates the pod; "
            "1-127 (bad config, diverged) fails the job",
            f"  backoffLimit        {r['backoff_limit']} = {r['nodes']} nodes × {r['max_faults']} faults + 1 "
            "(a fault restarts every pod once where the operator counts restarts)",
            f"  torchrun            --max-restarts {r['max_restarts']}, c10d rendezvous on the Master pod",
            f"  checkpoint save     ~{r['save_seconds']:.0f} s for fp32 weights + momentum "
            f"at {SAVE_BYTES_PER_S_PER_NODE / 1e6:g} MB/s per node",
            f"  grace after SIGTERM trainer {r['grace_seconds']} s < torchrun SIGKILL {r['shutdown_timeout']} s "
            f"< terminationGracePeriodSeconds {r['termination_grace_period_seconds']} s",
        ]
    mode = "with" if plan.activation_checkpointing else "without"
    used = with_ckpt if plan.activation_checkpointing else without
    if plan.fits:
        extra = ""
        if plan.activation_checkpointing and without > limit:
            extra = f"; without checkpointing it would need {without / GIB:.1f} GiB and not fit"
        lines.append(
            f"FITS: {used / GIB:.1f} GiB of {plan.gpu_mem_gib:g} GiB per GPU {mode} activation checkpointing{extra}"
        )
    else:
        lines.append(f"DOES NOT FIT: {refusal_reason(plan)}")
    return "\n".join(lines)


def refusal_reason(plan: Plan) -> str:
    """Why `plan` does not fit, with the dominant term and what to change."""
    used = plan.total_bytes(plan.activation_checkpointing)
    ckpt = plan.activation_checkpointing
    acts = plan.activations_checkpointed_bytes if ckpt else plan.activations_bytes
    terms = {
        "activations": acts,
        "sharded params/grads/momentum": plan.sharded_params_bytes * 3,
        "gathered FSDP units": plan.gathered_checkpointed_bytes if ckpt else plan.gathered_bytes,
        "head + loss": plan.head_loss_bytes,
    }
    top = max(terms, key=terms.__getitem__)
    hint = {
        "activations": "lower --batch-per-gpu" + ("" if ckpt else " or enable activation checkpointing"),
        "sharded params/grads/momentum": "use more GPUs (--nodes)",
        "gathered FSDP units": "use GPUs with more memory (a single unit must fit gathered)",
        "head + loss": "lower --batch-per-gpu or the number of prototypes",
    }[top]
    return (
        f"needs {used / GIB:.1f} GiB per GPU but only {plan.gpu_mem_gib:g} GiB exist; the largest term is "
        f"{top} ({terms[top] / GIB:.1f} GiB): {hint}"
    )
