"""`seer launch render|submit|cancel|local|check-network`: run pretraining as a PyTorchJob or TrainJob,
or with torchrun here."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seer.errors import ConfigError
from seer.launch.backends import BACKENDS, render_job
from seer.launch.pytorchjob import (
    GANG_SCHEDULERS,
    METRICS_PORT,
    NETWORKS,
    finetune_entry,
    pretrain_args,
    pretrain_entry,
)
from seer.launch.trainjob import DEFAULT_RUNTIME, RUNTIME_KINDS


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} is not KEY=VALUE; write it like {flag} key=value")
        out[key] = value
    return out


def parse_toleration(text: str) -> dict[str, Any]:
    """`KEY[=VALUE]:EFFECT` (e.g. `nvidia.com/gpu:NoSchedule`) → a Kubernetes toleration."""
    head, sep, effect = text.rpartition(":")
    if not sep or not head or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ConfigError(
            f"--toleration {text!r} is not KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule "
            "or NoExecute; write it like nvidia.com/gpu:NoSchedule"
        )
    key, eq, value = head.partition("=")
    if eq:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


# flags whose values go to render_job unchanged, under the same name
_AS_GIVEN = (
    "nodes",
    "gpus_per_node",
    "namespace",
    "service_account",
    "gang_scheduler",
    "queue",
    "kueue_queue",
    "network",
    "network_devices",
    "ib_hca",
    "nccl_debug",
    "metrics_port",
    "max_faults",
    "backoff_limit",
)


def _training_command(args: argparse.Namespace) -> tuple[list[str], str]:
    """(the `seer` command the job runs, what sizes the job): `pretrain --recipe R` sized by R, or
    `finetune --recipe F` sized by the model preset F fine-tunes (its recipe's `model.preset`)."""
    if args.finetune is None:
        return pretrain_entry(args.recipe), args.recipe
    from seer.finetune.config import load_finetune_config

    return finetune_entry(args.finetune), load_finetune_config(args.finetune, args.set or []).model.preset


def _job(args: argparse.Namespace) -> dict[str, Any]:
    resources = {k: v for k, v in (("cpu", args.cpu), ("memory", args.memory)) if v}
    runtime = (
        {"runtime": args.runtime, "runtime_kind": args.runtime_kind} if args.backend == "trainjob" else {}
    )
    entry, sized_by = _training_command(args)
    return render_job(
        args.backend,
        args.name,
        sized_by,
        entry=entry,
        image=args.image,
        output_uri=args.output,
        data_uri=args.data,
        overrides=args.set or [],
        storage_secret=args.storage_secret or None,
        node_selector=_pairs(args.node_selector, "--node-selector"),
        tolerations=[parse_toleration(t) for t in args.toleration or []],
        resources=resources,
        env=_pairs(args.env, "--env"),
        image_pull_secrets=args.image_pull_secret or [],
        **{name: getattr(args, name) for name in _AS_GIVEN},
        **runtime,
    )


def _render(args: argparse.Namespace) -> int:
    import yaml

    text = yaml.safe_dump(_job(args), sort_keys=False)
    if args.out and args.out != "-":
        from seer import storage

        storage.write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from seer.launch.backends import make_launcher
    from seer.launch.kube import load_api_client

    job = _job(args)
    launcher = make_launcher(
        args.backend, load_api_client(args.kube_context), poll_interval_s=args.poll_interval
    )
    if args.detach:
        handle = launcher.submit(job)
        print(f"{'re-attached to' if handle.attached else 'created'} job {handle.namespace}/{handle.name}")
        return 0
    result = launcher.run(job, timeout_s=args.timeout, pending_timeout_s=args.pending_timeout)
    print(f"job {result.namespace}/{result.name} {result.state}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from seer.launch.backends import make_launcher
    from seer.launch.kube import JobHandle, load_api_client

    launcher = make_launcher(args.backend, load_api_client(args.kube_context))
    deleted = launcher.cancel(JobHandle(args.name, args.namespace))
    print(f"{'deleted' if deleted else 'no such'} job {args.namespace}/{args.name}")
    return 0


def _check_network(args: argparse.Namespace) -> int:
    from seer.launch.network import check_efa

    found = check_efa()
    print(f"network {args.network}: found {', '.join(str(p) for p in found)}")
    return 0


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        default="pytorchjob",
        help="pytorchjob (Training Operator v1, default) or trainjob (Kubeflow Trainer v2)",
    )


def _local(args: argparse.Namespace) -> int:
    from seer.launch.local import run_local

    return run_local(
        pretrain_args(args.recipe, args.output, args.set or [], data_uri=args.data),
        nproc_per_node=args.nproc_per_node,
    )


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="job name (lowercase, digits, '-'); pods are named after it")
    _add_backend_flag(p)
    p.add_argument(
        "--runtime", default=DEFAULT_RUNTIME, help="trainjob: the TrainingRuntime (default: %(default)s)"
    )
    p.add_argument(
        "--runtime-kind", choices=RUNTIME_KINDS, default="TrainingRuntime", help="trainjob: kind of --runtime"
    )
    p.add_argument("--kueue-queue", help="Kueue LocalQueue: the job waits suspended until Kueue admits it")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--recipe", help="pretraining recipe (rg-tiny … rg10b) or config path: the job runs seer pretrain"
    )
    what.add_argument(
        "--finetune",
        metavar="RECIPE",
        help="fine-tuning recipe (in1k-384, in1k-384-rg10b, im2gps, …) or config path: the job runs seer finetune, "
        "sized by the recipe's model preset (pass the pretrained weights as --set model.checkpoint=URI)",
    )
    p.add_argument("--image", required=True, help="trainer image with a pinned tag (images/trainer)")
    p.add_argument(
        "--output", required=True, help="run output URI (s3://bucket/prefix) for checkpoints and logs"
    )
    p.add_argument("--data", help="shards folder or manifest URI (default: the config's data.shards)")
    p.add_argument("--nodes", type=int, help="number of nodes/pods (default: the recipe's, rg10b: 62)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per pod, one process each (default: the recipe's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--namespace", default="seer", help="namespace of the job (default: seer)")
    p.add_argument(
        "--storage-secret",
        default="seer-storage",
        help="Secret whose keys become the pods' environment (S3 credentials); '' for none",
    )
    p.add_argument("--service-account", default="seer-trainer", help="service account of the training pods")
    p.add_argument("--gang-scheduler", choices=sorted(GANG_SCHEDULERS), help="schedule all pods together")
    p.add_argument("--queue", help="Volcano queue for gang scheduling")
    p.add_argument(
        "--node-selector", action="append", metavar="KEY=VALUE", help="pod node selector, repeatable"
    )
    p.add_argument(
        "--toleration", action="append", metavar="KEY[=VALUE]:EFFECT", help="pod toleration, repeatable"
    )
    p.add_argument("--cpu", help="CPU request/limit per pod (default: the recipe's)")
    p.add_argument("--memory", help="memory request/limit per pod, e.g. 960Gi (default: the recipe's)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra container env, repeatable")
    p.add_argument("--network", choices=NETWORKS, default="tcp", help="NCCL fabric: tcp, efa (AWS) or ib")
    p.add_argument("--network-devices", type=int, default=0, help="EFA adapters or RDMA devices per pod")
    p.add_argument("--ib-hca", help="NCCL_IB_HCA value for --network ib (e.g. mlx5)")
    p.add_argument("--nccl-debug", choices=["WARN", "INFO", "TRACE"], help="set NCCL_DEBUG")
    p.add_argument(
        "--metrics-port", type=int, default=METRICS_PORT, help="trainer /metrics port (PodMonitor)"
    )
    p.add_argument(
        "--max-faults",
        type=int,
        default=10,
        help="faults (lost ranks, crashed pods) the run survives; sizes torchrun restarts and backoffLimit",
    )
    p.add_argument(
        "--backoff-limit",
        type=int,
        default=None,
        help="override the job's backoffLimit (default: nodes × --max-faults + 1, see `seer plan`)",
    )
    p.add_argument("--image-pull-secret", action="append", help="image pull Secret name, repeatable")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer launch` (render, submit, cancel, local) to the `seer` command."""
    launch = subparsers.add_parser(
        "launch",
        help="run pretraining as a Kubeflow PyTorchJob or TrainJob, or with torchrun on this machine",
        description="Render, submit/watch and cancel a kubeflow.org/v1 PyTorchJob (or a Trainer v2 TrainJob, "
        "--backend trainjob) running `seer pretrain`, "
        "or run the same command locally with torchrun.",
    )
    sub = launch.add_subparsers(dest="launch_command", metavar="ACTION", required=True)

    p = sub.add_parser("render", help="print the job's YAML (no cluster needed)")
    _add_job_flags(p)
    p.add_argument("--out", help="write the YAML to this URI instead of stdout")
    p.set_defaults(func=_render)

    p = sub.add_parser(
        "submit",
        help="create the PyTorchJob (or re-attach to it) and watch it to the end",
        description="Creates the job, or re-attaches to a running job with the same name and spec; streams "
        "conditions, pod phases and the master log; exits non-zero with the operator's reason on failure; "
        "deletes the job on Ctrl-C/SIGTERM, timeouts and image pull errors.",
    )
    _add_job_flags(p)
    p.add_argument("--timeout", type=float, help="give up (and delete the job) after this many seconds")
    p.add_argument(
        "--pending-timeout",
        type=float,
        default=1800.0,
        help="give up if no pod runs within this many seconds",
    )
    p.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between status polls (backs off)"
    )
    p.add_argument("--detach", action="store_true", help="only create the job; do not watch it")
    p.add_argument(
        "--kube-context", help="kubeconfig context (default: in-cluster, then the current context)"
    )
    p.set_defaults(func=_submit)

    p = sub.add_parser("cancel", help="delete a PyTorchJob or TrainJob and its pods")
    p.add_argument("name", help="job name")
    _add_backend_flag(p)
    p.add_argument("--namespace", default="seer", help="namespace of the job (default: seer)")
    p.add_argument(
        "--kube-context", help="kubeconfig context (default: in-cluster, then the current context)"
    )
    p.set_defaults(func=_cancel)

    p = sub.add_parser("local", help="run `seer pretrain` with torchrun on this machine (torchx local_cwd)")
    p.add_argument("--recipe", required=True, help="pretraining recipe or config path (e.g. rg-tiny)")
    p.add_argument("--output", required=True, help="run output URI")
    p.add_argument("--data", help="shards folder or manifest URI (default: the config's data.shards)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--nproc-per-node", type=int, default=2, help="processes (ranks) to start (default: 2)")
    p.set_defaults(func=_local)

    p = sub.add_parser(
        "check-network",
        help="fail unless this image has what the NCCL fabric needs (run in the trainer pod)",
        description="For efa: look for the aws-ofi-nccl plugin and libfabric where the EFA installer puts "
        "them and on LD_LIBRARY_PATH; exit non-zero naming the fix when either is missing.",
    )
    p.add_argument("network", choices=["efa"], help="the fabric to check")
    p.set_defaults(func=_check_network)
