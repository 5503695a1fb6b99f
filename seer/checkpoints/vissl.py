"""Interop with VISSL / ClassyVision checkpoints (seer_spec §1.6, §4).

VISSL keeps weights under `classy_state_dict.base_model.model.{trunk, heads}`:

- trunk `_feature_blocks.conv1.stem.{0,1}`, `_feature_blocks.res{S+1}.block{S}-{i}.{f.a.0/1, f.b.0/1,
  f.se.excitation.0/2, f.c, f.final_bn, proj, bn}`; the 10B FSDP trunk adds a group level
  `block{S}-part{g}.` before `block{S}-{i}` (block index i counts from the stage start); FSDP
  wrapper names `_fsdp_wrapped_module` / `_fpw_module` may appear anywhere;
- heads `{h}.projection_head.{k}.*` (same indices as our `SwAVHead`), `{h}.prototypes{k}.weight`,
  fine-tuned classifiers `{h}.clf.0.*`. Only head 0 is supported.

Checkpoint types: `consolidated` (or no type), `shard_list` + per-rank `shard` files (fairscale FSDP;
consolidated with `FullyShardedDataParallel.consolidate_shard_weights`), `slice_list` (see slice.py). The name tables live in mapping.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

import seer.storage as storage
from seer.checkpoints.consolidate import (
    TensorSource,
    consolidated_tensors,
    open_consolidated,
    write_consolidated,
)
from seer.checkpoints.io import ArchiveReader, CheckpointError, LazyTensor, open_archive, tensor_bytes
from seer.checkpoints.mapping import (
    CLASSIFIER,
    check_names_and_shapes,
    expected_shapes,
    seer_to_vissl_head,
    seer_to_vissl_trunk,
    vissl_to_seer_head,
    vissl_to_seer_trunk,
)
from seer.checkpoints.slice import open_sliced, read_slice, slice_shape


def _base_model(obj: Any, uri: str) -> dict[str, Any]:
    try:
        return obj["classy_state_dict"]["base_model"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{uri} has no classy_state_dict.base_model: not a VISSL checkpoint") from None


def _model_dict(obj: Any, uri: str) -> dict[str, Any]:
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{uri} has no classy_state_dict.base_model.model: not a VISSL checkpoint; "
            "use `seer ckpt convert` for timm/torchvision files"
        ) from None
    return model


def _check(preset: str, trunk: dict[str, tuple], heads: dict[str, tuple], uri: str) -> None:
    check_names_and_shapes(expected_shapes(preset, "trunk"), trunk, f"{uri} trunk (preset {preset})")
    swav_heads = {k: v for k, v in heads.items() if k not in CLASSIFIER}
    if swav_heads:
        check_names_and_shapes(expected_shapes(preset, "heads"), swav_heads, f"{uri} heads (preset {preset})")


def _lazy_sources(reader: ArchiveReader, trunk: dict, heads: dict) -> Iterator[TensorSource]:
    for group, items in (("trunk", trunk), ("heads", heads)):
        for name, t in items.items():
            yield TensorSource(group, name, t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t))


def _mapped(model: dict[str, Any], uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    trunk = {vissl_to_seer_trunk(k): v for k, v in (model.get("trunk") or {}).items()}
    heads = {vissl_to_seer_head(k): v for k, v in (model.get("heads") or {}).items()}
    if not trunk:
        raise CheckpointError(f"{uri} has no trunk weights under classy_state_dict.base_model.model.trunk")
    return trunk, heads


def import_vissl(input_uri: str, output_uri: str, preset: str) -> dict[str, Any]:
    """VISSL checkpoint (consolidated, shard_list or slice_list) → seer consolidated file; returns its sidecar."""
    with open_archive(input_uri) as reader:
        kind = reader.obj.get("type", "consolidated") if isinstance(reader.obj, dict) else None
        iteration = reader.obj.get("iteration") if isinstance(reader.obj, dict) else None
        if kind == "shard_list":
            trunk, heads = consolidate_vissl_shards(input_uri, reader.obj)
            _check(
                preset,
                {k: tuple(v.shape) for k, v in trunk.items()},
                {k: tuple(v.shape) for k, v in heads.items()},
                input_uri,
            )
            sources = [
                TensorSource(g, k, v.dtype, tuple(v.shape), [tensor_bytes(v)])
                for g, items in (("trunk", trunk), ("heads", heads))
                for k, v in items.items()
            ]
            return write_consolidated(output_uri, preset, iteration, None, sources, source=input_uri)
        if kind == "slice_list":
            return vissl_slices_to_consolidated(input_uri, output_uri, preset, iteration)
        if kind != "consolidated":
            raise CheckpointError(
                f"{input_uri} has VISSL type {kind!r}; import a consolidated, shard_list or slice_list checkpoint"
            )
        trunk, heads = _mapped(_model_dict(reader.obj, input_uri), input_uri)
        for name, t in {**trunk, **heads}.items():
            if not isinstance(t, LazyTensor):
                raise CheckpointError(f"{input_uri}: {name} is not a tensor; the checkpoint is corrupt")
        _check(
            preset, {k: v.shape for k, v in trunk.items()}, {k: v.shape for k, v in heads.items()}, input_uri
        )
        return write_consolidated(
            output_uri, preset, iteration, None, _lazy_sources(reader, trunk, heads), source=input_uri
        )


def consolidate_vissl_shards(list_uri: str, shard_list: dict[str, Any]) -> tuple[dict, dict]:
    """Consolidate a VISSL `shard_list` checkpoint with fairscale; returns seer-named (trunk, heads).

    Needs memory for the whole model (fairscale reassembles every parameter at once).
    """
    from fairscale.nn.data_parallel import FullyShardedDataParallel

    base = list_uri.rsplit("/", 1)[0] if "/" in list_uri else "."
    shards = []
    for name in shard_list.get("shards", []):
        uri = name if name.startswith(("/", "s3://", "minio://", "file://")) else storage.join(base, name)
        if not storage.exists(uri):
            uri = storage.join(base, name.rsplit("/", 1)[-1])
        if not storage.exists(uri):
            raise CheckpointError(
                f"shard {name} listed in {list_uri} is missing; copy all shard files next to it"
            )
        with open_archive(uri) as reader:
            shard = reader.obj
            if not isinstance(shard, dict) or shard.get("type") != "shard":
                found = shard.get("type") if isinstance(shard, dict) else type(shard).__name__
                raise CheckpointError(f"{uri} is not a VISSL shard file (type {found!r})")
            base_model = _base_model(shard, uri)
            model = {
                part: {k: reader.read(v) for k, v in (base_model["model"].get(part) or {}).items()}
                for part in ("trunk", "heads")
            }
        shards.append({"model": model, "meta": base_model.get("meta", {})})
    if not shards:
        raise CheckpointError(f"{list_uri} lists no shards; it is not a complete shard_list checkpoint")
    out: dict[str, dict[str, torch.Tensor]] = {"trunk": {}, "heads": {}}
    for part in ("trunk", "heads"):
        if not shards[0]["meta"].get(part):
            continue
        weights = [s["model"][part] for s in shards]
        metadata = [s["meta"][part] for s in shards]
        try:
            full = FullyShardedDataParallel.consolidate_shard_weights(weights, metadata)
        except (KeyError, AssertionError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{list_uri}: the {part} shards do not fit their metadata ({err!r}); the shard set is incomplete or mixed"
            ) from None
        out[part] = full
    trunk, heads = _mapped(out, list_uri)
    return {k: v.clone() for k, v in trunk.items()}, {k: v.clone() for k, v in heads.items()}


def export_vissl(consolidated_uri: str, output_uri: str, with_parts: bool = False) -> None:
    """seer consolidated file → VISSL consolidated checkpoint (`type: consolidated`), streamed.

    `with_parts` writes the 10B FSDP trunk names (`block{S}-part{g}`) from the preset's
    activation-checkpoint groups.
    """
    from seer.checkpoints.io import save_streamed
    from seer.models.presets import get_preset

    reader = open_consolidated(consolidated_uri)
    with reader:
        preset = reader.obj.get("preset")
        parts = get_preset(preset).checkpoint_groups() if with_parts and preset else None

        def build(writer: Any) -> dict[str, Any]:
            model: dict[str, dict[str, Any]] = {"trunk": {}, "heads": {}}
            for group, name, t in consolidated_tensors(reader):
                key = seer_to_vissl_trunk(name, parts) if group == "trunk" else seer_to_vissl_head(name)
                model[group][key] = writer.write_stream(
                    t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t)
                )
            return {
                "type": "consolidated",
                "iteration": reader.obj.get("iteration"),
                "classy_state_dict": {"base_model": {"model": model}},
            }

        save_streamed(output_uri, build, archive="vissl")


def vissl_slices_to_consolidated(
    index_uri: str, output_uri: str, preset: str, iteration: int | None
) -> dict[str, Any]:
    """A VISSL slice_list → seer consolidated file (one slice in memory at a time); returns the sidecar."""
    index = open_sliced(index_uri)
    trunk = {k[len("trunk.") :]: e for k, e in index.entries.items() if k.startswith("trunk.")}
    heads = {k[len("head.") :]: e for k, e in index.entries.items() if k.startswith("head.")}

    def sources() -> Iterator[TensorSource]:
        for group, items in (("trunk", trunk), ("heads", heads)):
            for name, entry in items.items():
                t = read_slice(entry)
                yield TensorSource(group, name, t.dtype, tuple(t.shape), [tensor_bytes(t)])

    # Shapes are checked against the preset from the slice headers before any data is copied.
    shapes = {
        g: {n: slice_shape(e) for n, e in items.items()} for g, items in (("trunk", trunk), ("heads", heads))
    }
    check_names_and_shapes(expected_shapes(preset, "trunk"), shapes["trunk"], f"{index_uri} trunk")
    swav = {k: v for k, v in shapes["heads"].items() if not k.startswith("clf.")}
    if swav:
        check_names_and_shapes(expected_shapes(preset, "heads"), swav, f"{index_uri} heads")
    return write_consolidated(output_uri, preset, iteration, None, sources(), source=index_uri)
