"""Geolocalization (seer_spec §5.4): predict a location, score by great-circle distance.

Two predictors on frozen features:
- `nn`: the location of the most similar training image (cosine);
- `cells`: a linear probe over cells (training images assigned to the nearest cell centre, or to
  a lat/lon grid cell of `cell_deg` degrees when no partition is given); the prediction is the
  mean location of the training images of the top-1 cell (the partition's centre when empty).
Accuracy at 1 / 25 / 200 / 750 / 2500 km by haversine distance (R = 6371 km).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seer.errors import ConfigError
from seer.eval import metrics, report
from seer.eval.datasets import DatasetError, load_dataset, read_manifest_rows
from seer.eval.features import FeatureOptions, extract_variants, load_trunk, resolve_device
from seer.eval.linear import LinearConfig, predict, train_probe


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


def run(
    train_uri: str,
    val_uri: str,
    checkpoint: str,
    *,
    method: str = "nn",
    cells_uri: str | None = None,
    cell_deg: float = 1.0,
    preset: str | None = None,
    options: FeatureOptions | None = None,
    config: LinearConfig | None = None,
    baselines: tuple[str, ...] = (),
    device: str = "auto",
    fmt: str = "auto",
    max_bad_rows: str | int = 0,
    output: str | None = None,
) -> dict:
    """`seer eval geolocalization`: predict each validation image's location; accuracy by distance."""
    if method not in ("nn", "cells"):
        raise ConfigError(f"unknown geolocalization method {method!r}; choose nn or cells")
    options = options or FeatureOptions()
    config = config or LinearConfig()
    options.validate()
    config.validate()  # before loading data or extracting features, as `seer eval linear` does
    train = load_dataset(train_uri, "geo", fmt=fmt, max_bad_rows=max_bad_rows)
    val = load_dataset(val_uri, "geo", fmt=fmt, max_bad_rows=max_bad_rows)
    centres = load_cells(cells_uri) if cells_uri else None
    loaded = load_trunk(checkpoint, preset, resolve_device(device), seed=config.seed)
    variants = extract_variants(loaded, {"train": train, "val": val}, options, baselines, config.seed)
    results = {}
    for name, f in variants.items():
        if method == "nn":
            predicted = predict_nn(f["train"].stacked(), train.coordinates, f["val"].stacked())
        else:
            predicted = predict_cells(
                f["train"].stacked(), train.coordinates, f["val"].stacked(), centres, cell_deg, config
            )
        results[name] = score_locations(predicted, val.coordinates)
    main = results.pop("model")
    extra = {"cells": cells_uri, "cell_deg": cell_deg, **asdict(config)} if method == "cells" else {}
    doc = report.metrics_document(
        "geolocalization",
        main.metrics,
        checkpoint=loaded.describe(),
        datasets={"train": train.describe(), "val": val.describe()},
        config={**options.describe(), "method": method, **extra, "baselines": list(baselines)},
        lower_is_better=["median_km"],
        baselines={name: r.metrics for name, r in results.items()},
        details={"distances_km": main.distances_km},
    )
    if output:
        accuracy = {k: v for k, v in main.metrics.items() if k.startswith("acc@")}
        plots = {
            "accuracy at distance": report.plot_bars(accuracy, "share within distance"),
            "distance CDF": report.plot_distance_cdf(main.distances_km, metrics.GEO_THRESHOLDS_KM),
        }
        report.write_report(output, doc, plots)
    return doc
