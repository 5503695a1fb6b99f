"""The exit-handler step of seer-pretrain and seer-finetune (pipelines.training): runs after the DAG
whatever happened, records how the run ended and tidies up its training job (seer.launch.finish: a
succeeded job is never deleted)."""

from kfp.dsl import PipelineTaskFinalStatus

from components import seer_component


@seer_component
def record_failure_and_cleanup(
    status: PipelineTaskFinalStatus,
    run_id: str,
    status_uri: str = "",
    backend: str = "local",
    job_name: str = "",
    namespace: str = "seer",
    model_name: str = "",
    model_version: str = "",
):
    """Write the run's final state to `status_uri/<run_id>.json`; on a cluster, after a run that did not
    succeed, copy the training pods' logs to `status_uri/<run_id>/logs/` and delete the job if it is
    still pending or running (a Succeeded job is kept for its TTL, a Failed one keeps its pods for logs).

    Args:
        status: Final status of the DAG (filled in by KFP: COMPLETE/FAILED/CANCELED on open-source KFP,
            SUCCEEDED/FAILED/CANCELLED on Vertex AI).
        run_id: Pipeline run id; the training job is named by seer.launch.job_name(run_id, job_name).
        status_uri: Folder (local, s3:// or minio://) for `<run_id>.json` and the logs ('' skips both).
        backend: The training step's backend: local, pytorchjob or trainjob (local has no job).
        job_name: The job name if the training step (pretrain or finetune) was given one.
        namespace: Namespace of the job.
        model_name: Registered model name, recorded when the run succeeded.
        model_version: The version the run registers, recorded when the run succeeded.
    """
    from seer import storage
    from seer.launch import job_name as make_job_name
    from seer.launch.finish import run_outcome

    outcome = run_outcome(status.state)
    record = {
        "run_id": run_id,
        "pipeline_job": status.pipeline_job_resource_name,
        "state": status.state,
        "outcome": outcome,
        "error_code": status.error_code,
        "error_message": status.error_message,
        "failed_task": status.pipeline_task_name if outcome != "succeeded" else "",
        "job_deleted": False,
        "registered": f"{model_name}/{model_version}" if outcome == "succeeded" and model_version else "",
    }
    name = make_job_name(run_id, job_name)
    cleanup_error = None
    if backend != "local" and outcome != "succeeded":
        from seer.errors import SeerError
        from seer.launch import make_launcher
        from seer.launch.finish import clean_up_job
        from seer.launch.kube import JobHandle, load_api_client

        logs_uri = storage.join(status_uri, run_id, "logs") if status_uri else ""
        try:
            launcher = make_launcher(backend, load_api_client())
            record |= clean_up_job(launcher, JobHandle(name, namespace), logs_uri)
            print(f"{backend} {namespace}/{name}: {record['job_state']}, deleted={record['job_deleted']}")
        except SeerError as err:  # still record the run's end, then fail this step visibly
            cleanup_error = err
            record["cleanup_error"] = f"could not clean up {backend} {namespace}/{name}: {err}"
    if status_uri:
        storage.write_json(storage.join(status_uri, f"{run_id}.json"), record)
    print(f"run {run_id} ended {status.state} ({outcome}) {status.error_message or ''}".rstrip())
    if record["registered"]:
        print(f"registered {record['registered']}")
    if cleanup_error is not None:
        raise cleanup_error
