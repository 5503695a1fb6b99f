"""FSDP2 units (VISSL's nesting, seer_spec §3.2), sharding, and materialising the local shards with
SEER init independent of the world size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from seer.models.init import init_weights_
from seer.models.swav_model import SwAVModel
from seer.train.parallel.precision import apply_fp32_norms, fsdp_policies

# VISSL `AUTO_WRAP_THRESHOLD`: a conv this large gets its own FSDP unit (rg10b stages 3-4).
LARGE_CONV_PARAMS = 100_000_000
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Unit:
    """One FSDP unit: qualified name, module, kind (`conv`, `block`, `stem`, `mlp`, `prototypes`,
    `classifier`)."""

    name: str
    module: nn.Module
    kind: str


def _large_convs(prefix: str, module: nn.Module) -> list[Unit]:
    return [
        Unit(name, sub, "conv")
        for name, sub in module.named_modules(prefix=prefix)
        if isinstance(sub, nn.Conv2d) and sum(p.numel() for p in sub.parameters()) >= LARGE_CONV_PARAMS
    ]


def trunk_units(trunk: nn.Module, prefix: str = "trunk") -> list[Unit]:
    """A RegNet trunk's units, innermost first: large convs, the stem, every block."""
    head = f"{prefix}." if prefix else ""
    units = [*_large_convs(f"{head}stem", trunk.stem), Unit(f"{head}stem", trunk.stem, "stem")]
    for sname, stage in trunk.trunk_output.named_children():
        for bname, block in stage.named_children():
            name = f"{head}trunk_output.{sname}.{bname}"
            units += [*_large_convs(name, block), Unit(name, block, "block")]
    return units


def fsdp_units(model: SwAVModel) -> list[Unit]:
    """The modules `parallelize` shards, innermost first (the root is sharded last, not listed)."""
    units = trunk_units(model.trunk)
    if not hasattr(model.head, "prototypes"):  # a classifier head (fine-tuning): one fp32 unit
        return [*units, *_large_convs("head", model.head), Unit("head", model.head, "classifier")]
    units += _large_convs("head.projection_head", model.head.projection_head)
    units.append(Unit("head.projection_head", model.head.projection_head, "mlp"))
    for i, proto in enumerate(model.head.prototypes):
        units.append(Unit(f"head.prototypes.{i}", proto, "prototypes"))
    return units


def _shard_units(
    root: nn.Module, units: list[Unit], mesh: DeviceMesh, param_dtype: torch.dtype, reshard: bool
) -> list[Unit]:
    """`fully_shard` each unit (prototypes and classifier heads gather and reduce in fp32), then `root`."""
    main, fp32 = fsdp_policies(param_dtype)
    if param_dtype != torch.float32:
        apply_fp32_norms(root)
    for unit in units:
        policy = fp32 if unit.kind in ("prototypes", "classifier") else main
        fully_shard(unit.module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(root, mesh=mesh, mp_policy=main, reshard_after_forward=reshard)
    return units


def apply_fsdp(model: SwAVModel, mesh: DeviceMesh, param_dtype: torch.dtype) -> list[Unit]:
    """`fully_shard` every unit of `fsdp_units`, then the root; returns the units.

    On one rank nothing is sharded, so parameters stay gathered between forward and backward.
    """
    units = _shard_units(model, fsdp_units(model), mesh, param_dtype, reshard=mesh.size() > 1)
    if hasattr(model, "padded_forward"):
        register_fsdp_forward_method(model, "padded_forward")  # the SEER 10B single-pass forward
    return units


def shard_trunk(trunk: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype) -> list[Unit]:
    """`fully_shard` a bare trunk for inference (evaluation): the training units, then the trunk as root.

    Parameters are gathered per unit for its forward and freed after it (`reshard_after_forward`),
    so a rank holds its shards plus one gathered unit at a time."""
    return _shard_units(trunk, trunk_units(trunk, prefix=""), mesh, param_dtype, reshard=True)


def materialize_sharded_(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate the local shards on `device` and fill them with SEER init, independent of world size."""
    model.to_empty(device=device)
    for mname, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own and not isinstance(module, _BN):
            continue
        sharded = {n: p for n, p in own.items() if isinstance(p, DTensor)}
        for pname, param in sharded.items():  # initialise full tensors, keep this rank's chunk
            full = torch.empty(param.shape, dtype=param.dtype, device=device)
            module._parameters[pname] = nn.Parameter(full, requires_grad=param.requires_grad)
        init_weights_(module, recurse=False, seed=seed, prefix=mname)
        with torch.no_grad():
            for pname, param in sharded.items():
                full = module._parameters[pname]
                local = param.to_local()
                if local.numel():
                    mesh = param.device_mesh
                    chunk = full.chunk(mesh.size(), dim=0)[mesh.get_local_rank()]
                    local.copy_(chunk)
                module._parameters[pname] = param


def shard_sizes(model: nn.Module) -> dict[str, int]:
    """Parameters held by this rank (`local`) and in the whole model (`global`)."""
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return {"local": local, "global": total}
