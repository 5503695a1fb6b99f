"""seer-pretrain and seer-evaluate end to end through kfp.local (the `make demo` path) on a small
budget: generated corpus → list → 2 shard partitions → merge → 2-rank CPU SwAV on rg-tiny → slice →
evaluations → registry, then a re-evaluation of the registered model that compares and registers
again. KFP's artifacts are descriptors; the data lives under data_root (docs/artifacts.md)."""

import json
from pathlib import Path

import pytest

from pipelines.run.local_run import run_local_evaluate, run_local_pipeline
from seer import artifacts, storage
from seer.registry import StorageRegistry, artifact_sha256

SMALL = {
    "synth_images": 48,
    "shard_parallelism": 2,
    "overrides": [
        "train.iterations=4",
        "train.checkpoint_every=2",
        "optim.warmup_iters=1",
        "swav.freeze_prototypes_iters=1",
    ],
    "benchmark_sizes": {
        "counting": {"n_train": 32, "n_val": 16},
        "copy-detection": {"n_originals": 6, "n_distractors": 6, "n_train": 8},
    },
    "linear_epochs": 2,
    "eval_baselines": [],
    "model_name": "seer-test",
}


@pytest.mark.slow
def test_pretrain_pipeline_registers_a_model_with_real_metrics_then_reevaluates(tmp_path: Path) -> None:
    result = run_local_pipeline(tmp_path, SMALL)
    entry = result["entry"]
    assert result["status"]["state"] == "SUCCEEDED"
    assert entry["name"] == "seer-test" and entry["version"].startswith("run-")
    assert entry["preset"] == "rg-tiny"
    index = storage.read_json(storage.join(entry["artifact_uri"], "index.json"))
    assert index and entry["sha256"] == artifact_sha256(entry["artifact_uri"])
    metrics = entry["metrics"]
    for name in ("linear.top1", "linear.top5", "knn.top1", "copy-detection.mAP", "copy-detection.uAP"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["linear.top5"] >= metrics["linear.top1"]
    assert not any(k.startswith(("geolocalization.", "fairness.", "test384.")) for k in metrics), (
        "off by default"
    )
    for eval_name in ("linear", "knn", "copy-detection"):
        assert "<html" in Path(entry["artifacts"][f"{eval_name}.report"]).read_text().lower()
        doc = storage.read_json(entry["artifacts"][f"{eval_name}.metrics"])
        assert doc["checkpoint"]["uri"] == entry["artifact_uri"]
    # Artifacts by reference: every output KFP stored is small; the data sits under data_root.
    data_root = Path(result["data_root"])
    (run_dir,) = Path(result["pipeline_root"]).glob("seer-pretrain-*")
    for output in (p for task in run_dir.iterdir() for p in task.iterdir()):
        files = [output] if output.is_file() else [f for f in output.rglob("*") if f.is_file()]
        assert sum(f.stat().st_size for f in files) < 2**20, f"{output} is not a reference"
    assert Path(entry["artifact_uri"]).is_relative_to(data_root)
    shards = artifacts.read_descriptor(str(run_dir / "merge-shards" / "shards"), "shards")
    assert shards["count"] == 48 and Path(shards["uri"]).is_relative_to(data_root / "shards")
    parts = [
        artifacts.read_descriptor(str(run_dir / t / "part"), "partition")
        for t in ("shard-partition", "shard-partition-2")
    ]
    assert sorted(Path(p["uri"]).name for p in parts) == ["p00000-of-00002", "p00001-of-00002"]
    trained = artifacts.read_descriptor(str(run_dir / "pretrain" / "run"), "run")
    assert Path(trained["uri"]).is_relative_to(data_root / "runs") and trained["data"] == shards["uri"]
    classifier = artifacts.read_descriptor(str(run_dir / "linear-eval" / "classifier"), "classifier")
    assert classifier["bytes"] == Path(classifier["uri"]).stat().st_size and classifier["preset"] == "rg-tiny"
    heavy = [f for f in data_root.rglob("*") if f.is_file() and f.stat().st_size > 2**16]
    assert heavy and all(f.is_relative_to(data_root) for f in heavy)
    # What the KFP UI shows: scalar metrics and the confusion matrix of the linear probe.
    outputs = json.loads((run_dir / "linear-eval" / "executor_output.json").read_text())["artifacts"]
    assert outputs["metrics"]["artifacts"][0]["metadata"]["top1"] == metrics["linear.top1"]
    matrix = outputs["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == ["1", "2", "3", "4"]
    assert sum(map(sum, (r["row"] for r in matrix["rows"]))) == 16
    assert (run_dir / "linear-eval" / "report").read_text() == Path(
        entry["artifacts"]["linear.report"]
    ).read_text()

    # seer-evaluate: the registered model → k-NN → compare with the registered metrics → register again.
    registry = str(tmp_path / "registry")
    new = run_local_evaluate(
        tmp_path / "reeval",
        {
            "registry": registry,
            "model_name": "seer-test",
            "benchmark_sizes": SMALL["benchmark_sizes"],
            "run_linear": False,
            "run_copy_detection": False,
            "eval_workers": 0,
            "eval_device": "cpu",
            "eval_transform": "shorter:64:64",
        },
    )
    assert new["version"].startswith("eval-") and new["artifact_uri"] == entry["artifact_uri"]
    assert new["metrics"] == {k: v for k, v in metrics.items() if k.startswith("knn.")}, (
        "same model, same data"
    )
    assert [e.version for e in StorageRegistry(registry).list_versions("seer-test")] == [
        entry["version"],
        new["version"],
    ]
    (comparison,) = (tmp_path / "reeval" / "pipeline-root").glob("seer-evaluate-*/compare-metrics/comparison")
    assert "regressions beyond 0.01: none" in comparison.read_text()


@pytest.mark.slow
def test_a_failed_run_is_recorded_by_the_exit_step(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="list-images"):
        run_local_pipeline(tmp_path, {**SMALL, "synth_images": 0, "images_uri": str(tmp_path / "missing")})
    (record,) = (tmp_path / "runs").glob("*.json")
    status = json.loads(record.read_text())
    assert status["state"] == "FAILED" and "list-images" in status["error_message"]
    assert not (tmp_path / "registry").exists()
