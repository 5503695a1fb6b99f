"""The Makefile's Kubeflow targets as users run them: `make compile`, `make pretrain-10b` (DRY_RUN,
MODE=job, fail-fast without a cluster, submission through a stand-in kfp.Client) and
`make schedule-reeval`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_manifests import check_pytorchjob

from pipelines.run import schedule, submit

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_VARS = (
    "KFP_HOST",
    "IMAGES_URI",
    "DATA_URI",
    "OUTPUT_URI",
    "MODE",
    "DRY_RUN",
    "CRON",
    "STEP_SETTINGS",
    "DATA_ROOT",
    "SHARD_PARALLELISM",
)
# Set by an outer `make test` (CI): a nested make would print "make[1]: ***" instead of a user's "make: ***".
MAKE_VARS = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS + MAKE_VARS}
    # The venv exists already: make's install step is then a no-op stamp check.
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_kubeflow_targets() -> None:
    out = make("help").stdout
    for target in ("demo", "compile", "pretrain-10b", "schedule-reeval"):
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == target)
        assert len(line.split(None, 1)[1]) > 20, line


@pytest.mark.slow
def test_make_compile_writes_both_packages() -> None:
    result = make("compile", IMAGE_REGISTRY="reg.test/seer", IMAGE_TAG="3.1")
    assert result.returncode == 0, result.stderr
    for name in ("seer-pretrain", "seer-evaluate"):
        spec = next(yaml.safe_load_all((ROOT / "build" / "pipelines" / f"{name}.yaml").read_text()))
        assert spec["pipelineInfo"]["name"] == name
        images = {
            e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e
        }
        assert images == {"reg.test/seer/component:3.1"}


@pytest.mark.slow
def test_pretrain_10b_dry_run_prints_the_plan_and_a_valid_62x8_job() -> None:
    result = make("pretrain-10b", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "rg10b on 62 nodes × 8 GPUs = 496 GPUs" in out
        and "FITS" in out
        and "DRY_RUN: nothing was submitted" in out
    )
    job = yaml.safe_load((ROOT / "build" / "pretrain-10b" / "pytorchjob.yaml").read_text())
    check_pytorchjob(job)  # the same checks every manifest passes
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8" and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 61
    assert spec["runPolicy"]["schedulingPolicy"]["minAvailable"] == 62
    assert yaml.safe_dump(job, sort_keys=False) in out
    arguments = json.loads((ROOT / "build" / "pretrain-10b" / "arguments.json").read_text())
    assert (
        arguments["backend"] == "pytorchjob" and arguments["recipe"] == "rg10b" and arguments["nodes"] == 62
    )
    assert arguments["job_name"] == job["metadata"]["name"]
    # issue 13: the 1B corpus is sharded by 100 pods (docs/sharding.md plan), its data under the shared prefix
    assert arguments["shard_parallelism"] == 100
    assert arguments["data_root"] == "minio://mlpipeline/shared/seer/data"
    package = next(yaml.safe_load_all((ROOT / "build" / "pretrain-10b" / "seer-pretrain.yaml").read_text()))
    # seer_spec §7: the 10B evaluations run sharded over the 8 GPUs of one pod (seer.eval.steps starts a
    # torchrun with one rank per GPU); KFP's PipelineSpec records the count as accelerator.count.
    for name, executor in package["deploymentSpec"]["executors"].items():
        if name.endswith("-eval"):
            accelerator = executor["container"]["resources"]["accelerator"]
            assert int(accelerator.get("resourceCount", accelerator.get("count", 0))) == 8, name


def test_pretrain_10b_without_a_cluster_says_what_to_set() -> None:
    result = make("pretrain-10b")
    assert result.returncode != 0
    assert (
        "set KFP_HOST=" in result.stderr and "IMAGES_URI=" in result.stderr and "DRY_RUN=1" in result.stderr
    )
    result = make("pretrain-10b", MODE="job", OUTPUT_URI="/local/folder")
    assert result.returncode != 0
    assert "DATA_URI=" in result.stderr and "OUTPUT_URI=s3://" in result.stderr


def test_schedule_reeval_without_a_cluster_says_what_to_set() -> None:
    result = make("schedule-reeval")
    assert result.returncode != 0 and "set KFP_HOST=" in result.stderr
    result = make("schedule-reeval", KFP_HOST="http://kfp.test", CRON="0 3 * * *")
    assert result.returncode != 0 and "needs 6, seconds first" in result.stderr


class FakeClient:
    """Stands in for kfp.Client (no KFP server here); records the calls."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))

    def create_experiment(self, name: str, namespace: str | None = None):
        self.calls.append(("create_experiment", {"name": name, "namespace": namespace}))
        return type("Experiment", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kwargs):
        self.calls.append(("create_recurring_run", kwargs))
        return type("RecurringRun", (), {"recurring_run_id": "rr-1"})()

    def create_run_from_pipeline_package(self, pipeline_file: str, **kwargs):
        self.calls.append(("create_run", {"pipeline_file": pipeline_file, **kwargs}))
        return type("Run", (), {"run_id": "run-1"})()


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    import kfp

    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(schedule, "BUILD", tmp_path / "schedule")
    monkeypatch.setattr(submit, "BUILD", tmp_path / "submit")
    return FakeClient


@pytest.mark.slow
def test_schedule_creates_a_cron_run_without_caching_or_catchup(fake_kfp, capsys) -> None:
    rc = schedule.main(
        ["--kfp-host", "http://kfp.test", "--cron", "0 30 2 * * 1", "--model-name", "seer-rg10b"]
    )
    assert rc == 0
    init, experiment, recurring = fake_kfp.calls
    assert init[1]["host"] == "http://kfp.test" and experiment[1]["name"] == "seer"
    req = recurring[1]
    assert req["experiment_id"] == "exp-1" and req["cron_expression"] == "0 30 2 * * 1"
    assert req["enable_caching"] is False and req["no_catchup"] is True and req["max_concurrency"] == 1
    assert req["params"]["model_name"] == "seer-rg10b"
    spec = next(yaml.safe_load_all(Path(req["pipeline_package_path"]).read_text()))
    assert spec["pipelineInfo"]["name"] == "seer-evaluate"
    assert "rr-1" in capsys.readouterr().out


@pytest.mark.slow
def test_submit_starts_the_62x8_run_on_kfp(fake_kfp, monkeypatch) -> None:
    monkeypatch.setenv("KFP_HOST", "http://kfp.test")
    monkeypatch.setenv("IMAGES_URI", "s3://corpus/images")
    assert submit.main([]) == 0
    ((_, run),) = [c for c in fake_kfp.calls if c[0] == "create_run"]
    assert run["enable_caching"] is False and run["experiment_name"] == "seer"
    args = run["arguments"]
    assert args["images_uri"] == "s3://corpus/images" and args["backend"] == "pytorchjob"
    assert args["gpus_per_node"] == 8 and args["gang_scheduler"] == "volcano"
    assert Path(run["pipeline_file"]).exists()


def test_submit_module_runs_as_a_script() -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run.submit", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "KFP_HOST" in result.stdout and "DRY_RUN" in result.stdout


@pytest.mark.slow
def test_job_mode_dry_run_renders_the_job_on_the_given_shards(fake_kfp, tmp_path, capsys) -> None:
    argv = [
        "--mode",
        "job",
        "--dry-run",
        "--data-uri",
        "s3://seer/shards",
        "--output-uri",
        "s3://seer/runs/r1",
    ]
    assert submit.main(argv) == 0
    job = yaml.safe_load((tmp_path / "submit" / "pytorchjob.yaml").read_text())
    check_pytorchjob(job)
    cmd = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert (
        cmd[cmd.index("--data") + 1] == "s3://seer/shards"
        and cmd[cmd.index("--output") + 1] == "s3://seer/runs/r1"
    )
    out = capsys.readouterr().out
    assert (
        "DRY_RUN: nothing was submitted" in out and not (tmp_path / "submit" / "seer-pretrain.yaml").exists()
    )
    assert fake_kfp.calls == []


@pytest.mark.slow
def test_pretrain_10b_dry_run_with_the_trainjob_backend_prints_a_valid_62x8_trainjob() -> None:
    """`make pretrain-10b DRY_RUN=1 BACKEND=trainjob`: the Trainer v2 job, checked like the manifests'."""
    from test_manifests import check_trainjob

    result = make("pretrain-10b", DRY_RUN="1", BACKEND="trainjob")
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load((ROOT / "build" / "pretrain-10b" / "trainjob.yaml").read_text())
    check_trainjob(job)
    assert (job["spec"]["trainer"]["numNodes"], job["spec"]["trainer"]["numProcPerNode"]) == (62, 8)
    assert f"TrainJob seer/{job['metadata']['name']}" in result.stdout
    assert yaml.safe_dump(job, sort_keys=False) in result.stdout
    arguments = json.loads((ROOT / "build" / "pretrain-10b" / "arguments.json").read_text())
    assert arguments["backend"] == "trainjob" and arguments["gang_scheduler"] == ""


def _cached_tasks(package: Path) -> list[str]:
    from pipelines.run.kfp_api import dag_tasks

    spec = next(yaml.safe_load_all(package.read_text()))
    return [name for name, task in dag_tasks(spec) if (task.get("cachingOptions") or {}).get("enableCache")]


@pytest.mark.slow
def test_caching_off_reaches_every_task_including_the_exit_handler(fake_kfp) -> None:
    """kfp's submit-time `enable_caching=False` rewrites only `root.dag.tasks` (kfp/client/client.py
    `_override_caching_options`); the steps inside `dsl.ExitHandler` live in the `comp-exit-handler-1`
    DAG and stayed cached, so a re-run of the 62×8 pipeline could be served from cache. The package
    `make pretrain-10b` submits must have caching off everywhere."""
    from kfp.client import client as kfp_client
    from kfp.compiler import Compiler

    from pipelines.pretrain import build_pretrain_pipeline
    from pipelines.run.kfp_api import dag_tasks

    # What kfp alone does: the nested tasks keep their compiled caching.
    package = submit.BUILD / "plain.yaml"
    package.parent.mkdir(parents=True, exist_ok=True)
    Compiler().compile(build_pretrain_pipeline(), str(package))
    doc = kfp_client._extract_pipeline_yaml(str(package))
    kfp_client._override_caching_options(doc.pipeline_spec, False)
    package.write_text(yaml.safe_dump(doc.to_dict()["pipeline_spec"]))
    still_cached = _cached_tasks(package)
    assert still_cached and all(
        name.startswith(("comp-exit-handler", "comp-for-loop")) for name in still_cached
    )

    os.environ["KFP_HOST"] = "http://kfp.test"
    os.environ["IMAGES_URI"] = "s3://corpus/images"
    try:
        assert submit.main([]) == 0
    finally:
        del os.environ["KFP_HOST"], os.environ["IMAGES_URI"]
    ((_, run),) = [c for c in fake_kfp.calls if c[0] == "create_run"]
    submitted = Path(run["pipeline_file"])
    names = [name for name, _ in dag_tasks(next(yaml.safe_load_all(submitted.read_text())))]
    assert "comp-exit-handler-1/pretrain" in names and "comp-exit-handler-1/register-model" in names
    assert _cached_tasks(submitted) == []


@pytest.mark.slow
def test_schedule_reeval_package_is_uncached_everywhere(fake_kfp) -> None:
    """The recurring re-evaluation must really re-evaluate: no task of seer-evaluate, nested DAGs
    included, may be served from cache (kfp's own override reaches root tasks only)."""
    assert schedule.main(["--kfp-host", "http://kfp.test"]) == 0
    ((_, req),) = [c for c in fake_kfp.calls if c[0] == "create_recurring_run"]
    assert _cached_tasks(Path(req["pipeline_package_path"])) == []


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pretrain-10b", "schedule-reeval"])
def test_unreachable_kfp_host_is_one_line_naming_the_host_and_the_fix(target: str) -> None:
    """The real kfp.Client against a closed port: urllib3 gives up (MaxRetryError) and, before the fix,
    the make target printed a long traceback."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    result = make(target, KFP_HOST=host, IMAGES_URI="s3://corpus/images")
    assert result.returncode != 0
    errors = [
        ln for ln in result.stderr.splitlines() if ln.strip() and not re.match(r"make(\[\d+\])?: \*\*\*", ln)
    ]
    assert len(errors) == 1, result.stderr
    assert f"cannot reach KFP at {host}" in errors[0] and "KFP_HOST" in errors[0]
    assert "Traceback" not in result.stderr


def test_default_storage_paths_are_writable_with_a_profiles_credentials() -> None:
    """Multi-user KFP gives each profile credentials for mlpipeline/artifacts/*,
    private-artifacts/<ns>/*, private/<ns>/* and shared/* only (kubeflow/manifests
    pipelines-profile-controller sync.py); `mlpipeline/seer/...` was denied. Standalone KFP allows any key."""
    import inspect

    from pipelines import evaluate, pretrain
    from pipelines.storage_defaults import allowed_in_profile, private_uri

    defaults = {
        **{
            k: v.default
            for k, v in inspect.signature(pretrain.seer_pretrain.pipeline_func).parameters.items()
        },
    }
    uris = [
        defaults["registry"],
        defaults["status_uri"],
        defaults["data_root"],
        submit.parse_args([]).registry,
    ]
    uris.append(inspect.signature(evaluate.seer_evaluate.pipeline_func).parameters["registry"].default)
    for uri in uris:
        assert allowed_in_profile(uri, "team-a") and allowed_in_profile(uri, "kubeflow-user-example-com"), uri
    assert not allowed_in_profile("minio://mlpipeline/seer/registry", "team-a")
    assert allowed_in_profile(private_uri("team-a", "registry"), "team-a")
    assert not allowed_in_profile(private_uri("team-a", "registry"), "team-b")
