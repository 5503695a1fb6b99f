"""fp16 beside bf16 (issue 18 item 3): precision names, FSDP2 policies, the loss scaler, an fp16 step.

SEER trained in fp16 (seer_spec §3.2: 2021 apex O1; 10B FSDP `compute_dtype: float16`,
`fp32_reduce_scatter: False`, BN and prototypes in fp32). The scaler is checked against torch's own
`torch.amp.GradScaler` rule (init 2^16, backoff 0.5 on inf/NaN with the step skipped, growth 2 after
`growth_interval` clean steps: torch/amp/grad_scaler.py) on the same gradient sequence.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seer.config import load_config
from seer.train.engine import SwAVStep
from seer.train.parallel import LossScaler, build_model, init_distributed, parallelize
from seer.train.parallel.precision import fsdp_policies, resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_precision_names_and_fsdp_policies() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    dtypes = {
        p: resolve_precision(load_config("rg-tiny", [f"train.precision={p}"]), cpu)
        for p in ("fp32", "bf16", "fp16")
    }
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    auto = load_config("rg-tiny", ["train.precision=auto"])
    assert resolve_precision(auto, gpu) == torch.bfloat16 and resolve_precision(auto, cpu) == torch.float32
    main, protos = fsdp_policies(torch.float16)  # SEER 10B: fp16 compute and fp16 reduce-scatter
    assert (main.param_dtype, main.reduce_dtype) == (torch.float16, torch.float16)
    assert (protos.param_dtype, protos.reduce_dtype) == (torch.float32, torch.float32)
    main, protos = fsdp_policies(torch.bfloat16)  # bf16 (the GPU default) reduces in fp32
    assert (main.param_dtype, main.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (protos.param_dtype, protos.reduce_dtype) == (torch.float32, torch.float32)


def test_loss_scaler_follows_torch_grad_scaler() -> None:
    """Same skips and the same scale as torch.amp.GradScaler("cpu", growth_interval=2) step by step."""
    ours_p, ref_p = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    ours = LossScaler(torch.device("cpu"), growth_interval=2)
    ref = torch.amp.GradScaler("cpu", growth_interval=2)
    ref_opt = torch.optim.SGD([ref_p], lr=0.0)
    inf, nan = float("inf"), float("nan")
    grads = [[1.0, 2.0, 3.0], [inf, 0.0, 0.0], [1.0] * 3, [1.0] * 3, [1.0] * 3, [nan, 0.0, 0.0], [2.0] * 3]
    for g in grads:
        scale = float(ours.scale)
        assert scale == float(ref.scale(torch.tensor(1.0)))
        ours_p.grad = torch.tensor(g) * scale
        ref_p.grad = torch.tensor(g) * scale
        ok = ours.unscale_([ours_p])
        ref.unscale_(ref_opt)
        ref_found = sum(
            v.item() for v in ref._per_optimizer_states[id(ref_opt)]["found_inf_per_device"].values()
        )
        assert ok == (ref_found == 0)
        if ok:
            torch.testing.assert_close(ours_p.grad, torch.tensor(g))
        ref.step(ref_opt)
        ref.update()
    assert float(ours.scale) == ref.get_scale() == 2.0**16 * 0.5 * 2 * 0.5
    state = ours.state_dict()
    fresh = LossScaler(torch.device("cpu"))
    fresh.load_state_dict(state)
    assert float(fresh.scale) == float(ours.scale) and int(fresh.growth_tracker) == int(ours.growth_tracker)


def test_fp16_step_keeps_fp32_masters_bn_and_prototypes_and_skips_overflowing_steps(
    single_process_group: None,
) -> None:
    cfg = load_config("rg-tiny", ["train.precision=fp16", "swav.freeze_prototypes_iters=0"])
    step = SwAVStep(cfg, init_distributed())
    assert step.info.param_dtype == "float16" and step.scaler is not None
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(4, 3, 64, 64, generator=gen)] * 2 + [torch.randn(4, 3, 32, 32, generator=gen)] * 2
    embedding, scores = step.model(crops)
    assert embedding.dtype == torch.float16 and scores[0].dtype == torch.float32  # prototypes score in fp32
    bn = step.model.trunk.stem[1]
    assert bn.weight.dtype == bn.running_mean.dtype == torch.float32
    before = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    scales = []
    for i in range(12):
        step(crops, i)
        scales.append(float(step.scaler.scale))
        if any(not torch.equal(p, before[n]) for n, p in step.model.named_parameters()):
            break
    else:
        pytest.fail(f"no fp16 step was applied in 12 iterations (scales {scales})")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in step.model.parameters())
    # 2^16 overflows this tiny net's fp16 backward: the scaler halved it and skipped those steps
    assert scales[0] == 2.0**15 and scales == sorted(scales, reverse=True)


def test_fp16_fsdp_policy_gathers_fp16_and_keeps_fp32_bn_and_prototypes(single_process_group: None) -> None:
    cfg = load_config("rg-tiny", ["train.precision=fp16"])
    model, info = parallelize(build_model(cfg), cfg, init_distributed(), shard=True)
    assert info.param_dtype == "float16" and info.fsdp_units > 0
    x = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))] * 2
    embedding, scores = model(x)
    assert embedding.dtype == torch.float16 and scores[0].dtype == torch.float32
    scores[0].logsumexp(dim=1).mean().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p.grad.to_local()).all() for p in model.parameters())
