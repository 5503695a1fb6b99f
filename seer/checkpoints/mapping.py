"""Weight-name mapping between seer (torchvision names), timm `regnety_*` and torchvision `regnet_y_*`,
plus the VISSL names and the architecture check every import runs. Pure: no file is read or written here.

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
from collections.abc import Iterable, Mapping, Sequence

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

# seer (torchvision) block tensor prefix → (timm, VISSL) prefix, one row a tensor group
_BLOCK_NAMES = {
    "f.a.0": ("conv1.conv", "f.a.0"),
    "f.a.1": ("conv1.bn", "f.a.1"),
    "f.b.0": ("conv2.conv", "f.b.0"),
    "f.b.1": ("conv2.bn", "f.b.1"),
    "f.se.fc1": ("se.fc1", "f.se.excitation.0"),
    "f.se.fc2": ("se.fc2", "f.se.excitation.2"),
    "f.c.0": ("conv3.conv", "f.c"),
    "f.c.1": ("conv3.bn", "f.final_bn"),
    "proj.0": ("downsample.conv", "proj"),
    "proj.1": ("downsample.bn", "bn"),
}
_BLOCK_TIMM = {seer: timm for seer, (timm, _) in _BLOCK_NAMES.items()}
_BLOCK_TO_VISSL = {seer: vissl for seer, (_, vissl) in _BLOCK_NAMES.items()}
_STEM_TIMM = {"stem.0.": "stem.conv.", "stem.1.": "stem.bn."}
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
    for seer, timm in _STEM_TIMM.items():
        if name.startswith(seer):
            return timm + name[len(seer) :]
    if name in ("fc.weight", "fc.bias"):
        return "head." + name
    m = re.fullmatch(r"trunk_output\.block(\d+)\.block\1-(\d+)\.(.+)", name)
    if m and (part := _split(m[3], _BLOCK_TIMM)):
        return f"s{m[1]}.b{int(m[2]) + 1}.{part[0]}.{part[1]}"
    raise UnknownKeyError(f"cannot map {name!r} to timm: not a RegNetY trunk or classifier tensor name")


def timm_to_seer_name(name: str) -> str:
    """Inverse of `seer_to_timm_name`."""
    for seer, timm in _STEM_TIMM.items():
        if name.startswith(timm):
            return seer + name[len(timm) :]
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
    from seer.models.swav_model import build_swav_model

    model = build_swav_model(preset, "meta", num_prototypes=num_prototypes)
    return {
        "trunk": {k: tuple(v.shape) for k, v in model.trunk.state_dict().items()},
        "heads": {k: tuple(v.shape) for k, v in model.head.state_dict().items()},
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


def is_timm(names: Iterable[str]) -> bool:
    """Whether state-dict names are timm's (`stem.conv.*`, `s1.b1.*`) rather than seer/torchvision's."""
    return any(k.startswith(("stem.conv.", "s1.b1.")) for k in names)


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


# VISSL names (seer_spec §1.6): trunk `_feature_blocks.…`, heads `0.projection_head.…`

_WRAPPERS = re.compile(r"(^|\.)(_fsdp_wrapped_module|_fpw_module)(?=\.|$)")
_PART = re.compile(r"\.block(\d+)-part\d+(?=\.)")
_VISSL_TO_BLOCK = {v: k for k, v in _BLOCK_TO_VISSL.items()}


def strip_fsdp(name: str) -> str:
    """Remove FSDP wrapper components (`_fsdp_wrapped_module`, `_fpw_module`) from a dotted name."""
    return _WRAPPERS.sub("", name).lstrip(".")


def _map_tail(tail: str, table: dict[str, str]) -> str | None:
    for src in sorted(table, key=len, reverse=True):
        if tail.startswith(src + "."):
            return f"{table[src]}.{tail[len(src) + 1 :]}"
    return None


def vissl_to_seer_trunk(name: str) -> str:
    """VISSL trunk key (wrappers, `trunk.` prefix and 10B `-part` levels allowed) → seer trunk name."""
    clean = _PART.sub("", strip_fsdp(name)).removeprefix("trunk.")
    if clean.startswith("_feature_blocks.conv1.stem."):
        return "stem." + clean[len("_feature_blocks.conv1.stem.") :]
    m = re.fullmatch(r"_feature_blocks\.res(\d+)\.block(\d+)-(\d+)\.(.+)", clean)
    if m and int(m[1]) == int(m[2]) + 1 and (tail := _map_tail(m[4], _VISSL_TO_BLOCK)):
        return f"trunk_output.block{m[2]}.block{m[2]}-{m[3]}.{tail}"
    raise UnknownKeyError(f"VISSL trunk key {name!r} is not a RegNetY (regnet / regnet_fsdp) tensor name")


def seer_to_vissl_trunk(name: str, parts: list[list[range]] | None = None) -> str:
    """seer trunk name → VISSL key; with `parts` (per stage, block ranges) add the 10B `-part{g}` level."""
    if name.startswith("stem."):
        return "_feature_blocks.conv1." + name
    m = re.fullmatch(r"trunk_output\.block(\d+)\.block\1-(\d+)\.(.+)", name)
    tail = _map_tail(m[3], _BLOCK_TO_VISSL) if m else None
    if not m or tail is None:
        raise UnknownKeyError(f"cannot map {name!r} to VISSL: not a RegNetY trunk tensor name")
    stage, block = int(m[1]), int(m[2])
    part = ""
    if parts:
        groups = parts[stage - 1] or [range(0, block + 1)]
        g = next((g for g, r in enumerate(groups) if block in r), len(groups) - 1)
        part = f"block{stage}-part{g}."
    return f"_feature_blocks.res{stage + 1}.{part}block{stage}-{block}.{tail}"


def vissl_to_seer_head(name: str) -> str:
    """VISSL head key `0.projection_head.*` / `0.prototypes{k}.weight` / `0.clf.0.*` → seer head name."""
    clean = strip_fsdp(name).removeprefix("heads.")
    m = re.fullmatch(r"(\d+)\.(.+)", clean)
    if not m or m[1] != "0":
        raise UnknownKeyError(f"VISSL head key {name!r}: expected '0.<param>' (only head 0 is supported)")
    rest = m[2]
    if p := re.fullmatch(r"prototypes(\d+)\.(weight|bias)", rest):
        return f"prototypes.{p[1]}.{p[2]}"
    if rest.startswith(("projection_head.", "clf.")):
        return rest
    raise UnknownKeyError(f"VISSL head key {name!r} is not a SwAV projection, prototype or clf tensor")


def seer_to_vissl_head(name: str) -> str:
    """Inverse of `vissl_to_seer_head` (head index 0)."""
    if p := re.fullmatch(r"prototypes\.(\d+)\.(weight|bias)", name):
        return f"0.prototypes{p[1]}.{p[2]}"
    return f"0.{name}"
