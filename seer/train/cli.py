"""`seer pretrain` (SwAV pretraining, 1 process or under torchrun) and `seer plan` (will it fit, how long)."""

from __future__ import annotations

import argparse
import json

from seer.config import load_config
from seer.config_cli import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` and `plan` subcommands."""
    pretrain = subparsers.add_parser(
        "pretrain",
        help="SwAV pretraining of a SEER model on tar shards (run it under torchrun for several processes)",
        description=(
            "Train a SEER model with SwAV on shards made by `seer shard`. Runs as one process, or under "
            "`torchrun --nnodes N --nproc-per-node G -m seer pretrain ...` (nccl on GPUs, gloo on CPU). "
            "Resumes from the newest complete checkpoint under --output automatically."
        ),
    )
    add_config_arguments(pretrain)
    pretrain.add_argument(
        "--data",
        metavar="URI",
        help="shards folder (holding manifest.json) or the manifest URI; default: the config's data.shards",
    )
    pretrain.add_argument(
        "--output",
        required=True,
        metavar="URI",
        help="where checkpoints, train_log.jsonl and summary.json go (local path, file://, s3:// or minio://)",
    )
    pretrain.set_defaults(func=_pretrain)

    plan = subparsers.add_parser(
        "plan",
        help="per-GPU memory, global batch, LR, iterations and days for a pretraining run; exit 2 if it cannot fit",
        description=(
            "Estimate a run before launching it: per-GPU memory (sharded parameters, gradients and SGD "
            "momentum, gathered FSDP units, activations with and without checkpointing), global batch, "
            "scaled LR, iterations for --images and days at a measured throughput. Exits 2 when the "
            "run cannot fit in --gpu-mem-gb."
        ),
    )
    add_config_arguments(plan, default="rg10b")
    plan.add_argument("--nodes", type=int, default=1, help="number of nodes (default: 1)")
    plan.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    plan.add_argument(
        "--gpu-mem-gb",
        type=float,
        default=40.0,
        help="memory of one GPU in GiB, e.g. 40 for A100-40GB (default: 40)",
    )
    plan.add_argument(
        "--batch-per-gpu",
        type=int,
        default=None,
        help="images per GPU per step (default: the recipe's train.batch_per_gpu)",
    )
    plan.add_argument(
        "--images",
        type=float,
        default=1e9,
        help="images to train on, e.g. 1e9 for one epoch of 1B (default: 1e9)",
    )
    plan.add_argument(
        "--img-per-sec-per-gpu",
        type=float,
        default=None,
        help="training throughput per GPU; default: the newest GPU result of bench/train_step.py for this model",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)


def _pretrain(args: argparse.Namespace) -> int:
    from seer.train.engine import run_pretraining
    from seer.train.faults import exit_code

    cfg = load_config(args.recipe, args.overrides)
    return exit_code("pretrain", lambda: run_pretraining(cfg, args.output, data_uri=args.data))


def _plan(args: argparse.Namespace) -> int:
    from seer.train.plan import estimate, format_plan

    overrides = list(args.overrides)
    if args.batch_per_gpu is not None:
        overrides.append(f"train.batch_per_gpu={args.batch_per_gpu}")
    cfg = load_config(args.recipe, overrides)
    plan = estimate(
        cfg,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_mem_gib=args.gpu_mem_gb,
        images=args.images,
        img_per_sec_per_gpu=args.img_per_sec_per_gpu,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0 if plan.fits else 2
