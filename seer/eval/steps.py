"""One evaluation as a pipeline step runs it: the sets come from the `datasets.json` of the
eval_datasets step, the step parameters map onto the protocol's config and `FeatureOptions`.

A step pod with several GPUs runs the evaluation as a torchrun with one rank per GPU (the trunk is
sharded over them when it needs to be, `seer.eval.sharded`); rank 0 writes the report.

The checkpoint may be given as a seer artifact descriptor (seer.artifacts): the step reads the data
it names, and the linear probe's classifier (a whole trunk) is written next to it, under the run's
data prefix, with only a descriptor at `save_classifier_uri`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from dataclasses import replace
from typing import Any

import torch

from seer import artifacts, storage
from seer.errors import ConfigError
from seer.eval.features import parse_transform
from seer.eval.setup import FeatureOptions, is_main_rank

# eval name → (module, {run() parameter: datasets.json key})
STEP_INPUTS = {
    "linear": ("linear", {"train_uri": "linear_train", "val_uri": "linear_val"}),
    "knn": ("knn", {"train_uri": "linear_train", "val_uri": "linear_val"}),
    "copy-detection": (
        "copy_detection",
        {
            "queries_uri": "copy_queries",
            "database_uri": "copy_database",
            "distractors_uri": "copy_distractors",
            "whitening_uri": "copy_whitening",
        },
    ),
    "geolocalization": (
        "geolocalization",
        {"train_uri": "geo_train", "val_uri": "geo_val", "cells_uri": "geo_cells"},
    ),
    "fairness": ("fairness", {"train_uri": "fairness_train", "test_uri": "fairness_test"}),
    "test384": ("test384", {"val_uri": "test384_val"}),
}


def run_step(
    name: str,
    checkpoint: str,
    datasets_uri: str,
    output: str,
    *,
    batch_size: int,
    workers: int,
    transform: str | None = None,
    tap: str | None = None,
    pool: str | None = None,
    precision: str | None = None,
    ranks: int | None = None,
    **params: Any,
) -> dict:
    """Run evaluation `name` of `checkpoint` on the step's datasets, report into `output`.

    `params` are run settings (device, baselines) and config fields of the protocol; the linear
    probe's `epochs` stretches the default milestones (`LinearConfig.for_epochs`). `transform`,
    `tap`, `pool` and `precision` override the protocol's feature defaults. `ranks`: processes to run
    it with (None: one per visible GPU); more than one starts a torchrun of this step."""
    ranks = torch.cuda.device_count() if ranks is None else ranks
    if ranks > 1 and "WORLD_SIZE" not in os.environ:
        call = {"name": name, "checkpoint": checkpoint, "datasets_uri": datasets_uri, "output": output}
        call.update(batch_size=batch_size, workers=workers, transform=transform, tap=tap, pool=pool)
        return _torchrun(ranks, {**call, "precision": precision, **params})
    module_name, inputs = STEP_INPUTS[name]
    module = importlib.import_module(f"seer.eval.{module_name}")
    if name == "test384" and storage.exists(storage.join(checkpoint, "skipped.json")):
        raise ConfigError("test384 evaluates the linear step's classifier: enable the linear evaluation too")
    described = artifacts.read_descriptor(checkpoint) if artifacts.is_descriptor(checkpoint) else {}
    checkpoint = described.get("uri", checkpoint)
    classifier_descriptor = None
    if params.get("save_classifier_uri") and described.get("prefix"):
        classifier_descriptor = params["save_classifier_uri"]
        params["save_classifier_uri"] = storage.join(described["prefix"], "linear-eval", "classifier.pt")
    sets = storage.read_json(storage.join(datasets_uri, "datasets.json"))
    base = module.default_options() if hasattr(module, "default_options") else FeatureOptions()
    options = replace(base, batch_size=batch_size, num_workers=workers)
    if transform is not None:
        options = replace(options, transform=parse_transform(transform))
    given = {"tap": tap, "pool": pool, "precision": precision}
    options = replace(options, **{k: v for k, v in given.items() if v is not None})
    if "baselines" in params:
        params["baselines"] = tuple(params["baselines"])
    if name == "linear":
        params["config"] = module.LinearConfig.for_epochs(params.pop("epochs"), seed=params.pop("seed"))
    # test384 scores linear_val unless a separate test384_val (e.g. ImageNet val by wnid) is given
    uris = {
        param: sets.get(key) or sets.get("linear_val" if key == "test384_val" else key)
        for param, key in inputs.items()
    }
    doc = module.run(checkpoint=checkpoint, options=options, output=output, **uris, **params)
    if classifier_descriptor is not None and is_main_rank():
        artifacts.write_descriptor(
            classifier_descriptor,
            "classifier",
            params["save_classifier_uri"],
            prefix=described["prefix"],
            preset=described.get("preset", ""),
            bytes=storage.stat(params["save_classifier_uri"]).size,
        )
    return doc


def _torchrun(ranks: int, call: dict[str, Any]) -> dict:
    """Run `run_step(**call)` on `ranks` local ranks (`seer.launch.run_local`, no restarts: an evaluation
    starts over anyway); the metrics document rank 0 wrote."""
    from seer.launch import run_local

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(call, f)
    try:
        failed = run_local([f.name], nproc_per_node=ranks, max_restarts=0, module="seer.eval.steps")
    finally:
        os.unlink(f.name)
    if failed:
        raise ConfigError(f"evaluation {call['name']} failed on {ranks} ranks; see the rank logs above")
    return storage.read_json(storage.join(call["output"], "metrics.json"))


if __name__ == "__main__":  # one rank of `_torchrun`
    with open(sys.argv[1]) as f:
        run_step(ranks=1, **json.load(f))
