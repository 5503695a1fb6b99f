"""`seer finetune`: full-network fine-tuning (1 process or under torchrun), or `--plan` its memory."""

from __future__ import annotations

import argparse
import json

from seer.config_cli import add_config_arguments
from seer.finetune.config import list_recipes, load_finetune_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained SEER trunk + classifier on a labelled set (or --plan its memory)",
        description=(
            "Fine-tune the whole network from any checkpoint format with a VISSL fulltune recipe, on the "
            "pretraining engine (FSDP2, precision, activation checkpointing, DCP checkpoints, auto-resume, "
            "SIGTERM saves, /metrics). Run it under `torchrun ... -m seer finetune` for several processes. "
            "Writes <output>/classifier.pt (what `seer eval test384` reads), <output>/sliced/ and "
            "<output>/finetune.json."
        ),
    )
    add_config_arguments(p, "in1k-384", "fine-tuning", list_recipes())
    p.add_argument("--data", metavar="URI", help="labelled training set (default: the config's data.train)")
    p.add_argument(
        "--output", metavar="URI", help="where checkpoints, logs and the classifier go (required to train)"
    )
    p.add_argument("--plan", action="store_true", help="print per-GPU memory of the run instead of training")
    p.add_argument("--nodes", type=int, default=1, help="--plan: number of nodes (default: 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="--plan: GPUs per node (default: 8)")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="--plan: GiB per GPU (default: 80)")
    p.add_argument("--classes", type=int, default=1000, help="--plan: classifier classes (default: 1000)")
    p.add_argument(
        "--images-per-epoch",
        type=float,
        default=1_281_167,
        help="--plan: training images per epoch (default: ImageNet-1k, 1,281,167)",
    )
    p.add_argument("--json", action="store_true", help="--plan: print the plan as JSON")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from seer.errors import ConfigError

    cfg = load_finetune_config(args.recipe, args.overrides)
    if args.plan:
        from seer.finetune.plan import estimate_finetune, format_finetune_plan

        plan = estimate_finetune(
            cfg, args.nodes, args.gpus_per_node, args.gpu_mem_gb, args.classes, args.images_per_epoch
        )
        print(json.dumps(plan.to_dict(), indent=2) if args.json else format_finetune_plan(plan))
        return 0 if plan.fits else 2
    if not args.output:
        raise ConfigError("--output URI is required to fine-tune (or pass --plan)")
    from seer.finetune.run import run_finetune
    from seer.train.faults import exit_code

    return exit_code("finetune", lambda: run_finetune(cfg, args.output, args.data))
