"""What bf16 and fp16 do to SwAV's Sinkhorn codes, against fp32 (issue: choose the GPU precision default).

Sinkhorn divides the prototype scores by ε (0.05 SEER 2021, 0.03 SEER 10B) before exponentiating, so a
rounding error δ in a score becomes a factor exp(δ/ε) in the codes. The engine scores prototypes in fp32
(embeddings cast up), so what reaches Sinkhorn in mixed precision is the rounding of the embedding and of
the projection MLP that made it. Two measurements, each against the same computation in fp32:

- ``head``: the rg32gf SwAV projection MLP (3712→4096→4096→256, BN+ReLU) run under CPU autocast to the
  dtype, on ReLU features, normalised, scored by fp32 unit prototypes (16k), in two states: ``init``
  (He-initialised head: flat scores, as early in training) and ``trained`` (last layer fitted so each
  embedding has cosine ~0.8 with one prototype);
- ``embedding``: only the final rounding of a unit embedding to the dtype (a lower bound for any path).

Reported: mean relative L1 error of the codes, share of rows whose top code changes, and the change of the
swapped-prediction cross-entropy. Prints a table and writes bench/results/sinkhorn_precision.json.

    .venv/bin/python bench/sinkhorn_precision.py [--rows 2048] [--protos 16000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seer.ssl.swav import sinkhorn_knopp

RESULTS = Path(__file__).parent / "results" / "sinkhorn_precision.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def trained_like(rows: int, protos: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit prototypes and unit targets at cosine ~0.8 to a random prototype each."""
    p = F.normalize(torch.randn(protos, dim, generator=gen), dim=1)
    owner = torch.randint(protos, (rows,), generator=gen)
    noise = F.normalize(torch.randn(rows, dim, generator=gen), dim=1)
    return p, F.normalize(0.8 * p[owner] + 0.6 * noise, dim=1)


def head_mlp(dims: tuple[int, ...], gen: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, (2 / m.in_features) ** 0.5, generator=gen)
                m.bias.zero_()
    return nn.Sequential(*layers).train()


def compare(scores32: torch.Tensor, scores_lp: torch.Tensor, eps: float) -> dict[str, float]:
    q32, qlp = sinkhorn_knopp(scores32, eps, 3), sinkhorn_knopp(scores_lp, eps, 3)
    rel = ((qlp - q32).abs().sum(1) / q32.abs().sum(1)).mean().item()
    flips = (qlp.argmax(1) != q32.argmax(1)).float().mean().item()
    logp = F.log_softmax(scores32 / 0.1, dim=1)
    ce32, celp = -(q32 * logp).sum(1).mean().item(), -(qlp * logp).sum(1).mean().item()
    return {"codes_rel_l1": rel, "top_code_changed": flips, "loss_delta": abs(celp - ce32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048, help="embeddings in the Sinkhorn batch")
    ap.add_argument("--protos", type=int, default=16000, help="prototypes K (SEER: 16000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(args.seed)
    protos, target = trained_like(args.rows, args.protos, 256, gen)

    feats = torch.relu(torch.randn(args.rows, 3712, generator=gen))
    rows = []
    for state in ("init", "trained"):
        mlp = head_mlp((3712, 4096, 4096, 256), gen)
        if state == "trained":  # fit the last layer so fp32 embeddings land on `target`, then keep it
            with torch.no_grad():
                sol = torch.linalg.lstsq(mlp[:-1](feats), target * 10.0).solution
                mlp[-1].weight.copy_(sol.t())
        with torch.no_grad():
            emb32 = F.normalize(mlp(feats), dim=1)
        s32 = emb32 @ protos.t()
        for eps in (0.05, 0.03):
            for name, dtype in DTYPES.items():
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                    emb_head = mlp(feats)
                head = compare(s32, F.normalize(emb_head.float(), dim=1) @ protos.t(), eps)
                emb = compare(s32, F.normalize(emb32.to(dtype).float(), dim=1) @ protos.t(), eps)
                rows.append({"state": state, "epsilon": eps, "dtype": name, "head": head, "embedding": emb})
    print(f"{args.rows} rows x {args.protos} prototypes, 3 Sinkhorn iterations, vs fp32 (same run)")
    print("| state | ε | dtype | path | codes rel. L1 | top code changed | |Δ loss| |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for path in ("head", "embedding"):
            m = r[path]
            print(f"| {r['state']} | {r['epsilon']} | {r['dtype']} | {path} | {m['codes_rel_l1']:.4f} | "
                  f"{m['top_code_changed']:.3f} | {m['loss_delta']:.2e} |")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"host": platform.node(), "args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
