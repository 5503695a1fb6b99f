"""Hand-made fine-tuned classifier files (the `seer finetune` format, `seer.checkpoints.classifier`)
whose predictions are known in advance, for the evaluations that score with a classifier's own head.

`write_classifier` takes an rg-tiny trunk and sets head row c to the unit-length feature of image
`rows[c]`: the logit of class c for image i is |x_i| cos(x_{rows[c]}, x_i), so image i's top-1 class
is the c with rows[c] = i (its own feature is the only one at cosine 1). `bias` alone (with
`rows=None`) gives every image the same class ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from seer.checkpoints.classifier import save_classifier
from seer.checkpoints.load import load_trunk
from seer.eval.datasets import load_dataset
from seer.eval.features import TransformSpec, extract
from seer.eval.setup import FeatureOptions

OPTIONS = FeatureOptions(transform=TransformSpec("shorter", 32, 32), num_workers=0, batch_size=8)


def write_images(folder: Path, count: int) -> list[str]:
    """`count` distinct 32 px images (different colours and stripe widths); their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image = Image.new("RGB", (32, 32), (30 + 50 * i, 200 - 40 * i, 90 + 25 * i))
        for x in range(0, 32, 2 + i):
            for y in range(32):
                image.putpixel((x, y), (255 - 30 * i, 20 * i, 255))
        name = f"img{i}.png"
        image.save(folder / name)
        names.append(name)
    return names


def write_classifier(
    path: Path,
    manifest: str,
    kind: str,
    classes: Sequence[str],
    *,
    rows: Sequence[int] | None = None,
    bias: Sequence[float] | None = None,
    locations: Sequence[Sequence[float]] | None = None,
) -> str:
    """A classifier file over `classes` (+ cell `locations`) on a seeded rg-tiny trunk, at avgpool/avg."""
    loaded = load_trunk("random", "rg-tiny", "cpu", seed=3)
    n = len(classes)
    weight = torch.zeros(n, 128)
    if rows is not None:
        features = torch.as_tensor(extract(loaded, load_dataset(manifest, kind), OPTIONS).stacked()).float()
        weight = torch.nn.functional.normalize(features[list(rows)].flatten(1), dim=1)
    b = torch.as_tensor(bias if bias is not None else [0.0] * n, dtype=torch.float32)
    save_classifier(str(path), loaded, weight, b, "avgpool", "avg", classes)
    if locations is not None:  # what a geo fine-tune records (seer.finetune.data.load_labelled)
        payload = torch.load(path, weights_only=True)
        payload["config"]["classifier"]["locations"] = [list(map(float, loc)) for loc in locations]
        torch.save(payload, path)
    return str(path)
