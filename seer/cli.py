"""The `seer` command: one subcommand per pipeline step plus model, plan and checkpoint tools."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
COMMAND_MODULES: list[str] = [
    "seer.config_cli",
    "seer.models.cli",
    "seer.data.cli",
    "seer.launch.cli",
    "seer.registry",
    "seer.checkpoints.cli",
    "seer.train.cli",
    "seer.eval.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seer",
        description="SEER self-supervised pretraining (SwAV + RegNetY) as Kubeflow pipeline steps.",
    )
    from seer import __version__

    parser.add_argument("--version", action="version", version=f"seer {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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
