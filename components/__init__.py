"""KFP lightweight components: one thin, typed step per `seer` operation.

Every component runs in the component base image (`images/component`, which has `seer` and `kfp`
installed, hence `install_kfp_package=False`); the PyTorchJob the pretrain step launches runs the
trainer image (`images/trainer`). Both names are read from the environment when this package is
imported, i.e. at compile time:

- `SEER_COMPONENT_IMAGE` (default `registry.example.com/seer/component:0.1.0`)
- `SEER_TRAINER_IMAGE` (default `registry.example.com/seer/trainer:0.1.0`)

`make images IMAGE_REGISTRY=… IMAGE_TAG=…` builds the same names. Component bodies only import
`seer` (inside the function, as KFP requires) and wire artifact URIs into it.
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

IMAGE_REGISTRY = os.environ.get("IMAGE_REGISTRY", "registry.example.com/seer")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")
SEER_COMPONENT_IMAGE = os.environ.get("SEER_COMPONENT_IMAGE", f"{IMAGE_REGISTRY}/component:{IMAGE_TAG}")
SEER_TRAINER_IMAGE = os.environ.get("SEER_TRAINER_IMAGE", f"{IMAGE_REGISTRY}/trainer:{IMAGE_TAG}")

# Every step: the CPU base image, which already carries kfp (no pip install at run time).
seer_component = functools.partial(dsl.component, base_image=SEER_COMPONENT_IMAGE, install_kfp_package=False)

from components.checkpoint import consolidate_slice  # noqa: E402
from components.cleanup import record_failure_and_cleanup  # noqa: E402
from components.data import (  # noqa: E402
    eval_datasets,
    generate_corpus,
    list_images,
    merge_shards,
    shard_partition,
)
from components.evaluate import (  # noqa: E402
    copy_detection_eval,
    fairness_eval,
    geolocalization_eval,
    knn_eval,
    linear_eval,
    test384_eval,
)
from components.finetune import finetune  # noqa: E402
from components.registry import (  # noqa: E402
    compare_metrics,
    register_finetuned_model,
    register_model,
    resolve_model,
)
from components.train import pretrain  # noqa: E402

__all__ = [
    "SEER_COMPONENT_IMAGE",
    "SEER_TRAINER_IMAGE",
    "compare_metrics",
    "consolidate_slice",
    "copy_detection_eval",
    "eval_datasets",
    "fairness_eval",
    "finetune",
    "generate_corpus",
    "geolocalization_eval",
    "knn_eval",
    "linear_eval",
    "list_images",
    "merge_shards",
    "pretrain",
    "record_failure_and_cleanup",
    "register_finetuned_model",
    "register_model",
    "resolve_model",
    "seer_component",
    "shard_partition",
    "test384_eval",
]
