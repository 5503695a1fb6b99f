"""Run by torchrun (2 ranks, gloo) from tests/test_swav.py: each rank takes its half of a fixed global
batch and saves its Sinkhorn codes and SwAV losses (with and without a queue) to OUT/rank{r}.pt.

Data comes from `global_batch(step)`, which the test also calls to compute the single-process answer.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as nnf

from seer.ssl.swav import SwAVLoss, sinkhorn_knopp

NUM_CROPS, BATCH, DIM, HEADS_K = 4, 8, 16, (24, 11)  # BATCH is the global batch
EPSILON, ITERS = 0.05, 10


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(scores for the plain Sinkhorn check, embedding, per-head scores, per-head prototypes): crop-major
    global tensors, the same on every rank."""
    gen = torch.Generator().manual_seed(1000 + step)
    embedding = nnf.normalize(torch.randn(NUM_CROPS * BATCH, DIM, generator=gen), dim=1)
    protos = [nnf.normalize(torch.randn(k, DIM, generator=gen), dim=1) for k in HEADS_K]
    scores = [embedding @ p.t() for p in protos]
    plain = torch.randn(BATCH, 30, generator=gen)
    return plain, embedding, scores, protos


def local_rows(t: torch.Tensor, rank: int, world: int, crops: int) -> torch.Tensor:
    """This rank's rows of a crop-major global tensor: its slice of every crop's block."""
    per = BATCH // world
    return torch.cat([t[c * BATCH + rank * per : c * BATCH + (rank + 1) * per] for c in range(crops)])


def run(rank: int, world: int) -> dict[str, object]:
    out: dict[str, object] = {"codes": [], "loss": [], "queue_loss": []}
    loss_fn = SwAVLoss(NUM_CROPS, epsilon=EPSILON, sinkhorn_iterations=ITERS, embedding_dim=DIM)
    queue_fn = SwAVLoss(NUM_CROPS, epsilon=EPSILON, sinkhorn_iterations=ITERS, embedding_dim=DIM,
                        queue_length=2 * BATCH)  # fmt: skip
    for step in range(3):
        plain, embedding, scores, protos = global_batch(step)
        out["codes"].append(sinkhorn_knopp(local_rows(plain, rank, world, 1), EPSILON, ITERS))
        emb = local_rows(embedding, rank, world, NUM_CROPS)
        local_scores = [local_rows(s, rank, world, NUM_CROPS) for s in scores]
        out["loss"].append(loss_fn(emb, local_scores, iteration=step).detach())
        out["queue_loss"].append(queue_fn(emb, local_scores, iteration=step, prototypes=protos).detach())
    return out


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(run(rank, world), f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
