"""Any checkpoint seer knows → a frozen trunk: the one place that sniffs checkpoint formats.

Formats: seer consolidated files (and classifier files), sliced checkpoints (a seer `index.json`
folder or a VISSL `slice_list`), VISSL consolidated / shard-list files, timm and torchvision state
dicts, and `random` (a freshly initialised trunk). A new format is one more branch of `_read_trunk`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from seer import storage
from seer.checkpoints.io import LazyTensor, open_archive, sha256_uri
from seer.checkpoints.mapping import (
    ArchitectureMismatchError,
    check_names_and_shapes,
    is_timm,
    timm_to_seer_name,
)
from seer.checkpoints.slice import INDEX_NAME, open_sliced, read_slice
from seer.checkpoints.vissl import import_vissl
from seer.errors import SeerError
from seer.models import build_trunk, get_preset
from seer.models.regnet import SeerRegNet


class CheckpointLoadError(SeerError):
    """A checkpoint cannot be turned into a trunk (unknown format, missing preset, key mismatch)."""


@dataclass
class LoadedTrunk:
    """A frozen trunk in eval mode and what identifies its weights."""

    trunk: SeerRegNet
    preset: str
    sha256: str
    uri: str
    shard_sizes: dict[str, int] | None = None  # parameters on this rank / in the trunk, when FSDP-sharded

    def describe(self) -> dict[str, str]:
        return {"uri": self.uri, "sha256": self.sha256, "preset": self.preset}


def _seer_index(uri: str) -> str | None:
    """The index of a seer sliced checkpoint given as its `.json` or the folder holding it (no file is
    opened), else None."""
    if uri.endswith(".json"):
        return uri
    index = storage.join(uri, INDEX_NAME)
    return index if not storage.exists(uri) and storage.exists(index) else None


def sliced_index_uri(uri: str) -> str | None:
    """The index of the sliced checkpoint at `uri` (an index `.json`, a folder holding one, a VISSL
    `slice_list` file), or None for any other checkpoint."""
    index = _seer_index(uri)
    if index is not None or not storage.exists(uri):
        return index
    with open_archive(uri) as reader:
        return uri if isinstance(reader.obj, dict) and reader.obj.get("type") == "slice_list" else None


def _trunk_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seer/torchvision trunk names from seer, torchvision or timm keys (classifier `fc.*` dropped)."""
    for prefix in ("module.", "trunk.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            return _trunk_names({k[len(prefix) :]: v for k, v in state.items()})
    if is_timm(state):
        state = {timm_to_seer_name(k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}


def _lazy_tensors(tree: object, prefix: str = "") -> Iterator[tuple[str, LazyTensor]]:
    """(dotted name, LazyTensor) for every tensor in nested dicts of a lazily read checkpoint."""
    if isinstance(tree, LazyTensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _lazy_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def _read_archive_trunk(uri: str, preset: str | None) -> tuple[dict[str, torch.Tensor], str | None]:
    with open_archive(uri) as reader:
        obj = reader.obj
        if not isinstance(obj, dict):
            raise CheckpointLoadError(f"{uri} holds a {type(obj).__name__}, not a checkpoint dict")
        if obj.get("type") == "slice_list":
            return _read_sliced_trunk(uri)
        if "classy_state_dict" in obj or obj.get("type") in ("consolidated", "shard_list"):
            if preset is None:
                raise CheckpointLoadError(f"{uri} is a VISSL checkpoint; pass --preset NAME to import it")
            with tempfile.TemporaryDirectory(prefix="seer-eval-") as tmp:
                converted = os.path.join(tmp, "consolidated.pt")
                import_vissl(uri, converted, preset)
                return _read_archive_trunk(converted, preset)
        if isinstance(obj.get("trunk_ref"), dict):  # a classifier of a sharded trunk: the trunk is elsewhere
            return _read_referenced_trunk(uri, obj["trunk_ref"], preset)
        tree = obj["trunk"] if isinstance(obj.get("trunk"), dict) else obj.get("state_dict", obj)
        tensors = dict(_lazy_tensors(tree))
        if not tensors:
            raise CheckpointLoadError(
                f"{uri}: no trunk tensors found; expected a seer consolidated/classifier file, a trunk state "
                "dict, or timm / torchvision / VISSL weights"
            )
        return _trunk_names({k: reader.read(t) for k, t in tensors.items()}), obj.get("preset")


def _read_referenced_trunk(
    uri: str, ref: dict, preset: str | None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The trunk a `trunk_ref` points at, checked against the sha256 recorded when the file was written."""
    target = ref.get("uri", "")
    index = sliced_index_uri(target) if target else None
    fix = "restore that checkpoint or re-run the evaluation that wrote this file"
    if index is None and not (target and storage.exists(target)):
        raise CheckpointLoadError(f"{uri} references its trunk at {target!r}, which is missing; {fix}")
    if ref.get("sha256") and sha256_uri(index or target) != ref["sha256"]:
        raise CheckpointLoadError(
            f"{uri} references its trunk at {target!r}, which is not the checkpoint it was written with "
            f"(sha256 differs); {fix}"
        )
    return _read_sliced_trunk(target) if index else _read_archive_trunk(target, preset)


def _read_sliced_trunk(uri: str) -> tuple[dict[str, torch.Tensor], str | None]:
    index = open_sliced(uri)
    state = {
        fqn.removeprefix("trunk."): read_slice(e)
        for fqn, e in index.entries.items()
        if fqn.startswith("trunk.")
    }
    return state, index.preset


def checked_preset(checkpoint: str, asked: str | None, named: str | None) -> str:
    """The model preset to build for `checkpoint`: `asked` (--preset), which must match the one the
    checkpoint names (`named`) when both are given."""
    if asked and named and asked != named:
        raise CheckpointLoadError(
            f"{checkpoint} holds preset {named!r}, not {asked!r}; drop --preset or fix it"
        )
    if not (asked or named):
        raise CheckpointLoadError(f"{checkpoint} does not name its model; pass --preset NAME (e.g. rg-tiny)")
    return asked or named


def load_trunk(
    checkpoint: str, preset: str | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> LoadedTrunk:
    """A frozen eval-mode trunk from `checkpoint`, or a fresh one (seeded) for `random`.

    Reads every format `seer.checkpoints` knows: seer consolidated files (and classifier files),
    sliced checkpoints (a seer `index.json` folder or a VISSL `slice_list`), VISSL consolidated /
    shard-list files (needs `preset`), timm and torchvision state dicts. `preset` supplies the
    architecture when the file does not name one, and must match when it does. The sha256
    identifies the weights: of the file, or of the sliced index (which lists every slice's sha256).
    """
    if checkpoint == "random":
        if preset is None:
            raise CheckpointLoadError("--checkpoint random needs --preset NAME (e.g. rg-tiny)")
        trunk = build_trunk(get_preset(preset).name, device=device, seed=seed)
        digest = hashlib.sha256(f"random:{preset}:{seed}".encode()).hexdigest()
        return LoadedTrunk(trunk.eval().requires_grad_(False), preset, digest, f"random:{preset}:{seed}")
    # a VISSL slice_list file is recognised inside the archive (no second open of every other file)
    index = _seer_index(checkpoint)
    if index is not None:
        state, named = _read_sliced_trunk(index)
    else:
        state, named = _read_archive_trunk(checkpoint, preset)
    index_uri = index or checkpoint
    name = checked_preset(checkpoint, preset, named)
    trunk = build_trunk(get_preset(name).name, device=device, seed=None)
    expected = trunk.state_dict()
    # BatchNorm's step counter is bookkeeping, not a weight: released checkpoints often lack it.
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    try:
        check_names_and_shapes(
            {k: tuple(v.shape) for k, v in expected.items()},
            {k: tuple(v.shape) for k, v in state.items()},
            checkpoint,
        )
    except ArchitectureMismatchError as e:
        raise CheckpointLoadError(
            f"{checkpoint} does not fit preset {name!r} ({e}); pass the --preset it was trained with"
        ) from None
    trunk.load_state_dict(state)
    return LoadedTrunk(trunk.eval().requires_grad_(False), name, sha256_uri(index_uri), checkpoint)
