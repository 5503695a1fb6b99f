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
    parent: ModelEntry | None,
    metrics: Mapping[str, float] | None = None,
    artifacts: Mapping[str, str] | None = None,
) -> ModelEntry:
    """`name`/`version` = the classifier of the fine-tune at `output_uri` (its `finetune.json`).

    Lineage: `parent_run` is `<parent name>/<parent version>` and the artifacts include the parent's
    artifact as `pretrained`, next to the sliced form and the training checkpoint. Without a registered
    parent (a fine-tune of a bare checkpoint URI) `pretrained` is the checkpoint it started from.
    `artifacts` adds more (e.g. the evaluations' metrics and reports).
    """
    export: dict[str, Any] = storage.read_json(storage.join(output_uri, RESULT_NAME))
    origin = f"{parent.name} {parent.version}" if parent else export["pretrained"]
    return registry.register(
        name,
        version,
        export["classifier"],
        sha256=export["sha256"],
        metrics=metrics,
        artifacts={
            **(artifacts or {}),
            "sliced": export["sliced"],
            "checkpoint": export["checkpoint"],
            "pretrained": parent.artifact_uri if parent else export["pretrained"],
        },
        preset=export["preset"],
        parent_run=f"{parent.name}/{parent.version}" if parent else "",
        description=f"fine-tuned from {origin} ({export['classes']} classes)",
    )


def register_finetune_run(
    registry_uri: str,
    classifier: str,
    name: str,
    version: str,
    results: Mapping[str, str],
    parent_name: str = "",
    parent_version: str = "",
) -> ModelEntry:
    """The pipeline's register step: the fine-tune behind the `classifier` descriptor (the finetune
    step's), with the metrics and reports of the evaluation result folders `results` (evaluation name →
    folder), under the registered parent `parent_name`/`parent_version` when there is one."""
    from seer.artifacts import read_descriptor
    from seer.registry import collect_results, open_registry

    described = read_descriptor(classifier, "classifier")
    registry = open_registry(registry_uri)
    parent = registry.get(parent_name, parent_version) if parent_name and parent_version else None
    metrics, reports = collect_results(results)
    return register_finetuned(registry, described["run"], name, version, parent, metrics, reports)
