"""SwAV: Sinkhorn-Knopp marginals, loss against a plain reference, queue, prototype handling,
2-rank equivalence and the padded single-pass forward."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from seer.config import SwAVConfig
from seer.data.padded import pad_crops
from seer.errors import ConfigError
from seer.models import build_swav_model
from seer.ssl.multicrop import padded_swav_forward, padded_trunk_features
from seer.ssl.optim import build_optimizer
from seer.ssl.swav import PrototypeFreezer, SwAVError, SwAVLoss, normalize_prototypes_, sinkhorn_knopp

DIST = Path(__file__).parent / "dist"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cosine_scores(b: int, k: int, seed: int = 0, dim: int = 256) -> torch.Tensor:
    """Realistic SwAV scores: unit embeddings (SEER's 256-d) against unit prototypes."""
    gen = torch.Generator().manual_seed(seed)
    emb = nnf.normalize(torch.randn(b, dim, generator=gen), dim=1)
    return emb @ nnf.normalize(torch.randn(k, dim, generator=gen), dim=1).t()


def assert_equipartition(q: torch.Tensor, tol: float = 1e-4) -> None:
    """Q = q/B (K×B) has row sums 1/K and column sums 1/B, to a relative `tol`."""
    b, k = q.shape
    assert torch.isfinite(q).all()
    assert (q.sum(dim=1) - 1).abs().max() < tol  # each sample's codes: column of Q sums to 1/B
    assert (q.sum(dim=0) * k / b - 1).abs().max() < tol  # each prototype: row of Q sums to 1/K


@pytest.mark.parametrize(("b", "k"), [(64, 100), (32, 3000), (256, 300)])
def test_sinkhorn_marginals_on_random_scores(b: int, k: int) -> None:
    q = sinkhorn_knopp(cosine_scores(b, k), epsilon=0.05, n_iters=10)
    assert q.shape == (b, k) and q.dtype == torch.float32
    assert_equipartition(q)


ADVERSARIAL = {
    "very_large": lambda: torch.randn(48, 64, generator=torch.Generator().manual_seed(1)) * 1e4,
    "all_equal": lambda: torch.full((48, 64), 3.0),
    "one_hot_same_prototype": lambda: nnf.one_hot(torch.zeros(48, dtype=torch.long), 64).float(),
    "one_hot_random": lambda: nnf.one_hot(
        torch.randint(0, 64, (48,), generator=torch.Generator().manual_seed(2)), 64
    ).float(),
    "fp16_with_inf": lambda: (torch.randn(48, 64, generator=torch.Generator().manual_seed(3)) * 7e4).half(),
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("epsilon", [0.05, 0.03])
def test_sinkhorn_marginals_on_adversarial_scores(case: str, epsilon: float) -> None:
    scores = ADVERSARIAL[case]()
    assert_equipartition(sinkhorn_knopp(scores, epsilon=epsilon, n_iters=30))


def plain_sinkhorn(s: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """Sinkhorn-Knopp with loops over Python floats (float64)."""
    b, k = len(s), len(s[0])
    top = max(max(row) for row in s) / eps
    q = [[math.exp(s[j][i] / eps - top) for j in range(b)] for i in range(k)]  # K×B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        for i in range(k):
            u = sum(q[i])
            q[i] = [v * (1 / k) / u for v in q[i]]
        for j in range(b):
            col = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] *= (1 / b) / col
    cols = [sum(q[i][j] for i in range(k)) for j in range(b)]
    return [[q[i][j] / cols[j] for i in range(k)] for j in range(b)]


def plain_swav_loss(
    heads: list[torch.Tensor], num_crops: int, assign: list[int], tau: float, eps: float, iters: int
) -> float:
    total = 0.0
    for scores in heads:
        s = scores.double().tolist()
        b = len(s) // num_crops
        head = 0.0
        for c in assign:
            q = plain_sinkhorn(s[c * b : (c + 1) * b], eps, iters)
            sub = 0.0
            for p in range(num_crops):
                if p == c:
                    continue
                ce = 0.0
                for j in range(b):
                    row = [v / tau for v in s[p * b + j]]
                    lse = math.log(sum(math.exp(v) for v in row))
                    ce -= sum(q[j][i] * (row[i] - lse) for i in range(len(row)))
                sub += ce / b
            head += sub / (num_crops - 1)
        total += head / len(assign)
    return total / len(heads)


def test_sinkhorn_equals_plain_reference() -> None:
    s = cosine_scores(6, 5, seed=4)
    expected = torch.tensor(plain_sinkhorn(s.double().tolist(), 0.05, 3), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(s, 0.05, 3).double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("num_crops", "assign", "heads_k"), [(4, [0, 1], (7,)), (6, [0, 1], (9, 5)), (3, [1], (4,))]
)
def test_loss_equals_plain_reference(num_crops: int, assign: list[int], heads_k: tuple[int, ...]) -> None:
    b = 5
    gen = torch.Generator().manual_seed(num_crops)
    emb = nnf.normalize(torch.randn(num_crops * b, 8, generator=gen), dim=1)
    heads = [emb @ nnf.normalize(torch.randn(k, 8, generator=gen), dim=1).t() for k in heads_k]
    loss = SwAVLoss(
        num_crops,
        crops_for_assign=assign,
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        embedding_dim=8,
    )
    got = loss(emb, heads)
    assert got.item() == pytest.approx(plain_swav_loss(heads, num_crops, assign, 0.1, 0.05, 3), rel=1e-5)


def test_codes_carry_no_gradient_and_loss_gradient_flows_to_predictions() -> None:
    scores = cosine_scores(4 * 6, 10).requires_grad_()
    loss = SwAVLoss(4, sinkhorn_iterations=3, embedding_dim=32)(torch.zeros(24, 32), [scores])
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not sinkhorn_knopp(scores, 0.05, 3).requires_grad
    # With the codes fixed, the loss is a cross-entropy: its gradient on each predicted row sums to zero.
    assert grad.view(4, 6, 10).sum(dim=2).abs().max() < 1e-6


def test_queue_fills_then_feeds_sinkhorn_with_current_prototypes() -> None:
    b, d, k, crops = 4, 8, 6, 3
    gen = torch.Generator().manual_seed(0)
    protos = nnf.normalize(torch.randn(k, d, generator=gen), dim=1)
    batches = [nnf.normalize(torch.randn(crops * b, d, generator=gen), dim=1) for _ in range(3)]
    plain = SwAVLoss(crops, sinkhorn_iterations=3, embedding_dim=d)
    queued = SwAVLoss(crops, sinkhorn_iterations=3, embedding_dim=d, queue_length=2 * b, queue_start_iter=1)
    for it in range(2):  # iteration 0 is before queue_start_iter, iteration 1 finds it half full
        emb = batches[it]
        assert queued(emb, [emb @ protos.t()], iteration=it, prototypes=[protos]) == plain(
            emb, [emb @ protos.t()]
        )
    emb = batches[2]
    scores = emb @ protos.t()
    got = queued(emb, [scores], iteration=2, prototypes=[protos])
    expected = 0.0
    for c in (0, 1):
        past = torch.cat([batches[1][c * b : (c + 1) * b], batches[0][c * b : (c + 1) * b]])
        q = sinkhorn_knopp(torch.cat([past @ protos.t(), scores[c * b : (c + 1) * b]]), 0.05, 3)[-b:]
        for p in range(crops):
            if p != c:
                expected += (
                    -(q * nnf.log_softmax(scores[p * b : (p + 1) * b] / 0.1, dim=1)).sum(1).mean()
                    / (crops - 1)
                    / 2
                )
    torch.testing.assert_close(got, expected)
    assert got != plain(emb, [scores])
    # The queue is part of the loss state (checkpoint / resume).
    restored = SwAVLoss(crops, sinkhorn_iterations=3, embedding_dim=d, queue_length=2 * b, queue_start_iter=1)
    restored.load_state_dict(queued.state_dict())
    assert torch.equal(restored.queue, queued.queue) and int(restored.queue_filled) == 2 * b
    with pytest.raises(SwAVError, match="pass prototypes"):
        restored(emb, [scores], iteration=5)


def test_loss_rejects_bad_shapes_and_settings() -> None:
    loss = SwAVLoss(4, embedding_dim=8)
    with pytest.raises(SwAVError, match="crop-major"):
        loss(torch.zeros(10, 8), [torch.zeros(10, 5)])
    with pytest.raises(ConfigError, match="crops_for_assign"):
        SwAVLoss(2, crops_for_assign=[0, 2])
    with pytest.raises(ConfigError, match="temperature"):
        SwAVLoss(4, temperature=0)


def tiny_batch(b: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 32, 32, generator=gen)] * 2 + [torch.randn(b, 3, 16, 16, generator=gen)] * 2


def test_prototypes_frozen_then_trained_and_unit_norm_after_every_step() -> None:
    torch.manual_seed(0)
    model = build_swav_model("rg-tiny")
    proto = model.head.prototypes[0].weight
    assert normalize_prototypes_(model) == 1
    opt = build_optimizer(model, lr=0.5, weight_decay=1e-4)
    loss_fn = SwAVLoss(4, sinkhorn_iterations=3, embedding_dim=proto.shape[1])
    freezer = PrototypeFreezer(3)
    crops = tiny_batch()
    for it in range(5):
        before = proto.detach().clone()
        opt.zero_grad()
        emb, scores = model(crops)
        loss_fn(emb, scores, iteration=it).backward()
        assert proto.grad is not None
        assert freezer(model, it) == (it < 3)
        assert (proto.grad is None) == (it < 3)
        opt.step()
        normalize_prototypes_(model)
        if it < 3:
            torch.testing.assert_close(proto.detach(), before, atol=1e-6, rtol=0)
        else:
            assert (proto.detach() - before).abs().max() > 1e-5
        torch.testing.assert_close(proto.detach().norm(dim=1), torch.ones(proto.shape[0]))


def test_freezer_needs_prototype_parameters() -> None:
    with pytest.raises(SwAVError, match="no parameter name contains 'prototypes'"):
        PrototypeFreezer(5)(nn.Linear(2, 2), 0)
    assert PrototypeFreezer(5)(nn.Linear(2, 2), 5) is False
    with pytest.raises(ConfigError):
        PrototypeFreezer(-1)


class StridePoolTrunk(nn.Module):
    """res5 = 8×8 average pooling: pooled padded features must equal each unpadded crop's mean."""

    def forward(self, x: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        return {"res5": nnf.avg_pool2d(x, 8)}


def test_padded_single_pass_drops_padding_before_pooling() -> None:
    crops = [
        torch.rand(3, 3, 64, 64),
        torch.rand(3, 3, 64, 64),
        torch.rand(3, 3, 24, 24),
        torch.rand(3, 3, 40, 40),
    ]
    feats = padded_trunk_features(StridePoolTrunk(), pad_crops(crops))
    torch.testing.assert_close(feats, torch.cat([c.mean(dim=(2, 3)) for c in crops]))


def test_padded_swav_forward_matches_model_on_unpadded_crops() -> None:
    torch.manual_seed(0)
    model = build_swav_model("rg-tiny").eval()
    crops = tiny_batch(3)
    with torch.no_grad():
        emb, scores = model(crops)
        p_emb, p_scores = padded_swav_forward(model, pad_crops(crops))
    assert p_emb.shape == emb.shape and p_scores[0].shape == scores[0].shape
    torch.testing.assert_close(p_emb[:6], emb[:6], atol=1e-5, rtol=1e-4)  # the largest crops carry no padding
    torch.testing.assert_close(p_scores[0][:6], scores[0][:6], atol=1e-5, rtol=1e-4)


def _load_dist_module(name: str):
    spec = importlib.util.spec_from_file_location(name, DIST / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_torchrun(script: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(DIST / script),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    run_torchrun("dist_swav_sinkhorn.py", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _load_dist_module("dist_swav_sinkhorn").run(rank=0, world=1)
    for step in range(3):
        codes = torch.cat([r["codes"][step] for r in ranks])
        torch.testing.assert_close(codes, single["codes"][step], atol=1e-5, rtol=0)
        for key in ("loss", "queue_loss"):  # DDP averages the ranks' losses (and gradients)
            mean = (ranks[0][key][step] + ranks[1][key][step]) / 2
            torch.testing.assert_close(mean, single[key][step], atol=1e-5, rtol=0)
    assert abs(single["queue_loss"][2] - single["loss"][2]) > 1e-3  # the queue was used at step 2


def test_loss_from_config_uses_the_swav_section() -> None:
    cfg = SwAVConfig(epsilon=0.03, sinkhorn_iterations=10, queue_length=64, queue_start_iter=15)
    loss = SwAVLoss.from_config(cfg, num_crops=6, embedding_dim=256)
    assert (loss.epsilon, loss.sinkhorn_iterations, loss.temperature, loss.crops_for_assign) == (
        0.03,
        10,
        0.1,
        [0, 1],
    )
    assert loss.queue.shape == (2, 64, 256) and loss.queue_start_iter == 15


def test_loss_reports_collapse_statistics() -> None:
    """`SwAVLoss.stats` (seer issue 11): a collapsed batch (one embedding for every image) shows cosine 1
    and uniform codes (entropy ln K); a spread batch with distinct prototype winners shows neither."""
    from seer.ssl.collapse import COSINE_WARN, ENTROPY_WARN, code_entropy_ratio, collapse_warnings

    torch.manual_seed(0)
    k, b = 8, 16
    prototypes = torch.nn.functional.normalize(torch.randn(k, 4), dim=1)
    loss_fn = SwAVLoss(2, crops_for_assign=[0], epsilon=0.05, sinkhorn_iterations=3, embedding_dim=4)
    same = torch.nn.functional.normalize(torch.ones(2 * b, 4), dim=1)
    loss_fn(same, same @ prototypes.T)
    assert loss_fn.stats["embedding_cosine"].item() == pytest.approx(1.0, abs=1e-5)
    assert loss_fn.stats["code_entropy"].item() == pytest.approx(1.0, abs=1e-4)
    assert len(collapse_warnings(1.0, 1.0)) == 2
    spread = torch.cat([prototypes, prototypes]).repeat(2, 1)  # each sample sits on one prototype
    loss_fn(spread, spread @ prototypes.T)
    assert loss_fn.stats["embedding_cosine"].item() < COSINE_WARN
    assert loss_fn.stats["code_entropy"].item() < ENTROPY_WARN
    assert code_entropy_ratio(torch.eye(k)).item() == 0.0
