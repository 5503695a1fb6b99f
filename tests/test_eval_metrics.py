"""Evaluation metrics against values worked out by hand on small fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seer.eval import metrics
from seer.eval.copy_detection import PCAWhitening, evaluate_ranking, global_descriptors
from seer.eval.fairness import fairness_report
from seer.eval.features import rmac_regions
from seer.eval.geolocalization import Partition, assign_cells
from seer.eval.knn import knn_scores
from seer.eval.linear import LinearConfig, ProbeHead, linear_probe
from seer.eval.report import CompareError, compare, metrics_document


def test_topk_accuracy_by_hand() -> None:
    scores = np.array(
        [
            [0.1, 0.7, 0.2, 0.0],  # label 1: rank 0
            [0.5, 0.1, 0.3, 0.4],  # label 2: rank 2 (0.5, 0.4 above)
            [0.9, 0.8, 0.7, 0.6],  # label 3: rank 3
        ]
    )
    labels = np.array([1, 2, 3])
    assert metrics.topk_accuracy(scores, labels, (1, 2, 3, 4)) == {
        "top1": pytest.approx(1 / 3),
        "top2": pytest.approx(1 / 3),
        "top3": pytest.approx(2 / 3),
        "top4": 1.0,
    }


def test_topk_ties_and_nan_never_count_as_hits() -> None:
    constant = np.zeros((2, 10))
    assert metrics.topk_accuracy(constant, np.array([0, 9]), (1, 5)) == {"top1": 0.0, "top5": 0.0}
    diverged = np.full((1, 3), np.nan)
    assert metrics.topk_accuracy(diverged, np.array([0]), (1,))["top1"] == 0.0


def test_confusion_and_per_class() -> None:
    pred, labels = np.array([0, 1, 1, 2, 0]), np.array([0, 1, 0, 2, 0])
    cm = metrics.confusion_matrix(pred, labels, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    per_class = metrics.per_class_accuracy(pred, labels, 4)
    assert per_class[:3].tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    assert math.isnan(per_class[3])


def test_average_precision_trapezoid_by_hand() -> None:
    # positives at ranks 0 and 2 of 2: (1 + 1)/4 + (1/2 + 2/3)/4
    assert metrics.average_precision([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # one of two positives retrieved at rank 1: (0 + 1/2)/4; the missed one adds nothing
    assert metrics.average_precision([1], 2) == pytest.approx(0.125)
    assert metrics.average_precision([0], 1) == 1.0
    with pytest.raises(ValueError):
        metrics.average_precision([], 0)


def test_micro_ap_pools_all_queries_by_hand() -> None:
    scores = np.array([[0.9, 0.3], [0.8, 0.7]])
    truth = np.array([[True, False], [False, True]])
    # pooled order: 0.9 hit, 0.8 miss, 0.7 hit, 0.3 miss → (1/1 + 2/3) / 2
    uap, precision, recall = metrics.micro_average_precision(scores, truth, 2)
    assert uap == pytest.approx((1 + 2 / 3) / 2)
    assert recall[-1] == 1.0 and precision[0] == 1.0
    # a ground-truth pair absent from the predictions halves the recall reachable
    assert metrics.micro_average_precision(scores, truth, 4)[0] == pytest.approx((1 + 2 / 3) / 4)


def test_evaluate_ranking_per_split_by_hand() -> None:
    similarity = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6], [0.3, 0.2, 0.1]])
    truth = np.array([[True, False, False], [False, False, True], [False, False, False]])
    result = evaluate_ranking(similarity, truth, ["strong", "jpeg", "jpeg"])
    # query 0: positive at rank 0 → AP 1; query 1: positive at rank 1 → (0 + 1/2)/2 = 0.25
    assert result.per_split["strong"]["mAP"] == 1.0
    assert result.per_split["jpeg"]["mAP"] == pytest.approx(0.25)
    assert result.metrics["mAP"] == pytest.approx((1.0 + 0.25) / 2)
    assert result.per_split["jpeg"]["mP@1"] == 0.0 and result.per_split["strong"]["mP@1"] == 1.0
    # pooled over all 9 predictions: 0.9 hit, 0.8, 0.6 hit → (1 + 2/3) / 2 (query 2 only adds misses)
    assert result.metrics["uAP"] == pytest.approx((1 + 2 / 3) / 2)


def test_mp_at_k_uses_revisitop_definition() -> None:
    """revisitop ``compute_map``: P@k is measured at kq = min(k, 1-based position of the last positive),
    so one positive ranked first scores P@5 = 1 (not 1/5), and positives at positions 1 and 3 give
    P@5 = 2/3 and P@1 = 1."""
    similarity = np.array([[0.9, 0.1, 0.2, 0.3, 0.4, 0.0], [0.9, 0.8, 0.7, 0.1, 0.0, 0.2]])
    truth = np.zeros((2, 6), dtype=bool)
    truth[0, 0] = True  # position 1
    truth[1, [0, 2]] = True  # positions 1 and 3
    result = evaluate_ranking(similarity, truth, ["a", "b"], ks=(1, 5))
    assert result.per_split["a"]["mP@5"] == 1.0 and result.per_split["a"]["mP@1"] == 1.0
    assert result.per_split["b"]["mP@5"] == pytest.approx(2 / 3) and result.per_split["b"]["mP@1"] == 1.0


def test_pca_whitening_decorrelates_and_floors_eigenvalues() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)) @ np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.1]])
    w = PCAWhitening.fit(x, dims=2)
    white = w(x)
    assert white.shape == (200, 2)
    # projection D^-1/2 Vᵀ of the centred XᵀX: the whitened training set has XᵀX = I
    np.testing.assert_allclose(white.T @ white, np.eye(2), atol=1e-8)
    # a rank-deficient set: the zero-variance direction is floored at 1e-5·max, not divided by 0
    flat = np.c_[x[:, :2], np.zeros(200)]
    assert np.isfinite(PCAWhitening.fit(flat, dims=3)(flat)).all()


def test_global_descriptors_sum_then_normalise() -> None:
    regions = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 2.0]])]
    out = global_descriptors(regions, None)
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5], [0.0, 1.0]], atol=1e-6)


def test_rmac_regions_follow_tolias_grid() -> None:
    # square map: levels give 1, 2×2 and 3×3 regions of side 14, 9, 7
    regions = rmac_regions(14, 14, levels=3)
    sides = [r[2] for r in regions]
    assert sides == [14] + [9] * 4 + [7] * 9
    assert all(y + h <= 14 and x + w <= 14 for y, x, h, w in regions)
    # wide map: more regions along the long side, all inside the map
    wide = rmac_regions(10, 20, levels=1)
    assert [r[2] for r in wide] == [10] * len(wide) and len(wide) == 3
    assert max(x + w for _, x, _, w in wide) == 20


def test_rmac_regions_match_tolias_reference_boxes() -> None:
    """Boxes worked out by hand from Tolias et al.'s R-MAC reference as VISSL transcribes it
    (vissl/utils/instance_retrieval_utils/rmac.py ``get_rmac_region_coordinates``): on a 10×14 map the
    40 %-overlap rule gives the long side one extra region per level (two level-1 squares 4 apart
    overlap by 60 %, the closest of 2..7 steps to 40 %), so 2 + 6 + 12 = 20 regions."""
    wide = rmac_regions(10, 14, levels=3)
    level1 = [(0, 0, 10, 10), (0, 4, 10, 10)]
    level2 = [(y, x, 6, 6) for y in (0, 4) for x in (0, 4, 8)]  # side ⌊20/3⌋, centres 4 apart
    level3 = [(y, x, 5, 5) for y in (0, 2, 5) for x in (0, 3, 6, 9)]  # side 5, steps 2.5 and 3 floored
    assert wide == level1 + level2 + level3
    tall = rmac_regions(14, 10, levels=3)  # the same boxes with the axes swapped
    assert sorted(tall) == sorted((x, y, h, w) for y, x, h, w in wide)
    square = rmac_regions(7, 7, levels=3)  # l² squares of side 7, 4, 3
    assert [r[2] for r in square] == [7] + [4] * 4 + [3] * 9
    assert [r[:2] for r in square[5:]] == [(y, x) for y in (0, 2, 4) for x in (0, 2, 4)]


def test_haversine_known_cities() -> None:
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    new_york, los_angeles = (40.7128, -74.0060), (34.0522, -118.2437)
    assert metrics.haversine_km(*paris, *london) == pytest.approx(343.5, abs=0.5)
    assert metrics.haversine_km(*new_york, *los_angeles) == pytest.approx(3936, abs=1)
    # a quarter meridian and antipodes: πR/2 and πR with R = 6371 km
    assert metrics.haversine_km(0, 0, 90, 0) == pytest.approx(math.pi * 6371 / 2)
    assert metrics.haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371)


def test_geo_accuracy_thresholds() -> None:
    d = np.array([0.5, 10, 100, 500, 1000, 3000])
    assert metrics.geo_accuracy(d) == {
        "acc@1km": pytest.approx(1 / 6),
        "acc@25km": pytest.approx(2 / 6),
        "acc@200km": pytest.approx(3 / 6),
        "acc@750km": pytest.approx(4 / 6),
        "acc@2500km": pytest.approx(5 / 6),
    }


def test_assign_cells_nearest_centre_and_grid() -> None:
    coords = np.array([[48.9, 2.3], [51.5, -0.1], [48.8, 2.4]])
    centres = np.array([[48.8566, 2.3522], [51.5074, -0.1278]])
    cells, locations = assign_cells(coords, Partition(["paris", "london"], centres))
    assert cells.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(locations, centres)  # a partition's cells sit at its own coordinates
    grid_cells, grid_locations = assign_cells(coords, None, cell_deg=1.0)
    assert len(grid_locations) == 2 and grid_cells[0] == grid_cells[2] != grid_cells[1]


def test_group_disparity_and_harmful_counts_by_hand() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 0, 2, 2, 2])
    groups = ["a", "a", "a", "a", "b", "b"]
    result = fairness_report(pred, labels, groups, ["cat", "dog", "ape"], harmful_labels=["ape"])
    # group a: 3 of 4 right; group b: 0 of 2 → disparity 0.75, ratio 0
    assert result.per_group["a"] == {
        "accuracy": 0.75,
        "count": 4,
        "harmful_predictions": 1,
        "harmful_rate": 0.25,
    }
    assert result.per_group["b"]["harmful_predictions"] == 2
    assert result.metrics["disparity"] == pytest.approx(0.75)
    assert result.metrics["min_over_max"] == 0.0
    assert metrics.disparity([0.75, 0.5]) == {"max_minus_min": 0.25, "min_over_max": pytest.approx(2 / 3)}


def test_knn_temperature_weighted_votes_by_hand() -> None:
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array([0, 1, 1])
    scores = knn_scores(train, labels, np.array([[1.0, 0.0]]), n_classes=2, k=2, temperature=0.5)
    # neighbours: train 0 (cos 1.0, class 0) and train 1 (cos 0.8, class 1)
    np.testing.assert_allclose(scores, [[math.exp(1.0 / 0.5), math.exp(0.8 / 0.5)]], rtol=1e-5)


def test_linear_probe_learns_separable_features_and_folds() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 3
    labels = rng.integers(0, 3, 300)
    x = centres[labels] + rng.standard_normal((300, 8))
    config = LinearConfig(epochs=10, milestones=(8,), batch_size=32, base_lr=0.5)
    result = linear_probe(x[:200], labels[:200], x[200:], labels[200:], 3, config)
    assert result.metrics["top1"] > 0.95
    # BN folded into one Linear gives the same logits as the BN + Linear head in eval mode
    weight, bias = result.head.folded()
    folded = x[200:] @ weight.numpy().T + bias.numpy()
    np.testing.assert_allclose(folded, result.scores, rtol=1e-4, atol=1e-4)


def test_probe_head_on_pooled_maps_folds_per_channel() -> None:
    import torch

    head = ProbeHead((4, 2, 1), 3).eval()
    with torch.no_grad():
        head.norm.running_mean.uniform_(-1, 1)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 2)
    x = torch.randn(5, 4, 2, 1)
    weight, bias = head.folded()
    torch.testing.assert_close(x.flatten(1) @ weight.T + bias, head(x).detach(), rtol=1e-5, atol=1e-5)


def _doc(top1: float, disparity: float, dataset_sha: str = "d1") -> dict:
    return metrics_document(
        "fairness",
        {"top1": top1, "disparity": disparity},
        checkpoint={"uri": "c", "sha256": "x", "preset": "rg-tiny"},
        datasets={"test": {"sha256": dataset_sha}},
        config={"k": 1},
        lower_is_better=["disparity"],
    )


def test_compare_flags_regressions_in_each_direction() -> None:
    result = compare(_doc(0.70, 0.20), _doc(0.75, 0.10), threshold=0.01)
    assert result.deltas["top1"]["delta"] == pytest.approx(-0.05)
    assert result.regressions == ["top1", "disparity"]
    better = compare(_doc(0.80, 0.05), _doc(0.75, 0.10), threshold=0.01)
    assert better.regressions == [] and not better.warnings
    within = compare(_doc(0.745, 0.105), _doc(0.75, 0.10), threshold=0.01)
    assert within.regressions == []
    changed = compare(_doc(0.75, 0.10, "d2"), _doc(0.75, 0.10))
    assert any("dataset" in w for w in changed.warnings)
    with pytest.raises(CompareError, match="same evaluation"):
        compare({**_doc(0.7, 0.1), "eval": "linear"}, _doc(0.7, 0.1))
