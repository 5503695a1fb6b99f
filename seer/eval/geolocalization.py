"""Geolocalization (seer_spec §5.4): predict a location, score by great-circle distance.

Two predictors on frozen features:
- `nn`: the location of the most similar training image (cosine);
- `cells`: a linear probe over cells (training images assigned to the nearest cell centre, or to
  a lat/lon grid cell of `cell_deg` degrees when no partition is given); the prediction is the
  mean location of the training images of the top-1 cell (the partition's centre when empty).
Accuracy at 1 / 25 / 200 / 750 / 2500 km by haversine distance (R = 6371 km).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seer.errors import ConfigError
from seer.eval import metrics, report
from seer.eval.datasets import DatasetError, read_manifest_rows
from seer.eval.features import FeatureSet
from seer.eval.linear import LinearConfig, predict, train_probe
from seer.eval.setup import Scored, arg, evaluate, prepare


@dataclass
class GeoConfig:
    """How locations are predicted: nearest training image, or a cell classifier."""

    method: str = field(
        default="nn",
        metadata=arg("nn: nearest training image; cells: cell classifier", choices=("nn", "cells")),
    )
    cell_deg: float = field(default=1.0, metadata=arg("grid cell size in degrees when --cells is not given"))

    def validate(self) -> None:
        if self.method not in ("nn", "cells"):
            raise ConfigError(f"unknown geolocalization method {self.method!r}; choose nn or cells")


@dataclass
class GeoResult:
    metrics: dict[str, float]
    distances_km: np.ndarray
    predicted: np.ndarray  # (N, 2) lat, lon


def load_cells(uri: str) -> np.ndarray:
    """(cells, 2) lat/lon centres from a `cell,lat,lon` CSV."""
    centres = []
    for line, row in read_manifest_rows(uri, "csv", ("cell", "lat", "lon")):
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{uri}:{line}: cell row needs numeric lat in [-90, 90] and lon in [-180, 180]"
            ) from None
        centres.append((lat, lon))
    if not centres:
        raise DatasetError(f"{uri}: no cells; give a CSV with columns cell,lat,lon")
    return np.array(centres)


def assign_cells(
    coords: np.ndarray, centres: np.ndarray | None, cell_deg: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(cell index per training image, (cells, 2) predicted location per cell).

    With `centres`, each image goes to the nearest centre (haversine). Without, to its
    `cell_deg`×`cell_deg` grid cell. A cell's location is the mean of its images' coordinates.
    """
    if centres is not None:
        dist = metrics.haversine_km(
            coords[:, None, 0], coords[:, None, 1], centres[None, :, 0], centres[None, :, 1]
        )
        cell = dist.argmin(axis=1)
        locations = centres.astype(np.float64).copy()
    else:
        if cell_deg <= 0:
            raise ConfigError("--cell-deg must be positive")
        grid = np.floor(coords / cell_deg).astype(np.int64)
        keys, cell = np.unique(grid, axis=0, return_inverse=True)
        cell = cell.ravel()
        locations = np.zeros((len(keys), 2))
    for c in np.unique(cell):
        locations[c] = coords[cell == c].mean(axis=0)
    return cell, locations


def predict_nn(train_x: np.ndarray, train_coords: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Location of each test image's most similar training image (cosine)."""
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float32).flatten(1), dim=1)
    test = F.normalize(torch.as_tensor(test_x, dtype=torch.float32).flatten(1), dim=1)
    nearest = torch.cat([(chunk @ train.T).argmax(dim=1) for chunk in test.split(1024)])
    return train_coords[nearest.numpy()]


def predict_cells(
    train_x: np.ndarray,
    train_coords: np.ndarray,
    test_x: np.ndarray,
    centres: np.ndarray | None = None,
    cell_deg: float = 1.0,
    config: LinearConfig | None = None,
) -> np.ndarray:
    """Cell classifier (the linear probe head) → the top-1 cell's location."""
    cell, locations = assign_cells(train_coords, centres, cell_deg)
    if len(np.unique(cell)) < 2:
        raise ConfigError(
            "all training images fall in one cell; give more cells (--cells or a smaller --cell-deg)"
        )
    head, _ = train_probe(train_x, cell, len(locations), config)
    return locations[predict(head, test_x).argmax(axis=1)]


def score_locations(predicted: np.ndarray, truth: np.ndarray) -> GeoResult:
    """Distances and accuracy at GEO_THRESHOLDS_KM, plus the median distance."""
    d = metrics.haversine_km(predicted[:, 0], predicted[:, 1], truth[:, 0], truth[:, 1])
    values = metrics.geo_accuracy(d)
    values["median_km"] = float(np.median(d)) if len(d) else 0.0
    return GeoResult(metrics=values, distances_km=d, predicted=predicted)


def run(train_uri: str, val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval geolocalization`: predict each validation image's location; accuracy by distance."""
    cells_uri = kwargs.pop("cells_uri", None)
    probe = kwargs.pop("probe", None)
    run_settings, options, config = prepare(checkpoint, GeoConfig, kwargs)
    probe = probe or LinearConfig()
    probe.validate()  # before loading data or extracting features, as `seer eval linear` does
    train = run_settings.load(train_uri, "geo")
    val = run_settings.load(val_uri, "geo")
    centres = load_cells(cells_uri) if cells_uri else None

    def score(f: dict[str, FeatureSet]) -> Scored:
        train_x, val_x = f["train"].stacked(), f["val"].stacked()
        if config.method == "nn":
            predicted = predict_nn(train_x, train.coordinates, val_x)
        else:
            predicted = predict_cells(train_x, train.coordinates, val_x, centres, config.cell_deg, probe)
        r = score_locations(predicted, val.coordinates)
        accuracy = {k: v for k, v in r.metrics.items() if k.startswith("acc@")}
        return Scored(
            r.metrics,
            {"distances_km": r.distances_km},
            lambda: {
                "accuracy at distance": report.plot_bars(accuracy, "share within distance"),
                "distance CDF": report.plot_distance_cdf(r.distances_km, metrics.GEO_THRESHOLDS_KM),
            },
        )

    cells = (
        {"cells": cells_uri, "cell_deg": config.cell_deg, **asdict(probe)} if config.method == "cells" else {}
    )
    record = {"method": config.method, **cells, "baselines": list(run_settings.baselines)}
    sets = {"train": train, "val": val}
    lower = ["median_km"]
    return evaluate(
        "geolocalization", run_settings, options, sets, score, record, seed=probe.seed, lower_is_better=lower
    )[0]
