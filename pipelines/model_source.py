"""Where `seer-evaluate` and `seer-finetune` take their model from: a registered version (or a
checkpoint URI given instead), resolved by `resolve_model`, then imported as a KFP Model artifact.
Their parameters are declared once here and added by `with_model_source_parameters`."""

from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl
from kfp.dsl import Model

from components import resolve_model
from components.placement import StepSettings, apply
from pipelines.parameter_blocks import ParameterBlock, with_parameter_block
from pipelines.storage_defaults import DEFAULT_REGISTRY

MODEL_SOURCE_PARAMETERS: ParameterBlock = {
    "registry": (str, DEFAULT_REGISTRY, "Model registry: a storage URI or a Kubeflow Model Registry http(s) "
                 "address; the run registers its result there too."),
    "model_name": (str, "seer", "Registered model to take (seer-evaluate registers the new metrics under it, "
                   "seer-finetune records it as the parent)."),
    "model_version": (str, "latest", "Its registered version, or latest."),
    "checkpoint_uri": (str, "", "Take this checkpoint (any format seer reads: sliced, consolidated, VISSL, "
                       "timm, ...) instead of a registered version."),
}  # fmt: skip


def with_model_source_parameters(func: Callable) -> Callable:
    """Give a pipeline function the model-source parameters after its own; it receives them as one
    mapping, `source`."""
    return with_parameter_block(MODEL_SOURCE_PARAMETERS, "source", func)


def registered_model(source: Mapping[str, Any], settings: Mapping[str, StepSettings]) -> tuple[Any, Any]:
    """(the resolve-model task, the importer task whose `output` is the model) of the pipeline's
    `source`; never cached, since `latest` moves between runs."""
    resolved = resolve_model(
        registry=source["registry"],
        name=source["model_name"],
        version=source["model_version"],
        checkpoint_uri=source["checkpoint_uri"],
    )
    apply(resolved, settings["resolve-model"]).set_caching_options(False)
    model = dsl.importer(artifact_uri=resolved.outputs["uri"], artifact_class=Model, reimport=True)
    return resolved, model
