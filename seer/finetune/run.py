"""`run_finetune`: fine-tune on the shared training engine, then export the classifier.

Outputs under `output_uri`: what the engine writes (`checkpoints/iter-*` DCP checkpoints,
`train_log.jsonl`, `summary.json`), then `classifier.pt` (+ `.json` sidecar: the classifier file
format of `seer.checkpoints.classifier`, a seer consolidated file whose head is `clf.0`), its sliced
form `sliced/index.json`, and last `finetune.json` (what was exported from which checkpoint). A rerun
after a crash resumes training, or, when training had finished, redoes the export.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from seer import storage
from seer.checkpoints.consolidate import consolidate
from seer.checkpoints.slice import slice_checkpoint
from seer.errors import ConfigError
from seer.finetune.config import FinetuneConfig, validate
from seer.finetune.data import batches_per_epoch, load_labelled
from seer.finetune.task import FinetuneTask, with_run_values
from seer.train import checkpoint
from seer.train.engine import run_training
from seer.train.parallel import init_distributed

CLASSIFIER_NAME = "classifier.pt"
SLICED_NAME = "sliced"
RESULT_NAME = "finetune.json"


def export_classifier(output_uri: str, iterations: int) -> dict[str, Any]:
    """The final checkpoint → `classifier.pt` + `sliced/`; writes and returns `finetune.json`."""
    ref = checkpoint.latest_complete(output_uri)
    if ref is None or ref.iteration != iterations:
        raise checkpoint.CheckpointError(
            f"{output_uri} has no complete checkpoint at the last iteration {iterations} "
            f"(newest: {ref.iteration if ref else 'none'}); rerun `seer finetune` to finish it"
        )
    classifier = storage.join(output_uri, CLASSIFIER_NAME)
    sidecar = consolidate(ref.uri, classifier)
    index = slice_checkpoint(classifier, storage.join(output_uri, SLICED_NAME))
    result = {
        "classifier": classifier,
        "sha256": sidecar["sha256"],
        "sliced": index,
        "checkpoint": ref.uri,
        "iteration": ref.iteration,
        "preset": sidecar["preset"],
        "classes": len(sidecar["config"]["classifier"]["classes"]),
        "pretrained": sidecar["config"]["model"]["checkpoint"],
    }
    storage.write_json(storage.join(output_uri, RESULT_NAME), result)
    return result


def run_finetune(cfg: FinetuneConfig, output_uri: str, data_uri: str | None = None) -> dict[str, Any]:
    """Fine-tune to `cfg.optim.epochs` (resuming from `output_uri`), then export; returns the run
    summary with `export` (the `finetune.json` record) added on every rank."""
    data_uri = data_uri or cfg.data.train
    if not data_uri:
        raise ConfigError("no training data: pass --data URI (a labelled set) or set data.train")
    if not cfg.model.checkpoint:
        raise ConfigError(
            "model.checkpoint: give the pretrained weights (a checkpoint URI, or `random` for none)"
        )
    own_group = not dist.is_initialized()
    env = init_distributed()
    try:
        validate(cfg, world_size=env.world_size)
        data = load_labelled(cfg, data_uri)
        per_epoch = batches_per_epoch(len(data.samples), cfg.train.batch_per_gpu, env.world_size)
        cfg = with_run_values(cfg, data, per_epoch)
        summary = run_training(cfg, output_uri, data_uri, FinetuneTask(data, per_epoch))
        box: list[Any] = [export_classifier(output_uri, cfg.train.iterations) if env.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return {**summary, "export": box[0]}
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
