"""Where `seer-evaluate` and `seer-finetune` take their model from: a registered version (or a
checkpoint URI given instead), resolved by `resolve_model`, then imported as a KFP Model artifact."""

from collections.abc import Mapping
from typing import Any

from kfp import dsl
from kfp.dsl import Model

from components import resolve_model
from components.placement import StepSettings, apply


def registered_model(
    registry: Any, name: Any, version: Any, checkpoint_uri: Any, settings: Mapping[str, StepSettings]
) -> tuple[Any, Any]:
    """(the resolve-model task, the importer task whose `output` is the model); never cached, since
    `latest` moves between runs."""
    resolved = resolve_model(registry=registry, name=name, version=version, checkpoint_uri=checkpoint_uri)
    apply(resolved, settings["resolve-model"]).set_caching_options(False)
    model = dsl.importer(artifact_uri=resolved.outputs["uri"], artifact_class=Model, reimport=True)
    return resolved, model
