"""Compiled seer-pretrain / seer-evaluate / seer-finetune: they load back with kfp, and the DAG, the exit handler,
the UI parameter descriptions and the per-step pod settings are what users rely on."""

import inspect
from pathlib import Path

import pytest
import yaml
from kfp import compiler
from kfp import components as kfp_components

from pipelines.compile import compile_all
from pipelines.finetune import build_finetune_pipeline
from pipelines.pretrain import build_pretrain_pipeline, seer_pretrain

EVALS = [
    "linear-eval",
    "knn-eval",
    "copy-detection-eval",
    "geolocalization-eval",
    "fairness-eval",
    "test384-eval",
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("compiled")
    settings = out / "steps.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "evaluation": {
                    "gpus": 1,
                    "node_selector": {"pool": "gpu"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                }
            }
        )
    )
    paths = compile_all(out, str(settings))
    assert sorted(paths) == ["seer-evaluate", "seer-finetune", "seer-pretrain"]
    loaded = {}
    for name, path in paths.items():
        assert kfp_components.load_component_from_file(str(path)).name == name
        spec, platform = yaml.safe_load_all(path.read_text())
        loaded[name] = (spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    return loaded


def _deps(dag: dict) -> dict[str, set[str]]:
    return {name: set(task.get("dependentTasks", [])) for name, task in dag["tasks"].items()}


def _exit_handler_dag(spec: dict) -> dict:
    """The DAG inside the pipeline's exit handler, after checking that the cleanup step runs after it
    whatever happened and is told how it ended, the run id and the training job's backend/name/namespace
    (the pipeline parameters), so it finds the job the training step made."""
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "record-failure-and-cleanup"}
    cleanup = root["record-failure-and-cleanup"]
    assert cleanup["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    params = cleanup["inputs"]["parameters"]
    assert params["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    for name in ("backend", "job_name", "namespace", "status_uri"):
        assert params[name]["componentInputParameter"] == name
    assert cleanup["cachingOptions"] == {}
    return spec["components"]["comp-exit-handler-1"]["dag"]


def test_pretrain_dag_runs_inside_an_exit_handler(compiled) -> None:
    spec, _ = compiled["seer-pretrain"]
    dag = _exit_handler_dag(spec)
    deps = _deps(dag)
    assert deps["list-images"] == {"generate-corpus"}
    assert (
        deps["for-loop-2"] == {"list-images"}
        and dag["tasks"]["for-loop-2"]["taskInfo"]["name"] == "shard-partitions"
    )
    assert deps["merge-shards"] == {"list-images", "for-loop-2"}
    assert deps["pretrain"] == {"merge-shards"}
    assert deps["consolidate-slice"] == {"pretrain"}
    for name in EVALS[:-1]:
        assert deps[name] == {"consolidate-slice", "eval-datasets"}, name
    assert deps["test384-eval"] == {"eval-datasets", "linear-eval"}
    assert deps["register-model"] == {"consolidate-slice", *EVALS}


def test_shards_fan_out_over_a_parallel_for_keyed_by_the_listing_digest(compiled) -> None:
    """list → ParallelFor over the list step's partition indices → merge. The list step is never cached
    (it must see changed images); the shard steps get its prefix and digest as parameters, which KFP's
    cache key holds by value (backend/src/v2/cacheutils/cache.go), and no artifact (whose key part is
    only its MLMD id)."""
    spec, platform = compiled["seer-pretrain"]
    dag = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert dag["list-images"]["cachingOptions"] == {}
    loop = dag["for-loop-2"]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("indices")
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["shard-partition"]
    assert inner["cachingOptions"] == {"enableCache": True}
    assert "artifacts" not in inner["inputs"]
    assert inner["inputs"]["parameters"]["digest"]["componentInputParameter"].endswith("digest")
    merge = dag["merge-shards"]["inputs"]["parameters"]
    assert merge["digest"]["taskOutputParameter"] == {
        "outputParameterKey": "digest",
        "producerTask": "list-images",
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["shard_parallelism"]["defaultValue"] == 1
    assert params["data_root"]["defaultValue"] == "minio://mlpipeline/shared/seer/data"
    scratch = platform["exec-consolidate-slice"]["genericEphemeralVolume"][0]
    assert scratch["mountPath"] == "/scratch" and scratch["size"] == "256Gi"


def test_pretrain_parameters_have_defaults_and_ui_descriptions(compiled) -> None:
    spec, _ = compiled["seer-pretrain"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(inspect.signature(seer_pretrain.pipeline_func).parameters)
    for name, param in params.items():
        assert param.get("isOptional") is True and "defaultValue" in param, f"{name} has no default"
        assert len(param.get("description", "")) > 10, f"{name} has no description in the KFP UI"
    assert params["recipe"]["defaultValue"] == "rg-tiny" and params["backend"]["defaultValue"] == "local"
    assert params["run_geolocalization"]["defaultValue"] is False
    assert "pytorchjob" in params["backend"]["description"]
    assert params["trainer_image"]["defaultValue"].endswith("/trainer:0.1.0")


def test_evaluate_dag_resolves_evaluates_compares_then_registers(compiled) -> None:
    spec, _ = compiled["seer-evaluate"]
    dag = spec["root"]["dag"]
    deps = _deps(dag)
    assert deps["importer"] == {"resolve-model"}
    for name in EVALS[:-1]:
        assert deps[name] == {"importer", "eval-datasets"}
    assert deps["compare-metrics"] == set(EVALS)
    assert deps["register-model"] == {"compare-metrics", "importer", "resolve-model", *EVALS}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["model_version"]["defaultValue"] == "latest"
    assert all(p.get("description") and "defaultValue" in p for p in params.values())
    for name in ["resolve-model", "compare-metrics", "register-model", *EVALS]:
        assert dag["tasks"][name]["cachingOptions"] == {}, f"{name} must re-run on every scheduled run"


def test_finetune_dag_resolves_finetunes_evaluates_the_classifier_then_registers(compiled) -> None:
    """registered model → fine-tune → the evaluations read the fine-tuned classifier (test384 directly,
    not the linear probe's) → register with the pretrained parent's name and resolved version."""
    spec, platform = compiled["seer-finetune"]
    dag = spec["components"]["comp-exit-handler-1"]["dag"]
    deps = _deps(dag)
    assert deps["importer"] == {"resolve-model"}
    assert deps["finetune"] == {"importer", "eval-datasets", "resolve-model"}
    for name in EVALS:
        assert deps[name] == {"finetune", "eval-datasets"}, name
        model = "classifier" if name == "test384-eval" else "model"
        assert dag["tasks"][name]["inputs"]["artifacts"][model]["taskOutputArtifact"] == {
            "outputArtifactKey": "classifier",
            "producerTask": "finetune",
        }
    assert deps["register-finetuned-model"] == {"finetune", "resolve-model", *EVALS}
    register = dag["tasks"]["register-finetuned-model"]["inputs"]["parameters"]
    assert register["parent_version"]["taskOutputParameter"] == {
        "outputParameterKey": "version",
        "producerTask": "resolve-model",
    }
    # inside the exit handler's DAG, pipeline parameters arrive as pipelinechannel--<name>
    assert register["parent_name"]["componentInputParameter"] == "pipelinechannel--model_name"
    assert (
        dag["tasks"]["finetune"]["inputs"]["parameters"]["preset"]["taskOutputParameter"]["producerTask"]
        == "resolve-model"
    )
    for name in ("resolve-model", "finetune", "register-finetuned-model"):
        assert dag["tasks"][name]["cachingOptions"] == {}, f"{name} must re-run on every run"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") and "defaultValue" in p for p in params.values())
    assert params["recipe"]["defaultValue"] == "in1k-384" and params["backend"]["defaultValue"] == "local"
    # the evaluations of a classifier: test384 on, the frozen-feature probes off, geo/fairness by its head
    assert params["run_test384"]["defaultValue"] is True and params["run_linear"]["defaultValue"] is False
    assert (
        params["geo_method"]["defaultValue"] == params["fairness_classifier"]["defaultValue"] == "finetuned"
    )
    pretrain = compiled["seer-pretrain"][0]["root"]["inputDefinitions"]["parameters"]
    assert pretrain["run_test384"]["defaultValue"] is False and pretrain["geo_method"]["defaultValue"] == "nn"
    assert platform["exec-finetune"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert platform["exec-test384-eval"]["nodeSelector"]["labels"] == {"pool": "gpu"}


def test_finetune_runs_inside_the_same_exit_handler(compiled) -> None:
    """A cancelled or failed seer-finetune deletes the PyTorchJob/TrainJob it left behind: the same
    record_failure_and_cleanup step as seer-pretrain (pipelines.training), recording the fine-tuned
    classifier's version (the one register-finetuned-model writes), with a deadline."""
    spec, platform = compiled["seer-finetune"]
    dag = _exit_handler_dag(spec)
    assert {"resolve-model", "finetune", "register-finetuned-model", *EVALS} <= set(dag["tasks"])
    cleanup = spec["root"]["dag"]["tasks"]["record-failure-and-cleanup"]["inputs"]["parameters"]
    assert cleanup["model_name"]["componentInputParameter"] == "finetuned_name"
    register = dag["tasks"]["register-finetuned-model"]["inputs"]["parameters"]
    assert cleanup["model_version"] == register["version"]
    assert platform["exec-record-failure-and-cleanup"]["activeDeadlineSeconds"] == "1800"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["status_uri"]["defaultValue"] == "minio://mlpipeline/shared/seer/runs"
    local = build_finetune_pipeline(exit_handler=False)
    assert "status_uri" in inspect.signature(local.pipeline_func).parameters


def test_step_settings_reach_the_pods(compiled) -> None:
    spec, platform = compiled["seer-pretrain"]
    resources = spec["deploymentSpec"]["executors"]["exec-linear-eval"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "1" or resources["accelerator"].get("count") == "1"
    linear = platform["exec-linear-eval"]
    assert linear["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert linear["tolerations"][0]["key"] == "nvidia.com/gpu"
    pretrain = platform["exec-pretrain"]
    assert pretrain["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert pretrain["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    for executor in platform.values():
        assert {"envVar": "AWS_SECRET_ACCESS_KEY", "secretKey": "secretkey"} in executor["secretAsEnv"][0][
            "keyToEnv"
        ]
    env = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]["env"]
    assert {"name": "SEER_S3_ENDPOINT", "value": "http://seaweedfs.kubeflow:8333"} in env
    assert "nodeSelector" not in platform["exec-pretrain"], "only the evaluations were moved to GPUs"


def test_pretrain_and_register_are_never_served_from_cache(compiled) -> None:
    spec, _ = compiled["seer-pretrain"]
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert tasks["pretrain"]["cachingOptions"] == {} and tasks["register-model"]["cachingOptions"] == {}
    assert tasks["generate-corpus"]["cachingOptions"] == {"enableCache": True}


def test_local_variant_has_no_exit_handler(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pretrain_pipeline(exit_handler=False, partitions=3), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert "exit-handler-1" not in tasks
    assert {"pretrain", "register-model"} <= set(tasks)
    # kfp.local cannot run a task after a ParallelFor: the same shard tasks, unrolled.
    unrolled = ["shard-partition", "shard-partition-2", "shard-partition-3"]
    assert [tasks[t]["inputs"]["parameters"]["partition"]["runtimeValue"]["constant"] for t in unrolled] == [
        0,
        1,
        2,
    ]
    assert set(tasks["merge-shards"]["dependentTasks"]) == {"list-images", *unrolled}


def test_bad_step_settings_name_what_is_allowed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluation: {gpu: 1}\n")
    with pytest.raises(ValueError, match="unknown step settings \\['gpu'\\]"):
        compile_all(tmp_path, str(bad))
    bad.write_text("trainer: {gpus: 1}\n")
    with pytest.raises(ValueError, match="unknown steps \\['trainer'\\]"):
        compile_all(tmp_path, str(bad))
