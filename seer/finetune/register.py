"""Register a fine-tuned classifier with lineage to the registered model it was fine-tuned from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seer import storage
from seer.finetune.run import RESULT_NAME
from seer.registry import ModelEntry, ModelRegistry


def register_finetuned(
    registry: ModelRegistry,
    output_uri: str,
    name: str,
    version: str,
    parent: ModelEntry,
    metrics: Mapping[str, float] | None = None,
) -> ModelEntry:
    """`name`/`version` = the classifier of the fine-tune at `output_uri` (its `finetune.json`).

    Lineage: `parent_run` is `<parent name>/<parent version>` and the artifacts include the parent's
    artifact as `pretrained`, next to the sliced form and the training checkpoint.
    """
    export: dict[str, Any] = storage.read_json(storage.join(output_uri, RESULT_NAME))
    return registry.register(
        name,
        version,
        export["classifier"],
        sha256=export["sha256"],
        metrics=metrics,
        artifacts={
            "sliced": export["sliced"],
            "checkpoint": export["checkpoint"],
            "pretrained": parent.artifact_uri,
        },
        preset=export["preset"],
        parent_run=f"{parent.name}/{parent.version}",
        description=f"fine-tuned from {parent.name} {parent.version} ({export['classes']} classes)",
    )
