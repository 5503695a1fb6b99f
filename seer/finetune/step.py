"""The fine-tune pipeline step: a pretrained checkpoint and a labelled set → `seer finetune`, run
with torchrun on the step's machine or as a PyTorchJob / TrainJob (`seer.launch`, the same restart
policy as pretraining) → the export record (`finetune.json`) and the training summary.

The training set is a URI, or a role of the eval_datasets step's `datasets.json`: by default
`linear_train` for classification recipes and `geo_train` (with its `geo_cells`) for geo ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from seer import artifacts, storage
from seer.errors import ConfigError
from seer.finetune.config import load_finetune_config
from seer.finetune.run import RESULT_NAME

DEFAULT_ROLES = {"classification": "linear_train", "geo": "geo_train"}


def training_set(datasets_uri: str, role: str) -> tuple[str, str | None]:
    """(the set of `role` in `datasets_uri`/datasets.json, its cell CSV `geo_cells` or None)."""
    sets = storage.read_json(storage.join(datasets_uri, "datasets.json"))
    if not sets.get(role):
        have = ", ".join(sorted(k for k, v in sets.items() if v))
        raise ConfigError(f"datasets.json has no {role!r} set (it has {have}); pass train_uri or train_role")
    return sets[role], sets.get("geo_cells")


def finetune_overrides(
    checkpoint: str, recipe: str, preset: str, overrides: Sequence[str], cells: str | None
) -> list[str]:
    """The run's `--set` list: the pretrained weights, the model preset and cells when known, then the
    user's overrides (which win)."""
    given = {o.split("=", 1)[0].strip() for o in overrides}
    out = [f"model.checkpoint={checkpoint}"]
    if preset:
        out.append(f"model.preset={preset}")
    if (
        cells
        and load_finetune_config(recipe, list(overrides)).data.task == "geo"
        and "data.cells" not in given
    ):
        out.append(f"data.cells={cells}")
    return [*out, *overrides]


def run_finetune_step(
    checkpoint: str,
    output_uri: str,
    *,
    recipe: str,
    preset: str = "",
    overrides: Sequence[str] = (),
    train_uri: str = "",
    datasets_uri: str = "",
    train_role: str = "",
    backend: str = "local",
    nproc_per_node: int = 2,
    job_name: str = "",
    job_options: Mapping[str, Any] | None = None,
    watch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune `checkpoint` (a URI or a seer artifact descriptor) with `recipe` into `output_uri`.

    `preset`: the checkpoint's model preset ('' keeps the recipe's). `backend`: local (torchrun with
    `nproc_per_node` ranks here) or a `seer.launch` backend, with `job_options` for `render_job` and
    `watch` the job's timeouts and poll interval (`seer.launch.step.run_training`). Returns
    {"export": finetune.json, "summary": summary.json, "job": ..., "restarts": ...}."""
    from seer.launch import finetune_entry
    from seer.launch.step import run_training

    checkpoint = artifacts.resolve(checkpoint)
    cells = None
    if not train_uri:
        if not datasets_uri:
            raise ConfigError("no training set: pass train_uri, or datasets (the eval_datasets output)")
        task = load_finetune_config(recipe, [*overrides]).data.task
        train_uri, cells = training_set(datasets_uri, train_role or DEFAULT_ROLES[task])
    sets = finetune_overrides(checkpoint, recipe, preset, overrides, cells)
    cfg = load_finetune_config(recipe, sets)  # fail here, not in the pods
    info = run_training(
        backend,
        finetune_entry(recipe),
        cfg.model.preset,
        output_uri=output_uri,
        data_uri=train_uri,
        overrides=sets,
        nproc_per_node=nproc_per_node,
        job_name=job_name,
        job_options=job_options or {},
        **(watch or {}),
    )
    export = storage.read_json(storage.join(output_uri, RESULT_NAME))
    summary = storage.read_json(storage.join(output_uri, "summary.json"))
    return {"export": export, "summary": summary, "data": train_uri, **info}
