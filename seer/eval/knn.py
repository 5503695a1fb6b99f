"""Weighted k-NN classification on frozen features (cosine similarity, temperature weighting).

Each test feature votes with its k most similar training features (cosine); a neighbour with
similarity s adds exp(s / τ) to its class's score (τ = 0.07 by default). Top-1/top-5 come from
the class scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seer.errors import ConfigError
from seer.eval.features import FeatureSet
from seer.eval.linear import classification_result
from seer.eval.setup import Scored, arg, classification_scored, evaluate, prepare


@dataclass
class KnnConfig:
    """Neighbours and vote temperature (defaults: k = 20, τ = 0.07)."""

    k: int = field(default=20, metadata=arg("number of neighbours"))
    temperature: float = field(default=0.07, metadata=arg("τ of the exp(similarity / τ) vote weight"))
    seed: int = 0


def knn_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> np.ndarray:
    """(N_test, classes) summed exp(similarity/τ) over each test sample's k nearest training samples."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"k-NN needs k >= 1 and a positive temperature (got k={k}, τ={temperature})")
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float32).flatten(1), dim=1)
    test = F.normalize(torch.as_tensor(test_x, dtype=torch.float32).flatten(1), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    k = min(k, len(train))
    out = torch.zeros(len(test), n_classes)
    for start in range(0, len(test), chunk):
        sims, idx = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        out[start : start + chunk].scatter_add_(1, labels[idx], torch.exp(sims / temperature))
    return out.numpy()


def run(train_uri: str, val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval knn`: weighted k-NN for the checkpoint and each baseline (settings: `RunSettings`)."""
    run_settings, options, config = prepare(checkpoint, KnnConfig, kwargs)
    train = run_settings.load(train_uri, "classification")
    val = run_settings.load(val_uri, "classification", classes=train.classes)

    def score(f: dict[str, FeatureSet]) -> Scored:
        n = len(train.classes)
        scores = knn_scores(
            f["train"].stacked(), train.labels, f["val"].stacked(), n, config.k, config.temperature
        )
        return classification_scored(classification_result(scores, val.labels, n), train.classes)

    record = {**asdict(config), "baselines": list(run_settings.baselines)}
    doc, _, _ = evaluate(
        "knn", run_settings, options, {"train": train, "val": val}, score, record, seed=config.seed
    )
    return doc
