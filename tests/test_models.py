"""SEER trunks, heads, SwAV model and initialisation (reference/seer_spec.md §1, §2.1, §3.2)."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import regnet_y_32gf, regnet_y_128gf
from torchvision.models.regnet import BlockParams

from seer.errors import ConfigError
from seer.models import (
    PRESETS,
    SwAVHead,
    build_swav_model,
    build_trunk,
    get_preset,
    init_weights_,
    materialize_,
)

SEER = ["rg32gf", "rg64gf", "rg128gf", "rg256gf", "rg10b"]


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("rg32gf", 141_333_770), ("rg64gf", 276_457_786), ("rg128gf", 637_419_894), ("rg256gf", 1_272_156_138)],
)
def test_trunk_parameter_counts_are_exact(name: str, expected: int) -> None:
    assert numel(build_trunk(name, device="meta")) == expected


def _rss_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) for key in ("VmRSS", "VmHWM")}


def test_rg10b_builds_on_meta_fast_and_small() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS (VmHWM) count here
    before = _rss_kib()["VmRSS"]
    start = time.perf_counter()
    trunk = build_trunk("rg10b", device="meta")
    seconds = time.perf_counter() - start
    peak_growth_kib = _rss_kib()["VmHWM"] - before
    assert numel(trunk) == 9_323_934_872
    assert seconds < 60
    assert peak_growth_kib < 2 * 1024 * 1024
    assert all(p.is_meta for p in trunk.parameters())


def test_stage_shapes_match_spec() -> None:
    expected = {  # widths, depths, groups of the 3×3 convs (seer_spec §1.3)
        "rg32gf": ([232, 696, 1392, 3712], [2, 5, 12, 1], [1, 3, 6, 16]),
        "rg64gf": ([328, 984, 1968, 4920], [2, 5, 12, 1], [1, 3, 6, 15]),
        "rg128gf": ([528, 1056, 2904, 7392], [2, 7, 17, 1], [2, 4, 11, 28]),
        "rg256gf": ([746, 1492, 4103, 10444], [2, 7, 17, 1], [2, 4, 11, 28]),
        "rg10b": ([2020, 4040, 11110, 28280], [2, 7, 17, 1], [2, 4, 11, 28]),
    }
    for name, (widths, depths, groups) in expected.items():
        stages = get_preset(name).stages()
        assert [s.width for s in stages] == widths, name
        assert [s.depth for s in stages] == depths, name
        assert [s.groups for s in stages] == groups, name
        assert get_preset(name).feature_dim == widths[-1]
    trunk = build_trunk("rg10b", device="meta")
    split = [round(numel(stage) / 1e6, 1) for stage in trunk.trunk_output.children()]
    assert split == [51.2, 538.8, 6891.3, 1842.6]
    conv = trunk.trunk_output.block4[0].f.b[0]
    assert (conv.groups, conv.kernel_size, conv.stride) == (28, (3, 3), (2, 2))
    bn = trunk.stem[1]
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    se = trunk.trunk_output.block2[0].f.se
    assert se.fc1.out_channels == round(0.25 * 2020)  # SE width is relative to the block input
    assert not hasattr(trunk, "fc")


def test_10b_checkpoint_groups() -> None:
    groups = get_preset("rg10b").checkpoint_groups()
    assert groups == [[range(0, 2)], [range(0, 7)], [range(0, 9), range(9, 17)], []]
    for name in PRESETS:
        for stage, stage_groups in zip(
            get_preset(name).stages(), get_preset(name).checkpoint_groups(), strict=True
        ):
            covered = [i for g in stage_groups for i in g]
            assert covered in ([], list(range(stage.depth))), name


def test_bad_checkpoint_groups_are_rejected() -> None:
    bad = dataclasses.replace(get_preset("rg10b"), stage_checkpoints=((2,), (7,), (9, 16), ()))
    with pytest.raises(ConfigError, match=r"stage 3 .* end at the stage depth 17"):
        bad.checkpoint_groups()


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Tiny CPU convs are slower with 2 threads than 1 on a shared, loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "factory"), [("rg32gf", regnet_y_32gf), ("rg128gf", regnet_y_128gf)])
def test_state_dict_layout_matches_torchvision(name: str, factory, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision's own factory, on the meta device: its width generator needs real tensors.
    generator = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return generator(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))
    with torch.device("meta"):
        reference = factory()
    expected = [(k, tuple(v.shape)) for k, v in reference.state_dict().items() if not k.startswith("fc.")]
    ours = [(k, tuple(v.shape)) for k, v in build_trunk(name, device="meta").state_dict().items()]
    assert ours == expected


def _torchvision_features_match(name: str, factory) -> None:
    torch.manual_seed(0)
    reference = factory().eval()
    reference.fc = nn.Identity()
    trunk = build_trunk(name, device="meta")
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    trunk.load_state_dict(state, assign=True, strict=True)
    trunk.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), reference(x), rtol=0, atol=1e-5)


def test_torchvision_32gf_weights_give_same_features() -> None:
    _torchvision_features_match("rg32gf", regnet_y_32gf)


@pytest.mark.slow
def test_torchvision_128gf_weights_give_same_features() -> None:
    _torchvision_features_match("rg128gf", regnet_y_128gf)


@pytest.mark.parametrize(("timm_name", "name"), [("regnety_640", "rg64gf"), ("regnety_2560", "rg256gf")])
def test_trunks_without_torchvision_twin_match_timm(timm_name: str, name: str) -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False, num_classes=0)
    shapes = sorted(tuple(p.shape) for p in reference.parameters())
    assert sorted(tuple(p.shape) for p in build_trunk(name, device="meta").parameters()) == shapes


SPATIAL = {
    224: [112, 56, 28, 14, 7],
    160: [80, 40, 20, 10, 5],
    96: [48, 24, 12, 6, 3],
    384: [192, 96, 48, 24, 12],
}


@pytest.mark.parametrize("resolution", sorted(SPATIAL))
def test_taps_have_vissl_shapes(resolution: int) -> None:
    trunk = build_trunk("rg32gf", device="meta")
    taps = ["conv1", "res2", "res3", "res4", "res5", "avgpool", "flatten"]
    out = trunk(torch.empty(2, 3, resolution, resolution, device="meta"), taps=taps)
    assert list(out) == taps
    widths = [32, 232, 696, 1392, 3712]
    for tap, width, size in zip(taps[:5], widths, SPATIAL[resolution], strict=True):
        assert tuple(out[tap].shape) == (2, width, size, size), tap
    assert tuple(out["avgpool"].shape) == (2, 3712, 1, 1)
    assert tuple(out["flatten"].shape) == (2, 3712)


def test_taps_on_real_tensors_and_early_stop() -> None:
    trunk = build_trunk("rg-tiny").eval()
    x = torch.randn(3, 3, 64, 64)
    ran: list[str] = []
    for i, stage in enumerate(trunk.trunk_output.children()):
        stage.register_forward_hook(lambda *_, i=i: ran.append(f"res{i + 2}"))
    with torch.no_grad():
        out = trunk(x, taps=["res3", "conv1"])
        assert list(out) == ["res3", "conv1"]
        assert ran == ["res2", "res3"]  # nothing past the deepest requested tap
        assert tuple(out["conv1"].shape) == (3, 16, 32, 32)
        ran.clear()
        pooled = trunk(x)
        assert tuple(pooled.shape) == (3, 128)
        torch.testing.assert_close(trunk(x, taps="flatten")["flatten"], pooled)


def test_unknown_tap_and_bad_input_are_clear_errors() -> None:
    trunk = build_trunk("rg-tiny", device="meta")
    with pytest.raises(
        ConfigError, match=r"unknown feature tap.*'res6'.*conv1, res2, res3, res4, res5, avgpool"
    ):
        trunk(torch.empty(1, 3, 32, 32, device="meta"), taps=["res6"])
    with pytest.raises(ConfigError, match="B×3×H×W"):
        trunk(torch.empty(3, 32, 32, device="meta"))


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model preset 'rg32GF'.*rg-tiny, rg-small, rg32gf.*rg10b"):
        build_trunk("rg32GF")


def test_heads_follow_the_released_configs() -> None:
    for name in SEER:
        head = build_swav_model(name, device="meta").head
        preset = get_preset(name)
        linears = [m for m in head.projection_head if isinstance(m, nn.Linear)]
        assert [linears[0].in_features] + [m.out_features for m in linears] == list(preset.head_dims)
        assert all(m.bias is not None for m in linears)
        has_bn = any(isinstance(m, nn.BatchNorm1d) for m in head.projection_head)
        assert has_bn == (name == "rg32gf"), name
        assert isinstance(head.projection_head[-1], nn.Linear)  # no BN / ReLU after the last layer
        params = dict(head.named_parameters())
        assert tuple(params["prototypes.0.weight"].shape) == (16000, 256)
        assert "prototypes.0.bias" not in params
    assert [type(m).__name__ for m in build_swav_model("rg32gf", device="meta").head.projection_head] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"
    ]  # fmt: skip
    assert (get_preset("rg-tiny").head_use_bn, get_preset("rg-tiny").num_prototypes) == (True, (64,))


def test_head_embedding_is_unit_norm_and_scores_are_dot_products() -> None:
    torch.manual_seed(0)
    head = SwAVHead([16, 32, 8], use_bn=True, num_prototypes=[10, 7])
    init_weights_(head, seed=1)
    embedding, scores = head(torch.randn(5, 16))
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(5))
    assert [tuple(s.shape) for s in scores] == [(5, 10), (5, 7)]
    torch.testing.assert_close(scores[1], embedding @ head.prototypes[1].weight.T)
    with pytest.raises(ConfigError, match="expects B×16 trunk features"):
        head(torch.randn(5, 12))
    with pytest.raises(ConfigError, match="at least one positive count"):
        SwAVHead([16, 8], use_bn=False, num_prototypes=[])


def test_multi_resolution_forward_equals_per_crop_forward() -> None:
    model = build_swav_model("rg-tiny", seed=3).eval()
    torch.manual_seed(0)
    crops = [torch.randn(4, 3, 64, 64) for _ in range(2)] + [torch.randn(4, 3, 32, 32) for _ in range(3)]
    calls: list[int] = []
    model.trunk.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        embedding, (scores,) = model(crops)
        assert calls == [8, 12]  # one trunk pass per run of same-resolution crops
        assert tuple(embedding.shape) == (20, 32) and tuple(scores.shape) == (20, 64)
        for c, crop in enumerate(crops):  # crop-major rows
            single_embedding, (single_scores,) = model([crop])
            torch.testing.assert_close(embedding[4 * c : 4 * c + 4], single_embedding, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(scores[4 * c : 4 * c + 4], single_scores, atol=1e-5, rtol=1e-5)


def test_multi_resolution_training_step_runs_on_cpu() -> None:
    model = build_swav_model("rg-tiny").train()
    crops = [torch.randn(4, 3, 64, 64)] * 2 + [torch.randn(4, 3, 32, 32)] * 2
    embedding, scores = model(crops)
    assert tuple(embedding.shape) == (16, 32)
    scores[0].logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="empty crop list"):
        model([])


def test_init_statistics_follow_the_spec() -> None:
    """Trunk: SEER init (VISSL `regnet_fsdp.init_weights`). Head: PyTorch's default, as VISSL's
    `swav_prototypes_head.py`, which never re-initialises its Linear layers (seer issue 11)."""
    torch.manual_seed(0)
    model = build_swav_model("rg-small", seed=0)
    for name, m in model.trunk.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 50_000:
            std = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
            assert abs(m.weight.std().item() / std - 1) < 0.05, name
            assert abs(m.weight.mean().item()) < 0.05 * std, name
        elif isinstance(m, nn.Conv2d) and m.bias is not None:  # SE convs keep PyTorch's default bias
            bound = 1 / math.sqrt(m.in_channels // m.groups)
            assert m.bias.abs().max().item() <= bound, name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name  # no zero-init of the last BN
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
            assert torch.equal(m.running_var, torch.ones_like(m.running_var)), name
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean)), name
        elif isinstance(m, nn.Linear):
            assert abs(m.weight.std().item() / 0.01 - 1) < 0.05, name
            assert m.bias is None or torch.equal(m.bias, torch.zeros_like(m.bias)), name
    _assert_torch_default_head_init(model.head.projection_head, "projection_head")
    _assert_torch_default_head_init(model.head.prototypes, "prototypes")


def _assert_torch_default_head_init(module: nn.Module, where: str) -> None:
    """nn.Linear.reset_parameters: weight and bias ~ U(±1/sqrt(fan_in)); BatchNorm1d weight 1, bias 0."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            for t in [t for t in (m.weight, m.bias) if t is not None]:
                assert t.abs().max().item() <= bound, (where, name)
                assert abs(t.std().item() / (bound / math.sqrt(3)) - 1) < 0.2, (
                    where,
                    name,
                )  # U(±b): std b/√3
        elif isinstance(m, nn.BatchNorm1d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), (where, name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_head_keeps_torch_default_init(name: str) -> None:
    """Every preset's head, rg10b's included, is initialised as VISSL's SwAV head: built on meta, its
    last projection Linear (the layer whose zero bias collapsed runs under LARC) and first prototype
    rows materialised alone, as the sharded engine does."""
    head = build_swav_model(name, device="meta").head
    last = head.projection_head[-1]
    materialize_(last, "cpu", seed=0, prefix=f"head.projection_head.{len(head.projection_head) - 1}")
    _assert_torch_default_head_init(last, name)
    assert last.bias.norm() > 0 and last.weight.std() > 0.5 / math.sqrt(last.in_features)
    if numel(head) < 5_000_000:
        whole = build_swav_model(name, device="cpu", seed=0).head
        _assert_torch_default_head_init(whole, name)
        torch.testing.assert_close(whole.projection_head[-1].bias, last.bias, rtol=0, atol=0)


def test_only_batchnorm_biases_start_at_zero_norm() -> None:
    """LARC leaves zero-norm parameters unscaled (apex `LARC.py`), so at init only BN biases may be 0,
    as in VISSL; a zero head bias would jump at the full LR on step 0 (seer issue 11)."""
    model = build_swav_model("rg-tiny", seed=0)
    zero = {n for n, p in model.named_parameters() if p.norm() == 0}
    bn_biases = {
        f"{mn}.bias" for mn, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert zero and zero <= bn_biases, sorted(zero - bn_biases)


def test_build_head_equals_the_models_head() -> None:
    from seer.models import build_head

    head, model = build_head("rg-tiny", seed=5), build_swav_model("rg-tiny", seed=5)
    for key, value in head.state_dict().items():
        assert torch.equal(value, model.head.state_dict()[key]), key


def test_materialize_unit_by_unit_equals_whole_model() -> None:
    whole = build_swav_model("rg-tiny", seed=7)
    pieces = build_swav_model("rg-tiny", device="meta")
    for name, module in pieces.named_modules():  # one module at a time, as the FSDP engine does
        materialize_(module, "cpu", seed=7, prefix=name, recurse=False)
    reference = whole.state_dict()
    for key, value in pieces.state_dict().items():
        assert torch.equal(value, reference[key]), key
    other = build_swav_model("rg-tiny", seed=8).state_dict()
    assert not torch.equal(other["trunk.stem.0.weight"], reference["trunk.stem.0.weight"])


def test_materialize_resets_running_stats_after_to_empty() -> None:
    trunk = build_trunk("rg-tiny", device="meta")
    materialize_(trunk.trunk_output.block1, "cpu", seed=0, prefix="trunk_output.block1")
    bn = trunk.trunk_output.block1[0].f.a[1]
    assert torch.equal(bn.running_var, torch.ones(bn.num_features)) and int(bn.num_batches_tracked) == 0
    assert trunk.stem[0].weight.is_meta  # the rest stays on meta


def test_builds_inside_a_meta_device_context() -> None:
    # torchvision's generator calls .tolist(), which fails on meta tensors; we compute it on CPU.
    with torch.device("meta"):
        model = build_swav_model("rg10b")
    assert next(model.parameters()).is_meta
    assert numel(model) == 9_323_934_872 + 300_892_416 + 4_096_000


def test_init_refuses_modules_it_does_not_know() -> None:
    with pytest.raises(ConfigError, match="cannot initialise LayerNorm"):
        init_weights_(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
