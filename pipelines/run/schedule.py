"""`make schedule-reeval`: a recurring seer-evaluate run on the KFP endpoint in KFP_HOST.

KFP cron expressions have 6 fields, seconds first (`0 0 3 * * *` = 03:00 every day). The schedule
runs with caching off (identical inputs would otherwise be served from cache and nothing would be
re-evaluated), without catch-up (no burst of missed runs after a pause) and one run at a time.
Settings come from the environment or flags (`python -m pipelines.run.schedule --help`).
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.run.env_flags import env_option, env_switch
from pipelines.run.kfp_api import SubmitError, add_kfp_flags, reaching_kfp, set_caching
from pipelines.storage_defaults import DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "schedule-reeval"


def check_cron(expr: str) -> str:
    """A 6-field KFP cron expression (seconds minutes hours day-of-month month day-of-week)."""
    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(
            f"CRON {expr!r} has {len(fields)} fields; KFP needs 6, seconds first, e.g. '0 0 3 * * *' (03:00 daily)"
        )
    return " ".join(fields)


def recurring_run_request(a: argparse.Namespace, package: Path) -> dict[str, Any]:
    """Keyword arguments of `kfp.Client.create_recurring_run` for the re-evaluation schedule."""
    return {
        "job_name": a.name,
        "description": f"re-evaluate {a.model_name} ({a.model_version}) and register the new metrics",
        "cron_expression": check_cron(a.cron),
        "max_concurrency": 1,
        "no_catchup": True,
        "enable_caching": False,
        "enabled": True,
        "pipeline_package_path": str(package),
        "params": {
            "registry": a.registry,
            "model_name": a.model_name,
            "model_version": a.model_version,
            "fail_on_regression": a.fail_on_regression,
        },
        "service_account": a.service_account or None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.run.schedule", description=__doc__.splitlines()[0])
    add_kfp_flags(p)
    env_option(p, "--cron", "CRON", "0 0 3 * * *", "6-field cron, seconds first")
    env_option(p, "--name", "SCHEDULE_NAME", "seer-reeval", "recurring run name")
    env_option(p, "--registry", "REGISTRY", DEFAULT_REGISTRY, "registry")
    env_option(p, "--model-name", "MODEL_NAME", "seer-rg10b", "registered model")
    env_option(p, "--model-version", "MODEL_VERSION", "latest", "version to evaluate")
    env_switch(p, "--fail-on-regression", "FAIL_ON_REGRESSION", "fail the run when a metric regressed")
    a = p.parse_args(argv)
    try:
        check_cron(a.cron)
    except ValueError as err:
        print(f"make schedule-reeval: {err}", file=sys.stderr)
        return 2
    if not a.kfp_host:
        print(
            "make schedule-reeval: set KFP_HOST=https://<kubeflow host>/pipeline (the KFP API endpoint); "
            "optionally KFP_NAMESPACE, CRON ('0 0 3 * * *'), MODEL_NAME, REGISTRY",
            file=sys.stderr,
        )
        return 2
    import kfp
    from kfp import compiler

    from pipelines.evaluate import seer_evaluate

    BUILD.mkdir(parents=True, exist_ok=True)
    package = BUILD / "seer-evaluate.yaml"
    compiler.Compiler().compile(seer_evaluate, str(package))
    set_caching(package, False)  # every re-evaluation really re-evaluates, nested tasks included
    try:
        with reaching_kfp(a.kfp_host, "make schedule-reeval"):
            client = kfp.Client(
                host=a.kfp_host, namespace=a.kfp_namespace, existing_token=os.environ.get("KFP_TOKEN") or None
            )
            experiment = client.create_experiment(a.experiment, namespace=a.kfp_namespace)
            job = client.create_recurring_run(
                experiment_id=experiment.experiment_id, **recurring_run_request(a, package)
            )
    except SubmitError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"scheduled {a.name} ({a.cron}) on {a.kfp_host}: recurring run {job.recurring_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
