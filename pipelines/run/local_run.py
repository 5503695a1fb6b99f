"""Run seer-pretrain on this machine through kfp.local (`make demo`).

    python -m pipelines.run.local_run [--output demo-output] [--set NAME=JSON ...] [--verbose]

The terminal shows one line per step (name, outcome, seconds) and ends in the summary; every step's full
output goes to OUTPUT/local_run.log (`--verbose` streams it instead). A failed run prints the `error:`
lines of that log and its last lines.

Every step runs as a subprocess of this interpreter (`SubprocessRunner(use_venv=False)`; the
components are built with `install_kfp_package=False`, so nothing is pip-installed), artifacts go to
local folders: KFP's artifacts (descriptors, reports) under OUTPUT/pipeline-root, the run's data
(`data_root`: corpus, shards, checkpoints, slices) under OUTPUT/data, the registry in OUTPUT/registry.
kfp 2.16.1's local runner has no ExitHandler and cannot run a task after a ParallelFor, so the pipeline
is built without the exit handler (this script runs the same exit-handler step function itself once
the DAG has ended, successfully or not) and with the shard loop unrolled into `shard_parallelism`
tasks (pipelines/pretrain.py).
"""

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.run.quiet_console import failure_report, plain, quiet_console

# The demo's generated benchmarks: large enough that trained-vs-random-init differences exceed the
# sampling noise (600 counting images for linear/kNN, 300 copies against 400 database images).
DEMO_BENCHMARK_SIZES: dict[str, dict[str, int]] = {
    "counting": {"n_train": 1000, "n_val": 600},
    "copy-detection": {"n_originals": 100, "n_distractors": 300, "n_train": 200},
}
# The embedded default: small enough for 2 CPU cores in well under 15 minutes.
DEMO_ARGUMENTS: dict[str, Any] = {
    "synth_images": 256,
    "shard_parallelism": 2,
    "recipe": "rg-tiny",
    "backend": "local",
    "nproc_per_node": 2,
    "benchmark_sizes": DEMO_BENCHMARK_SIZES,
    "run_linear": True,
    "run_knn": True,
    "run_copy_detection": True,
    "linear_epochs": 28,
    "linear_protocol": "fast",
    "eval_transform": "shorter:64:64",
    "copy_transform": "longer:96",
    "eval_baselines": ["random-init"],
    "eval_workers": 0,
    "eval_device": "cpu",
    "model_name": "seer-rg-tiny",
}


def _init_local(out: Path) -> None:
    """kfp.local with subprocesses of this interpreter, artifacts under OUT/pipeline-root."""
    from kfp import local

    # Steps run this interpreter: its bin/ (torchrun, seer) comes first on PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # The steps name the component image; here they run in this environment, which has seer, by design.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "pipeline-root"))


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r} is not NAME=VALUE; write it like --set synth_images=64")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a plain string
    return out


def run_local_pipeline(output: str | Path, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run seer-pretrain with DEMO_ARGUMENTS updated by `arguments`; artifacts under `output`.

    Returns {"entry": the registered ModelEntry as a dict, "status": the exit-handler record,
    "seconds": wall time}. Raises when a step failed (after recording the failure).
    """
    from kfp.dsl import PipelineTaskFinalStatus

    from components import record_failure_and_cleanup
    from pipelines.pretrain import build_pretrain_pipeline
    from seer import storage
    from seer.registry import open_registry

    out = Path(output).resolve()
    args = {**DEMO_ARGUMENTS, **(arguments or {})}
    args.setdefault("registry", str(out / "registry"))
    args.setdefault("status_uri", str(out / "runs"))
    args.setdefault("data_root", str(out / "data"))
    unknown = set(args) - _pipeline_parameters()
    if unknown:
        raise ValueError(f"unknown seer-pretrain parameters {sorted(unknown)}; see pipelines/pretrain.py")
    _init_local(out)
    pipeline = build_pretrain_pipeline(exit_handler=False, partitions=int(args["shard_parallelism"]))
    run_id = time.strftime("local-%Y%m%d-%H%M%S")
    start = time.monotonic()
    state, error = "SUCCEEDED", ""
    try:
        pipeline(**args)
    except BaseException as err:  # record any ending, Ctrl-C included, then re-raise
        state, error = ("CANCELLED" if isinstance(err, KeyboardInterrupt) else "FAILED"), str(err)
        raise
    finally:
        status = PipelineTaskFinalStatus(
            state=state,
            pipeline_job_resource_name=f"local/{run_id}",
            pipeline_task_name="exit-handler-1",
            error_code=None if state == "SUCCEEDED" else 1,
            error_message=error,
        )
        record_failure_and_cleanup.python_func(
            status=status, run_id=run_id, status_uri=args["status_uri"], backend=args["backend"]
        )
    entry = open_registry(args["registry"]).latest(args["model_name"])
    return {
        "entry": entry.to_dict(),
        "status": storage.read_json(storage.join(args["status_uri"], f"{run_id}.json")),
        "seconds": time.monotonic() - start,
        "pipeline_root": str(out / "pipeline-root"),
        "data_root": args["data_root"],
    }


def run_local_evaluate(output: str | Path, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Run seer-evaluate through kfp.local (artifacts under `output`, data under `output`/data unless
    `arguments` name a data_root); returns the newly registered entry."""
    from pipelines.evaluate import seer_evaluate
    from seer.registry import open_registry

    out = Path(output).resolve()
    _init_local(out)
    seer_evaluate(**{"data_root": str(out / "data"), **arguments})
    return open_registry(arguments["registry"]).latest(arguments["model_name"]).to_dict()


# The headline metric of each evaluation, compared with the random-init trunk in the closing summary.
HEADLINE = {"linear": "top1", "knn": "top1", "copy-detection": "strong.mAP"}


def print_metrics(entry: Mapping[str, Any]) -> None:
    """The registered metrics, next to each evaluation's baselines (e.g. a random-init trunk), then the
    headline metrics against random-init."""
    from seer import storage

    rows, baselines, verdicts = [], set(), []
    for key, uri in sorted(entry["artifacts"].items()):
        if not key.endswith(".metrics"):
            continue
        doc = storage.read_json(uri)
        baselines |= set(doc.get("baselines") or {})
        metric = HEADLINE.get(doc["eval"])
        random_init = ((doc.get("baselines") or {}).get("random-init") or {}).get(metric)
        if metric and random_init is not None:
            verdicts.append((f"{doc['eval']}.{metric}", doc["metrics"][metric], random_init))
        for metric, value in doc["metrics"].items():
            others = {b: v.get(metric) for b, v in (doc.get("baselines") or {}).items()}
            rows.append((f"{doc['eval']}.{metric}", value, others))
    names = sorted(baselines)
    print(f"  {'metric':<28} {'model':>8}" + "".join(f" {b:>15}" for b in names))
    for name, value, others in rows:
        cells = "".join(f" {others[b]:>15.4f}" if others.get(b) is not None else f" {'-':>15}" for b in names)
        print(f"  {name:<28} {value:>8.4f}{cells}")
    for name, trained, random_init in verdicts:
        mark = ">" if trained > random_init else "<="
        print(f"  {name}: trained {trained:.4f} {mark} random-init {random_init:.4f}")
    if verdicts:
        better = sum(trained > random_init for _, trained, random_init in verdicts)
        print(f"trained beats random-init on {better} of {len(verdicts)} headline metrics")


def _pipeline_parameters() -> set[str]:
    from pipelines.pretrain import seer_pretrain

    return set(seer_pretrain.component_spec.inputs or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run.local_run",
        description="Run the seer-pretrain DAG end to end on this machine (kfp.local, CPU, rg-tiny by default).",
    )
    parser.add_argument(
        "--output",
        default="demo-output",
        help="folder for artifacts, registry and run records (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a seer-pretrain parameter; VALUE is JSON or a plain string, e.g. --set synth_images=64 "
        "--set overrides='[\"train.iterations=20\"]' (repeatable)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="stream every step's output here (default: one line per step here, "
        "all output to OUTPUT/local_run.log)",
    )
    args = parser.parse_args(argv)
    arguments = _parse_set(args.set)
    log = Path(args.output).resolve() / "local_run.log"
    if not args.verbose:
        print(f"seer-pretrain on kfp.local, one line per step (every step's output: {log})")
    try:
        with contextlib.nullcontext() if args.verbose else quiet_console(log):
            result = run_local_pipeline(args.output, arguments)
    except ValueError as err:
        print(f"local_run: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.verbose:
            raise
        print(f"{failure_report(log)}\nlocal_run: error: {plain(str(err))}", file=sys.stderr)
        return 1
    entry = result["entry"]
    print()
    print(f"seer-pretrain finished in {result['seconds'] / 60:.1f} min ({result['status']['state']})")
    print(f"registered model: {entry['name']} {entry['version']} (sha256 {entry['sha256'][:12]}…)")
    print(f"  checkpoint: {entry['artifact_uri']}")
    print_metrics(entry)
    for name, uri in sorted(entry["artifacts"].items()):
        if name.endswith(".report"):
            print(f"report ({name[: -len('.report')]}): {uri}")
    registry = Path(args.output).resolve() / "registry"
    print(f"registry: {registry}  (list it: seer registry list --registry {registry})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
