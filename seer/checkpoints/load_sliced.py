"""Load a sliced checkpoint into a model, FSDP unit by FSDP unit, without materialising the whole model.

For an FSDP2-sharded model (`fully_shard`), every rank walks the FSDP units in module order and, for
each unit, reads only the slices of the parameters and buffers that unit owns directly. A `Shard(0)`
parameter (FSDP2's layout) keeps only this rank's rows while its slice is streamed (every byte still
goes into the checksum), so peak memory per rank ≈ one shard plus a read buffer; other placements
go through `distribute_tensor(..., src_data_rank=None)` (no communication). An unsharded model loads
the same way, tensor by tensor. Wrapper name components (activation checkpointing, FSDP1,
`torch.compile`) are ignored when matching names.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from tqdm import tqdm

from seer.checkpoints.mapping import ArchitectureMismatchError
from seer.checkpoints.slice import SlicedIndex, open_sliced, read_slice


def _fsdp_units(model: nn.Module) -> dict[str, str]:
    """Module name → name of the FSDP unit that owns its direct tensors ("" = root / unsharded)."""
    from torch.distributed.fsdp import FSDPModule

    owner: dict[str, str] = {}
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        inherited = owner.get(parent, "") if name else ""
        owner[name] = name if isinstance(module, FSDPModule) else inherited
    return owner


_WRAPPERS = re.compile(r"(^|\.)(_checkpoint_wrapped_module|_fsdp_wrapped_module|_orig_mod)(?=\.|$)")


def _clean(name: str) -> str:
    """A module/parameter name without wrapper components (activation checkpointing, FSDP1, compile)."""
    return _WRAPPERS.sub("", name).lstrip(".")


def _names_in_index(model: nn.Module, index: SlicedIndex) -> dict[str, str]:
    """Model name → index name: the same for a SwAVModel, `trunk.`-prefixed for a bare trunk."""
    names = [_clean(n) for n, _ in model.named_parameters()]
    prefix = "" if any(n.startswith(("trunk.", "head.")) for n in names) else "trunk."
    return {k[len(prefix) :]: k for k in index.entries if k.startswith(prefix)}


def _shard_rows(tensor: torch.Tensor) -> tuple[int, int] | None:
    """The dim-0 rows this rank holds of a DTensor sharded `Shard(0)` on a 1-D mesh (FSDP2), else None."""
    if not isinstance(tensor, DTensor) or tensor.device_mesh.ndim != 1 or tensor.placements != (Shard(0),):
        return None
    n, world = tensor.shape[0], tensor.device_mesh.size()
    per_rank = -(-n // world)  # torch.chunk sizes, as DTensor's Shard(0)
    start = min(n, tensor.device_mesh.get_local_rank() * per_rank)
    stop = min(n, start + per_rank)
    return (start, stop) if tensor.to_local().shape[0] == stop - start else None


def _rebuild_hint(fqn: str, preset: str | None) -> str:
    """How to build a model that matches the checkpoint, for a tensor of the wrong shape."""
    if ".prototypes." in f".{fqn}":
        return (
            f"build the model with the checkpoint's prototype counts (its run's model.num_prototypes, "
            f"e.g. build_swav_model({preset!r}, num_prototypes=...))"
        )
    return f"build the model from the checkpoint's preset ({preset})"


@torch.no_grad()
def load_sliced_into_(
    model: nn.Module, index_uri: str, strict: bool = True, optional: Callable[[str], bool] | None = None
) -> nn.Module:
    """Copy the tensors of a sliced checkpoint (seer index or VISSL slice_list) into `model` in place.

    `model` is a SwAVModel (names `trunk.…`/`head.…`) or a bare trunk, sharded with `fully_shard` or
    not, with materialised (non-meta) tensors. `strict`: every model parameter/buffer must have a
    slice and (for the loaded part) every slice a tensor; `optional(name)` exempts model tensors
    that may lack a slice (they keep their values). Slices are checked (shape, dtype, sha256).
    """
    index = open_sliced(index_uri)
    wanted = _names_in_index(model, index)
    owner = _fsdp_units(model)
    by_unit: dict[str, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for mod_name, module in model.named_modules():
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for local, tensor in tensors:
            if tensor is None:
                continue
            fqn = _clean(f"{mod_name}.{local}" if mod_name else local)
            by_unit[owner[mod_name]].append((fqn, tensor))
    model_names = {fqn for items in by_unit.values() for fqn, _ in items}
    missing = sorted(n for n in model_names - set(wanted) if not (optional and optional(n)))
    unexpected = sorted(set(wanted) - model_names)
    if strict and (missing or unexpected):
        raise ArchitectureMismatchError(
            f"{index.uri} does not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); build the model from the checkpoint's preset "
            f"({index.preset}) or pass strict=False"
        )
    for unit in tqdm(list(by_unit), desc="load slices", unit="unit", disable=None, leave=False):
        for fqn, tensor in by_unit[unit]:
            if fqn not in wanted:
                continue
            entry = index.entries[wanted[fqn]]
            if entry.shape is not None and (
                entry.shape != tuple(tensor.shape) or entry.dtype != tensor.dtype
            ):
                raise ArchitectureMismatchError(
                    f"{fqn}: slice {entry.uri} holds {entry.dtype} {list(entry.shape)}, the model has "
                    f"{tensor.dtype} {list(tensor.shape)}; {_rebuild_hint(fqn, index.preset)}"
                )
            rows = _shard_rows(tensor)
            data = read_slice(entry, rows)
            expected = tuple(tensor.to_local().shape) if rows is not None else tuple(tensor.shape)
            if tuple(data.shape) != expected or data.dtype != tensor.dtype:
                raise ArchitectureMismatchError(
                    f"{fqn}: slice {entry.uri} gives {data.dtype} {list(data.shape)}, the model needs "
                    f"{tensor.dtype} {list(expected)}; {_rebuild_hint(fqn, index.preset)}"
                )
            if rows is not None:
                tensor.to_local().copy_(data)
            elif isinstance(tensor, DTensor):
                local = distribute_tensor(data, tensor.device_mesh, tensor.placements, src_data_rank=None)
                tensor.to_local().copy_(local.to_local())
            else:
                tensor.copy_(data)
            del data
    return model
