"""`seer ckpt …`: consolidate, slice, import/export VISSL, convert timm/torchvision, verify, info."""

from __future__ import annotations

import argparse
import json


def _consolidate(args: argparse.Namespace) -> int:
    from seer.checkpoints.consolidate import consolidate

    side = consolidate(args.checkpoint, args.output, preset=args.preset)
    print(
        f"consolidated {side['preset']} iteration {side['iteration']}: {side['tensors']['trunk']} trunk + "
        f"{side['tensors']['heads']} head tensors, {side['bytes']:,} bytes, sha256 {side['sha256'][:16]}… → {args.output}"
    )
    return 0


def _slice(args: argparse.Namespace) -> int:
    from seer.checkpoints.slice import slice_checkpoint

    index = slice_checkpoint(args.consolidated, args.output, layout=args.layout)
    print(f"sliced {args.consolidated} ({args.layout} layout) → index {index}")
    return 0


def _import_vissl(args: argparse.Namespace) -> int:
    from seer.checkpoints.vissl import import_vissl

    side = import_vissl(args.input, args.output, args.preset)
    print(f"imported VISSL checkpoint as {args.preset}: {side['tensors']} → {args.output}")
    return 0


def _export_vissl(args: argparse.Namespace) -> int:
    from seer.checkpoints.vissl import export_vissl

    export_vissl(args.consolidated, args.output, with_parts=args.fsdp_parts)
    print(f"exported VISSL consolidated checkpoint → {args.output}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from seer.checkpoints.convert import convert

    print(convert(args.input, args.output, args.to, preset=args.preset))
    return 0


def _is_sliced(uri: str) -> bool:
    """True for a sliced checkpoint (seer folder / index.json, VISSL slice_list), False for a consolidated file."""
    from seer.checkpoints.load import sliced_index_uri

    return sliced_index_uri(uri) is not None


def _verify(args: argparse.Namespace) -> int:
    from seer.checkpoints.consolidate import verify_consolidated
    from seer.checkpoints.slice import verify_sliced

    if _is_sliced(args.uri):
        index = verify_sliced(args.uri)
        print(f"OK: {len(index.entries)} slices of {index.uri} match their index")
    else:
        meta = verify_consolidated(args.uri)
        print(f"OK: {args.uri} matches sha256 {meta['sha256']} ({meta['bytes']:,} bytes)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from seer.checkpoints.consolidate import describe
    from seer.checkpoints.slice import open_sliced

    if _is_sliced(args.uri):
        index = open_sliced(args.uri)
        info = {
            "layout": index.layout,
            "index": index.uri,
            "preset": index.preset,
            "iteration": index.iteration,
            "slices": len(index.entries),
        }
    else:
        info = describe(args.uri)
    print(json.dumps(info, indent=2))
    return 0


_HELP = "checkpoint tools: consolidate, slice, VISSL/timm/torchvision interop, verify"
_DESCRIPTION = (
    "Move weights between training checkpoints (DCP), one consolidated file, sliced checkpoints (one file per "
    "tensor) and the VISSL, timm and torchvision formats. Every path is a local path or an s3:// / minio:// URI."
)


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    help_text: str,
    func,
    source: tuple[str, str],
    output: str | None,
) -> argparse.ArgumentParser:
    """A `seer ckpt NAME SOURCE [--output OUTPUT]` subcommand running `func`."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument(source[0], help=source[1])
    if output:
        p.add_argument("--output", required=True, help=output)
    p.set_defaults(func=func)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer ckpt` and its subcommands."""
    ckpt = subparsers.add_parser("ckpt", help=_HELP, description=_DESCRIPTION)
    sub = ckpt.add_subparsers(dest="ckpt_command", metavar="ACTION", required=True)

    sliced_or_file = ("uri", "consolidated file, or sliced folder / index.json / VISSL slice_list file")
    commands = {
        "consolidate": (
            "DCP training checkpoint → one consolidated file + JSON sidecar",
            _consolidate,
            ("checkpoint", "training checkpoint folder, e.g. RUN/checkpoints/iter-00001000"),
            "consolidated file to write (sidecar: OUTPUT.json)",
        ),
        "slice": (
            "consolidated file → sliced checkpoint (index + one file per tensor)",
            _slice,
            ("consolidated", "consolidated file written by `seer ckpt consolidate`/`import-vissl`/`convert`"),
            "seer layout: folder for index.json + tensors/; vissl layout: the slice_list file to write",
        ),
        "import-vissl": (
            "VISSL checkpoint (consolidated, shard_list, slice_list) → consolidated",
            _import_vissl,
            ("input", "VISSL checkpoint file (for shard_list: the list file, shards next to it)"),
            "seer consolidated file to write",
        ),
        "export-vissl": (
            "consolidated file → VISSL consolidated checkpoint",
            _export_vissl,
            ("consolidated", "seer consolidated file"),
            "VISSL checkpoint file to write",
        ),
        "convert": (
            "timm / torchvision state dict ↔ seer consolidated file",
            _convert,
            ("input", "timm or torchvision state-dict file (--to seer), or a consolidated file"),
            "file to write",
        ),
        "verify": (
            "check a consolidated file (sha256) or every slice of a sliced checkpoint",
            _verify,
            sliced_or_file,
            None,
        ),
        "info": (
            "show format, preset, iteration and tensor counts of a checkpoint",
            _info,
            sliced_or_file,
            None,
        ),
    }
    p = {name: _command(sub, name, *spec) for name, spec in commands.items()}
    p["consolidate"].add_argument(
        "--preset", default=None, help="fail unless the checkpoint was trained with this model preset"
    )

    p["slice"].add_argument(
        "--layout",
        choices=("seer", "vissl"),
        default="seer",
        help="seer: relative paths + sha256 per slice (movable); vissl: VISSL's slice_list (absolute paths)",
    )

    p["import-vissl"].add_argument(
        "--preset", required=True, help="model preset the weights belong to (e.g. rg10b); shapes are checked"
    )

    p["export-vissl"].add_argument(
        "--fsdp-parts",
        action="store_true",
        help="name trunk blocks like VISSL's 10B FSDP trunk (block{S}-part{g}) using the preset's checkpoint groups",
    )

    p["convert"].add_argument(
        "--to",
        required=True,
        choices=("seer", "timm", "torchvision"),
        help="target format: seer (consolidated), timm (regnety_320/640/1280/2560), torchvision (regnet_y_32gf/128gf)",
    )
    p["convert"].add_argument(
        "--preset", default=None, help="expected model preset (default: inferred from tensor shapes)"
    )
