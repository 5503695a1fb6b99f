"""`seer config`: show the resolved config of a pretraining recipe with overrides, or list recipes."""

from __future__ import annotations

import argparse
import json

import yaml

from seer.config import config_to_dict, list_recipes, load_config


def add_config_arguments(
    parser: argparse.ArgumentParser,
    default: str = "rg-tiny",
    kind: str = "pretraining",
    recipes: list[str] | None = None,
) -> None:
    """The `--recipe` / `--set` pair shared by every command that takes a config: a `kind` recipe
    (`recipes`, default the pretraining ones) or a YAML path, then `section.key=value` overrides."""
    names = ", ".join(list_recipes() if recipes is None else recipes)
    parser.add_argument(
        "--recipe",
        default=default,
        help=f"{kind} recipe name ({names}) or a YAML file path (default: {default})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set optim.base_lr=0.3 --set data.num_workers=4 (repeatable; "
        "values are parsed as YAML)",
    )


def _show(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides, world_size=args.world_size)
    data = config_to_dict(cfg)
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in list_recipes():
        print(name)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show resolved pretraining configs and list recipes")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the validated config of a recipe with --set overrides applied")
    add_config_arguments(show)
    show.add_argument("--world-size", type=int, default=None, help="also check batch/world-size consistency")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(func=_show)
    lst = sub.add_parser("list", help="list the bundled pretraining recipes")
    lst.set_defaults(func=_list)
