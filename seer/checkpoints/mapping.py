"""Weight-name mapping between seer (torchvision names), timm `regnety_*` and torchvision `regnet_y_*`,
plus the architecture check every import runs.

The architectures are identical (seer_spec §1.4); only the names differ:

| seer / torchvision                         | timm                      |
|--------------------------------------------|---------------------------|
| `stem.0` / `stem.1`                        | `stem.conv` / `stem.bn`   |
| `trunk_output.block{S}.block{S}-{i}.`      | `s{S}.b{i+1}.`            |
| `f.a.0/1`, `f.b.0/1`, `f.c.0/1`            | `conv1.conv/bn`, `conv2.…`, `conv3.…` |
| `f.se.fc1`, `f.se.fc2`                     | `se.fc1`, `se.fc2`        |
| `proj.0/1`                                 | `downsample.conv/bn`      |
| classifier `fc` (torchvision)              | `head.fc`                 |

A seer consolidated file keeps a classifier (fine-tuned SEER models) as head `clf.0.weight/bias`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import torch

from seer.errors import SeerError

TIMM_MODELS = {
    "rg32gf": "regnety_320",
    "rg64gf": "regnety_640",
    "rg128gf": "regnety_1280",
    "rg256gf": "regnety_2560",
}
TORCHVISION_MODELS = {"rg32gf": "regnet_y_32gf", "rg128gf": "regnet_y_128gf"}
CLASSIFIER = ("clf.0.weight", "clf.0.bias")

_BLOCK_TIMM = {
    "f.a.0": "conv1.conv",
    "f.a.1": "conv1.bn",
    "f.b.0": "conv2.conv",
    "f.b.1": "conv2.bn",
    "f.se.fc1": "se.fc1",
    "f.se.fc2": "se.fc2",
    "f.c.0": "conv3.conv",
    "f.c.1": "conv3.bn",
    "proj.0": "downsample.conv",
    "proj.1": "downsample.bn",
}
_TIMM_BLOCK = {v: k for k, v in _BLOCK_TIMM.items()}


class ArchitectureMismatchError(SeerError):
    """Tensor names or shapes do not match the target architecture."""


class UnknownKeyError(SeerError):
    """A weight name does not follow the layout it is declared to be in."""


def _split(name: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    for src, dst in table.items():
        if name.startswith(src + "."):
            return dst, name[len(src) + 1 :]
    return None


def seer_to_timm_name(name: str) -> str:
    """Trunk/classifier name in seer (torchvision) form → timm form."""
    if name.startswith("stem.0."):
        return "stem.conv." + name[7:]
    if name.startswith("stem.1."):
        return "stem.bn." + name[7:]
    if name in ("fc.weight", "fc.bias"):
        return "head." + name
    m = re.fullmatch(r"trunk_output\.block(\d+)\.block\1-(\d+)\.(.+)", name)
    if m and (part := _split(m[3], _BLOCK_TIMM)):
        return f"s{m[1]}.b{int(m[2]) + 1}.{part[0]}.{part[1]}"
    raise UnknownKeyError(f"cannot map {name!r} to timm: not a RegNetY trunk or classifier tensor name")


def timm_to_seer_name(name: str) -> str:
    """Inverse of `seer_to_timm_name`."""
    if name.startswith("stem.conv."):
        return "stem.0." + name[10:]
    if name.startswith("stem.bn."):
        return "stem.1." + name[8:]
    if name in ("head.fc.weight", "head.fc.bias"):
        return name[5:]
    m = re.fullmatch(r"s(\d+)\.b(\d+)\.(.+)", name)
    if m and (part := _split(m[3], _TIMM_BLOCK)):
        return f"trunk_output.block{m[1]}.block{m[1]}-{int(m[2]) - 1}.{part[0]}.{part[1]}"
    raise UnknownKeyError(
        f"cannot map timm key {name!r}: not a timm regnety_* tensor; is this a timm RegNetY state dict?"
    )


@functools.cache
def _expected(preset: str, num_prototypes: tuple[int, ...] | None) -> dict[str, dict[str, tuple[int, ...]]]:
    from seer.models.heads import SwAVHead
    from seer.models.presets import get_preset
    from seer.models.regnet import build_trunk

    spec = get_preset(preset)
    trunk = build_trunk(preset, device="meta")
    with torch.device("meta"):
        head = SwAVHead(spec.head_dims, spec.head_use_bn, list(num_prototypes or spec.num_prototypes))
    return {
        "trunk": {k: tuple(v.shape) for k, v in trunk.state_dict().items()},
        "heads": {k: tuple(v.shape) for k, v in head.state_dict().items()},
    }


def expected_shapes(
    preset: str, group: str, num_prototypes: Sequence[int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Name → shape of every trunk (`group="trunk"`) or head (`"heads"`) tensor of a preset; a run that
    overrode `model.num_prototypes` passes its counts so the prototype matrices are checked against them."""
    return dict(_expected(preset, tuple(num_prototypes) if num_prototypes else None)[group])


def check_names_and_shapes(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    what: str,
    allow_extra: tuple[str, ...] = (),
    limit: int = 4,
) -> None:
    """Raise one readable ArchitectureMismatchError listing the first differences, if any."""
    problems: list[str] = []
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected and k not in allow_extra]
    shapes = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems += [f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}" for k in shapes[:limit]]
    problems += [f"missing {k}" for k in missing[:limit]]
    problems += [f"unexpected {k}" for k in extra[:limit]]
    if problems:
        counts = f"{len(shapes)} shape mismatches, {len(missing)} missing, {len(extra)} unexpected"
        raise ArchitectureMismatchError(
            f"{what} does not match the architecture ({counts}): {'; '.join(problems)}; "
            "choose the preset/model the weights were made for"
        )


def trunk_and_classifier_from_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm `regnety_*` state dict → seer names (`fc.*` kept for the classifier)."""
    return {timm_to_seer_name(k): v for k, v in state.items()}


def to_timm(trunk: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seer trunk (+ `clf.0.*` classifier in heads, if any) → timm state dict names."""
    out = {seer_to_timm_name(k): v for k, v in trunk.items()}
    out.update({seer_to_timm_name(f"fc.{k.rsplit('.', 1)[1]}"): heads[k] for k in CLASSIFIER if k in heads})
    return out


def to_torchvision(
    trunk: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """seer trunk (+ classifier) → torchvision `regnet_y_*` state dict (same names; `fc.*` from `clf.0.*`)."""
    out = dict(trunk)
    out.update({f"fc.{k.rsplit('.', 1)[1]}": heads[k] for k in CLASSIFIER if k in heads})
    return out


def split_classifier(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """seer-named state dict with optional `fc.*` → (trunk, heads with `clf.0.*`)."""
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    heads = {f"clf.0.{k[3:]}": v for k, v in state.items() if k.startswith("fc.")}
    return trunk, heads


def _state_dict_of(obj: object, uri: str) -> dict:
    from seer.checkpoints.io import CheckpointError, LazyTensor

    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, LazyTensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, LazyTensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"{uri} is not a state dict of tensors (timm / torchvision weights); check the file"
    )


def _infer_preset(trunk_shapes: Mapping[str, tuple[int, ...]], table: Mapping[str, str], uri: str) -> str:
    for preset in table:
        expected = expected_shapes(preset, "trunk")
        if expected.keys() == trunk_shapes.keys() and all(
            tuple(trunk_shapes[k]) == v for k, v in expected.items()
        ):
            return preset
    first = next(iter(table))
    check_names_and_shapes(expected_shapes(first, "trunk"), trunk_shapes, f"{uri} (closest: {first})")
    return first


def convert(input_uri: str, output_uri: str, to: str, preset: str | None = None) -> str:
    """Convert weights between seer consolidated files and timm / torchvision state-dict files.

    `to="timm"` / `"torchvision"`: input is a seer consolidated file, output a plain state dict that
    `timm.create_model(...).load_state_dict` / `torchvision.models.regnet_y_*().load_state_dict`
    accepts (with `fc` only if the file has a `clf.0` classifier). `to="seer"`: input is a timm or
    torchvision state dict; the preset is checked (or inferred from the shapes). Streams tensor by
    tensor. Returns a one-line description of what was written.
    """
    from seer.checkpoints.consolidate import (
        CONSOLIDATED_FORMAT,
        TensorSource,
        consolidated_tensors,
        open_consolidated,
        write_consolidated,
    )
    from seer.checkpoints.io import CheckpointError, open_archive, save_streamed

    tables = {"timm": TIMM_MODELS, "torchvision": TORCHVISION_MODELS}
    if to not in ("seer", *tables):
        raise CheckpointError(f"unknown target {to!r}; use seer, timm or torchvision")
    if to in tables:
        reader = open_consolidated(input_uri, preset)
        with reader:
            ckpt_preset = reader.obj.get("preset")
            if ckpt_preset not in tables[to]:
                raise CheckpointError(
                    f"preset {ckpt_preset!r} has no {to} equivalent; {to} has: "
                    + ", ".join(f"{p} = {m}" for p, m in tables[to].items())
                )
            trunk = {n: t for g, n, t in consolidated_tensors(reader) if g == "trunk"}
            heads = {n: t for g, n, t in consolidated_tensors(reader) if g == "heads"}
            names = (to_timm if to == "timm" else to_torchvision)(trunk, heads)

            def build(writer: object) -> dict:
                return {
                    k: writer.write_stream(t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t))
                    for k, t in names.items()
                }  # type: ignore[attr-defined]

            save_streamed(output_uri, build, archive=tables[to][ckpt_preset])
        return f"{to} {tables[to][ckpt_preset]} state dict ({len(names)} tensors) at {output_uri}"
    with open_archive(input_uri) as reader:
        if isinstance(reader.obj, dict) and reader.obj.get("format") == CONSOLIDATED_FORMAT:
            raise CheckpointError(
                f"{input_uri} is already a seer consolidated file; use --to timm or torchvision"
            )
        state = _state_dict_of(reader.obj, input_uri)
        source = "timm" if any(k.startswith(("stem.conv.", "s1.")) for k in state) else "torchvision"
        mapped = trunk_and_classifier_from_timm(state) if source == "timm" else dict(state)
        trunk, heads = split_classifier(mapped)
        trunk_shapes = {k: t.shape for k, t in trunk.items()}
        if preset is None:
            preset = _infer_preset(trunk_shapes, tables[source], input_uri)
        check_names_and_shapes(
            expected_shapes(preset, "trunk"), trunk_shapes, f"{input_uri} (preset {preset})"
        )
        sources = (
            TensorSource(g, n, t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t))
            for g, items in (("trunk", trunk), ("heads", heads))
            for n, t in items.items()
        )
        write_consolidated(output_uri, preset, None, None, sources, source=input_uri)
    return f"seer consolidated {preset} ({len(trunk)} trunk, {len(heads)} classifier tensors) from {source} at {output_uri}"
