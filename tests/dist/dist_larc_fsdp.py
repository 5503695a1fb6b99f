"""Run by torchrun (2 ranks, gloo) from tests/test_optim.py: trains a small module with LARC twice,
FSDP2-sharded over the 2 ranks and whole (unsharded, in-process), then normalises its prototypes,
and saves both results to OUT/rank{r}.pt.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from seer.ssl.optim import LARC
from seer.ssl.swav import normalize_prototypes_

STEPS = 3


class Small(nn.Module):
    """Odd row counts (uneven shards), a zero bias (LARC's zero-norm branch) and a prototypes layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 5)
        self.extra = nn.Linear(5, 7)
        self.prototypes = nn.Linear(7, 5, bias=False)
        with torch.no_grad():
            self.extra.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(torch.tanh(self.extra(torch.tanh(self.body(x)))))


def train(model: nn.Module) -> None:
    opt = LARC(model.parameters(), lr=1.0, momentum=0.9, weight_decay=0.05, trust_coefficient=0.02)
    for step in range(STEPS):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).sum().backward()
        if step == 0:
            model.extra.bias.grad = None  # a frozen parameter: skipped, no decay, no momentum
        opt.step()
        opt.zero_grad()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    whole = Small()
    sharded = copy.deepcopy(whole)
    initial = {k: v.clone() for k, v in whole.state_dict().items()}
    fully_shard(sharded, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    train(whole)
    train(sharded)
    normalize_prototypes_(whole)
    normalize_prototypes_(sharded)
    result = {
        "initial": initial,
        "whole": {k: v.detach().clone() for k, v in whole.state_dict().items()},
        "sharded": {k: v.full_tensor().detach().clone() for k, v in sharded.state_dict().items()},
        "local_rows": {k: v.to_local().shape[0] for k, v in sharded.state_dict().items()},
    }
    torch.save(result, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
