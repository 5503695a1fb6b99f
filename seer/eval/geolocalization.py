"""Geolocalization (seer_spec §5.4): predict a location, score by great-circle distance.

Three predictors:
- `nn`: the location of the most similar training image (cosine), on frozen features;
- `cells`: a linear probe over the cells of a partition; the prediction is the top-1 cell's mean
  coordinates (VISSL tools/geolocalization_test.py). The partition is a GeoEstimation cell CSV
  (`class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean`, after two preamble lines,
  read as it is) or a `cell,lat,lon` CSV; without one, a lat/lon grid of `cell_deg` degrees whose
  cells sit at the mean of their training images. Training images take their cell from the
  manifest's `cell` column (a class_label or hex_id: the per-image S2 labels of GeoEstimation's
  `assign_classes.py`) when present, else the nearest cell centre by great-circle distance,
  computed in chunks of `chunk_size` images (never one images × cells matrix);
- `finetuned`: the checkpoint is a cell classifier fine-tuned by `seer finetune --recipe im2gps`
  (seer_spec §5.4, SEER's protocol); its own head scores the cells and the prediction is the top-1
  cell's location recorded in the file (`config.classifier.locations`). No training set is read.
Accuracy at 1 / 25 / 200 / 750 / 2500 km by haversine distance (R = 6371 km).

SEER fine-tunes the whole trunk as a cell classifier (15 epochs, seer_spec §5.4); `nn` and `cells`
keep the trunk frozen, and the reports say which protocol ran (`protocol` in the metrics document:
`frozen-features` or `fine-tuned`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seer import storage
from seer.checkpoints.consolidate import open_consolidated
from seer.errors import ConfigError
from seer.eval import finetuned, metrics, report
from seer.eval.datasets import DatasetError, EvalDataset, read_manifest_rows
from seer.eval.features import FeatureSet, TransformSpec
from seer.eval.linear import LinearConfig, predict, train_probe
from seer.eval.setup import FeatureOptions, RunSettings, Scored, arg, check_choices, choice, evaluate, prepare

PROTOCOL = "frozen-features"
SEER_PROTOCOL = (
    "SEER fine-tunes the whole trunk on YFCC cells (seer_spec §5.4); these numbers use a frozen trunk"
)
METHODS = {
    "nn": "nearest training image",
    "cells": "cell classifier on frozen features",
    "finetuned": "the checkpoint's own cell classifier (a `seer finetune --recipe im2gps` classifier file)",
}


@dataclass
class GeoConfig:
    """How locations are predicted: nearest training image, or a cell classifier."""

    method: str = choice("nn", METHODS)
    cell_deg: float = field(default=1.0, metadata=arg("grid cell size in degrees when --cells is not given"))
    chunk_size: int = field(
        default=2048,
        metadata=arg("training images per block when assigning images to the nearest cell centre"),
    )

    def validate(self) -> None:
        check_choices(self)
        if self.chunk_size < 1:
            raise ConfigError("--chunk-size must be >= 1")


def default_options() -> FeatureOptions:
    """Resize 224 + centre crop 224: the test transform of VISSL's im2gps_yfcc fine-tuning configs
    (configs/config/benchmark/fulltune/im2gps_yfcc/eval_resnet_8gpu_transfer_im2gps_fulltune.yaml)."""
    return FeatureOptions(transform=TransformSpec("shorter", 224, 224))


@dataclass
class GeoResult:
    metrics: dict[str, float]
    distances_km: np.ndarray
    predicted: np.ndarray  # (N, 2) lat, lon


@dataclass
class Partition:
    """Cells in class-index order: their names (hex_id or cell) and mean coordinates."""

    names: list[str]
    centres: np.ndarray  # (cells, 2) latitude, longitude
    _lookup: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def index(self, label: str) -> int | None:
        """Class index of a per-image cell label: a class_label number or a cell name (hex_id)."""
        if label in self._lookup:
            return self._lookup[label]
        return int(label) if label.isdigit() and int(label) < len(self.names) else None


def _coordinate(value: str, low: float, high: float) -> float:
    number = float(value)
    if not low <= number <= high:
        raise ValueError
    return number


def load_cells(uri: str) -> Partition:
    """A partition from a GeoEstimation cell CSV (as released: preamble lines, then
    `class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean`) or a `cell,lat,lon` CSV."""
    lines = storage.read_bytes(uri).decode("utf-8-sig").splitlines()
    start = next(
        (i for i, line in enumerate(lines) if "latitude_mean" in line or line.startswith("cell,")), None
    )
    if start is None:
        raise DatasetError(
            f"{uri}: no header with latitude_mean/longitude_mean (GeoEstimation) or cell,lat,lon; give a cell CSV"
        )
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    geo_estimation = "latitude_mean" in (reader.fieldnames or [])
    name_col, lat_col, lon_col = (
        ("hex_id", "latitude_mean", "longitude_mean") if geo_estimation else ("cell", "lat", "lon")
    )
    rows = []
    for line, row in enumerate(reader, start=start + 2):
        try:
            lat, lon = _coordinate(row[lat_col], -90, 90), _coordinate(row[lon_col], -180, 180)
            order = int(row["class_label"]) if geo_estimation else len(rows)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{uri}:{line}: cell row needs numeric {lat_col} in [-90, 90] and {lon_col} in [-180, 180]"
                + (" and an integer class_label" if geo_estimation else "")
            ) from None
        rows.append((order, str(row[name_col]).strip(), lat, lon))
    if not rows:
        raise DatasetError(f"{uri}: no cells; the CSV has a header but no rows")
    rows.sort()
    if geo_estimation and [r[0] for r in rows] != list(range(len(rows))):
        raise DatasetError(f"{uri}: class_label must number the cells 0..{len(rows) - 1} without gaps")
    return Partition([r[1] for r in rows], np.array([(r[2], r[3]) for r in rows], dtype=np.float64))


def _unit_vectors(coords: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(coords[:, 0]), np.radians(coords[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def nearest_cells(coords: np.ndarray, centres: np.ndarray, chunk_size: int = 2048) -> np.ndarray:
    """Index of the nearest centre (great-circle) for each point, `chunk_size` points at a time.

    The nearest centre by haversine distance is the one with the largest dot product of unit
    vectors (distance = R·arccos(dot) falls as the dot rises), so each block is one matmul of
    chunk_size × cells, never the whole images × cells matrix."""
    points, targets = _unit_vectors(np.asarray(coords, dtype=np.float64)), _unit_vectors(centres)
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), chunk_size):
        out[start : start + chunk_size] = (points[start : start + chunk_size] @ targets.T).argmax(axis=1)
    return out


def cell_labels(dataset: EvalDataset, partition: Partition) -> np.ndarray | None:
    """Per-image class indices from the manifest's `cell` column, or None when it has none."""
    if dataset.fmt not in ("csv", "jsonl"):
        return None
    rows = read_manifest_rows(dataset.uri, dataset.fmt, ("path", "lat", "lon"))
    given = {str(r.get("path", "")).strip(): (line, str(r.get("cell") or "").strip()) for line, r in rows}
    if not any(cell for _, cell in given.values()):
        return None
    out = np.empty(len(dataset), dtype=np.int64)
    for i, sample in enumerate(dataset.samples):
        line, cell = given[sample.key]
        index = partition.index(cell)
        if index is None:
            raise DatasetError(
                f"{dataset.uri}:{line}: cell {cell!r} is not a class_label or hex_id of the partition; "
                "use the cell CSV the labels were made with"
            )
        out[i] = index
    return out


def assign_cells(
    coords: np.ndarray,
    partition: Partition | None,
    cell_deg: float = 1.0,
    chunk_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """(cell index per training image, (cells, 2) predicted location per cell).

    With a partition: the nearest centre, and each cell's location is the partition's own
    (GeoEstimation's `latitude_mean`/`longitude_mean`). Without: the `cell_deg`×`cell_deg` grid
    cell, located at the mean of its images' coordinates."""
    if partition is not None:
        return nearest_cells(coords, partition.centres, chunk_size), partition.centres
    if cell_deg <= 0:
        raise ConfigError("--cell-deg must be positive")
    grid = np.floor(coords / cell_deg).astype(np.int64)
    keys, cell = np.unique(grid, axis=0, return_inverse=True)
    cell = cell.ravel()
    locations = np.zeros((len(keys), 2))
    for c in range(len(keys)):
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
    cells: np.ndarray,
    locations: np.ndarray,
    test_x: np.ndarray,
    config: LinearConfig | None = None,
) -> np.ndarray:
    """Cell classifier (the linear probe head) over `len(locations)` cells → the top-1 cell's location."""
    if len(np.unique(cells)) < 2:
        raise ConfigError(
            "all training images fall in one cell; give more cells (--cells or a smaller --cell-deg)"
        )
    head, _ = train_probe(train_x, cells, len(locations), config)
    return locations[predict(head, test_x).argmax(axis=1)]


def score_locations(predicted: np.ndarray, truth: np.ndarray) -> GeoResult:
    """Distances and accuracy at GEO_THRESHOLDS_KM, plus the median distance."""
    d = metrics.haversine_km(predicted[:, 0], predicted[:, 1], truth[:, 0], truth[:, 1])
    values = metrics.geo_accuracy(d)
    values["median_km"] = float(np.median(d)) if len(d) else 0.0
    return GeoResult(metrics=values, distances_km=d, predicted=predicted)


def cell_locations(uri: str) -> np.ndarray:
    """(classes, 2) lat/lon of each class of a geo fine-tune's classifier file."""
    with open_consolidated(uri) as reader:
        locations = ((reader.obj.get("config") or {}).get("classifier") or {}).get("locations")
    if not locations:
        raise DatasetError(
            f"{uri} records no cell locations: it is not a geo fine-tune; fine-tune with "
            "`seer finetune --recipe im2gps`, or use --method nn / cells"
        )
    return np.asarray(locations, dtype=np.float64)


def _scored(predicted: np.ndarray, val: EvalDataset, protocol: str) -> Scored:
    r = score_locations(predicted, val.coordinates)
    accuracy = {k: v for k, v in r.metrics.items() if k.startswith("acc@")}
    details = {"distances_km": r.distances_km, "protocol": protocol}
    if protocol == PROTOCOL:
        details["seer_protocol"] = SEER_PROTOCOL
    return Scored(
        r.metrics,
        details,
        lambda: {
            "accuracy at distance": report.plot_bars(accuracy, "share within distance"),
            "distance CDF": report.plot_distance_cdf(r.distances_km, metrics.GEO_THRESHOLDS_KM),
        },
    )


def _run_finetuned(val_uri: str, run_settings: RunSettings, options: FeatureOptions) -> dict:
    """The checkpoint's own cell classifier: top-1 cell → that cell's recorded location."""
    classifier, run_settings, options = finetuned.prepare_classifier(run_settings, options)
    locations = cell_locations(run_settings.checkpoint)
    if len(locations) != len(classifier.classes):
        raise DatasetError(
            f"{run_settings.checkpoint}: {len(locations)} cell locations for a {len(classifier.classes)}-way "
            "classifier; re-export it with `seer finetune`"
        )
    val = run_settings.load(val_uri, "geo")

    def score(f: dict[str, FeatureSet]) -> Scored:
        predicted = locations[classifier.logits(f["val"].stacked()).argmax(axis=1)]
        return _scored(predicted, val, finetuned.PROTOCOL)

    record = {
        "protocol": finetuned.PROTOCOL,
        "method": "finetuned",
        "cells": len(locations),
        "baselines": list(run_settings.baselines),
    }
    return evaluate(
        "geolocalization", run_settings, options, {"val": val}, score, record, lower_is_better=["median_km"]
    )[0]


def run(train_uri: str | None, val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval geolocalization`: predict each validation image's location; accuracy by distance.
    `method="finetuned"` reads no training set (`train_uri` may be None) and no `cells_uri`."""
    cells_uri = kwargs.pop("cells_uri", None)
    probe = kwargs.pop("probe", None)
    run_settings, options, config = prepare(checkpoint, GeoConfig, kwargs, default_options)
    if config.method == "finetuned":
        return _run_finetuned(val_uri, run_settings, options)
    if not train_uri:
        raise ConfigError(f"--method {config.method} needs a training set: pass --train URI")
    probe = probe or LinearConfig()
    probe.validate()  # before loading data or extracting features, as `seer eval linear` does
    train = run_settings.load(train_uri, "geo")
    val = run_settings.load(val_uri, "geo")
    partition = load_cells(cells_uri) if cells_uri else None
    cells, locations, given = None, None, False
    if config.method == "cells":
        labels = cell_labels(train, partition) if partition is not None else None
        given = labels is not None
        if given:
            cells, locations = labels, partition.centres
        else:
            cells, locations = assign_cells(train.coordinates, partition, config.cell_deg, config.chunk_size)

    def score(f: dict[str, FeatureSet]) -> Scored:
        train_x, val_x = f["train"].stacked(), f["val"].stacked()
        if config.method == "nn":
            predicted = predict_nn(train_x, train.coordinates, val_x)
        else:
            predicted = predict_cells(train_x, cells, locations, val_x, probe)
        return _scored(predicted, val, PROTOCOL)

    if config.method == "cells":
        assignment = "per-image cell labels" if given else ("nearest centre" if partition else "grid")
        extra = {"cells": cells_uri, "cell_deg": config.cell_deg, "assignment": assignment, **asdict(probe)}
    else:
        extra = {}
    record = {
        "protocol": PROTOCOL,
        "method": config.method,
        **extra,
        "baselines": list(run_settings.baselines),
    }
    sets = {"train": train, "val": val}
    lower = ["median_km"]
    return evaluate(
        "geolocalization", run_settings, options, sets, score, record, seed=probe.seed, lower_is_better=lower
    )[0]
