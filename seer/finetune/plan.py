"""Will a fine-tune fit? `seer.train.plan.estimate` for one crop of `data.crop_size` per image,
with the SwAV head swapped for the classifier.

The pretraining estimator counts the trunk exactly as fine-tuning runs it (same FSDP units, the same
activation-checkpoint groups, one crop per image at the fine-tuning size). What differs is the head:
its parameters (sharded state) and its buffers (pooled features in the compute dtype, fp32 logits,
their softmax and gradient). The gathered-unit term keeps the SwAV head's units, which is an upper
bound (for rg10b the largest unit is a trunk conv either way).
"""

from __future__ import annotations

import dataclasses
import math

from seer.config import CropSpec, DataConfig, ModelConfig, SeerConfig
from seer.finetune.config import FinetuneConfig
from seer.models.presets import get_preset
from seer.train.parallel import build_model
from seer.train.plan import GIB, Plan, estimate, refusal_reason


def estimate_finetune(
    cfg: FinetuneConfig,
    nodes: int,
    gpus_per_node: int,
    gpu_mem_gib: float,
    num_classes: int = 1000,
    images_per_epoch: float = 1_281_167,
    img_per_sec_per_gpu: float | None = None,
) -> Plan:
    """The plan of fine-tuning `cfg` with a `num_classes`-way head on nodes × GPUs."""
    d = cfg.data
    pretrain = SeerConfig(
        model=ModelConfig(preset=cfg.model.preset),
        data=DataConfig(crops=[CropSpec(d.crop_size, 1, list(d.crop_scale))]),
        train=cfg.train,
    )
    images = images_per_epoch * cfg.optim.epochs
    plan = estimate(pretrain, nodes, gpus_per_node, gpu_mem_gib, images, img_per_sec_per_gpu or 1.0)
    world = plan.gpus
    swav_head = sum(p.numel() for p in build_model(pretrain).head.parameters())
    width = get_preset(cfg.model.preset).head_dims[0]
    params = plan.params - swav_head + width * num_classes + num_classes
    compute_bytes = 2 if plan.precision == "bf16" else 4
    batch = plan.batch_per_gpu
    lr = cfg.optim.base_lr * plan.global_batch / cfg.optim.base_batch
    return dataclasses.replace(
        plan,
        params=params,
        sharded_params_bytes=params * 4 / world,
        sharded_grads_bytes=params * 4 / world,
        optimizer_bytes=params * 4 / world,
        head_loss_bytes=batch * (width * compute_bytes + 3 * num_classes * 4),
        lr=lr,
        start_lr=lr,
        warmup_iters=0,
        final_lr=lr * cfg.optim.gamma ** len(cfg.optim.milestones),
        iterations=math.ceil(images / plan.global_batch),
        img_per_sec_per_gpu=img_per_sec_per_gpu,
        throughput_source="given" if img_per_sec_per_gpu else "none (pass --img-per-sec-per-gpu)",
        notes=[*plan.notes, f"fine-tuning: the SwAV head is replaced by a {num_classes}-way classifier"],
    )


def format_finetune_plan(plan: Plan) -> str:
    """Per-GPU memory and the verdict of a fine-tuning plan."""
    gib = lambda x: f"{x / GIB:7.2f} GiB"  # noqa: E731
    with_ckpt, without = plan.total_bytes(True), plan.total_bytes(False)
    lines = [
        f"fine-tune plan: {plan.preset} at {plan.crops[0][0]} px on {plan.nodes} nodes × {plan.gpus_per_node} "
        f"GPUs ({plan.gpu_mem_gib:g} GiB each), {plan.batch_per_gpu} img/GPU, {plan.precision}",
        f"  parameters          {plan.params:,}, sharded over {plan.gpus} GPUs",
        f"  params+grads+SGD    {gib(plan.sharded_params_bytes * 3)}",
        f"  activations         {gib(plan.activations_checkpointed_bytes)} with checkpointing, "
        f"{gib(plan.activations_bytes).strip()} without",
        f"  gathered units      {gib(plan.gathered_checkpointed_bytes)} ({plan.largest_unit})",
        f"  head + loss         {gib(plan.head_loss_bytes)}",
        f"  total               {gib(with_ckpt)} with checkpointing, {gib(without).strip()} without",
        f"  global batch {plan.global_batch:,}, LR {plan.lr:.4g} → {plan.final_lr:.3g}, "
        f"{plan.iterations:,} iterations",
        *(f"  note: {n}" for n in plan.notes),
    ]
    used = plan.total_bytes(plan.activation_checkpointing)
    verdict = f"FITS: {used / GIB:.1f} GiB" if plan.fits else f"DOES NOT FIT: {refusal_reason(plan)}"
    return "\n".join([*lines, verdict])
