"""The exit-handler step of seer-pretrain: runs after the DAG whatever happened, records how the run
ended and deletes the training PyTorchJob if one is left (failed or cancelled runs)."""

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
):
    """Write the run's final state to `status_uri` and, on a cluster, delete its PyTorchJob unless the
    run succeeded (a finished job is garbage-collected by its TTL; a failed or cancelled one would
    otherwise hold its nodes).

    Args:
        status: Final status of the DAG (filled in by KFP).
        run_id: Pipeline run id; the training job is `seer-<run_id>` unless `job_name` is set.
        status_uri: Folder (local, s3:// or minio://) to write `<run_id>.json` into ('' skips it).
        backend: The pretrain backend: local or pytorchjob (only pytorchjob has a job to delete).
        job_name: The PyTorchJob name if the pretrain step was given one.
        namespace: Namespace of the PyTorchJob.
    """
    from seer import storage

    record = {
        "run_id": run_id,
        "pipeline_job": status.pipeline_job_resource_name,
        "state": status.state,
        "error_code": status.error_code,
        "error_message": status.error_message,
        "failed_task": status.pipeline_task_name if status.state != "SUCCEEDED" else "",
        "job_deleted": False,
    }
    name = job_name or f"seer-{run_id}"[:48].rstrip("-")
    cleanup_error = None
    if backend == "pytorchjob" and status.state != "SUCCEEDED":
        from seer.errors import SeerError
        from seer.launch.kube import JobHandle, PyTorchJobLauncher, load_api_client

        try:
            record["job_deleted"] = PyTorchJobLauncher(load_api_client()).cancel(JobHandle(name, namespace))
            print(f"{'deleted' if record['job_deleted'] else 'no'} PyTorchJob {namespace}/{name}")
        except SeerError as err:  # still record the run's end, then fail this step visibly
            cleanup_error = err
            record["cleanup_error"] = f"could not delete PyTorchJob {namespace}/{name}: {err}"
    if status_uri:
        storage.write_json(storage.join(status_uri, f"{run_id}.json"), record)
    print(f"run {run_id} ended {status.state} {status.error_message or ''}".rstrip())
    if cleanup_error is not None:
        raise cleanup_error
