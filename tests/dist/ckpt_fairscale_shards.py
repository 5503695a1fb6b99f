"""torchrun --nproc-per-node 2 tests/dist/ckpt_fairscale_shards.py VISSL_CONSOLIDATED OUT_DIR

Writes a VISSL-style sharded training checkpoint with real fairscale FSDP (its wrapping, sharding,
`local_state_dict` and `local_metadata_dict` run on CPU; only its forward needs CUDA): the trunk and
heads of VISSL_CONSOLIDATED (a `classy_state_dict` file) are rebuilt as module trees with VISSL's
names, wrapped like VISSL's `regnet_fsdp` (BN layers in their own unflattened units, each block a
flattened unit, the trunk as root; prototypes in their own unit, the head as root), and each rank
saves its `shard` file; rank 0 saves the `shard_list` (seer_spec §4).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fairscale.nn.data_parallel import FullyShardedDataParallel as FSDP
from torch import nn

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
CPU = torch.device("cpu")


def module_tree(state: dict[str, torch.Tensor]) -> nn.Module:
    """Modules named after the dotted keys, holding the tensors as parameters / buffers."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        if leaf in BUFFERS:
            module.register_buffer(leaf, value.clone())
        else:
            module.register_parameter(leaf, nn.Parameter(value.clone()))
    return root


def wrap(root: nn.Module, path: str, **kwargs: object) -> None:
    *parents, name = path.split(".")
    parent = root
    for part in parents:
        parent = parent._modules[part]
    parent.add_module(name, FSDP(parent._modules[name], compute_device=CPU, **kwargs))


def sharded(state: dict[str, torch.Tensor], units: list[tuple[str, bool]]) -> tuple[dict, dict]:
    root = module_tree(state)
    for path, flatten in units:  # innermost first
        wrap(root, path, flatten_parameters=flatten)
    model = FSDP(root, compute_device=CPU, flatten_parameters=True)
    return dict(model.local_state_dict()), model.local_metadata_dict()


def main(source: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt = torch.load(source, weights_only=True)
    model = ckpt["classy_state_dict"]["base_model"]["model"]
    trunk, heads = model["trunk"], model["heads"]
    blocks = sorted(
        {k.rsplit(".f.", 1)[0].rsplit(".proj", 1)[0].rsplit(".bn", 1)[0] for k in trunk if ".res" in k}
    )
    bns = sorted({k.rsplit(".", 1)[0] for k in trunk if k.endswith("running_mean")})
    trunk_units = [(bn, False) for bn in bns] + [(b, True) for b in blocks]
    head_units = [(p.rsplit(".", 1)[0], False) for p in heads if ".prototypes" in p]
    trunk_sd, trunk_md = sharded(trunk, trunk_units)
    heads_sd, heads_md = sharded(heads, head_units)
    shard = {
        "type": "shard",
        "iteration": ckpt.get("iteration"),
        "classy_state_dict": {
            "base_model": {
                "model": {"trunk": trunk_sd, "heads": heads_sd},
                "meta": {"trunk": trunk_md, "heads": heads_md},
            }
        },
    }
    torch.save(shard, out / f"model_iteration5_shard{rank}.torch")
    dist.barrier()
    if rank == 0:
        names = [f"model_iteration5_shard{r}.torch" for r in range(world)]
        torch.save({"type": "shard_list", "shards": names}, out / "model_iteration5.torch")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
