"""Copy detection, CopyDays protocol (seer_spec §5.3): R-MAC over res4, PCA-whitening, cosine ranking.

Per image: res4 map (fp32) → R-MAC regions (3 levels) max-pooled and L2-normalised (done at
extraction, pool `rmac:3`) → PCA-whitened with a projection learnt on a separate whitening set
(required: VISSL's copydays/train, DINO's 20k YFCC images) → L2 → summed over regions → L2. The
database is the references plus up to `max_distractors` distractors (SEER/DINO: 10k YFCC images),
ranked by dot product; ground truth comes from the query → reference pairs, distractors never match.
Scores: mAP per query split (trapezoidal AP, revisitop rule), mP@{1,5,10}, µAP over all queries'
predictions pooled; the headline is `strong.mAP` (SEER's "CopyDays strong subset").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from seer.errors import ConfigError
from seer.eval import metrics, report
from seer.eval.datasets import CopyDetectionSet, EvalDataset, load_pairs
from seer.eval.features import FeatureSet, TransformSpec
from seer.eval.setup import FeatureOptions, Scored, arg, evaluate, prepare


@dataclass
class CopyDetectionConfig:
    """Whitening size (N_PCA), the distractor budget and the seed of the baselines."""

    pca_dims: int = field(default=1024, metadata=arg("dimensions kept by the whitening (N_PCA)"))
    max_distractors: int = field(
        default=10000,
        metadata=arg("distractors added to the database: the first N of --distractors (SEER/DINO use 10k)"),
    )
    seed: int = 0

    def validate(self) -> None:
        if self.pca_dims < 1 or self.max_distractors < 0:
            raise ConfigError("copy detection needs --pca-dims >= 1 and --max-distractors >= 0")


HEADLINE = "strong.mAP"


@dataclass
class PCAWhitening:
    """x ↦ D^{-1/2} Vᵀ (x − mean): eigenvectors of the centred XᵀX, eigenvalues floored at
    `eig_floor`·max, top `dims` kept."""

    mean: np.ndarray
    projection: np.ndarray  # (dims, C)

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = 1024, eig_floor: float = 1e-5) -> PCAWhitening:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ConfigError(
                "PCA-whitening needs at least 2 training descriptors; give a larger whitening set"
            )
        mean = x.mean(axis=0)
        centred = x - mean
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(eigvals)[::-1][: min(dims, x.shape[1])]
        eigvals = np.maximum(eigvals[order], eig_floor * eigvals.max())
        projection = (eigvecs[:, order] / np.sqrt(eigvals)).T
        return cls(mean=mean, projection=projection)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.projection.T


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def global_descriptors(regions: Sequence[np.ndarray], whitening: PCAWhitening | None) -> np.ndarray:
    """Per image: whiten each (L2-normalised) region → L2 → sum → L2. (N, dims)."""
    out = []
    for r in regions:
        r = _l2(whitening(r)) if whitening is not None else r
        out.append(_l2(r.sum(axis=0)))
    return np.stack(out).astype(np.float32)


@dataclass
class CopyDetectionResult:
    """Metrics plus the pooled precision–recall curve (for the report)."""

    metrics: dict[str, float]
    per_split: dict[str, dict[str, float]]
    precision: np.ndarray
    recall: np.ndarray


def evaluate_ranking(
    similarity: np.ndarray, truth: np.ndarray, splits: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> CopyDetectionResult:
    """Score a (queries, database) similarity matrix against boolean ground truth.

    Per split: mAP over queries with at least one relevant item, mP@k as revisitop's ``compute_map``
    defines it (precision among the top min(k, position of the last relevant item)),
    and µAP over that split's pooled predictions. Overall: the same over all queries. Queries with
    no relevant item only add false positives to µAP.
    """
    similarity, truth = np.asarray(similarity), np.asarray(truth, dtype=bool)
    splits_arr = np.asarray(splits, dtype=object)
    if similarity.shape != truth.shape or len(splits_arr) != len(truth):
        raise ConfigError("similarity, ground truth and splits disagree in shape")

    def score(rows: np.ndarray) -> dict[str, float]:
        aps, precisions = [], {k: [] for k in ks}
        for i in np.flatnonzero(rows):
            n_pos = int(truth[i].sum())
            if n_pos == 0:
                continue
            ranks = metrics.ranked_positive_positions(similarity[i], truth[i])
            aps.append(metrics.average_precision(ranks, n_pos))
            for k in ks:  # revisitop: precision at min(k, rank of the last positive)
                kq = min(k, int(ranks.max()) + 1)
                precisions[k].append(float((ranks < kq).sum()) / kq)
        n_pairs = int(truth[rows].sum())
        out = {"mAP": float(np.mean(aps)) if aps else 0.0, "queries": int(rows.sum())}
        out |= {f"mP@{k}": float(np.mean(v)) if v else 0.0 for k, v in precisions.items()}
        if n_pairs:
            out["uAP"] = metrics.micro_average_precision(similarity[rows], truth[rows], n_pairs)[0]
        return out

    per_split = {str(s): score(splits_arr == s) for s in sorted(set(splits_arr.tolist()))}
    overall = score(np.ones(len(truth), dtype=bool))
    flat: dict[str, float] = {"mAP": overall["mAP"], "uAP": overall.get("uAP", 0.0)}
    for split, values in sorted(per_split.items(), key=lambda kv: kv[0] != "strong"):
        flat[f"{split}.mAP"] = values["mAP"]
    if HEADLINE in flat:  # the headline first, as reports and comparisons list it
        flat = {HEADLINE: flat[HEADLINE], **flat}
    _, precision, recall = metrics.micro_average_precision(similarity, truth, max(int(truth.sum()), 1))
    return CopyDetectionResult(metrics=flat, per_split=per_split, precision=precision, recall=recall)


def copy_detection(
    query_regions: Sequence[np.ndarray],
    database_regions: Sequence[np.ndarray],
    train_regions: Sequence[np.ndarray],
    truth: np.ndarray,
    splits: Sequence[str],
    pca_dims: int = 1024,
) -> CopyDetectionResult:
    """Whitening learnt on `train_regions` (a set separate from queries and database), then ranking
    and scoring."""
    if train_regions is None or not len(train_regions):
        raise ConfigError("copy detection learns its PCA-whitening on a separate set; give --whitening URI")
    whitening = PCAWhitening.fit(np.concatenate(list(train_regions)), dims=pca_dims)
    q = global_descriptors(query_regions, whitening)
    d = global_descriptors(database_regions, whitening)
    return evaluate_ranking(q @ d.T, truth, splits)


def default_options() -> FeatureOptions:
    """The CopyDays features: R-MAC (3 levels) over res4 in fp32, longer side resized to 224."""
    return FeatureOptions(
        tap="res4", pool="rmac:3", transform=TransformSpec("longer", 224, 224), precision="fp32"
    )


def with_distractors(pairs: CopyDetectionSet, distractors: EvalDataset, limit: int) -> CopyDetectionSet:
    """`pairs` with the first `limit` distractor images (not already in the database) appended to its
    database; they are relevant to no query."""
    present = {s.uri for s in pairs.database.samples}
    extra = [s for s in distractors.samples if s.uri not in present][:limit]
    database = replace(pairs.database, samples=[*pairs.database.samples, *extra], _sha256=None)
    return replace(pairs, database=database)


def run(queries_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval copy-detection`: R-MAC features of queries, database (+ distractors) and the whitening
    set; strong.mAP, mAP per split, µAP."""
    database_uri = kwargs.pop("database_uri", None)
    distractors_uri = kwargs.pop("distractors_uri", None)
    whitening_uri = kwargs.pop("whitening_uri", None)
    run_settings, options, config = prepare(checkpoint, CopyDetectionConfig, kwargs, default_options)
    if not whitening_uri:
        raise ConfigError(
            "copy detection learns PCA-whitening on a separate image set: pass --whitening URI (e.g. the "
            "whitening.csv written by `seer eval import-copydays`)"
        )
    if not options.pool.startswith("rmac:"):
        raise ConfigError(f"copy detection needs R-MAC pooling (--pool rmac:3), got {options.pool!r}")
    pairs = load_pairs(queries_uri, database_uri, max_bad_rows=run_settings.max_bad_rows)
    references = len(pairs.database)
    if distractors_uri:
        distractors = run_settings.load(distractors_uri, "images")
        pairs = with_distractors(pairs, distractors, config.max_distractors)
    whitening_set = run_settings.load(whitening_uri, "images")
    overlap = {s.uri for s in whitening_set.samples} & {s.uri for s in pairs.database.samples}
    if overlap:
        raise ConfigError(
            f"the whitening set shares {len(overlap)} images with the database (e.g. {sorted(overlap)[0]}); "
            "learn the whitening on a separate set"
        )
    sets = {"queries": pairs.queries, "database": pairs.database, "whitening": whitening_set}
    truth = pairs.ground_truth()
    splits = [s.split for s in pairs.queries.samples]
    database = {"references": references, "distractors": len(pairs.database) - references}

    def score(f: dict[str, FeatureSet]) -> Scored:
        r = copy_detection(
            f["queries"].arrays, f["database"].arrays, f["whitening"].arrays, truth, splits, config.pca_dims
        )
        per_split_map = {s: v["mAP"] for s, v in r.per_split.items()}
        return Scored(
            r.metrics,
            {"per_split": r.per_split, "database": database},
            lambda: {
                "mAP per query split": report.plot_bars(per_split_map, "mAP per split", "mAP"),
                "precision–recall": report.plot_precision_recall(r.precision, r.recall),
            },
        )

    record = {
        "pca_dims": config.pca_dims,
        "whitening": whitening_uri,
        "max_distractors": config.max_distractors,
        "distractors": database["distractors"],
        "headline": HEADLINE,
        "seed": config.seed,
        "baselines": list(run_settings.baselines),
    }
    return evaluate("copy-detection", run_settings, options, sets, score, record, seed=config.seed)[0]
