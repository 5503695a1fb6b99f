"""What `make pretrain-10b` and `make schedule-reeval` need around kfp.Client: one-line errors when the
KFP endpoint cannot be reached or refuses, and a caching switch that reaches every task.

kfp's own submit-time override (`enable_caching=` of `create_run_from_pipeline_package` and
`create_recurring_run`) only rewrites `root.dag.tasks`, the pipeline's top-level tasks; tasks inside a
`dsl.ExitHandler`, `dsl.Condition`, `dsl.ParallelFor` or a nested pipeline live in their own component's
DAG and keep their compiled caching. `set_caching` rewrites every DAG of the compiled package.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipelines.run.env_flags import env_option
from seer.errors import SeerError


class SubmitError(SeerError):
    """A missing or wrong setting, or an unreachable KFP endpoint; the message says what to do."""


def add_kfp_flags(p: argparse.ArgumentParser) -> None:
    """Where and as whom a run is started: --kfp-host, --kfp-namespace, --experiment, --service-account
    (defaults from KFP_HOST, KFP_NAMESPACE, KFP_EXPERIMENT, KFP_SERVICE_ACCOUNT)."""
    env_option(
        p, "--kfp-host", "KFP_HOST", "", "KFP API endpoint, e.g. https://kubeflow.example.com/pipeline"
    )
    env_option(p, "--kfp-namespace", "KFP_NAMESPACE", "seer", "KFP profile namespace")
    env_option(p, "--experiment", "KFP_EXPERIMENT", "seer", "KFP experiment")
    env_option(p, "--service-account", "KFP_SERVICE_ACCOUNT", "", "the run's service account")


def dag_tasks(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(DAG name, task spec) of every task of a compiled PipelineSpec: the root DAG and each
    component's DAG (exit handlers, conditions, loops, nested pipelines)."""
    for name, task in ((spec.get("root") or {}).get("dag") or {}).get("tasks", {}).items():
        yield f"root/{name}", task
    for comp_name, comp in (spec.get("components") or {}).items():
        for name, task in ((comp.get("dag") or {}).get("tasks") or {}).items():
            yield f"{comp_name}/{name}", task


def set_caching(package: str | Path, enabled: bool) -> int:
    """Set the caching of every task in the compiled package (in place); returns how many tasks."""
    path = Path(package)
    docs = list(yaml.safe_load_all(path.read_text()))
    count = 0
    for _, task in dag_tasks(docs[0]):
        task["cachingOptions"] = {"enableCache": enabled}
        count += 1
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return count


@contextlib.contextmanager
def reaching_kfp(host: str, target: str) -> Iterator[None]:
    """Turn kfp.Client's connection and HTTP errors into one-line `SubmitError`s naming host and fix."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        with warnings.catch_warnings():  # kfp.Client warns about server versions on every construction
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client")
            yield
    except ApiException as err:
        raise SubmitError(
            f"{target}: KFP at {host} answered {err.status} {err.reason}; check KFP_HOST is the pipeline API "
            "endpoint (https://<kubeflow host>/pipeline) and, behind Kubeflow's login, set KFP_TOKEN"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or err
        raise SubmitError(
            f"{target}: cannot reach KFP at {host} ({type(reason).__name__}); check KFP_HOST, or forward "
            "the API (kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80, KFP_HOST=http://localhost:8080)"
        ) from None
