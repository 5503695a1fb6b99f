"""Evaluation datasets: every layout loads from local and S3 storage; bad rows are reported precisely."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from seer import storage
from seer.data.synthetic_benchmarks import (
    COPY_SPLITS,
    make_copy_detection_set,
    make_counting_set,
    make_fairness_set,
    make_geo_set,
)
from seer.eval.datasets import DatasetError, load_dataset, load_pairs, parse_max_bad_rows, read_image


def _jpeg(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "JPEG")
    return out.getvalue()


def _write(root: str, rel: str, data: bytes | str) -> str:
    uri = storage.join(root, rel)
    storage.write_bytes(uri, data.encode() if isinstance(data, str) else data)
    return uri


def test_folder_csv_jsonl_agree(storage_root: str) -> None:
    for rel in ("train/cat/a.jpg", "train/cat/b.jpg", "train/dog/c.jpg"):
        _write(storage_root, rel, _jpeg())
    _write(storage_root, "train/notes.txt", "ignored: not an image")
    csv_uri = _write(
        storage_root,
        "train.csv",
        "path,label\ntrain/cat/a.jpg,cat\ntrain/cat/b.jpg,cat\ntrain/dog/c.jpg,dog\n",
    )
    jsonl_uri = _write(
        storage_root,
        "train.jsonl",
        "\n".join(
            json.dumps({"path": p, "label": lab})
            for p, lab in [("train/cat/a.jpg", "cat"), ("train/dog/c.jpg", "dog")]
        ),
    )
    folder = load_dataset(storage.join(storage_root, "train"))
    manifest = load_dataset(csv_uri)
    jsonl = load_dataset(jsonl_uri)
    assert folder.fmt == "folder" and manifest.fmt == "csv" and jsonl.fmt == "jsonl"
    assert folder.classes == manifest.classes == jsonl.classes == ["cat", "dog"]
    assert folder.labels.tolist() == manifest.labels.tolist() == [0, 0, 1]
    assert read_image(manifest.samples[2]).size == (8, 8)
    # same images, labels and classes → same content hash, whatever the layout
    assert folder.sha256() != jsonl.sha256()
    assert manifest.sha256() == load_dataset(csv_uri).sha256()


def test_corrupt_rows_report_line_numbers(tmp_path) -> None:
    root = str(tmp_path)
    _write(root, "a.jpg", _jpeg())
    _write(root, "b.jpg", _jpeg())
    manifest = _write(
        root,
        "train.csv",
        "path,label\na.jpg,cat\nmissing.jpg,cat\nb.jpg,\n\nb.jpg,dog,extra\na.jpg,dog\n",
    )
    with pytest.raises(DatasetError) as err:
        load_dataset(manifest)
    message = str(err.value)
    assert "3 of 5 rows are unusable" in message
    assert f"train.csv:3: file not found: {root}/missing.jpg" in message
    assert "train.csv:4: empty label" in message
    assert "train.csv:6: expected 2 columns (path,label), got 3" in message
    assert "--max-bad-rows" in message
    assert [p.where for p in err.value.problems] == ["train.csv:3", "train.csv:4", "train.csv:6"]
    # within the policy the rows are skipped and counted
    kept = load_dataset(manifest, max_bad_rows="60%")
    assert len(kept) == 2 and len(kept.bad_rows) == 3 and kept.describe()["bad_rows"] == 3
    assert len(load_dataset(manifest, max_bad_rows=3)) == 2
    with pytest.raises(DatasetError, match="policy allows 2"):
        load_dataset(manifest, max_bad_rows="50%")


def test_bad_coordinates_and_unknown_labels(tmp_path) -> None:
    root = str(tmp_path)
    _write(root, "a.jpg", _jpeg())
    geo = _write(
        root, "geo.csv", "path,lat,lon\na.jpg,48.85,2.35\na.jpg,abc,2.0\na.jpg,95,0\na.jpg,10,-181\n"
    )
    with pytest.raises(DatasetError) as err:
        load_dataset(geo, "geo")
    message = str(err.value)
    assert "geo.csv:3: latitude 'abc' is not a number" in message
    assert "geo.csv:4: latitude '95' is outside [-90, 90]" in message
    assert "geo.csv:5: longitude '-181' is outside [-180, 180]" in message
    val = _write(root, "val.csv", "path,label\na.jpg,cat\na.jpg,bird\n")
    with pytest.raises(
        DatasetError, match=r"val.csv:3: unknown label 'bird' \(the training set's classes are cat, dog\)"
    ):
        load_dataset(val, classes=["cat", "dog"])


def test_unusable_sets_stop_before_any_work(tmp_path) -> None:
    root = str(tmp_path)
    _write(root, "a.jpg", _jpeg())
    one_class = _write(root, "one.csv", "path,label\na.jpg,cat\na.jpg,cat\n")
    with pytest.raises(DatasetError, match="classification needs at least 2"):
        load_dataset(one_class)
    with pytest.raises(DatasetError, match="lacks column"):
        load_dataset(_write(root, "bad_header.csv", "path,lat\na.jpg,1\n"), "geo")
    with pytest.raises(DatasetError, match="invalid --max-bad-rows"):
        parse_max_bad_rows("lots")
    assert parse_max_bad_rows("2.5%") == (None, 0.025) and parse_max_bad_rows(7) == (7, None)
    broken = _write(root, "broken.jsonl", '{"path": "a.jpg", "label": "x"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl:2: invalid JSON"):
        load_dataset(broken)


def test_undecodable_image_names_its_row(tmp_path) -> None:
    root = str(tmp_path)
    _write(root, "a.jpg", b"not a jpeg at all")
    _write(root, "b.jpg", _jpeg())
    dataset = load_dataset(_write(root, "m.csv", "path,label\na.jpg,x\nb.jpg,y\n"))
    with pytest.raises(DatasetError, match=r"m.csv:2: cannot decode image a.jpg"):
        read_image(dataset.samples[0])


def test_webdataset_shards_with_sidecar_fields(storage_root: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, fields in [
            ("000", {"label": "cat", "lat": 1.0, "lon": 2.0}),
            ("001", {"label": "dog"}),
            ("002", None),
        ]:
            members = [(f"{key}.jpg", _jpeg())] + (
                [(f"{key}.json", json.dumps(fields).encode())] if fields else []
            )
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    _write(storage_root, "shards/shard-000000.tar", buffer.getvalue())
    _write(
        storage_root,
        "shards/manifest.json",
        json.dumps({"format": "seer-shards/1", "shards": [{"name": "shard-000000.tar", "samples": 3}]}),
    )
    images = load_dataset(storage.join(storage_root, "shards"), "images")
    assert images.fmt == "shards" and [s.key for s in images.samples] == ["000", "001", "002"]
    assert read_image(images.samples[1]).size == (8, 8)
    with pytest.raises(DatasetError, match=r"shard-000000.tar:002: empty label"):
        load_dataset(storage.join(storage_root, "shards/manifest.json"))
    labelled = load_dataset(storage.join(storage_root, "shards"), max_bad_rows=1)
    assert labelled.classes == ["cat", "dog"] and len(labelled) == 2


def test_seer_shard_output_loads_as_an_image_set(tmp_path) -> None:
    from seer.data.shard import shard

    for i in range(3):
        _write(str(tmp_path), f"src/{i}.jpg", _jpeg((i * 80, 0, 0)))
    shard([str(tmp_path / "src")], str(tmp_path / "out"), workers=1, log=lambda _: None)
    dataset = load_dataset(str(tmp_path / "out"), "images")
    assert len(dataset) == 3 and all(read_image(s).size == (8, 8) for s in dataset.samples)


def test_copy_detection_pairs_and_database(tmp_path) -> None:
    root = str(tmp_path)
    for name in ("q1.jpg", "q2.jpg", "r1.jpg", "r2.jpg", "d1.jpg"):
        _write(root, name, _jpeg())
    _write(root, "db.csv", "path\nr1.jpg\nr2.jpg\nd1.jpg\n")
    pairs = _write(
        root, "pairs.csv", "query,reference,split\nq1.jpg,r1.jpg,strong\nq1.jpg,r2.jpg,strong\nq2.jpg,,jpeg\n"
    )
    cd = load_pairs(pairs, storage.join(root, "db.csv"))
    assert [s.split for s in cd.queries.samples] == ["strong", "jpeg"]
    assert cd.ground_truth().tolist() == [[True, True, False], [False, False, False]]
    # without a database the references are the database
    assert len(load_pairs(pairs).database) == 2
    bad = _write(root, "bad.csv", "query,reference\nq1.jpg,nope.jpg\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: reference file not found"):
        load_pairs(bad)


def test_generated_benchmarks_are_deterministic_and_valid(tmp_path) -> None:
    a = make_counting_set(str(tmp_path / "a"), n_train=8, n_val=4, max_count=4, size=32, seed=3)
    b = make_counting_set(str(tmp_path / "b"), n_train=8, n_val=4, max_count=4, size=32, seed=3)
    train_a, train_b = load_dataset(a["train"]), load_dataset(b["train"])
    assert train_a.classes == ["1", "2", "3", "4"] and train_a.sha256() == train_b.sha256()
    assert load_dataset(str(tmp_path / "a" / "train")).labels.tolist() == sorted(train_a.labels.tolist())
    copies = make_copy_detection_set(str(tmp_path / "cd"), n_originals=3, n_distractors=2, n_train=2, size=32)
    cd = load_pairs(copies["queries"], copies["database"])
    assert len(cd.database) == 5 and {s.split for s in cd.queries.samples} == set(COPY_SPLITS)
    assert cd.ground_truth().sum(axis=1).tolist() == [1] * 9
    geo = make_geo_set(str(tmp_path / "geo"), n_train=6, n_val=6, size=32)
    assert load_dataset(geo["val"], "geo").coordinates.shape == (6, 2)
    fair = make_fairness_set(str(tmp_path / "fair"), n_train=6, n_test=8, size=32)
    test = load_dataset(fair["test"], "grouped")
    assert set(test.groups) <= {"light", "dark"} and test.classes == ["circle", "square", "triangle"]
