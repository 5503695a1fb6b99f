"""`seer eval ...` as users run it: help text, one-line errors, reports, compare exit codes."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re

import pytest
from PIL import Image

from seer import storage
from seer.cli import build_parser, main
from seer.data.synthetic_benchmarks import (
    make_copy_detection_set,
    make_counting_set,
    make_fairness_set,
    make_geo_set,
)

EVALS = (
    "linear",
    "knn",
    "test384",
    "copy-detection",
    "geolocalization",
    "fairness",
    "compare",
    "make-benchmark",
)
FAST = [
    "--checkpoint",
    "random",
    "--preset",
    "rg-tiny",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--batch-size",
    "16",
]


def _eval_parsers() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    evals = next(a for a in commands.choices["eval"]._actions if isinstance(a, argparse._SubParsersAction))
    return evals.choices


def test_every_eval_option_is_explained(capsys) -> None:
    parsers = _eval_parsers()
    assert set(EVALS) <= set(parsers)
    for name, parser in parsers.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help and len(action.help) > 10, (
                f"seer eval {name} {action.option_strings or action.dest}"
            )
    with pytest.raises(SystemExit) as done:
        main(["eval", "linear", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "Nesterov",
        "--max-bad-rows",
        "--baseline",
        "--milestones",
        "(default: 8,16,24)",
        "--cache",
    ):
        assert phrase in text


def test_corrupt_row_is_a_one_line_error(tmp_path, capsys) -> None:
    made = make_counting_set(str(tmp_path / "set"), n_train=4, n_val=4, max_count=2, size=32)
    rows = storage.read_text(made["train"]).splitlines()
    rows[3] = "train/1/gone.jpg,1"
    storage.write_text(made["train"], "\n".join(rows) + "\n")
    code = main(["eval", "linear", "--train", made["train"], "--val", made["val"], *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.csv:4: file not found" in err and "--max-bad-rows" in err
    assert "Traceback" not in err


def _pngs(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_linear_report_classifier_test384_and_compare(tmp_path, capsys) -> None:
    made = make_counting_set(str(tmp_path / "set"), n_train=24, n_val=12, max_count=3, size=32)
    out, clf = str(tmp_path / "linear"), str(tmp_path / "clf.pt")
    args = ["--train", made["train"], "--val", made["val"], *FAST, "--transform", "square:32"]
    probe = ["--epochs", "3", "--milestones", "2", "--probe-batch-size", "8", "--base-lr", "0.1"]
    assert (
        main(
            [
                "eval",
                "linear",
                *args,
                *probe,
                "--output",
                out,
                "--save-classifier",
                clf,
                "--baseline",
                "random-features",
            ]
        )
        == 0
    )
    doc = json.loads(storage.read_text(f"{out}/metrics.json"))
    assert doc["schema"] == "seer-eval-metrics-v1" and doc["eval"] == "linear"
    assert set(doc["metrics"]) == {"top1", "top5"} and "random-features" in doc["baselines"]
    assert len(doc["checkpoint"]["sha256"]) == len(doc["config_sha256"]) == 64
    assert doc["datasets"]["train"]["samples"] == 24 and len(doc["datasets"]["val"]["sha256"]) == 64
    assert doc["config"]["transform"] == "square:32:32:bilinear" and doc["config"]["epochs"] == 3
    assert doc["details"]["classes"] == ["1", "2", "3"] and len(doc["details"]["confusion"]) == 3
    plots = _pngs(storage.read_text(f"{out}/report.html"))
    assert len(plots) == 2 and all(p.format == "PNG" and p.width > 200 for p in plots)

    # the exported classifier (BN folded into the Linear) scores like the probe at the same size
    assert (
        main(
            [
                "eval",
                "test384",
                "--val",
                made["val"],
                "--checkpoint",
                clf,
                "--resolution",
                "32",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--output",
                str(tmp_path / "t384"),
            ]
        )
        == 0
    )
    t384 = json.loads(storage.read_text(f"{tmp_path}/t384/metrics.json"))
    assert t384["metrics"]["top1"] == pytest.approx(doc["metrics"]["top1"])
    assert t384["config"]["transform"] == "shorter:32:32:bicubic"

    capsys.readouterr()
    assert (
        main(["eval", "compare", f"{out}/metrics.json", f"{out}/metrics.json", "--fail-on-regression"]) == 0
    )
    worse = {**doc, "metrics": {**doc["metrics"], "top1": doc["metrics"]["top1"] - 0.2}}
    storage.write_json(f"{tmp_path}/worse.json", worse)
    deltas = str(tmp_path / "deltas.json")
    assert main(["eval", "compare", f"{tmp_path}/worse.json", f"{out}/metrics.json", "--output", deltas]) == 0
    assert (
        main(["eval", "compare", f"{tmp_path}/worse.json", f"{out}/metrics.json", "--fail-on-regression"])
        == 1
    )
    assert "REGRESSION" in capsys.readouterr().out
    assert storage.read_json(deltas)["regressions"] == ["top1"]


@pytest.mark.slow
def test_every_evaluation_runs_from_the_cli(tmp_path) -> None:
    copy = make_copy_detection_set(str(tmp_path / "copy"), n_originals=4, n_distractors=4, n_train=4, size=32)
    geo = make_geo_set(str(tmp_path / "geo"), n_train=24, n_val=12, size=32)
    fair = make_fairness_set(str(tmp_path / "fair"), n_train=24, n_test=12, size=32)
    small = ["--transform", "square:32", "--epochs", "2", "--milestones", "1", "--probe-batch-size", "8"]
    runs = {
        "knn": [
            "--train",
            geo["train"].replace("geo/train.csv", "fair/train.csv"),
            "--val",
            fair["test"],
            "--k",
            "5",
            "--transform",
            "square:32",
        ],
        "copy-detection": [
            "--queries",
            copy["queries"],
            "--database",
            copy["database"],
            "--whitening",
            copy["train"],
            "--transform",
            "longer:32",
            "--pca-dims",
            "16",
            "--baseline",
            "random-features",
        ],
        "geolocalization": [
            "--train",
            geo["train"],
            "--val",
            geo["val"],
            "--method",
            "cells",
            "--cells",
            geo["cells"],
            *small,
        ],
        "fairness": [
            "--train",
            fair["train"],
            "--test",
            fair["test"],
            "--harmful-labels",
            "triangle",
            *small,
        ],
    }
    expected = {
        "knn": {"top1", "top5"},
        "copy-detection": {"mAP", "uAP", "strong.mAP", "jpeg.mAP", "crops.mAP"},
        "geolocalization": {"acc@1km", "acc@25km", "acc@200km", "acc@750km", "acc@2500km", "median_km"},
        "fairness": {
            "accuracy",
            "disparity",
            "min_over_max",
            "harmful_predictions",
            "dark.accuracy",
            "light.accuracy",
        },
    }
    for name, args in runs.items():
        out = str(tmp_path / name)
        assert main(["eval", name, *args, *FAST, "--output", out]) == 0, name
        doc = storage.read_json(f"{out}/metrics.json")
        assert set(doc["metrics"]) == expected[name], name
        assert _pngs(storage.read_text(f"{out}/report.html")), name
    assert storage.read_json(f"{tmp_path}/geolocalization/metrics.json")["lower_is_better"] == ["median_km"]
    assert main(["eval", "make-benchmark", "geo", "--output", str(tmp_path / "made"), "--size", "32"]) == 0
    assert storage.exists(str(tmp_path / "made" / "cells.csv"))
