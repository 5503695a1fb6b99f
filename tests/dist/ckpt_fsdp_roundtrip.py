"""torchrun --nproc-per-node 2 tests/dist/ckpt_fsdp_roundtrip.py OUT_DIR

Train-like round trip on 2 gloo ranks: an FSDP2-sharded rg-tiny SwAV model takes one SGD step and is
saved with DCP in the training engine's layout; rank 0 consolidates and slices it (seer and VISSL
layouts); a freshly initialised sharded model on both ranks loads each sliced checkpoint unit by
unit. Every full parameter and buffer must equal the trained one bit for bit. Rank 0 writes
OUT_DIR/result.json.

`... OUT_DIR SLICED REFERENCE` runs only the load and the comparison, for a sliced checkpoint made
elsewhere (the training engine) and a torch file with the expected full state dict.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from seer.checkpoints.consolidate import consolidate
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.checkpoints.slice import slice_checkpoint
from seer.models.swav_model import build_swav_model

PRESET = "rg-tiny"


def sharded_model(seed: int, num_prototypes: tuple[int, ...] | None = None) -> torch.nn.Module:
    model = build_swav_model(PRESET, "cpu", seed=seed, num_prototypes=num_prototypes)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for stage in model.trunk.trunk_output.children():
        for block in stage.children():
            fully_shard(block, mesh=mesh)
        fully_shard(stage, mesh=mesh)
    for proto in model.head.prototypes:
        fully_shard(proto, mesh=mesh)
    fully_shard(model.head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def load_and_compare(indexes: list[str], trained: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Load each sliced checkpoint into a fresh sharded model; what was sharded and what differs."""
    results = {}
    # The head the checkpoint was trained with (a recipe may override the preset's prototype counts).
    prototypes = tuple(v.shape[0] for k, v in sorted(trained.items()) if k.startswith("head.prototypes."))
    for index in indexes:
        fresh = sharded_model(seed=123, num_prototypes=prototypes)
        units = sum(isinstance(m, FSDPModule) for m in fresh.modules())
        sharded = [
            p for p in fresh.parameters() if isinstance(p, DTensor) and p.to_local().numel() < p.numel()
        ]
        load_sliced_into_(fresh, index)
        loaded = full_state(fresh)
        results[index] = {
            "units": units,
            "sharded_params": len(sharded),
            "tensors": len(loaded),
            "mismatched": [k for k in trained if not torch.equal(trained[k], loaded[k])],
        }
    return results


def train_save_and_slice(out: Path) -> dict[str, torch.Tensor]:
    """One SGD step of a sharded model, a DCP checkpoint of it, consolidated and sliced by rank 0."""
    rank = dist.get_rank()
    torch.manual_seed(0)  # same batch on both ranks: BN statistics agree, as with SyncBN in training
    model = sharded_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    emb, scores = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    (emb.square().sum() + sum(s.sum() for s in scores)).backward()
    opt.step()
    trained = full_state(model)

    ckpt = out / "run" / "checkpoints" / "iter-00000001"
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt), "extra": {}}
    dcp.save(state, checkpoint_id=str(ckpt))
    dist.barrier()
    if rank == 0:
        manifest = {
            "iteration": 1,
            "preset": PRESET,
            "config": {},
            "world_size": 2,
            "created": "now",
            "format": "seer-dcp-v1",
        }
        (ckpt / "seer_checkpoint.json").write_text(json.dumps(manifest))
        consolidate(str(ckpt), str(out / "model.pt"))
        slice_checkpoint(str(out / "model.pt"), str(out / "sliced"))
        slice_checkpoint(str(out / "model.pt"), str(out / "vissl" / "model.torch"), layout="vissl")
        # crc32s carried over from the two DCP row blocks (crc32_combine) must match the bytes.
        bad_crc = zipfile.ZipFile(out / "model.pt").testzip()
        (out / "crc.json").write_text(json.dumps({"bad_crc": bad_crc}))
    dist.barrier()
    return trained


def main(out: Path, sliced: str | None = None, reference: str | None = None) -> None:
    dist.init_process_group("gloo")
    if sliced is not None and reference is not None:
        results = load_and_compare([sliced], torch.load(reference, weights_only=True))
    else:
        trained = train_save_and_slice(out)
        results = load_and_compare([str(out / "sliced"), str(out / "vissl" / "model.torch")], trained)
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:4])
