"""Geolocalization with a fine-tuned cell classifier (seer_spec §5.4 step 3): the top-1 cell's mean
location of its training images, scored by great-circle distance at 1 / 25 / 200 / 750 / 2500 km.

The locations are the ones the fine-tune recorded in the classifier file (`config.classifier.locations`,
see `seer.finetune.data.load_labelled`). The test transform is VISSL im2gps's: resize the shorter
side, centre crop (`resolution`, 224 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from seer.checkpoints.classifier import load_classifier
from seer.checkpoints.consolidate import open_consolidated
from seer.checkpoints.load import load_trunk
from seer.eval.datasets import DatasetError
from seer.eval.features import FeatureSet, TransformSpec
from seer.eval.geolocalization import score_locations
from seer.eval.setup import Scored, arg, evaluate, prepare, resolve_device


@dataclass
class GeoCellsConfig:
    """The test resolution (resize shorter side, centre crop)."""

    resolution: int = field(default=224, metadata=arg("test resolution (resize and crop size)"))


def cell_locations(uri: str) -> np.ndarray:
    """(classes, 2) lat/lon of each class of a geo fine-tune's classifier file."""
    with open_consolidated(uri) as reader:
        locations = ((reader.obj.get("config") or {}).get("classifier") or {}).get("locations")
    if not locations:
        raise DatasetError(f"{uri} records no cell locations: it is not a geo fine-tune (recipe im2gps)")
    return np.asarray(locations, dtype=np.float64)


def run(val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """Predict each validation image's location with the classifier; accuracy by distance."""
    classifier, locations = load_classifier(checkpoint), cell_locations(checkpoint)
    run_settings, options, config = prepare(checkpoint, GeoCellsConfig, kwargs)
    val = run_settings.load(val_uri, "geo")
    loaded = load_trunk(checkpoint, classifier.preset, resolve_device(run_settings.device))
    size = config.resolution
    options = replace(
        options, tap=classifier.tap, pool=classifier.pool, transform=TransformSpec("shorter", size, size)
    )

    def score(f: dict[str, FeatureSet]) -> Scored:
        predicted = locations[classifier.logits(f["val"].stacked()).argmax(axis=1)]
        r = score_locations(predicted, val.coordinates)
        return Scored(r.metrics, {"distances_km": r.distances_km}, dict)

    record = {"method": "finetuned-cells", "resolution": size}
    doc, _, _ = evaluate(
        "geolocalization",
        run_settings,
        options,
        {"val": val},
        score,
        record,
        lower_is_better=["median_km"],
        loaded=loaded,
    )
    return doc
