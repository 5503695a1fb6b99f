"""`make pretrain-10b`: SEER RG-10B on 62 nodes × 8 GPUs.

    MODE=kfp (default): compile seer-pretrain and start a run on the KFP endpoint in KFP_HOST; its
                        pretrain step submits and watches the training job.
    MODE=job:           apply the training job directly with kubectl (shards must exist at DATA_URI).
    DRY_RUN=1:          print the plan (`seer plan` numbers), the run's arguments and the rendered
                        job, and write them under build/pretrain-10b/; no cluster needed.
    BACKEND=trainjob:   a Kubeflow Trainer v2 TrainJob instead of the (default) PyTorchJob.

Settings come from the environment (the Makefile passes `make pretrain-10b VAR=…` through); each
has a flag too (`python -m pipelines.run.submit --help`).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.run.env_flags import env_option, env_switch
from pipelines.run.kfp_api import SubmitError, add_kfp_flags, reaching_kfp, set_caching
from pipelines.storage_defaults import DEFAULT_DATA_ROOT, DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "pretrain-10b"
# The 62×8 production shape of manifests/overlays/prod-62x8: Volcano gang, GPU nodes, AWS EFA.
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.run.submit", description=__doc__.splitlines()[0])
    env_option(p, "--mode", "MODE", "kfp", "kfp run or bare PyTorchJob", choices=("kfp", "job"))
    env_switch(p, "--dry-run", "DRY_RUN", "print the plan and rendered objects only")
    add_kfp_flags(p)
    env_option(p, "--recipe", "RECIPE", "rg10b", "pretraining recipe")
    env_option(p, "--nodes", "NODES", "62", "nodes", type=int)
    env_option(p, "--gpus-per-node", "GPUS_PER_NODE", "8", "GPUs per node", type=int)
    env_option(p, "--gpu-mem-gb", "GPU_MEM_GB", "40", "GiB per GPU for the plan", type=float)
    env_option(p, "--images", "TRAIN_IMAGES", "1e9", "images to train on, for the plan", type=float)
    env_option(p, "--images-uri", "IMAGES_URI", "", "corpus the KFP run shards")
    env_option(p, "--data-uri", "DATA_URI", "", "existing shards for MODE=job")
    env_option(
        p,
        "--data-root",
        "DATA_ROOT",
        DEFAULT_DATA_ROOT,
        "prefix for the run's shards, checkpoints and evaluation data",
    )
    p.add_argument(
        "--shard-parallelism",
        type=int,
        default=_env("SHARD_PARALLELISM", "100"),
        help="shard pods the KFP run fans out to (SHARD_PARALLELISM; `seer shard --plan` sizes it: "
        "1B images on 100 pods x 8 cores)",
    )
    env_option(p, "--output-uri", "OUTPUT_URI", "", "run output for MODE=job, s3://…")
    env_option(
        p,
        "--backend",
        "BACKEND",
        "pytorchjob",
        "training job kind: pytorchjob (Training Operator v1) or trainjob (Trainer v2)",
        choices=("pytorchjob", "trainjob"),
    )
    env_option(p, "--job-name", "JOB_NAME", "seer-rg10b", "training job name")
    env_option(p, "--namespace", "JOB_NAMESPACE", "seer", "training job namespace")
    env_option(p, "--kueue-queue", "KUEUE_QUEUE", "", "Kueue LocalQueue for the job, '' for none")
    env_option(p, "--registry", "REGISTRY", DEFAULT_REGISTRY, "model registry")
    env_option(p, "--network", "NETWORK", "efa", "NCCL fabric", choices=("tcp", "efa", "ib"))
    env_option(p, "--network-devices", "NETWORK_DEVICES", "4", "EFA/RDMA devices per pod", type=int)
    p.add_argument(
        "--gang-scheduler",
        default=os.environ.get("GANG_SCHEDULER"),
        help="volcano, scheduler-plugins or '' (GANG_SCHEDULER; default volcano for pytorchjob without Kueue)",
    )
    a = p.parse_args(argv)
    if a.gang_scheduler is None:
        a.gang_scheduler = "volcano" if a.backend == "pytorchjob" and not a.kueue_queue else ""
    return a


def pipeline_arguments(a: argparse.Namespace) -> dict[str, Any]:
    """seer-pretrain arguments of the 62×8 run: the cluster backend, every evaluation on."""
    from components import SEER_TRAINER_IMAGE

    return {
        "images_uri": a.images_uri,
        "data_root": a.data_root,
        "shard_parallelism": a.shard_parallelism,
        "recipe": a.recipe,
        "backend": a.backend,
        "nodes": a.nodes,
        "gpus_per_node": a.gpus_per_node,
        "trainer_image": SEER_TRAINER_IMAGE,
        "job_name": a.job_name,
        "namespace": a.namespace,
        "gang_scheduler": a.gang_scheduler,
        "kueue_queue": a.kueue_queue,
        "node_selector": GPU_SELECTOR,
        "tolerations": [GPU_TOLERATION],
        "network": a.network,
        "network_devices": a.network_devices,
        "run_geolocalization": True,
        "run_fairness": True,
        "run_test384": True,
        "eval_device": "cuda",
        "registry": a.registry,
        "model_name": f"seer-{a.recipe}",
    }


def step_settings() -> dict[str, Any]:
    """Evaluations of a 10B trunk run sharded over the 8 GPUs of one pod, as SEER evaluates it (the
    defaults are CPU-only; `seer.eval.steps` starts one rank per GPU); the pretrain step only submits
    and polls the cluster job, so its pod is small."""
    from components.placement import StepSettings, load_step_settings
    from pipelines.pretrain import DEFAULT_STEP_SETTINGS

    gpu = {"gpus": 8, "node_selector": GPU_SELECTOR, "tolerations": [GPU_TOLERATION]}
    settings = dict(DEFAULT_STEP_SETTINGS)
    settings["pretrain"] = StepSettings(cpu="500m", memory="1Gi", retries=settings["pretrain"].retries)
    settings["evaluation"] = settings["evaluation"].merged({**gpu, "memory": "160Gi", "shm": "32Gi"})
    settings["consolidate-slice"] = settings["consolidate-slice"].merged({"memory": "128Gi"})
    return load_step_settings(settings, _env("STEP_SETTINGS") or None)


def render_job(a: argparse.Namespace, data_uri: str, output_uri: str) -> dict[str, Any]:
    """The job the run creates (MODE=job applies it; MODE=kfp's pretrain step submits it)."""
    from components import SEER_TRAINER_IMAGE
    from seer.launch import render_job as render

    return render(
        a.backend,
        a.job_name,
        a.recipe,
        image=SEER_TRAINER_IMAGE,
        output_uri=output_uri,
        data_uri=data_uri,
        nodes=a.nodes,
        gpus_per_node=a.gpus_per_node,
        namespace=a.namespace,
        gang_scheduler=a.gang_scheduler or None,
        kueue_queue=a.kueue_queue or None,
        node_selector=GPU_SELECTOR,
        tolerations=[GPU_TOLERATION],
        network=a.network,
        network_devices=a.network_devices,
    )


def plan_text(a: argparse.Namespace) -> tuple[str, bool]:
    """`seer plan` for the run: the formatted plan and whether it fits."""
    from seer.config import load_config
    from seer.train.plan import estimate, format_plan

    plan = estimate(
        load_config(a.recipe),
        nodes=a.nodes,
        gpus_per_node=a.gpus_per_node,
        gpu_mem_gib=a.gpu_mem_gb,
        images=a.images,
    )
    return format_plan(plan), plan.fits


def check_settings(a: argparse.Namespace) -> None:
    """Fail fast, naming every setting a real submission still needs."""
    missing = []
    if a.mode == "kfp":
        if not a.kfp_host:
            missing.append("KFP_HOST=https://<kubeflow host>/pipeline (the KFP API endpoint)")
        if not a.images_uri:
            missing.append("IMAGES_URI=s3://<bucket>/<images> (the corpus to shard)")
    else:
        if not a.data_uri:
            missing.append("DATA_URI=s3://<bucket>/<shards> (made by `seer shard`)")
        if not a.output_uri.startswith(("s3://", "minio://")):
            missing.append("OUTPUT_URI=s3://<bucket>/<run> (object storage the training pods write to)")
        if not shutil.which("kubectl"):
            missing.append("kubectl on PATH (with a context for the cluster)")
    if missing:
        raise SubmitError(
            "make pretrain-10b: set "
            + "; ".join(missing)
            + ". Or DRY_RUN=1 to print the plan without a cluster."
        )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if not a.dry_run:
            check_settings(a)
        text, fits = plan_text(a)
    except SubmitError as err:
        print(err, file=sys.stderr)
        return 2
    print(text)
    if not fits:
        print("make pretrain-10b: the run does not fit in GPU memory (see the plan above)", file=sys.stderr)
        return 2
    BUILD.mkdir(parents=True, exist_ok=True)
    if a.mode == "kfp":
        # The pretrain step passes its artifact URIs; show where they land under KFP's pipeline root.
        root = "minio://mlpipeline/v2/artifacts/seer-pretrain/<run-id>"
        job = render_job(a, f"{root}/shard-images/shards", f"{root}/pretrain/run")
        arguments = pipeline_arguments(a)
        (BUILD / "arguments.json").write_text(json.dumps(arguments, indent=2) + "\n")
    else:
        job = render_job(a, a.data_uri or "s3://<DATA_URI>", a.output_uri or "s3://<OUTPUT_URI>")
        arguments = {}
    job_path = BUILD / f"{a.backend}.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    package = BUILD / "seer-pretrain.yaml"
    if a.mode == "kfp":
        from kfp import compiler

        from pipelines.pretrain import build_pretrain_pipeline

        compiler.Compiler().compile(build_pretrain_pipeline(step_settings=step_settings()), str(package))
        set_caching(package, False)  # a 62×8 run is never served from cache, exit handler included
        print(f"\nseer-pretrain package: {package}\nrun arguments ({BUILD / 'arguments.json'}):")
        print(json.dumps(arguments, indent=2))
    print(f"\n{job['kind']} {a.namespace}/{a.job_name} ({job_path}):\n---")
    print(yaml.safe_dump(job, sort_keys=False), end="")
    if a.dry_run:
        print("\nDRY_RUN: nothing was submitted.")
        return 0
    if a.mode == "job":
        subprocess.run(["kubectl", "apply", "-f", str(job_path)], check=True)
        print(f"watch it: kubectl -n {a.namespace} get {job['kind'].lower()} {a.job_name} -w")
        return 0
    try:
        return submit_run(a, package, arguments)
    except SubmitError as err:
        print(err, file=sys.stderr)
        return 2


def submit_run(a: argparse.Namespace, package: Path, arguments: dict[str, Any]) -> int:
    """Start the compiled seer-pretrain package (GPU step settings compiled in, caching off) on KFP_HOST."""
    import kfp

    with reaching_kfp(a.kfp_host, "make pretrain-10b"):
        client = kfp.Client(
            host=a.kfp_host, namespace=a.kfp_namespace, existing_token=_env("KFP_TOKEN") or None
        )
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=f"seer-pretrain-{a.recipe}",
            experiment_name=a.experiment,
            namespace=a.kfp_namespace,
            enable_caching=False,
            service_account=a.service_account or None,
        )
    print(f"started run {run.run_id} on {a.kfp_host} (experiment {a.experiment})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
