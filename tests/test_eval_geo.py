"""Geolocalization as SEER scores it (seer_spec §5.4), on hand-made data.

Sources: VISSL `tools/geolocalization_test.py` (the partition CSV read with `skiprows=2`,
`class_label` index, `hex_id`, `latitude_mean` / `longitude_mean`; prediction = the top-1 cell's
mean coordinates; haversine with R = 6371 km; accuracy at 1/25/200/750/2500 km), TIBHannover
GeoEstimation `geo-cells/cells_50_1000.csv` (the released layout: two preamble lines
`num_images: …`, `min_concept_probability: …`, then the header) and `partitioning/assign_classes.py`
(per-image class labels), VISSL `configs/config/benchmark/fulltune/im2gps_yfcc/…fulltune.yaml`
(test transform Resize 224 + CenterCrop 224).
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest

from components import evaluate as steps
from seer.cli import build_parser
from seer.eval import geolocalization as geo
from seer.eval import metrics
from seer.eval.datasets import DatasetError, load_dataset
from seer.eval.linear import LinearConfig

# Three rows of the released cells_50_1000.csv, written out of class order on purpose.
GEOESTIMATION_CELLS = """num_images: 4723695
min_concept_probability: ---
class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean
2,89c6c74,235,39.98461821276593,-75.21640030212768
0,8747c,827,38.67121908948002,-109.49742631801699
1,365,589,36.14504555687608,102.98971323599338
"""


def test_geoestimation_cell_csv_is_read_as_released(tmp_path) -> None:
    path = tmp_path / "cells_50_1000.csv"
    path.write_text(GEOESTIMATION_CELLS)
    partition = geo.load_cells(str(path))
    assert partition.names == ["8747c", "365", "89c6c74"]  # class_label order, as VISSL sorts the index
    np.testing.assert_array_equal(partition.centres[0], [38.67121908948002, -109.49742631801699])
    assert partition.index("89c6c74") == 2 and partition.index("1") == 1 and partition.index("ffff") is None


def test_cell_csv_errors_name_the_fix(tmp_path) -> None:
    gap = tmp_path / "gap.csv"
    gap.write_text(GEOESTIMATION_CELLS.replace("2,89c6c74", "5,89c6c74"))
    with pytest.raises(DatasetError, match="without gaps"):
        geo.load_cells(str(gap))
    none = tmp_path / "none.csv"
    none.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="latitude_mean"):
        geo.load_cells(str(none))
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("cell,lat,lon\nparis,48.8566,2.3522\nbad,91,0\n")
    with pytest.raises(DatasetError, match=r"legacy.csv:3"):
        geo.load_cells(str(legacy))


@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_chunked_assignment_equals_the_full_distance_matrix(chunk) -> None:
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-90, 90, 500), rng.uniform(-180, 180, 500)])
    centres = np.column_stack([rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)])
    full = metrics.haversine_km(
        points[:, None, 0], points[:, None, 1], centres[None, :, 0], centres[None, :, 1]
    )
    np.testing.assert_array_equal(geo.nearest_cells(points, centres, chunk_size=chunk), full.argmin(axis=1))


def test_nearest_cell_across_the_antimeridian() -> None:
    # 179.9°E is 22 km from a centre at 179.9°W, 20,000 km from one at 0°: longitude order must not matter
    centres = np.array([[0.0, -179.9], [0.0, 0.0]])
    assert geo.nearest_cells(np.array([[0.0, 179.9]]), centres).tolist() == [0]


def _manifest(tmp_path, rows: list[str]) -> str:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "train.csv"
    path.write_text("path,lat,lon,cell\n" + "\n".join(rows) + "\n")
    return str(path)


def test_per_image_cell_labels_are_taken_as_given(tmp_path) -> None:
    cells = tmp_path / "cells.csv"
    cells.write_text(GEOESTIMATION_CELLS)
    partition = geo.load_cells(str(cells))
    # c.jpg lies next to cell 0 but its label says 365 (class 1): the given label wins
    uri = _manifest(tmp_path, ["a.jpg,39.9,-75.2,89c6c74", "b.jpg,38.6,-109.4,0", "c.jpg,38.6,-109.4,365"])
    train = load_dataset(uri, "geo")
    assert geo.cell_labels(train, partition).tolist() == [2, 0, 1]
    bad = _manifest(tmp_path, ["a.jpg,39.9,-75.2,89c6c74", "b.jpg,38.6,-109.4,zzz", "c.jpg,1,1,0"])
    with pytest.raises(DatasetError, match=r"train.csv:3: cell 'zzz'"):
        geo.cell_labels(load_dataset(bad, "geo"), partition)


def test_prediction_is_the_top_cells_mean_coordinates() -> None:
    partition = geo.Partition(
        ["8747c", "365", "89c6c74"], np.array([[38.67, -109.49], [36.14, 102.98], [39.98, -75.21]])
    )
    rng = np.random.default_rng(0)
    cells = np.repeat(np.arange(3), 20)
    train_x = np.eye(3)[cells] * 4 + rng.normal(0, 0.1, (60, 3))
    test_x = np.eye(3)[[2, 0, 1]] * 4
    config = LinearConfig(epochs=20, milestones=(15,), batch_size=16, base_lr=0.5)
    predicted = geo.predict_cells(train_x, cells, partition.centres, test_x, config)
    np.testing.assert_array_equal(predicted, partition.centres[[2, 0, 1]])


def test_accuracy_at_the_standard_thresholds_by_hand() -> None:
    truth = np.array([[48.8566, 2.3522]] * 4)  # Paris
    predicted = np.array(
        [[48.8566, 2.3522], [48.8566 + 0.1, 2.3522], [51.5074, -0.1278], [40.7128, -74.0060]]
    )  # Paris, 11.1 km north (0.1° × 111.19 km), London (343.5 km), New York (5837 km)
    r = geo.score_locations(predicted, truth)
    assert r.distances_km[1] == pytest.approx(0.1 * np.pi / 180 * 6371)
    assert r.metrics["acc@1km"] == 0.25 and r.metrics["acc@25km"] == 0.5 and r.metrics["acc@200km"] == 0.5
    assert r.metrics["acc@750km"] == 0.75 and r.metrics["acc@2500km"] == 0.75


def test_transform_is_224_224_in_library_cli_and_step() -> None:
    spec = geo.default_options().transform
    assert (spec.mode, spec.resize, spec.crop) == ("shorter", 224, 224)
    ns = build_parser().parse_args(
        ["eval", "geolocalization", "--train", "t", "--val", "v", "--checkpoint", "x"]
    )
    assert ns.transform.key() == spec.key()
    step = inspect.signature(steps.geolocalization_eval.python_func).parameters
    assert step["transform"].default == spec.text()
    assert step["chunk_size"].default == geo.GeoConfig.chunk_size


@pytest.mark.slow
def test_run_labels_the_frozen_features_protocol(tmp_path) -> None:
    from seer.data.synthetic_benchmarks import make_geo_set

    sets = make_geo_set(str(tmp_path / "geo"), n_train=12, n_val=6, size=32)
    doc = geo.run(
        sets["train"],
        sets["val"],
        "random",
        preset="rg-tiny",
        device="cpu",
        cells_uri=sets["cells"],
        method="cells",
        chunk_size=5,
        options=replace(geo.default_options(), num_workers=0, batch_size=6),
        probe=LinearConfig(epochs=1, milestones=(), batch_size=4),
    )
    assert doc["config"]["protocol"] == "frozen-features" and doc["config"]["assignment"] == "nearest centre"
    assert doc["config"]["transform"] == "shorter:224:224:bilinear"
    assert set(doc["metrics"]) >= {"acc@1km", "acc@2500km"}


PARIS, LONDON, NEW_YORK = (48.8566, 2.3522), (51.5074, -0.1278), (40.7128, -74.0060)


def test_finetuned_cell_classifier_predicts_its_top_cells_recorded_location(tmp_path) -> None:
    """`--method finetuned`: the file's own head and cell locations, no training set. The head is built
    so that the Paris image's top cell is cell 1 (located in London), London's is cell 0 (Paris) and
    New York's is cell 2 (New York): errors 343.5 km (Paris-London), 343.5 km and 0 km."""
    from tests.finetuned_classifier import OPTIONS, write_classifier, write_images

    names = write_images(tmp_path, 3)
    val = tmp_path / "val.csv"
    rows = [f"{n},{lat},{lon}" for n, (lat, lon) in zip(names, (PARIS, LONDON, NEW_YORK), strict=True)]
    val.write_text("path,lat,lon\n" + "\n".join(rows) + "\n")
    clf = write_classifier(
        tmp_path / "geo.pt",
        str(val),
        "geo",
        ["0", "1", "2"],
        rows=[1, 0, 2],
        locations=[PARIS, LONDON, NEW_YORK],
    )
    doc = geo.run(None, str(val), clf, method="finetuned", device="cpu", options=OPTIONS)
    m = doc["metrics"]
    assert m["acc@1km"] == m["acc@25km"] == m["acc@200km"] == pytest.approx(1 / 3)
    assert m["acc@750km"] == m["acc@2500km"] == 1.0
    assert m["median_km"] == pytest.approx(343.5, abs=0.5)
    assert doc["config"]["protocol"] == doc["details"]["protocol"] == "fine-tuned"
    assert doc["config"]["method"] == "finetuned" and "train" not in doc["datasets"]
    plain = write_classifier(tmp_path / "plain.pt", str(val), "geo", ["0", "1", "2"], rows=[0, 1, 2])
    with pytest.raises(DatasetError, match="not a geo fine-tune"):
        geo.run(None, str(val), plain, method="finetuned", device="cpu", options=OPTIONS)
    with pytest.raises(Exception, match="needs a training set"):
        geo.run(None, str(val), plain, method="nn", device="cpu", options=OPTIONS)
