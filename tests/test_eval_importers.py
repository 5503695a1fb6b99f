"""`seer eval import-…` on small file trees written in the released layouts.

Layouts relied on:
- ImageNet: flat `ILSVRC2012_val_0000000N.JPEG` files; Kaggle ImageNet Object Localization
  `LOC_val_solution.csv` with header `ImageId,PredictionString`, the wnid first in PredictionString
  (`ILSVRC2012_val_00000001` is n01751748, sea snake, in both that file and the devkit ground truth).
- GeoEstimation (TIBHannover): `meta/im2gps_places365.csv` header
  `IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban` (the rows
  below are its first two), `partitioning/assign_classes.py` writes `{img_path: [class per
  partitioning]}` with `to_json(orient="index")` and drops images no cell covers.
- VISSL projects/fairness_indicators: `metadata_full_dollar_street.json` entries carry `_id`, `label`,
  `country`, `region`, `income`, `url`, and the image path is `<label>/<_id>`
  (geographical_diversity/inference_geographical_diversity.py); the parsed Casual Conversations file
  is a list of `{"age", "gender", "img_path", "skin-type", "subject_id"}` (label_associations_indicator1.md).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from seer import storage
from seer.cli import main
from seer.eval.datasets import DatasetError, load_dataset
from seer.eval.importers import import_casual_conversations, import_dollar_street


def _image(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).save(path, format="JPEG")


def _rows(path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_imagenet_val_to_imagefolder_by_wnid(tmp_path) -> None:
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for i in (1, 2, 3):
        _image(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01751748 134 40 499 374 n01751748 1 2 3 4 \n"
        "ILSVRC2012_val_00000002,n09193705 0 0 10 10 \n"
        "ILSVRC2012_val_00000003,n01751748 5 5 20 20 \n"
        "ILSVRC2012_val_00000004,n02105855 5 5 20 20 \n"
    )
    out = tmp_path / "imagenet_val"
    args = ["--images", str(val), "--solution", str(solution), "--output", str(out)]
    assert main(["eval", "import-imagenet-val", *args]) == 0
    ds = load_dataset(str(out), "classification")
    assert ds.classes == ["n01751748", "n09193705"] and ds.labels.tolist() == [0, 0, 1]
    assert (out / "n01751748" / "ILSVRC2012_val_00000001.JPEG").exists()
    assert storage.read_json(str(out / "import.json"))["images"] == 3  # written last; val_4 has no image


def test_imagenet_solution_without_wnid_fails_with_the_expected_form(tmp_path) -> None:
    _image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "sol.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
    with pytest.raises(DatasetError, match="no wnid"):
        from seer.eval.importers import import_imagenet_val

        import_imagenet_val(str(tmp_path / "val"), str(tmp_path / "sol.csv"), str(tmp_path / "out"))


IM2GPS_META = (
    "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban\n"
    "104123223_7410c654ba_19_19355699@N00.jpg,19355699@N00,-16.663606,145.563537,1,8,150,0.0029,0.7778,0.2192\n"
    "1095548455_f636d22cbb_1277_8576809@N08.jpg,8576809@N08,31.893581,-85.141124,2,15,231,0.0039,0.0161,0.9798\n"
    "1185597181_0158ab4213_1311_43616936@N00.jpg,43616936@N00,42.346571,-71.097228,2,12,312,0.0,0.0,0.99\n"
)


def test_im2gps_meta_csv_to_geo_manifest_with_cell_labels(tmp_path) -> None:
    images = tmp_path / "resources" / "images" / "im2gps"
    for name in ("104123223_7410c654ba_19_19355699@N00.jpg", "1095548455_f636d22cbb_1277_8576809@N08.jpg"):
        _image(images / name)
    (tmp_path / "im2gps_places365.csv").write_text(IM2GPS_META)
    labels = {"104123223_7410c654ba_19_19355699@N00.jpg": [12, 40, 3001]}  # the other one: no cell covers it
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "geo" / "val.csv"
    args = ["--meta", str(tmp_path / "im2gps_places365.csv"), "--images", str(images), "--output", str(out)]
    assert main(["eval", "import-im2gps", *args]) == 0
    ds = load_dataset(str(out), "geo")
    np.testing.assert_allclose(ds.coordinates, [[-16.663606, 145.563537], [31.893581, -85.141124]])
    assert (
        main(
            [
                "eval",
                "import-im2gps",
                *args,
                "--cell-labels",
                str(tmp_path / "labels.json"),
                "--partitioning",
                "2",
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert [r["cell"] for r in rows] == ["3001"] and rows[0]["lat"] == "-16.663606"


def test_dollar_street_metadata_to_fairness_manifest(tmp_path) -> None:
    images = tmp_path / "dollar_street"
    _image(images / "toothbrush" / "5d4bde3acf0b3a0f3f3574bf.jpg")
    _image(images / "stove" / "5a1b2c.jpg")
    metadata = [
        {"_id": "5d4bde3acf0b3a0f3f3574bf", "label": "toothbrush", "country": "Burundi", "region": "Africa",
         "income": 27.0, "url": "https://example.org/a.jpg"},
        {"_id": "5a1b2c", "label": "stove", "country": "Sweden", "region": "Europe", "income": 4200,
         "url": "https://example.org/b.jpg"},
        {"_id": "ffff", "label": "bed", "country": "India", "region": "Asia", "income": 300, "url": "x"},
    ]  # fmt: skip
    (tmp_path / "metadata_full_dollar_street.json").write_text(json.dumps(metadata))
    out = tmp_path / "ds.csv"
    result = import_dollar_street(str(tmp_path / "metadata_full_dollar_street.json"), str(images), str(out))
    assert result.rows == 2 and result.missing == ["bed/ffff"]
    rows = _rows(out)
    assert rows[0] == {
        "path": "dollar_street/toothbrush/5d4bde3acf0b3a0f3f3574bf.jpg",
        "label": "toothbrush",
        "income": "27.0",
        "region": "Africa",
        "country": "Burundi",
    }
    assert len(load_dataset(str(out), "images")) == 2


def test_casual_conversations_metadata_to_unlabelled_grouped_manifest(tmp_path) -> None:
    frames = tmp_path / "frames"
    _image(frames / "CasualConversationsA" / "1140" / "1140_00_0.jpg")
    _image(frames / "CasualConversationsB" / "2033" / "1140_00_0.jpg")  # same file name, other subject
    metadata = [
        {"age": "20", "gender": "Female", "img_path": "/data/cc/CasualConversationsA/1140/1140_00_0.jpg",
         "skin-type": "5", "subject_id": "1140"},
        {"age": "71", "gender": "Male", "img_path": "/data/cc/CasualConversationsB/2033/1140_00_0.jpg",
         "skin-type": "2", "subject_id": "2033"},
    ]  # fmt: skip
    (tmp_path / "cc.json").write_text(json.dumps(metadata))
    out = tmp_path / "cc.csv"
    assert import_casual_conversations(str(tmp_path / "cc.json"), str(frames), str(out)).rows == 2
    rows = _rows(out)
    assert rows[1]["path"] == "frames/CasualConversationsB/2033/1140_00_0.jpg"
    assert (rows[1]["gender"], rows[1]["age"], rows[1]["skin_type"]) == ("Male", "71", "2")


def test_importers_name_the_missing_column_in_one_line(tmp_path, capsys) -> None:
    _image(tmp_path / "im" / "a.jpg")
    (tmp_path / "meta.csv").write_text("IMG_ID,LATITUDE,LONGITUDE\na.jpg,1,2\n")
    args = [
        "--meta",
        str(tmp_path / "meta.csv"),
        "--images",
        str(tmp_path / "im"),
        "--output",
        str(tmp_path / "o.csv"),
    ]
    assert main(["eval", "import-im2gps", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert "lacks column(s) ['LAT', 'LON']" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()
