"""torchrun helper: shard PRESET with FSDP2 on the meta device and print this rank's shard as JSON;
then materialise rg-tiny sharded and check each local shard equals its chunk of the whole-model init.

Usage: torchrun --nproc-per-node N tests/dist/train_meta_shard.py PRESET
"""

from __future__ import annotations

import json
import resource
import sys

import torch
import torch.distributed as dist

from seer.config import load_config
from seer.models import build_swav_model
from seer.train.parallel import DistEnv, build_model, init_distributed, parallelize


def main(preset: str) -> None:
    env = init_distributed()
    cfg = load_config(preset, [f"model.preset={preset}", "train.activation_checkpointing=true"])
    model, info = parallelize(build_model(cfg), cfg, env, materialize=False)
    report = {
        "rank": env.rank,
        "local_params": info.local_params,
        "global_params": info.global_params,
        "fsdp_units": info.fsdp_units,
        "checkpoint_groups": info.checkpoint_groups,
        "all_meta": all(p.is_meta for p in model.parameters()),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tiny_init_matches": _tiny_init_matches(env),
    }
    print("SHARD " + json.dumps(report), flush=True)
    dist.destroy_process_group()


def _tiny_init_matches(env: DistEnv) -> bool:
    cfg = load_config("rg-tiny")
    sharded, _ = parallelize(build_model(cfg), cfg, env)
    whole = build_swav_model(
        "rg-tiny", "cpu", seed=cfg.train.seed, num_prototypes=cfg.model.num_prototypes
    ).state_dict()
    for name, param in sharded.named_parameters():
        expected = whole[name].chunk(env.world_size, dim=0)[env.rank]
        if not torch.equal(param.to_local(), expected):
            return False
    return True


if __name__ == "__main__":
    main(sys.argv[1])
