"""Compile seer-pretrain, seer-evaluate and seer-finetune to the YAML packages the KFP UI uploads (`make compile`).

    python -m pipelines.compile [--output-dir pipelines/compiled] [--step-settings steps.yaml]

Image names come from SEER_COMPONENT_IMAGE / SEER_TRAINER_IMAGE (see components/__init__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kfp import compiler

from components.placement import load_step_settings

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "build" / "pipelines"


def compile_all(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR, step_settings: str | None = None
) -> dict[str, Path]:
    """Write `<output_dir>/seer-pretrain.yaml`, `seer-evaluate.yaml` and `seer-finetune.yaml`; returns
    name → path."""
    from pipelines.evaluate import DEFAULT_EVAL_STEP_SETTINGS, build_evaluate_pipeline
    from pipelines.finetune import DEFAULT_FINETUNE_STEP_SETTINGS, build_finetune_pipeline
    from pipelines.pretrain import DEFAULT_STEP_SETTINGS, build_pretrain_pipeline

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipelines = {
        "seer-pretrain": build_pretrain_pipeline(
            step_settings=load_step_settings(DEFAULT_STEP_SETTINGS, step_settings)
        ),
        "seer-evaluate": build_evaluate_pipeline(
            step_settings=load_step_settings(DEFAULT_EVAL_STEP_SETTINGS, step_settings)
        ),
        "seer-finetune": build_finetune_pipeline(
            step_settings=load_step_settings(DEFAULT_FINETUNE_STEP_SETTINGS, step_settings)
        ),
    }
    paths = {}
    for name, func in pipelines.items():
        paths[name] = out / f"{name}.yaml"
        compiler.Compiler().compile(func, str(paths[name]))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        default=str(DEFAULT_OUTPUT_DIR),
        help="folder for the YAML packages (default: %(default)s)",
    )
    parser.add_argument(
        "--step-settings",
        help="YAML/JSON {step: {cpu, memory, gpus, accelerator, node_selector, tolerations, shm, timeout_s, "
        "retries, env}} overriding the per-step pod settings (steps: pretrain, evaluation, ...)",
    )
    args = parser.parse_args(argv)
    try:
        paths = compile_all(args.output_dir, args.step_settings)
    except (OSError, ValueError) as err:
        print(f"compile: error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
