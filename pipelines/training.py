"""The training-job part shared by `seer-pretrain` and `seer-finetune`: its pipeline parameters
(declared once here, added to both signatures by `with_training_parameters`), the training step's
job arguments (`training_step_arguments`), and `training_exit_handler`, which runs the DAG inside a
`dsl.ExitHandler` whose step records how the run ended and deletes a left-over training job."""

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kfp import dsl

from components import SEER_TRAINER_IMAGE, record_failure_and_cleanup
from components.placement import StepSettings, apply
from pipelines import RUN_ID
from pipelines.parameter_blocks import ParameterBlock, with_parameter_block
from pipelines.storage_defaults import DEFAULT_STATUS_URI

TRAINING_PARAMETERS: ParameterBlock = {
    "backend": (str, "local", "Where training runs: local (torchrun inside the step's pod), pytorchjob (a "
                "Kubeflow PyTorchJob) or trainjob (a Kubeflow Trainer v2 TrainJob)."),
    "nproc_per_node": (int, 2, "Ranks of a local run."),
    "nodes": (int, 0, "Training job pods (0: the recipe's, rg10b: 62)."),
    "gpus_per_node": (int, -1, "GPUs per training pod (-1: the recipe's, 8 for the large recipes)."),
    "trainer_image": (str, SEER_TRAINER_IMAGE, "Trainer image (images/trainer) with a pinned tag."),
    "job_name": (str, "", "Training job name (default: seer-<run id>)."),
    "namespace": (str, "seer", "Namespace of the training job."),
    "storage_secret": (str, "seer-storage", "Secret with the object-storage credentials and SEER_S3_ENDPOINT "
                       "for the training pods."),
    "gang_scheduler": (str, "", "Gang scheduling of the training pods: '' (none), volcano or scheduler-plugins."),
    "kueue_queue": (str, "", "Kueue LocalQueue the training job waits in until admitted ('' for none)."),
    "node_selector": (dict, {}, 'Node selector of the training pods, e.g. {"nvidia.com/gpu.present": "true"}.'),
    "tolerations": (list, [], "Tolerations of the training pods (Kubernetes objects)."),
    "network": (str, "tcp", "NCCL fabric of the training pods: tcp, efa or ib."),
    "network_devices": (int, 0, "EFA adapters or RDMA devices per training pod."),
    "train_timeout_s": (float, 0.0, "Delete the training job after this many seconds (0: no limit)."),
    "pending_timeout_s": (float, 1800.0, "Delete the training job when no pod runs within this many seconds."),
    "status_uri": (str, DEFAULT_STATUS_URI, "Folder the exit handler writes each run's final state and failed "
                   "pods' logs to ('' skips it); under mlpipeline/shared/ or private-artifacts/<namespace>/ on "
                   "multi-user KFP."),
}  # fmt: skip

# pipeline parameter → training step parameter, where the names differ; status_uri is the exit handler's
_STEP_NAMES = {"train_timeout_s": "timeout_s", "status_uri": None}


def with_training_parameters(func: Callable) -> Callable:
    """Give a pipeline function the training-job parameters after its own; it receives them as one
    mapping, `training`."""
    return with_parameter_block(TRAINING_PARAMETERS, "training", func)


def training_step_arguments(training: Mapping[str, Any]) -> dict[str, Any]:
    """The job keyword arguments of the pretrain / finetune step from the pipeline's `training`."""
    return {
        _STEP_NAMES.get(name, name): value
        for name, value in training.items()
        if _STEP_NAMES.get(name, name) is not None
    }


@contextlib.contextmanager
def training_exit_handler(
    training: Mapping[str, Any],
    settings: StepSettings,
    *,
    name: str,
    model_name: Any,
    model_version: Any,
    enabled: bool = True,
) -> Iterator[None]:
    """The steps made inside run in a `dsl.ExitHandler` named `name`: `record_failure_and_cleanup`
    runs after them whatever happened. `enabled=False` (kfp.local has no ExitHandler) adds nothing."""
    if not enabled:
        yield
        return
    # KFP refuses pipeline outputs from inside an ExitHandler; the run's record names the version.
    cleanup = record_failure_and_cleanup(
        run_id=RUN_ID,
        status_uri=training["status_uri"],
        backend=training["backend"],
        job_name=training["job_name"],
        namespace=training["namespace"],
        model_name=model_name,
        model_version=model_version,
    )
    apply(cleanup, settings).set_caching_options(False)
    with dsl.ExitHandler(cleanup, name=name):
        yield
