"""The classifier checkpoint format: a seer consolidated file whose heads hold `clf.0.weight/bias`.

`config.classifier` may say which `tap` / `pool` feed the Linear and the class names (defaults:
avgpool / avg, classes "0".."N-1"). timm or torchvision fine-tuned weights converted with
`seer ckpt convert --to seer` are classifier files too; `seer eval linear --save-classifier` writes one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seer import storage
from seer.checkpoints.consolidate import CONSOLIDATED_FORMAT
from seer.checkpoints.io import open_archive
from seer.checkpoints.load import CheckpointLoadError, LoadedTrunk
from seer.checkpoints.mapping import CLASSIFIER


@dataclass
class Classifier:
    """The linear part of a classifier checkpoint and how its features are taken."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor
    tap: str
    pool: str
    classes: list[str]
    preset: str | None

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
    """Write trunk + linear classifier as a seer consolidated file with a `clf.0` head."""
    payload = {
        "format": CONSOLIDATED_FORMAT,
        "preset": loaded.preset,
        "iteration": None,
        "config": {"classifier": {"tap": tap, "pool": pool, "classes": list(classes)}},
        "trunk": {k: v.detach().cpu() for k, v in loaded.trunk.state_dict().items()},
        "heads": {CLASSIFIER[0]: weight.detach().cpu(), CLASSIFIER[1]: bias.detach().cpu()},
    }
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
    classes = list(info.get("classes") or [str(i) for i in range(weight.shape[0])])
    if len(classes) != weight.shape[0]:
        raise CheckpointLoadError(f"{uri}: {len(classes)} class names for a {weight.shape[0]}-way classifier")
    return Classifier(weight, bias, info.get("tap", "avgpool"), info.get("pool", "avg"), classes, preset)
