"""SEER's fairness indicators on hand-made predictions, values computed by hand.

Sources (VISSL, projects/fairness_indicators/): geographical_diversity/
inference_geographical_diversity.py (top-5 `PRED_TOPK`, hit = ground-truth label among the labels
of the top-5 classes after `in22k_cls_idx_to_dollar_street_labels_map.json`, `add_log_income`:
INCOME_BUCKETS[round(ln(income) / 3)] = low/medium/high; regions Africa, Asia, The Americas,
Europe) and harmful_label_associations/inference_label_assoc_casual_conversations.py
(`IN22K_SUBSET_LABEL_ASSOCIATION_MAP`, top-5 `IN22K_SUBSET_TOPK`, `get_cc_age_bucket` <18 / 18-30 /
30-45 / 45-70 / 70+, `get_cc_skintone_name` 1-3 lighter / 4-6 darker, attribute `gender_skintone`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seer.errors import ConfigError
from seer.eval import fairness_indicators as fi
from seer.eval.datasets import DatasetError
from seer.eval.fairness import FairnessConfig, indicator_report, load_label_map


def test_income_buckets_are_vissls_log_income_rule() -> None:
    for income in (5, 27, 89.9, 90.1, 500, 1808, 1809, 10000, 30000):
        vissl = {1: "low", 2: "medium", 3: "high"}[int(np.round(np.log(income) / 3))]
        assert fi.income_bucket(income) == vissl, income
    assert pytest.approx((90.0171, 1808.0424), abs=1e-4) == fi.INCOME_EDGES
    assert fi.income_bucket(150, (100, 200, 400)) == "[100,200)"


@pytest.mark.parametrize(
    ("age", "bucket"),
    [
        ("17", "<18"),
        ("18", "18-30"),
        ("29", "18-30"),
        ("30", "30-45"),
        ("45", "45-70"),
        ("70", "70+"),
        ("n/a", "unknown"),
    ],
)
def test_age_buckets(age, bucket) -> None:
    assert fi.age_bucket(age) == bucket


def test_skin_tone_split() -> None:
    assert [fi.skin_tone(v) for v in ("1", "3", "4", "6", "7", "", "n/a")] == [
        "lighter", "lighter", "darker", "darker", "unknown", "unknown", "unknown",
    ]  # fmt: skip
    assert fi.skin_tone("4", lighter_max=4) == "lighter"


def _scores(rankings: list[list[int]], n_classes: int) -> np.ndarray:
    """A score matrix whose rows rank the given classes first (best first)."""
    scores = np.zeros((len(rankings), n_classes))
    for i, ranking in enumerate(rankings):
        for r, c in enumerate(ranking):
            scores[i, c] = n_classes - r
    return scores


def test_dollar_street_top5_hit_rate_after_the_label_map(tmp_path) -> None:
    classes = [f"c{i}" for i in range(7)]
    # VISSL's map is keyed by class index; c6 maps to two Dollar Street labels
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0": ["toothbrush"], "1": ["stove"], "6": ["bed", "sofa"], "99": ["x"]}))
    label_map = load_label_map(str(path), classes)
    assert label_map["c6"] == ("bed", "sofa") and len(label_map) == 3
    scores = _scores(
        [
            [0, 2, 3, 4, 5],  # toothbrush at rank 1 → hit
            [2, 3, 4, 5, 1],  # stove at rank 5 → hit
            [2, 3, 4, 5, 0],  # truth stove, top-5 maps only to toothbrush → miss
            [6, 2, 3, 4, 5],  # sofa via c6 → hit
            [2, 3, 4, 5, 6, 1],  # stove at rank 6 → miss (top-5 only)
        ],
        7,
    )
    truth = ["toothbrush", "stove", "stove", "sofa", "stove"]
    groups = {
        "income": [fi.income_bucket(x) for x in (27, 27, 500, 5000, 5000)],
        "region": ["Africa", "Africa", "Asia", "Europe", "Europe"],
        "country": ["Burundi", "Burundi", "India", "Sweden", "Sweden"],
    }
    r = indicator_report(scores, classes, FairnessConfig(indicator="geographic"), groups, truth, label_map)
    assert r.metrics["hit_rate"] == pytest.approx(3 / 5)
    assert r.metrics["income.low.hit_rate"] == 1.0 and r.metrics["income.medium.hit_rate"] == 0.0
    assert r.metrics["income.high.hit_rate"] == 0.5 and r.metrics["income.disparity"] == 1.0
    assert r.metrics["region.Europe.hit_rate"] == 0.5 and r.metrics["country.Burundi.hit_rate"] == 1.0
    assert r.per_group["region"]["Asia"] == {"rate": 0.0, "count": 1}


def test_label_map_keys_must_name_training_classes(tmp_path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"zebra": ["x"], "42": ["y"]}))
    with pytest.raises(DatasetError, match="no key names a training class"):
        load_label_map(str(path), ["cat", "dog"])


def test_casual_conversations_label_association_by_attribute() -> None:
    classes = ["gorilla", "people", "prison", "beard", "car", "tree", "face"]
    scores = _scores(
        [
            [0, 4, 5, 1, 2],  # gorilla, people, prison → non-human, human, crime
            [1, 6, 4, 5, 3],  # people, face, beard → human, possibly-human
            [4, 5, 1, 3, 6, 0],  # gorilla only at rank 6 → human, possibly-human
            [4, 5, 0, 1, 3],  # gorilla → non-human, human, possibly-human
        ],
        7,
    )
    gender = ["female", "female", "male", "male"]
    tone = ["darker", "lighter", "darker", "darker"]
    groups = {
        "gender": gender,
        "age": ["18-30", "18-30", "70+", "<18"],
        "skintone": tone,
        "gender_skintone": [f"{g}_{t}" for g, t in zip(gender, tone, strict=True)],
    }
    r = indicator_report(scores, classes, FairnessConfig(indicator="label-association"), groups)
    assert r.metrics["non-human"] == 0.5 and r.metrics["human"] == 1.0
    assert r.metrics["possibly-human"] == 0.75 and r.metrics["crime"] == 0.25
    assert r.metrics["gender.female.non-human"] == 0.5 and r.metrics["gender.male.non-human"] == 0.5
    assert r.metrics["skintone.darker.non-human"] == pytest.approx(2 / 3)
    assert r.metrics["gender_skintone.female_darker.crime"] == 1.0
    assert r.metrics["gender_skintone.male_darker.crime"] == 0.0
    assert r.per_group["age"]["18-30"]["possibly-human"] == {"rate": 0.5, "count": 2}


def test_label_association_names_each_class_by_its_first_label() -> None:
    # VISSL's in22k_cls_name_to_label_name_map: {class: [label, ...]}, value[0] is used
    scores = _scores([[0, 1]], 2)
    label_map = {"n02480855": ("gorilla", "people"), "n00007846": ("person",)}
    r = indicator_report(
        scores,
        ["n02480855", "n00007846"],
        FairnessConfig(indicator="label-association"),
        {"gender": ["female"]},
        label_map=label_map,
    )
    assert r.metrics["non-human"] == 1.0 and r.metrics["human"] == 0.0


def test_bucket_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="--age-edges must be increasing"):
        FairnessConfig(age_edges=(30, 18)).validate()
    with pytest.raises(ConfigError, match="--skin-lighter-max"):
        FairnessConfig(skin_lighter_max=6).validate()
    assert FairnessConfig().income_edges == (math.exp(4.5), math.exp(7.5))


@pytest.mark.slow
def test_label_association_runs_on_an_unlabelled_imported_test_set(tmp_path) -> None:
    from dataclasses import replace

    from PIL import Image

    from seer.data.synthetic_benchmarks import make_fairness_set
    from seer.eval.fairness import run
    from seer.eval.importers import import_casual_conversations
    from seer.eval.linear import LinearConfig
    from seer.eval.setup import FeatureOptions

    sets = make_fairness_set(str(tmp_path / "fair"), n_train=12, n_test=4, size=32)
    entries = []
    for i, (gender, age, skin) in enumerate(
        [("Female", "20", "5"), ("Male", "71", "2"), ("Female", "", "n/a")]
    ):
        (tmp_path / "cc" / str(i)).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * i, 90, 160)).save(tmp_path / "cc" / str(i) / "f.jpg")
        entries.append(
            {"age": age, "gender": gender, "img_path": f"/x/{i}/f.jpg", "skin-type": skin, "subject_id": i}
        )
    (tmp_path / "cc.json").write_text(json.dumps(entries))
    import_casual_conversations(str(tmp_path / "cc.json"), str(tmp_path / "cc"), str(tmp_path / "cc.csv"))
    doc = run(
        sets["train"],
        str(tmp_path / "cc.csv"),
        "random",
        preset="rg-tiny",
        device="cpu",
        indicator="label-association",
        associations=None,
        options=replace(FeatureOptions(), num_workers=0, batch_size=4, transform=FeatureOptions().transform),
        probe=LinearConfig(epochs=1, milestones=(), batch_size=4),
    )
    assert (
        doc["config"]["protocol"] == "frozen-features" and doc["config"]["indicator"] == "label-association"
    )
    assert {
        "non-human",
        "gender.female.human",
        "age.unknown.crime",
        "gender_skintone.male_lighter.crime",
    } <= set(doc["metrics"])
    assert "gender.female.non-human" in doc["lower_is_better"] and "human" not in doc["lower_is_better"]


def test_finetuned_classifier_scores_fairness_with_its_own_head(tmp_path) -> None:
    """`--classifier finetuned`: no training set; the classes, top-1 and top-5 are the file's head's.

    Accuracy indicator: the head gives img0 → a, img1 → b (right, group g1), img2 → d, img3 → c (wrong,
    group g2): accuracy 0.5, g1 1.0, g2 0.0, disparity 1.0, one harmful `d` prediction. Geographic
    indicator: a bias-only head ranks c0 > c1 > ... > c6 for every image, so the top-5 is c0..c4: img0
    (truth c4, rank 5) is a hit, img1 (truth c5, rank 6) a miss."""
    from seer.eval.fairness import run
    from tests.finetuned_classifier import OPTIONS, write_classifier, write_images

    names = write_images(tmp_path, 4)
    grouped = tmp_path / "grouped.csv"
    rows = [
        f"{n},{label},{group}"
        for n, label, group in zip(names, "abcd", ["g1", "g1", "g2", "g2"], strict=True)
    ]
    grouped.write_text("path,label,group\n" + "\n".join(rows) + "\n")
    clf = write_classifier(tmp_path / "abcd.pt", str(grouped), "grouped", list("abcd"), rows=[0, 1, 3, 2])
    doc = run(
        None, str(grouped), clf, classifier="finetuned", harmful_labels=("d",), device="cpu", options=OPTIONS
    )
    m = doc["metrics"]
    assert (m["accuracy"], m["g1.accuracy"], m["g2.accuracy"], m["disparity"]) == (0.5, 1.0, 0.0, 1.0)
    assert m["harmful_predictions"] == 1.0
    assert doc["config"]["protocol"] == doc["details"]["protocol"] == "fine-tuned"
    assert doc["details"]["classes"] == list("abcd") and "train" not in doc["datasets"]

    street = tmp_path / "street.csv"
    street.write_text(
        "path,label,income,region,country\n"
        f"{names[0]},c4,27,Africa,Burundi\n{names[1]},c5,5000,Europe,France\n"
    )
    classes = [f"c{i}" for i in range(7)]
    ranked = write_classifier(tmp_path / "c7.pt", str(street), "images", classes, bias=[6, 5, 4, 3, 2, 1, 0])
    doc = run(
        None,
        str(street),
        ranked,
        classifier="finetuned",
        indicator="geographic",
        device="cpu",
        options=OPTIONS,
    )
    m = doc["metrics"]
    assert m["hit_rate"] == 0.5 and m["income.low.hit_rate"] == 1.0 and m["income.high.hit_rate"] == 0.0
    assert doc["config"]["topk"] == 5
    with pytest.raises(ConfigError, match="needs a training set"):
        run(None, str(street), ranked, indicator="geographic", device="cpu", options=OPTIONS)
