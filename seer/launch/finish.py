"""What the pipeline's exit handler does with the training job once the run has ended.

KFP reports the run's end in `PipelineTaskFinalStatus.state`, in one of two vocabularies: the
open-source backend copies the ML Metadata execution state (`COMPLETE`, `FAILED`, `CANCELED`,
`CACHED`, ...; backend/src/v2/driver/resolve.go), Vertex AI its own task states (`SUCCEEDED`,
`FAILED`, `CANCELLED`, ...). `run_outcome` reads both.

The job itself is judged by its own status: a Succeeded job is never deleted (its TTL collects it);
a Failed job keeps its pods for `kubectl logs` (they hold no GPUs any more) and their logs are also
copied next to the run's status record; a job still pending, queued or running after the run ended
(the run failed elsewhere, or was cancelled) has its logs copied and is deleted so it frees its nodes.
"""

from __future__ import annotations

from typing import Any, Literal

from seer import storage
from seer.launch.kube import JobHandle, KubeJobLauncher

Outcome = Literal["succeeded", "failed", "cancelled"]
SUCCEEDED_STATES = frozenset({"SUCCEEDED", "COMPLETE", "CACHED"})
CANCELLED_STATES = frozenset({"CANCELLED", "CANCELED", "CANCELLING", "CANCEL_PENDING"})


def run_outcome(state: str) -> Outcome:
    """`succeeded`, `cancelled` or `failed` from a KFP (MLMD) or Vertex final state; anything else
    (`FAILED`, `UNKNOWN`, an empty state) counts as failed."""
    state = (state or "").upper()
    if state in SUCCEEDED_STATES:
        return "succeeded"
    return "cancelled" if state in CANCELLED_STATES else "failed"


def clean_up_job(launcher: KubeJobLauncher, handle: JobHandle, logs_uri: str = "") -> dict[str, Any]:
    """Keep a Succeeded or Failed job, delete one that is still alive; copy the pods' logs of a job that
    did not succeed to `logs_uri/<pod>.log` first. Returns what was found and done."""
    found = launcher.status(handle)
    record: dict[str, Any] = {
        "job_state": found[0] if found else "NotFound",
        "job_deleted": False,
        "logs": [],
    }
    if found is None or found[0] == "Succeeded":
        return record
    if logs_uri:
        for pod, text in launcher.pod_logs(handle).items():
            uri = storage.join(logs_uri, f"{pod}.log")
            storage.write_bytes(uri, text.encode())
            record["logs"].append(uri)
    if found[0] != "Failed":
        record["job_deleted"] = launcher.cancel(handle)
    return record
