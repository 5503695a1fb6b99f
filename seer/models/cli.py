"""`seer models`: the model zoo as a table, as JSON, or one preset in detail."""

from __future__ import annotations

import argparse
import json

import torch

from seer.models.flops import RESOLUTIONS, ModelStats, all_stats, format_bytes, format_count, model_stats
from seer.models.presets import get_preset
from seer.models.regnet import build_trunk

_NOTES = (
    "GFLOPs: trunk forward per image (torch FlopCounterMode; 1 MAC = 2 FLOPs; a training step is about 3x).\n"
    "Sizes: all parameters (trunk + head + prototypes) without BN buffers."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` subcommand."""
    parser = subparsers.add_parser(
        "models",
        help="list the SEER model presets: parameters, FLOPs, sizes, published counts",
        description="Describe every model preset (computed on the meta device; nothing is allocated).",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="show one preset in detail: generator numbers, per-stage widths/depths/groups, head, checkpoint groups",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table, the JSON, or one preset's details."""
    if args.preset is not None:
        get_preset(args.preset)  # a clear error before any work
        stats = model_stats(args.preset)
        print(json.dumps(stats.to_dict(), indent=2) if args.json else render_preset(stats))
    else:
        everything = all_stats()
        print(
            json.dumps([s.to_dict() for s in everything], indent=2) if args.json else render_table(everything)
        )
    return 0


def _gflops(g: float) -> str:
    return f"{g:.1f}" if g >= 10 else f"{g:#.3g}"


def _blocks(group: range) -> str:
    return f"{group.start}-{group.stop - 1}" if len(group) > 1 else str(group.start)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_table(stats: list[ModelStats]) -> str:
    """All presets: counts, GFLOPs per resolution, sizes; then the published counts explained."""
    header = ["preset", "trunk", "head", "protos", "feat", *(f"GF@{r}" for r in RESOLUTIONS), "fp32", "bf16"]
    rows = [
        [
            s.name,
            format_count(s.trunk_params),
            format_count(s.head_params),
            format_count(s.prototype_params),
            str(s.feature_dim),
            *(_gflops(s.trunk_gflops[r]) for r in RESOLUTIONS),
            format_bytes(s.fp32_bytes),
            format_bytes(s.bf16_bytes),
        ]
        for s in stats
    ]
    published = [
        [s.name, s.preset.published_params or "-", s.published_includes]
        for s in stats
        if s.preset.published_params
    ]
    return "\n".join(
        [
            _table(header, rows, right=set(range(1, len(header)))),
            "",
            _NOTES,
            "",
            "Published counts (SEER README) and what our count includes to reach them:",
            _table(["preset", "published", "our count"], published, right={1}),
        ]
    )


def render_preset(stats: ModelStats) -> str:
    """One preset: generator numbers, per-stage shapes at 224 px, head, checkpoint groups, costs."""
    p = stats.preset
    trunk = build_trunk(p.name, device="meta")
    taps = trunk(torch.empty(1, 3, 224, 224, device="meta"), taps=list(trunk.tap_names[1:-2]))
    stage_rows = [
        [
            str(i),
            tap,
            str(st.width),
            str(st.depth),
            str(st.groups),
            str(st.group_width),
            format_count(n),
            "x".join(str(d) for d in out.shape[-2:]),
            ", ".join(_blocks(g) for g in groups) or "none",
        ]
        for i, (st, n, (tap, out), groups) in enumerate(
            zip(stats.stages, stats.stage_params, taps.items(), p.checkpoint_groups(), strict=True), start=1
        )
    ]
    stage_table = _table(
        [
            "stage",
            "tap",
            "width",
            "depth",
            "groups",
            "group width",
            "params",
            "out@224",
            "checkpointed blocks",
        ],
        stage_rows,
        right={2, 3, 4, 5, 6, 7},
    )
    protos = ", ".join(str(k) for k in p.num_prototypes)
    lines = [
        f"{p.name}: {p.description}",
        f"generator: depth {p.depth}, w_0 {p.w_0}, w_a {p.w_a}, w_m {p.w_m}, group width {p.group_width}, "
        f"bottleneck {p.bottleneck_multiplier}, SE ratio {p.se_ratio}, stem {p.stem_width}",
        "",
        stage_table,
        "",
        f"head: MLP {list(p.head_dims)} {'with' if p.head_use_bn else 'without'} BN, L2-normalised "
        f"{stats.embedding_dim}-d embedding; prototypes: {protos} (no bias)",
        f"params: trunk {stats.trunk_params:,}, head {stats.head_params:,}, prototypes "
        f"{stats.prototype_params:,}, total {stats.total_params:,} "
        f"({format_bytes(stats.fp32_bytes)} fp32, {format_bytes(stats.bf16_bytes)} bf16)",
        "trunk forward GFLOPs/image: "
        + ", ".join(f"{_gflops(stats.trunk_gflops[r])} @{r}px" for r in RESOLUTIONS)
        + f"; head {_gflops(stats.head_gflops)}",
        f"published: {p.published_params} ({stats.published_includes})"
        if p.published_params
        else "published: -",
    ]
    if p.notes:
        lines.append(f"notes: {p.notes}")
    return "\n".join(lines)
