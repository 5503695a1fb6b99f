"""Weighted k-NN classification on frozen features (cosine similarity, temperature weighting).

Each test feature votes with its k most similar training features (cosine); a neighbour with
similarity s adds exp(s / τ) to its class's score (τ = 0.07 by default). Top-1/top-5 come from
the class scores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seer.errors import ConfigError
from seer.eval import report
from seer.eval.datasets import load_dataset
from seer.eval.features import FeatureOptions, extract_variants, load_trunk, resolve_device
from seer.eval.linear import classification_result


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


def run(
    train_uri: str,
    val_uri: str,
    checkpoint: str,
    *,
    preset: str | None = None,
    options: FeatureOptions | None = None,
    k: int = 20,
    temperature: float = 0.07,
    baselines: tuple[str, ...] = (),
    seed: int = 0,
    device: str = "auto",
    fmt: str = "auto",
    max_bad_rows: str | int = 0,
    output: str | None = None,
) -> dict:
    """`seer eval knn`: features of both sets, weighted k-NN for the checkpoint and each baseline."""
    options = options or FeatureOptions()
    options.validate()
    train = load_dataset(train_uri, "classification", fmt=fmt, max_bad_rows=max_bad_rows)
    val = load_dataset(val_uri, "classification", fmt=fmt, classes=train.classes, max_bad_rows=max_bad_rows)
    loaded = load_trunk(checkpoint, preset, resolve_device(device), seed=seed)
    variants = extract_variants(loaded, {"train": train, "val": val}, options, baselines, seed)
    results = {}
    for name, f in variants.items():
        scores = knn_scores(
            f["train"].stacked(), train.labels, f["val"].stacked(), len(train.classes), k, temperature
        )
        results[name] = classification_result(scores, val.labels, len(train.classes))
    main = results.pop("model")
    doc = report.metrics_document(
        "knn",
        main["metrics"],
        checkpoint=loaded.describe(),
        datasets={"train": train.describe(), "val": val.describe()},
        config={
            **options.describe(),
            "k": k,
            "temperature": temperature,
            "seed": seed,
            "baselines": list(baselines),
        },
        baselines={name: r["metrics"] for name, r in results.items()},
        details={
            "classes": train.classes,
            "per_class_accuracy": dict(zip(train.classes, main["per_class"], strict=True)),
            "confusion": main["confusion"],
        },
    )
    if output:
        report.write_report(
            output, doc, report.classification_plots(main["per_class"], main["confusion"], train.classes)
        )
    return doc
