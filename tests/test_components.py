"""KFP components: typed interfaces, images, UI descriptions, and the step bodies run directly
(`component.python_func`) on local folders and against the fake Kubernetes API (tests/fake_kube.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Markdown,
    Metrics,
    Model,
    PipelineTaskFinalStatus,
)

import components
from seer import artifacts, storage
from seer.registry import StorageRegistry
from tests.fake_kube import FakeKube, Pod, Step, running

ROOT = Path(__file__).resolve().parents[1]
ALL = [
    getattr(components, name)
    for name in components.__all__
    if hasattr(getattr(components, name), "component_spec")
]


def _types(spec_items) -> dict[str, str]:
    return {name: spec.type for name, spec in (spec_items or {}).items()}


def test_every_step_runs_in_the_component_image_without_installing_kfp() -> None:
    assert len(ALL) == 19
    for comp in ALL:
        container = comp.component_spec.implementation.container
        assert container.image == components.SEER_COMPONENT_IMAGE, comp.name
        assert "pip install" not in " ".join(container.command), (
            f"{comp.name} would pip-install kfp at run time"
        )


def test_images_are_overridable_at_compile_time() -> None:
    code = "import components as c; print(c.SEER_COMPONENT_IMAGE, c.SEER_TRAINER_IMAGE, c.linear_eval.component_spec.implementation.container.image)"
    env = {
        "SEER_COMPONENT_IMAGE": "reg.test/seer-comp:9",
        "IMAGE_REGISTRY": "reg.test/x",
        "IMAGE_TAG": "7",
        "PATH": "",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["reg.test/seer-comp:9", "reg.test/x/trainer:7", "reg.test/seer-comp:9"]


def test_typed_artifacts_for_the_kfp_ui() -> None:
    assert _types(components.linear_eval.component_spec.outputs) == {
        "metrics": "system.Metrics@0.0.1",
        "confusion": "system.ClassificationMetrics@0.0.1",
        "report": "system.HTML@0.0.1",
        "results": "system.Artifact@0.0.1",
        "classifier": "system.Model@0.0.1",
    }
    assert _types(components.pretrain.component_spec.outputs) == {
        "run": "system.Model@0.0.1",
        "metrics": "system.Metrics@0.0.1",
    }
    inputs = _types(components.consolidate_slice.component_spec.inputs)
    assert inputs["run"] == "system.Model@0.0.1"
    assert _types(components.merge_shards.component_spec.outputs) == {"shards": "system.Dataset@0.0.1"}
    # The shard steps take only parameters from the list step: their cache key is the listing digest.
    assert not any(
        t.startswith("system.") for t in _types(components.shard_partition.component_spec.inputs).values()
    )
    assert _types(components.compare_metrics.component_spec.outputs)["comparison"] == "system.Markdown@0.0.1"
    for comp in (components.copy_detection_eval, components.geolocalization_eval, components.fairness_eval):
        assert _types(comp.component_spec.outputs)["report"] == "system.HTML@0.0.1"


def test_every_parameter_is_described() -> None:
    for comp in ALL:
        spec = comp.component_spec
        for name, item in (spec.inputs or {}).items():
            assert item.description, f"{comp.name}.{name} has no description (docstring Args:)"


def _out(cls, path: Path, name: str = "out"):
    return cls(name=name, uri=str(path), metadata={})


def _shards(tmp_path: Path, prefix: str) -> Dataset:
    """A merge step's descriptor naming the shards prefix `prefix`."""
    shards = _out(Dataset, tmp_path / "shards-descriptor", "shards")
    artifacts.write_descriptor(shards.path, "shards", prefix)
    return shards


def test_eval_datasets_keeps_given_sets_and_generates_the_rest(tmp_path: Path) -> None:
    out = _out(Dataset, tmp_path / "datasets")
    sizes = {
        "counting": {"n_train": 8.0, "n_val": 4.0},  # KFP hands JSON numbers over as floats
        "copy-detection": {"n_originals": 3, "n_distractors": 2, "n_train": 3},
        "fairness": {"n_train": 6, "n_test": 4},
    }
    given = {"geo_train": "s3://b/geo/train.csv", "geo_val": "s3://b/geo/val.csv"}
    data_root = str(tmp_path / "data")
    components.eval_datasets.python_func(
        datasets=out, data_root=data_root, sources=given, benchmark_sizes=sizes, seed=1
    )
    sets = storage.read_json(str(tmp_path / "datasets" / "datasets.json"))
    assert sets["geo_train"] == given["geo_train"] and "geo_cells" not in sets
    assert sorted(sets) == sorted(
        [
            "linear_train",
            "linear_val",
            "copy_queries",
            "copy_database",
            "copy_whitening",
            "fairness_train",
            "fairness_test",
            "geo_train",
            "geo_val",
        ]
    )
    train = Path(sets["linear_train"]).read_text().splitlines()
    assert train[0] == "path,label" and len(train) == 9
    assert sets["linear_train"].startswith(data_root + "/eval-datasets/"), (
        "generated sets live under data_root"
    )
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["datasets.json"]
    assert not list((tmp_path / "data").rglob("geo"))
    assert out.metadata["linear_val"] == sets["linear_val"]
    with pytest.raises(Exception, match="unknown evaluation roles"):
        components.eval_datasets.python_func(
            datasets=_out(Dataset, tmp_path / "d2"), data_root=data_root, sources={"imagenet": "x"}
        )


def _metrics_doc(eval_name: str, metrics: dict, lower=()) -> dict:
    from seer.eval import report

    return report.metrics_document(
        eval_name,
        metrics,
        checkpoint={"uri": "m"},
        datasets={"val": {"sha256": "d"}},
        config={},
        lower_is_better=lower,
    )


def _results(tmp_path: Path, name: str, doc: dict | None) -> Artifact:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    if doc is None:
        (folder / "skipped.json").write_text("{}")
    else:
        storage.write_json(str(folder / "metrics.json"), doc)
        (folder / "report.html").write_text("<html></html>")
    return _out(Artifact, folder, name)


def _eval_inputs(tmp_path: Path, linear_top1: float) -> dict[str, Artifact]:
    return {
        "linear": _results(tmp_path, "linear", _metrics_doc("linear", {"top1": linear_top1, "top5": 0.9})),
        "knn": _results(tmp_path, "knn", _metrics_doc("knn", {"top1": 0.4})),
        "copy_detection": _results(tmp_path, "copy", None),
        "geolocalization": _results(tmp_path, "geo", None),
        "fairness": _results(tmp_path, "fair", None),
        "test384": _results(tmp_path, "t384", None),
    }


def test_register_records_metrics_and_reports_of_the_evaluations_that_ran(tmp_path: Path) -> None:
    model = tmp_path / "sliced"
    model.mkdir()
    (model / "index.json").write_text("{}")
    registry = str(tmp_path / "registry")
    entry = _out(Artifact, tmp_path / "entry.json")
    args = dict(model=_out(Model, model), entry=entry, registry=registry, name="seer-test", version="run-1")
    version = components.register_model.python_func(**args, **_eval_inputs(tmp_path / "a", 0.5))
    assert version == "run-1"
    stored = StorageRegistry(registry).get("seer-test", "run-1")
    assert stored.metrics == {"linear.top1": 0.5, "linear.top5": 0.9, "knn.top1": 0.4}
    assert set(stored.artifacts) == {"linear.metrics", "linear.report", "knn.metrics", "knn.report"}
    assert json.loads(Path(entry.path).read_text())["sha256"] == stored.sha256
    # Idempotent: registering the same artifact again returns the existing entry.
    assert components.register_model.python_func(**args, **_eval_inputs(tmp_path / "b", 0.1)) == "run-1"
    assert StorageRegistry(registry).get("seer-test", "run-1").metrics["linear.top1"] == 0.5
    nothing = {k: _results(tmp_path / "c", k, None) for k in _eval_inputs(tmp_path / "x", 0)}
    with pytest.raises(Exception, match="no evaluation ran"):
        components.register_model.python_func(**{**args, "version": "run-2"}, **nothing)


def test_compare_flags_regressions_against_the_last_registered_version(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    registry = str(tmp_path / "registry")
    components.register_model.python_func(
        model=_out(Model, model),
        entry=_out(Artifact, tmp_path / "e"),
        registry=registry,
        name="seer-x",
        version="v1",
        **_eval_inputs(tmp_path / "prev", 0.6),
    )
    md = _out(Markdown, tmp_path / "cmp.md")
    kwargs = dict(comparison=md, registry=registry, name="seer-x", threshold=0.01)
    assert components.compare_metrics.python_func(**kwargs, **_eval_inputs(tmp_path / "same", 0.6)) == 0
    worse = _eval_inputs(tmp_path / "worse", 0.4)
    assert components.compare_metrics.python_func(**kwargs, **worse) == 1
    text = Path(md.path).read_text()
    assert "REGRESSION" in text and "linear.top1" in text and "version v1" in text
    with pytest.raises(Exception, match=r"regressed: linear\.top1"):
        components.compare_metrics.python_func(**kwargs, fail_on_regression=True, **worse)
    # Nothing registered yet: no baseline, no regression.
    fresh = dict(kwargs, name="seer-new")
    assert components.compare_metrics.python_func(**fresh, **worse) == 0


def test_resolve_model_prefers_the_checkpoint_uri_then_the_registry(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"w")
    reg = StorageRegistry(str(tmp_path / "reg"))
    reg.register("seer-y", "v1", str(model), metrics={"a": 1.0}, preset="rg-tiny")
    resolve = components.resolve_model.python_func
    assert tuple(resolve(registry=str(tmp_path / "reg"), name="seer-y")) == (str(model), "rg-tiny", "v1")
    assert resolve(registry="", name="", checkpoint_uri="s3://b/c").uri == "s3://b/c"
    with pytest.raises(Exception, match="no version v9"):
        resolve(registry=str(tmp_path / "reg"), name="seer-y", version="v9")


def _status(state: str) -> PipelineTaskFinalStatus:
    return PipelineTaskFinalStatus(
        state=state,
        pipeline_job_resource_name="runs/r",
        pipeline_task_name="exit-handler-1",
        error_code=None if state == "SUCCEEDED" else 1,
        error_message="" if state == "SUCCEEDED" else "boom",
    )


def test_pretrain_on_a_cluster_submits_and_watches_the_pytorchjob(kube: FakeKube, tmp_path: Path) -> None:
    run_dir = tmp_path / "data" / "runs" / "abc123" / "pretrain"
    storage.write_json(
        str(run_dir / "summary.json"), {"iterations": 4, "loss": {"final": 7.5}}
    )  # the pods' output
    kube.script("seer-abc123", [running(n_workers=1), Step("Succeeded", "PyTorchJobSucceeded", "done")])
    run, metrics = _out(Model, tmp_path / "run", "run"), _out(Metrics, tmp_path / "metrics", "metrics")
    shards = _shards(tmp_path, "s3://bucket/data/shards/0123")
    components.pretrain.python_func(
        shards=shards,
        run=run,
        metrics=metrics,
        run_id="abc123",
        data_root=str(tmp_path / "data"),
        recipe="rg-small",
        backend="pytorchjob",
        trainer_image="reg.test/seer-trainer:1",
        nodes=2,
        gpus_per_node=8,
        gang_scheduler="volcano",
        poll_interval_s=0.01,
    )
    assert kube.created == ["seer-abc123"]
    job = kube.jobs[("seer", "seer-abc123")]
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert container["image"] == "reg.test/seer-trainer:1"
    cmd = container["command"]
    # The job gets URIs only: the shards prefix the descriptor names, and the run's data folder.
    assert cmd[cmd.index("--data") + 1] == "s3://bucket/data/shards/0123"
    assert cmd[cmd.index("--output") + 1] == str(run_dir)
    described = artifacts.read_descriptor(run.path, "run")
    assert described["uri"] == str(run_dir) and described["prefix"] == str(
        tmp_path / "data" / "runs" / "abc123"
    )
    assert job["metadata"]["labels"]["pipelines.kubeflow.org/run-id"] == "abc123"
    assert metrics.metadata["iterations"] == 4 and metrics.metadata["loss.final"] == 7.5
    assert run.metadata["job"] == "seer/seer-abc123" and run.metadata["backend"] == "pytorchjob"


def _pretrain(tmp_path: Path, run_id: str = "x", **parameters) -> None:
    """The pretrain step with throwaway shards, run and metrics artifacts under `tmp_path`."""
    components.pretrain.python_func(
        shards=_shards(tmp_path, str(tmp_path / "s")),
        run=_out(Model, tmp_path / "r"),
        metrics=_out(Metrics, tmp_path / "m"),
        run_id=run_id,
        data_root=str(tmp_path / "data"),
        **parameters,
    )


def test_pretrain_fails_the_step_with_the_operators_reason(kube: FakeKube, tmp_path: Path) -> None:
    kube.script("seer-bad", [Step("Failed", "PyTorchJobFailed", "master exited 1")])
    with pytest.raises(Exception, match="master exited 1"):
        _pretrain(
            tmp_path,
            job_name="seer-bad",
            recipe="rg-small",
            backend="pytorchjob",
            trainer_image="reg.test/t:1",
            poll_interval_s=0.01,
        )
    with pytest.raises(Exception, match="backend 'ray' is unknown"):
        _pretrain(
            tmp_path,
            backend="ray",
        )


def _submitted(kube: FakeKube, backend: str, name: str, state: str) -> None:
    """A job of `backend` named `name`, its pods in `state` and with a log line."""
    from seer.launch import make_launcher, render_job

    job = render_job(backend, name, "rg-small", image="reg.test/t:1", output_uri="s3://b/r")
    phase = {"Succeeded": "Succeeded", "Failed": "Failed"}.get(state, "Running")
    kube.script(name, [Step(state, pods=[Pod("master", phase=phase)], logs=[f"{name} says bye"])])
    make_launcher(backend, kube.api_client()).submit(job)


# PipelineTaskFinalStatus.state as the two KFP backends fill it: open-source KFP copies the ML Metadata
# execution state (backend/src/v2/driver/resolve.go: producer.GetExecution().GetLastKnownState()
# .String(), i.e. COMPLETE/FAILED/CANCELED/CACHED, error code and message left empty); Vertex AI uses
# its task states (SUCCEEDED/FAILED/CANCELLED).
VOCABULARIES = {
    "kfp": {"succeeded": "COMPLETE", "failed": "FAILED", "cancelled": "CANCELED"},
    "vertex": {"succeeded": "SUCCEEDED", "failed": "FAILED", "cancelled": "CANCELLED"},
}


def _final(state: str, vocabulary: str) -> PipelineTaskFinalStatus:
    if vocabulary == "kfp":  # the KFP driver sets an empty error (TODO upstream)
        return PipelineTaskFinalStatus(
            state=state,
            pipeline_job_resource_name="runs/r",
            pipeline_task_name="exit-handler-1",
            error_code=None,
            error_message="",
        )
    return _status(state)


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_exit_handler_never_deletes_the_job_of_a_successful_run(
    kube: FakeKube, tmp_path: Path, vocabulary: str, backend: str
) -> None:
    """On open-source KFP a successful run ends COMPLETE; compared with SUCCEEDED only, the step
    deleted the job and recorded a failure after every successful run."""
    _submitted(kube, backend, "seer-ok", "Succeeded")
    state = VOCABULARIES[vocabulary]["succeeded"]
    components.record_failure_and_cleanup.python_func(
        status=_final(state, vocabulary),
        run_id="ok",
        status_uri=str(tmp_path / "runs"),
        backend=backend,
        model_name="seer",
        model_version="run-ok",
    )
    assert kube.deleted == []
    record = storage.read_json(str(tmp_path / "runs" / "ok.json"))
    assert record["outcome"] == "succeeded" and record["failed_task"] == "" and record["job_deleted"] is False
    assert record["registered"] == "seer/run-ok"


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_exit_handler_keeps_a_failed_job_for_its_logs_and_copies_them(
    kube: FakeKube, tmp_path: Path, vocabulary: str, backend: str
) -> None:
    """A Failed job's pods hold no GPUs (the operator's cleanPodPolicy Running / JobSet stop them) and
    keep their logs for `kubectl logs`; error_code/error_message are empty on open-source KFP, so the
    pods' own logs are what explains the failure: they are copied next to the run record."""
    _submitted(kube, backend, "seer-bad", "Failed")
    components.record_failure_and_cleanup.python_func(
        status=_final(VOCABULARIES[vocabulary]["failed"], vocabulary),
        run_id="bad",
        status_uri=str(tmp_path / "runs"),
        backend=backend,
    )
    assert kube.deleted == [], "a failed job's pods hold no GPUs; keep them for kubectl logs"
    record = storage.read_json(str(tmp_path / "runs" / "bad.json"))
    assert record["outcome"] == "failed" and record["job_state"] == "Failed" and record["failed_task"]
    (log,) = record["logs"]
    assert log.startswith(str(tmp_path / "runs" / "bad" / "logs"))
    assert "seer-bad says bye" in storage.read_bytes(log).decode()


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_exit_handler_deletes_a_job_still_running_after_a_cancelled_run(
    kube: FakeKube, tmp_path: Path, vocabulary: str, backend: str
) -> None:
    """A job still running after the run was cancelled (or failed in another step) would hold its nodes."""
    _submitted(kube, backend, "seer-gone", "Running")
    components.record_failure_and_cleanup.python_func(
        status=_final(VOCABULARIES[vocabulary]["cancelled"], vocabulary),
        run_id="gone",
        status_uri=str(tmp_path / "runs"),
        backend=backend,
    )
    assert kube.deleted == ["seer-gone"]
    record = storage.read_json(str(tmp_path / "runs" / "gone.json"))
    assert record["outcome"] == "cancelled" and record["job_deleted"] is True and len(record["logs"]) == 1


def test_exit_handler_of_a_local_run_only_records(tmp_path: Path) -> None:
    components.record_failure_and_cleanup.python_func(
        status=_status("CANCELLED"), run_id="run9", status_uri=str(tmp_path / "runs"), backend="local"
    )
    assert storage.read_json(str(tmp_path / "runs" / "run9.json"))["state"] == "CANCELLED"


def test_pretrain_and_cleanup_name_the_job_alike(kube: FakeKube, tmp_path: Path) -> None:
    """One naming function (seer.launch.job_name) for both steps: a run id with characters Kubernetes
    refuses still names the job the exit handler then finds and deletes."""
    from seer.launch import job_name

    run_id = "Run_7.ABC"
    kube.script(job_name(run_id), [running(n_workers=0)])
    with pytest.raises(Exception, match="still Running"):
        _pretrain(
            tmp_path,
            run_id=run_id,
            recipe="rg-small",
            backend="trainjob",
            trainer_image="reg.test/t:1",
            timeout_s=0.001,
            poll_interval_s=0.01,
        )
    assert kube.created == [job_name(run_id)] and kube.deleted == [job_name(run_id)]  # gave up: deleted
    _submitted(kube, "trainjob", job_name(run_id), "Running")
    components.record_failure_and_cleanup.python_func(
        status=_final("FAILED", "kfp"), run_id=run_id, backend="trainjob"
    )
    assert kube.deleted == [job_name(run_id)] * 2


def test_skipped_evaluation_leaves_a_marker_and_a_report(tmp_path: Path) -> None:
    results, report = _out(Artifact, tmp_path / "results"), _out(HTML, tmp_path / "report.html")
    components.knn_eval.python_func(
        model=_out(Model, tmp_path / "m"),
        datasets=_out(Dataset, tmp_path / "d"),
        metrics=_out(Metrics, tmp_path / "x"),
        confusion=_out(ClassificationMetrics, tmp_path / "c"),
        report=report,
        results=results,
        enabled=False,
    )
    assert json.loads((tmp_path / "results" / "skipped.json").read_text())["skipped"] is True
    assert "not run" in Path(report.path).read_text()


def test_exit_handler_records_the_run_even_when_the_job_cannot_be_deleted(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Exception, match="no Kubernetes credentials"):
        components.record_failure_and_cleanup.python_func(
            status=_status("FAILED"), run_id="r1", status_uri=str(tmp_path / "runs"), backend="pytorchjob"
        )
    record = storage.read_json(str(tmp_path / "runs" / "r1.json"))
    assert (
        record["state"] == "FAILED"
        and "could not clean up pytorchjob seer/seer-r1" in record["cleanup_error"]
    )


def _list_shard_merge(tmp_path: Path, images: Dataset, data_root: str, name: str) -> dict:
    """The sharding fan-out as the pipeline wires it (2 partitions); returns the shards descriptor."""
    listing = _out(Dataset, tmp_path / f"{name}-listing")
    listed = components.list_images.python_func(
        images=images, listing=listing, data_root=data_root, run_id=name, partitions=2
    )
    for index in listed.indices:
        components.shard_partition.python_func(
            part=_out(Dataset, tmp_path / f"{name}-part{index}"),
            prefix=listed.prefix,
            digest=listed.digest,
            partition=index,
            partitions=2,
            workers=1,
        )
    shards = _out(Dataset, tmp_path / f"{name}-shards")
    components.merge_shards.python_func(
        shards=shards, prefix=listed.prefix, digest=listed.digest, partitions=2
    )
    assert shards.metadata["count"] == artifacts.read_descriptor(shards.path, "shards")["count"]
    return artifacts.read_descriptor(shards.path, "shards")


def test_generate_then_shard_or_shard_the_given_images(tmp_path: Path) -> None:
    data_root = str(tmp_path / "data")
    images = _out(Dataset, tmp_path / "images")
    components.generate_corpus.python_func(images=images, data_root=data_root, count=5, max_size=64)
    corpus = artifacts.read_descriptor(images.path, "images")
    assert corpus["uri"].startswith(data_root) and corpus["count"] == 5
    assert len([p for p in Path(corpus["uri"]).rglob("*.*") if p.name != "corpus.json"]) == 5
    shards = _list_shard_merge(tmp_path, images, data_root, "a")
    assert storage.read_json(shards["manifest"])["totals"]["samples"] == 5 and shards["count"] == 5
    assert shards["uri"].startswith(data_root + "/shards/")
    # With real images given, nothing is generated and those are sharded.
    given = _out(Dataset, tmp_path / "given")
    source = str(Path(corpus["uri"]) / "class_0")
    components.generate_corpus.python_func(images=given, data_root=data_root, count=5, source_uri=source)
    assert artifacts.read_descriptor(given.path, "images")["uri"] == source
    assert 0 < _list_shard_merge(tmp_path, given, data_root, "b")["count"] < 5


def test_cancelling_the_pretrain_step_deletes_its_pytorchjob(kube: FakeKube, tmp_path: Path) -> None:
    """KFP cancels a step with SIGTERM; the launcher must not leave 62 nodes running."""
    import os
    import signal
    import time

    kube.script("seer-cancel", [running(n_workers=1)])
    code = f"""
import components
from kfp.dsl import Dataset, Metrics, Model
components.pretrain.python_func(
    shards=Dataset(name="s", uri={_shards(tmp_path, "s3://b/s").uri!r}, metadata={{}}),
    run=Model(name="r", uri={str(tmp_path / "r")!r}, metadata={{}}),
    metrics=Metrics(name="m", uri={str(tmp_path / "m")!r}, metadata={{}}),
    run_id="x", data_root={str(tmp_path / "data")!r}, job_name="seer-cancel", recipe="rg-small", backend="pytorchjob",
    trainer_image="reg.test/t:1", poll_interval_s=0.05,
)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while "seer-cancel" not in kube.created and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let it watch a few polls
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert kube.deleted == ["seer-cancel"], out
    assert "deleted job seer/seer-cancel" in out


@pytest.mark.slow
def test_compiled_pretrain_retries_its_idempotent_steps_and_bounds_the_exit_handler(tmp_path: Path) -> None:
    """A retried pretrain step re-attaches to the job it started (seer.launch.kube submit: same name and
    spec hash), so it gets a retry policy; the exit handler gets a deadline (kfp-kubernetes
    activeDeadlineSeconds) and the run's record names the version register-model writes."""
    from kfp.compiler import Compiler

    from pipelines.pretrain import build_pretrain_pipeline
    from pipelines.run.kfp_api import dag_tasks

    package = tmp_path / "p.yaml"
    Compiler().compile(build_pretrain_pipeline(), str(package))
    docs = list(yaml.safe_load_all(package.read_text()))
    tasks = dict(dag_tasks(docs[0]))
    assert tasks["comp-exit-handler-1/pretrain"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["comp-exit-handler-1/consolidate-slice"]["retryPolicy"]["maxRetryCount"] == 1
    cleanup = tasks["root/record-failure-and-cleanup"]
    version = tasks["comp-exit-handler-1/register-model"]["inputs"]["parameters"]["version"]
    assert cleanup["inputs"]["parameters"]["model_version"] == version
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-record-failure-and-cleanup"]["activeDeadlineSeconds"] == "1800"


def _finetune_output(run_dir: Path, pretrained: str) -> None:
    """What the pods of a `seer finetune` leave under its output (seer.finetune.run.export_classifier)."""
    (run_dir / "classifier.pt").parent.mkdir(parents=True)
    (run_dir / "classifier.pt").write_bytes(b"clf")
    storage.write_json(str(run_dir / "summary.json"), {"iterations": 30, "loss": {"final": 0.4}})
    storage.write_json(
        str(run_dir / "finetune.json"),
        {
            "classifier": str(run_dir / "classifier.pt"),
            "sha256": "ab" * 32,
            "sliced": str(run_dir / "sliced" / "index.json"),
            "checkpoint": str(run_dir / "checkpoints" / "iter-00000030"),
            "iteration": 30,
            "preset": "rg-small",
            "classes": 3,
            "pretrained": pretrained,
        },
    )


def test_finetune_on_a_cluster_runs_seer_finetune_as_a_pytorchjob_then_registers_with_lineage(
    kube: FakeKube, tmp_path: Path
) -> None:
    """The finetune step renders the same PyTorchJob as pretraining with `seer finetune` as its entry,
    trains on the datasets.json set of the recipe's task, and the register step records the classifier
    with the evaluations and its registered parent (seer.finetune.register)."""
    pretrained = tmp_path / "data" / "runs" / "p1" / "consolidate-slice" / "sliced"
    ckpt = _out(Model, tmp_path / "ckpt-descriptor", "model")
    artifacts.write_descriptor(ckpt.path, "sliced", str(pretrained), preset="rg-small")
    datasets = _out(Dataset, tmp_path / "datasets", "datasets")
    storage.write_json(
        str(tmp_path / "datasets" / "datasets.json"),
        {
            "linear_train": "s3://b/count/train.csv",
            "linear_val": "s3://b/count/val.csv",
            "geo_train": "s3://b/g",
        },
    )
    run_dir = tmp_path / "data" / "runs" / "ft9" / "finetune"
    _finetune_output(run_dir, str(pretrained))
    kube.script("seer-ft9", [running(n_workers=1), Step("Succeeded", "PyTorchJobSucceeded", "done")])
    classifier, metrics = (
        _out(Model, tmp_path / "clf", "classifier"),
        _out(Metrics, tmp_path / "m", "metrics"),
    )
    components.finetune.python_func(
        model=ckpt,
        datasets=datasets,
        classifier=classifier,
        metrics=metrics,
        run_id="ft9",
        data_root=str(tmp_path / "data"),
        recipe="in1k-384",
        preset="rg-small",
        overrides=["optim.epochs=2", "optim.milestones=[1]"],
        backend="pytorchjob",
        trainer_image="reg.test/seer-trainer:1",
        nodes=2,
        poll_interval_s=0.01,
    )
    job = kube.jobs[("seer", "seer-ft9")]
    cmd = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    at = cmd.index("seer") + 1
    assert cmd[at : at + 3] == ["finetune", "--recipe", "in1k-384"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert f"model.checkpoint={pretrained}" in sets and "model.preset=rg-small" in sets
    assert sets[-2:] == ["optim.epochs=2", "optim.milestones=[1]"] and any(
        s.startswith("train.max_faults=") for s in sets
    )
    assert cmd[cmd.index("--data") + 1] == "s3://b/count/train.csv"  # linear_train: a classification recipe
    assert cmd[cmd.index("--output") + 1] == str(run_dir)
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] == "ExitCode"
    described = artifacts.read_descriptor(classifier.path, "classifier")
    assert described["uri"] == str(run_dir / "classifier.pt") and described["run"] == str(run_dir)
    assert classifier.metadata["job"] == "seer/seer-ft9" and metrics.metadata["loss.final"] == 0.4

    registry = str(tmp_path / "registry")
    parent = StorageRegistry(registry).register(
        "seer-small", "v3", str(pretrained / "index.json"), sha256="cd" * 32
    )
    entry = _out(Artifact, tmp_path / "entry.json")
    version = components.register_finetuned_model.python_func(
        classifier=classifier,
        entry=entry,
        registry=registry,
        name="seer-small-in1k",
        version="ft-ft9",
        parent_name="seer-small",
        parent_version="v3",
        **_eval_inputs(tmp_path / "evals", 0.8),
    )
    stored = StorageRegistry(registry).get("seer-small-in1k", version)
    assert stored.parent_run == "seer-small/v3" and stored.artifacts["pretrained"] == parent.artifact_uri
    assert stored.metrics["linear.top1"] == 0.8 and stored.sha256 == "ab" * 32
    assert stored.artifact_uri.endswith("classifier.pt") and "linear.report" in stored.artifacts
