"""The `seer` command: one subcommand per pipeline step plus model, plan and checkpoint tools."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seer",
        description="SEER self-supervised pretraining (SwAV + RegNetY) as Kubeflow pipeline steps.",
    )
    # Each area's command module exposes `register(subparsers)`, adding its subcommands with
    # `set_defaults(func=...)`; imported here, when a command line is parsed.
    from seer import __version__, config_cli, registry
    from seer.checkpoints import cli as checkpoints_cli
    from seer.data import cli as data_cli
    from seer.eval import cli as eval_cli
    from seer.finetune import cli as finetune_cli
    from seer.launch import cli as launch_cli
    from seer.models import cli as models_cli
    from seer.train import cli as train_cli

    parser.add_argument("--version", action="version", version=f"seer {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (
        config_cli,
        models_cli,
        data_cli,
        launch_cli,
        registry,
        checkpoints_cli,
        train_cli,
        finetune_cli,
        eval_cli,
    )
    for module in commands:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from seer.errors import SeerError

    try:
        return int(args.func(args) or 0)
    except SeerError as err:
        print(f"seer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seer {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`seer models | head`): not an error; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
