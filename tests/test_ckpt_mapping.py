"""timm / torchvision interop: names and shapes match the real timm and torchvision models (built on the
meta device), and converted weights give the same features and logits (slow: real rg32gf forward)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torchvision.models.regnet import BlockParams

from seer.checkpoints.consolidate import TensorSource, write_consolidated
from seer.checkpoints.convert import convert
from seer.checkpoints.io import CheckpointError, tensor_bytes
from seer.checkpoints.mapping import (
    TIMM_MODELS,
    TORCHVISION_MODELS,
    ArchitectureMismatchError,
    UnknownKeyError,
    expected_shapes,
    seer_to_timm_name,
    timm_to_seer_name,
    to_timm,
)
from seer.models.regnet import build_trunk


@pytest.fixture
def tv_on_meta(monkeypatch):
    """torchvision's own builders on the meta device (its width generator needs real tensors)."""
    generator = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return generator(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))

    def build(name: str) -> torch.nn.Module:
        with torch.device("meta"):
            return getattr(torchvision.models, name)()

    return build


@pytest.mark.parametrize("preset", sorted(TIMM_MODELS))
def test_trunk_names_and_shapes_match_timm(preset):
    with torch.device("meta"):
        ref = timm.create_model(TIMM_MODELS[preset], pretrained=False)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("head.")}
    ours = to_timm(expected_shapes(preset, "trunk"), {})
    assert ours == theirs


@pytest.mark.parametrize("preset", sorted(TORCHVISION_MODELS))
def test_trunk_names_and_shapes_match_torchvision(preset, tv_on_meta):
    ref = tv_on_meta(TORCHVISION_MODELS[preset])
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert expected_shapes(preset, "trunk") == theirs


def test_name_mapping_round_trips_and_rejects_unknown_keys():
    for name in expected_shapes("rg-tiny", "trunk"):
        assert timm_to_seer_name(seer_to_timm_name(name)) == name
    with pytest.raises(UnknownKeyError, match="not a timm regnety"):
        timm_to_seer_name("blocks.0.conv.weight")


def _randomized_rg32gf() -> tuple[torch.nn.Module, torch.nn.Linear]:
    trunk = build_trunk("rg32gf", "cpu", seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in trunk.state_dict().items():
            if name.endswith(("running_mean", "running_var", "bn.weight", ".1.weight", ".1.bias")):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
    clf = torch.nn.Linear(trunk.feature_dim, 1000)
    return trunk, clf


@pytest.mark.slow
def test_rg32gf_features_and_logits_match_timm_and_torchvision(tmp_path, tv_on_meta):
    trunk, clf = _randomized_rg32gf()
    heads = {"clf.0.weight": clf.weight.detach(), "clf.0.bias": clf.bias.detach()}
    sources = [
        TensorSource(g, k, v.dtype, tuple(v.shape), [tensor_bytes(v)])
        for g, items in (("trunk", trunk.state_dict()), ("heads", heads))
        for k, v in items.items()
    ]
    write_consolidated(str(tmp_path / "seer.pt"), "rg32gf", None, None, sources)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = trunk(x)
        logits = clf(feats)

    convert(str(tmp_path / "seer.pt"), str(tmp_path / "timm.pt"), "timm")
    with torch.device("meta"):
        tm = timm.create_model("regnety_320", pretrained=False)
    tm.load_state_dict(torch.load(tmp_path / "timm.pt", weights_only=True), assign=True)
    tm.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            tm.forward_head(tm.forward_features(x), pre_logits=True), feats, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(tm(x), logits, atol=1e-5, rtol=1e-5)

    convert(str(tmp_path / "seer.pt"), str(tmp_path / "tv.pt"), "torchvision")
    tv = tv_on_meta("regnet_y_32gf")
    tv.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), assign=True)
    tv.eval()
    with torch.no_grad():
        torch.testing.assert_close(tv(x), logits, atol=1e-5, rtol=1e-5)

    # And back: timm → seer gives the original tensors bit for bit (preset inferred from shapes).
    convert(str(tmp_path / "timm.pt"), str(tmp_path / "back.pt"), "seer")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["preset"] == "rg32gf"
    assert all(torch.equal(back["trunk"][k], v) for k, v in trunk.state_dict().items())
    assert torch.equal(back["heads"]["clf.0.weight"], clf.weight)


def test_convert_wrong_architecture_is_one_line(tmp_path):
    with torch.device("meta"):
        ref = timm.create_model("regnety_320", pretrained=False)
    state = {
        k: torch.zeros(v.shape, dtype=v.dtype)
        for k, v in ref.state_dict().items()
        if "s4" in k or "stem" in k
    }
    torch.save(state, tmp_path / "timm_partial.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"missing trunk_output\.block1") as err:
        convert(str(tmp_path / "timm_partial.pt"), str(tmp_path / "out.pt"), "seer", preset="rg32gf")
    assert "\n" not in str(err.value) and not (tmp_path / "out.pt").exists()
    with pytest.raises(CheckpointError, match="no timm equivalent"):
        sources = [
            TensorSource("trunk", "stem.0.weight", torch.float32, (1,), [tensor_bytes(torch.zeros(1))])
        ]
        write_consolidated(str(tmp_path / "tiny.pt"), "rg-tiny", None, None, sources)
        convert(str(tmp_path / "tiny.pt"), str(tmp_path / "t.pt"), "timm")
