"""Metric functions shared by the evaluations: top-k, AP/µAP, great-circle distance, group disparity.

Pure numpy, no torch: every function takes arrays and returns plain Python numbers or arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

EARTH_RADIUS_KM = 6371.0
GEO_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest scores, as `{"top1": .., "top5": ..}`.

    k larger than the number of classes is clipped (top-5 over 3 classes is always 1.0). Ties count
    against the label: a true class tied with others is ranked after them, so a constant score
    matrix scores 0 rather than 100 %; rows with NaN or infinite scores never count.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores must be (N, classes) matching {len(labels)} labels, got {scores.shape}")
    true = scores[np.arange(len(labels)), labels]
    rank = (scores >= true[:, None]).sum(axis=1) - 1
    rank[~np.isfinite(scores).all(axis=1)] = scores.shape[1]  # a NaN/inf row is never a hit
    return {f"top{k}": float((rank < k).mean()) if len(labels) else 0.0 for k in ks}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[i, j] = number of samples with true class i predicted as class j."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(pred)), 1)
    return out


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Accuracy per true class (NaN for classes without samples)."""
    cm = confusion_matrix(pred, labels, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def average_precision(positive_ranks: Sequence[int], n_positives: int) -> float:
    """Trapezoidal AP of a ranked list (the revisitop `compute_ap` rule).

    `positive_ranks` are the 0-based positions of the relevant items in the ranked list; relevant
    items never retrieved count as zero recall gain. Each retrieved positive adds a trapezoid of
    width 1/n_positives between the precision just before it and the precision at it.
    """
    if n_positives <= 0:
        raise ValueError("average_precision needs at least one relevant item")
    ap = 0.0
    for j, rank in enumerate(sorted(positive_ranks)):
        before = 1.0 if rank == 0 else j / rank
        at = (j + 1) / (rank + 1)
        ap += (before + at) / (2 * n_positives)
    return ap


def ranked_positive_positions(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks of the relevant columns when a row of scores is sorted descending (stable)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.flatnonzero(np.asarray(relevant, dtype=bool)[order])


def micro_average_precision(
    scores: np.ndarray, is_positive: np.ndarray, n_positives: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """µAP: all queries' (query, database) predictions pooled into one list ranked by score.

    AP is non-interpolated over the pooled list: Σ precision@k × 1/n_positives at each positive,
    where `n_positives` counts every ground-truth pair (pairs absent from the list count zero).
    Returns (µAP, precision curve, recall curve) for plotting.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_positive = np.asarray(is_positive, dtype=bool).ravel()
    if n_positives <= 0:
        raise ValueError("micro_average_precision needs at least one ground-truth pair")
    order = np.argsort(-scores, kind="stable")
    hits = is_positive[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / n_positives
    return float(precision[hits].sum() / n_positives), precision, recall


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (R = 6371 km); broadcasts."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geo_accuracy(
    distances_km: np.ndarray, thresholds_km: Iterable[float] = GEO_THRESHOLDS_KM
) -> dict[str, float]:
    """Fraction of predictions within each distance threshold, as `{"acc@25km": ..}`."""
    d = np.asarray(distances_km, dtype=np.float64)
    return {f"acc@{t:g}km": float((d <= t).mean()) if len(d) else 0.0 for t in thresholds_km}


def group_accuracy(
    pred: np.ndarray, labels: np.ndarray, groups: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per group: `{"accuracy": .., "count": n}` (groups in sorted order)."""
    pred, labels, groups = np.asarray(pred), np.asarray(labels), np.asarray(groups, dtype=object)
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups.tolist())):
        mask = groups == g
        out[str(g)] = {"accuracy": float((pred[mask] == labels[mask]).mean()), "count": int(mask.sum())}
    return out


def disparity(values: Iterable[float]) -> dict[str, float]:
    """Spread of a per-group metric: `max - min` and `min / max` (ratio 1.0 when all are zero)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("disparity needs at least one group")
    hi, lo = float(v.max()), float(v.min())
    return {"max_minus_min": hi - lo, "min_over_max": lo / hi if hi > 0 else 1.0}


def harmful_prediction_counts(
    pred: np.ndarray, groups: Sequence[str], class_names: Sequence[str], harmful: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Per group: how many predictions fall in the harmful label list, and their rate."""
    harmful_idx = [i for i, name in enumerate(class_names) if name in set(harmful)]
    pred, groups = np.asarray(pred), np.asarray(groups, dtype=object)
    is_harmful = np.isin(pred, harmful_idx)
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups.tolist())):
        mask = groups == g
        n = int(is_harmful[mask].sum())
        out[str(g)] = {"harmful_predictions": n, "harmful_rate": n / int(mask.sum())}
    return out
