"""Classifier checkpoints: the seer format, and fine-tuned VISSL / timm / torchvision classifiers as they are.

The seer format is a consolidated file whose heads hold `clf.0.weight/bias`; `config.classifier`
may say which `tap` / `pool` feed the Linear and the class names (defaults: avgpool / avg).
`seer eval linear --save-classifier` writes one. A probe on a trunk evaluated sharded (rg10b over
several GPUs) does not copy the trunk: its file holds `trunk_ref` (the sliced checkpoint's URI and
sha256) instead of `trunk`, and `load_trunk` follows it. `load_any_classifier` also reads, unconverted:
VISSL checkpoints (`finetuned_in1k`: head `0.clf.0.*` under `classy_state_dict.base_model.model.heads`,
seer_spec §5.2), timm `regnety_*` (`head.fc.*`) and torchvision `regnet_y_*` (`fc.*`) state dicts;
their Linear reads the average-pooled last stage. A 1000-way classifier without class names is an
ImageNet-1k one: index i is the i-th wnid in sorted order (`imagenet_wnids`, the order of
ImageFolder, timm, torchvision and VISSL), so an `ImageNet/val/<wnid>/<image>` folder scores as is.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from seer import storage
from seer.checkpoints.consolidate import CONSOLIDATED_FORMAT
from seer.checkpoints.io import LazyTensor, open_archive
from seer.checkpoints.load import CheckpointLoadError, LoadedTrunk
from seer.checkpoints.mapping import (
    CLASSIFIER,
    TIMM_MODELS,
    TORCHVISION_MODELS,
    ArchitectureMismatchError,
    UnknownKeyError,
    check_names_and_shapes,
    expected_shapes,
    is_timm,
    timm_to_seer_name,
    vissl_to_seer_head,
)


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k synset ids (wnids) in class-index order (sorted, as ImageFolder lists them)."""
    text = resources.files("seer.checkpoints").joinpath("imagenet_wnids.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def default_classes(n: int) -> list[str]:
    """Class names of an unnamed n-way classifier: ImageNet wnids for 1000, else "0".."n-1"."""
    return list(imagenet_wnids()) if n == len(imagenet_wnids()) else [str(i) for i in range(n)]


@dataclass
class Classifier:
    """The linear part of a classifier checkpoint and how its features are taken."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor
    tap: str
    pool: str
    classes: list[str]
    preset: str | None
    trunk_uri: str | None = None  # the checkpoint holding the trunk, when the file only references it

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(features, dtype=torch.float32).flatten(1)
        return (x @ self.weight.T.float() + self.bias.float()).numpy()


def save_classifier(
    uri: str,
    loaded: LoadedTrunk,
    weight: torch.Tensor,
    bias: torch.Tensor,
    tap: str,
    pool: str,
    classes: Sequence[str],
) -> None:
    """Write trunk + linear classifier as a seer consolidated file with a `clf.0` head; a sharded
    trunk (`loaded.shard_sizes`) is referenced (`trunk_ref`: its checkpoint's URI and sha256), not copied."""
    payload = {
        "format": CONSOLIDATED_FORMAT,
        "preset": loaded.preset,
        "iteration": None,
        "config": {"classifier": {"tap": tap, "pool": pool, "classes": list(classes)}},
        "heads": {CLASSIFIER[0]: weight.detach().cpu(), CLASSIFIER[1]: bias.detach().cpu()},
    }
    if loaded.shard_sizes is not None:
        payload["trunk_ref"] = {"uri": loaded.uri, "sha256": loaded.sha256}
    else:
        payload["trunk"] = {k: v.detach().cpu() for k, v in loaded.trunk.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_classifier(uri: str) -> Classifier:
    """The `clf.0` classifier of a consolidated checkpoint (the trunk loads with `load_trunk`)."""
    with open_archive(uri) as reader:
        obj = reader.obj
        heads = (
            obj.get("heads") if isinstance(obj, dict) and obj.get("format") == CONSOLIDATED_FORMAT else None
        )
        if not isinstance(heads, dict) or not all(k in heads for k in CLASSIFIER):
            raise CheckpointLoadError(
                f"{uri} has no classifier head ({', '.join(CLASSIFIER)} in a {CONSOLIDATED_FORMAT} file); "
                "write one with `seer eval linear --save-classifier URI` or `seer ckpt convert --to seer`"
            )
        weight, bias = reader.read(heads[CLASSIFIER[0]]), reader.read(heads[CLASSIFIER[1]])
        info = (
            ((obj.get("config") or {}).get("classifier") or {}) if isinstance(obj.get("config"), dict) else {}
        )
        preset = obj.get("preset")
        trunk_uri = (obj.get("trunk_ref") or {}).get("uri")
    classes = list(info.get("classes") or default_classes(weight.shape[0]))
    if len(classes) != weight.shape[0]:
        raise CheckpointLoadError(f"{uri}: {len(classes)} class names for a {weight.shape[0]}-way classifier")
    tap, pool = info.get("tap", "avgpool"), info.get("pool", "avg")
    return Classifier(weight, bias, tap, pool, classes, preset, trunk_uri)


def _state_dict(obj: object) -> dict | None:
    """The tensor dict of a timm / torchvision file (bare, or under `state_dict` / `model`)."""
    if isinstance(obj, dict):
        for candidate in (obj.get("state_dict"), obj.get("model"), obj):
            if (
                isinstance(candidate, dict)
                and candidate
                and all(isinstance(v, LazyTensor) for v in candidate.values())
            ):
                return candidate
    return None


def _weights(preset: str) -> dict[str, tuple[int, ...]]:
    """Trunk tensor shapes of `preset` without BatchNorm's step counters (released files often lack them)."""
    return {
        k: v for k, v in expected_shapes(preset, "trunk").items() if not k.endswith("num_batches_tracked")
    }


def _infer_preset(trunk_shapes: dict[str, tuple[int, ...]], uri: str) -> str:
    """The SEER preset whose trunk has exactly these tensor shapes (timm / torchvision names)."""
    for preset in dict.fromkeys([*TIMM_MODELS, *TORCHVISION_MODELS]):
        expected = _weights(preset)
        if expected.keys() == trunk_shapes.keys() and all(
            tuple(trunk_shapes[k]) == v for k, v in expected.items()
        ):
            return preset
    raise CheckpointLoadError(f"{uri} matches no SEER RegNetY preset; pass --preset NAME (e.g. rg32gf)")


def load_any_classifier(uri: str, preset: str | None = None) -> Classifier:
    """The classifier of a seer classifier file, a VISSL checkpoint with a `clf.0` head (needs `preset`
    unless given), or a timm / torchvision classifier state dict (preset inferred from the shapes)."""
    with open_archive(uri) as reader:
        obj = reader.obj
        if isinstance(obj, dict) and obj.get("format") == CONSOLIDATED_FORMAT:
            pass  # the seer format, below
        elif isinstance(obj, dict) and "classy_state_dict" in obj:
            heads = (obj["classy_state_dict"].get("base_model", {}).get("model", {}) or {}).get("heads") or {}
            found = {}
            for key, t in heads.items():
                try:
                    found[vissl_to_seer_head(key)] = t
                except UnknownKeyError:
                    continue
            if not all(k in found for k in CLASSIFIER):
                raise CheckpointLoadError(
                    f"{uri} is a VISSL checkpoint without a fine-tuned classifier head (0.clf.0.weight/bias); "
                    "test a finetuned_in1k checkpoint, or train a probe with `seer eval linear --save-classifier`"
                )
            if preset is None:
                raise CheckpointLoadError(f"{uri} is a VISSL checkpoint; pass --preset NAME (e.g. rg32gf)")
            weight, bias = (reader.read(found[k]) for k in CLASSIFIER)
            return Classifier(weight, bias, "avgpool", "avg", default_classes(weight.shape[0]), preset)
        elif (state := _state_dict(obj)) is not None:
            names = {timm_to_seer_name(k) if is_timm(state) else k: k for k in state}
            if "fc.weight" not in names or "fc.bias" not in names:
                raise CheckpointLoadError(
                    f"{uri} has no classifier (timm head.fc / torchvision fc); it is a trunk, not a classifier"
                )
            trunk = {
                k: tuple(state[v].shape)
                for k, v in names.items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
            }
            if preset is None:
                preset = _infer_preset(trunk, uri)
            try:
                check_names_and_shapes(_weights(preset), trunk, uri)
            except ArchitectureMismatchError as e:
                raise CheckpointLoadError(
                    f"{e}; pass the --preset the classifier was fine-tuned from"
                ) from None
            weight, bias = reader.read(state[names["fc.weight"]]), reader.read(state[names["fc.bias"]])
            return Classifier(weight, bias, "avgpool", "avg", default_classes(weight.shape[0]), preset)
    classifier = load_classifier(uri)
    if preset and classifier.preset and preset != classifier.preset:
        raise CheckpointLoadError(f"{uri} holds preset {classifier.preset!r}, not {preset!r}; drop --preset")
    classifier.preset = classifier.preset or preset
    return classifier
