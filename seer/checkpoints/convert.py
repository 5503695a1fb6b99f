"""Convert weights between seer consolidated files and timm / torchvision state-dict files."""

from __future__ import annotations

from collections.abc import Mapping

from seer.checkpoints.consolidate import (
    CONSOLIDATED_FORMAT,
    TensorSource,
    consolidated_tensors,
    open_consolidated,
    write_consolidated,
)
from seer.checkpoints.io import CheckpointError, LazyTensor, open_archive, save_streamed
from seer.checkpoints.mapping import (
    TIMM_MODELS,
    TORCHVISION_MODELS,
    check_names_and_shapes,
    expected_shapes,
    is_timm,
    split_classifier,
    to_timm,
    to_torchvision,
    trunk_and_classifier_from_timm,
)


def _state_dict_of(obj: object, uri: str) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, LazyTensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, LazyTensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"{uri} is not a state dict of tensors (timm / torchvision weights); check the file"
    )


def _infer_preset(trunk_shapes: Mapping[str, tuple[int, ...]], table: Mapping[str, str], uri: str) -> str:
    for preset in table:
        expected = expected_shapes(preset, "trunk")
        if expected.keys() == trunk_shapes.keys() and all(
            tuple(trunk_shapes[k]) == v for k, v in expected.items()
        ):
            return preset
    first = next(iter(table))
    check_names_and_shapes(expected_shapes(first, "trunk"), trunk_shapes, f"{uri} (closest: {first})")
    return first


def convert(input_uri: str, output_uri: str, to: str, preset: str | None = None) -> str:
    """Convert weights between seer consolidated files and timm / torchvision state-dict files.

    `to="timm"` / `"torchvision"`: input is a seer consolidated file, output a plain state dict that
    `timm.create_model(...).load_state_dict` / `torchvision.models.regnet_y_*().load_state_dict`
    accepts (with `fc` only if the file has a `clf.0` classifier). `to="seer"`: input is a timm or
    torchvision state dict; the preset is checked (or inferred from the shapes). Streams tensor by
    tensor. Returns a one-line description of what was written.
    """
    tables = {"timm": TIMM_MODELS, "torchvision": TORCHVISION_MODELS}
    if to not in ("seer", *tables):
        raise CheckpointError(f"unknown target {to!r}; use seer, timm or torchvision")
    if to in tables:
        reader = open_consolidated(input_uri, preset)
        with reader:
            ckpt_preset = reader.obj.get("preset")
            if ckpt_preset not in tables[to]:
                raise CheckpointError(
                    f"preset {ckpt_preset!r} has no {to} equivalent; {to} has: "
                    + ", ".join(f"{p} = {m}" for p, m in tables[to].items())
                )
            trunk = {n: t for g, n, t in consolidated_tensors(reader) if g == "trunk"}
            heads = {n: t for g, n, t in consolidated_tensors(reader) if g == "heads"}
            names = (to_timm if to == "timm" else to_torchvision)(trunk, heads)

            def build(writer: object) -> dict:
                return {
                    k: writer.write_stream(t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t))
                    for k, t in names.items()
                }  # type: ignore[attr-defined]

            save_streamed(output_uri, build, archive=tables[to][ckpt_preset])
        return f"{to} {tables[to][ckpt_preset]} state dict ({len(names)} tensors) at {output_uri}"
    with open_archive(input_uri) as reader:
        if isinstance(reader.obj, dict) and reader.obj.get("format") == CONSOLIDATED_FORMAT:
            raise CheckpointError(
                f"{input_uri} is already a seer consolidated file; use --to timm or torchvision"
            )
        state = _state_dict_of(reader.obj, input_uri)
        source = "timm" if is_timm(state) else "torchvision"
        mapped = trunk_and_classifier_from_timm(state) if source == "timm" else dict(state)
        trunk, heads = split_classifier(mapped)
        trunk_shapes = {k: t.shape for k, t in trunk.items()}
        if preset is None:
            preset = _infer_preset(trunk_shapes, tables[source], input_uri)
        check_names_and_shapes(
            expected_shapes(preset, "trunk"), trunk_shapes, f"{input_uri} (preset {preset})"
        )
        sources = (
            TensorSource(g, n, t.dtype, t.shape, reader.iter_chunks(t), reader.record_crc(t))
            for g, items in (("trunk", trunk), ("heads", heads))
            for n, t in items.items()
        )
        write_consolidated(output_uri, preset, None, None, sources, source=input_uri)
    return f"seer consolidated {preset} ({len(trunk)} trunk, {len(heads)} classifier tensors) from {source} at {output_uri}"
