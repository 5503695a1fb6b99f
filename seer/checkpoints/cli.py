"""`seer ckpt …`: consolidate, slice, import/export VISSL, convert timm/torchvision, verify, info."""

from __future__ import annotations

import argparse
import json

import seer.storage as storage


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
    from seer.checkpoints.io import open_archive

    if uri.endswith(".json") or storage.exists(storage.join(uri, "index.json")):
        return True
    with open_archive(uri) as reader:
        return isinstance(reader.obj, dict) and reader.obj.get("type") == "slice_list"


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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer ckpt` and its subcommands."""
    ckpt = subparsers.add_parser(
        "ckpt",
        help="checkpoint tools: consolidate, slice, VISSL/timm/torchvision interop, verify",
        description="Move weights between training checkpoints (DCP), one consolidated file, sliced "
        "checkpoints (one file per tensor) and the VISSL, timm and torchvision formats. "
        "Every path is a local path or an s3:// / minio:// URI.",
    )
    sub = ckpt.add_subparsers(dest="ckpt_command", metavar="ACTION", required=True)

    p = sub.add_parser("consolidate", help="DCP training checkpoint → one consolidated file + JSON sidecar")
    p.add_argument("checkpoint", help="training checkpoint folder, e.g. RUN/checkpoints/iter-00001000")
    p.add_argument("--output", required=True, help="consolidated file to write (sidecar: OUTPUT.json)")
    p.add_argument(
        "--preset", default=None, help="fail unless the checkpoint was trained with this model preset"
    )
    p.set_defaults(func=_consolidate)

    p = sub.add_parser("slice", help="consolidated file → sliced checkpoint (index + one file per tensor)")
    p.add_argument(
        "consolidated", help="consolidated file written by `seer ckpt consolidate`/`import-vissl`/`convert`"
    )
    p.add_argument(
        "--output",
        required=True,
        help="seer layout: folder for index.json + tensors/; vissl layout: the slice_list file to write",
    )
    p.add_argument(
        "--layout",
        choices=("seer", "vissl"),
        default="seer",
        help="seer: relative paths + sha256 per slice (movable); vissl: VISSL's slice_list (absolute paths)",
    )
    p.set_defaults(func=_slice)

    p = sub.add_parser(
        "import-vissl", help="VISSL checkpoint (consolidated, shard_list, slice_list) → consolidated"
    )
    p.add_argument("input", help="VISSL checkpoint file (for shard_list: the list file, shards next to it)")
    p.add_argument("--output", required=True, help="seer consolidated file to write")
    p.add_argument(
        "--preset", required=True, help="model preset the weights belong to (e.g. rg10b); shapes are checked"
    )
    p.set_defaults(func=_import_vissl)

    p = sub.add_parser("export-vissl", help="consolidated file → VISSL consolidated checkpoint")
    p.add_argument("consolidated", help="seer consolidated file")
    p.add_argument("--output", required=True, help="VISSL checkpoint file to write")
    p.add_argument(
        "--fsdp-parts",
        action="store_true",
        help="name trunk blocks like VISSL's 10B FSDP trunk (block{S}-part{g}) using the preset's checkpoint groups",
    )
    p.set_defaults(func=_export_vissl)

    p = sub.add_parser("convert", help="timm / torchvision state dict ↔ seer consolidated file")
    p.add_argument("input", help="timm or torchvision state-dict file (--to seer), or a consolidated file")
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument(
        "--to",
        required=True,
        choices=("seer", "timm", "torchvision"),
        help="target format: seer (consolidated), timm (regnety_320/640/1280/2560), torchvision (regnet_y_32gf/128gf)",
    )
    p.add_argument(
        "--preset", default=None, help="expected model preset (default: inferred from tensor shapes)"
    )
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "verify", help="check a consolidated file (sha256) or every slice of a sliced checkpoint"
    )
    p.add_argument("uri", help="consolidated file, or sliced folder / index.json / VISSL slice_list file")
    p.set_defaults(func=_verify)

    p = sub.add_parser("info", help="show format, preset, iteration and tensor counts of a checkpoint")
    p.add_argument("uri", help="consolidated file, or sliced folder / index.json / VISSL slice_list file")
    p.set_defaults(func=_info)
