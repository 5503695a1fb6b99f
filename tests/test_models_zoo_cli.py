"""`seer models`: FLOPs, parameter counts, sizes and published counts of every preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seer.cli import main
from seer.models import PRESETS, build_trunk
from seer.models.flops import RESOLUTIONS, forward_flops, model_stats, trunk_forward_flops

# reference/perf_baseline.md "Counting FLOPs honestly": forward GFLOP at 224 / 160 / 96 px.
BASELINE_GFLOPS = {
    "rg32gf": {224: 64.6, 160: 33.0, 96: 11.9},
    "rg128gf": {224: 255.0, 160: 130.2, 96: 47.0},
    "rg256gf": {224: 508.8, 160: 259.7, 96: 93.7},
    "rg10b": {224: 3726.6, 160: 1902.6, 96: 686.5},
}
# seer_spec §1.3: forward GMACs at 384 px (1 MAC = 2 FLOPs).
SPEC_GMACS_384 = {"rg32gf": 94.8, "rg64gf": 188.2, "rg128gf": 374.6, "rg256gf": 747.2, "rg10b": 5473.4}


@pytest.fixture(scope="module")
def stats() -> dict:
    return {name: model_stats(name) for name in PRESETS}


def test_forward_gflops_match_the_baseline(stats: dict) -> None:
    for name, expected in BASELINE_GFLOPS.items():
        for resolution, gflops in expected.items():
            # The baseline rounds to 0.1; 32gf@160 counts 32.95 and 10b@160 1902.51 here.
            assert stats[name].trunk_gflops[resolution] == pytest.approx(gflops, rel=2e-3), (name, resolution)


def test_forward_gflops_at_384_match_the_spec(stats: dict) -> None:
    for name in SPEC_GMACS_384:
        assert stats[name].trunk_gflops[384] == pytest.approx(2 * SPEC_GMACS_384[name], rel=1e-3), name


@pytest.mark.parametrize(("name", "resolution"), [("rg-tiny", 64), ("rg32gf", 160)])
def test_stage_shortcut_counts_the_same_as_a_full_forward(name: str, resolution: int) -> None:
    trunk = build_trunk(name, device="meta").eval()
    full = forward_flops(trunk, torch.empty(1, 3, resolution, resolution, device="meta"))
    assert trunk_forward_flops(trunk, resolution) == full


def test_parameter_split_and_sizes(stats: dict) -> None:
    s = stats["rg10b"]
    assert (s.trunk_params, s.prototype_params) == (9_323_934_872, 16000 * 256)
    assert s.head_params == 28280 * 8192 + 8192 + 8192 * 8192 + 8192 + 8192 * 256 + 256
    assert s.total_params == 9_628_923_288
    assert round(s.fp32_bytes / 2**30, 2) == 35.87  # the README's "around 36GB" checkpoint
    assert s.bf16_bytes * 2 == s.fp32_bytes
    assert s.stage_params == tuple(
        sum(p.numel() for p in st.parameters()) for st in build_trunk("rg10b", "meta").trunk_output
    )
    assert stats["rg32gf"].head_params == 33_054_976  # [3712, 4096, 4096, 256] with BN affine (§1.5)
    assert (stats["rg32gf"].feature_dim, stats["rg32gf"].embedding_dim) == (3712, 256)


def _round_like(count: int, published: str) -> bool:
    """Does `count` round to the published string (same unit, same number of decimals)?"""
    scale = {"M": 1e6, "B": 1e9}[published[-1]]
    digits = published[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return round(count / scale, decimals) == float(digits)


def test_published_counts_are_reproduced_or_flagged(stats: dict) -> None:
    reproduced = {}
    for name, preset in PRESETS.items():
        s = stats[name]
        if preset.published_params is None:
            assert s.published_includes == "-"
            continue
        if s.published_count is None:
            assert s.published_includes.startswith("NOT reproducible"), name
        else:
            assert _round_like(s.published_count, preset.published_params), name
            reproduced[name] = s.published_count
    assert reproduced == {"rg32gf": 155_975_690, "rg128gf": 693_399_254, "rg10b": 9_628_923_288}
    assert "VISSL default head [W,W,128] + 3000 prototypes" in stats["rg32gf"].published_includes
    # 250M and 1.5B match no combination we can build (seer_spec §1.5, §7.1).
    assert not _round_like(stats["rg64gf"].trunk_params, "250M")


def test_models_json_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PRESETS)
    by_name = {r["name"]: r for r in rows}
    assert by_name["rg256gf"]["trunk_params"] == 1_272_156_138
    assert set(by_name["rg10b"]["trunk_gflops"]) == {str(r) for r in RESOLUTIONS}
    assert by_name["rg10b"]["preset"]["stage_checkpoints"] == [[2], [7], [9, 17], []]
    assert by_name["rg32gf"]["preset"]["published_params"] == "156M"
    assert by_name["rg-tiny"]["stages"][0] == {"width": 16, "depth": 1, "group_width": 8, "groups": 2}


def test_models_table_and_preset_detail(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name} " in table
    assert "141.33M" in table and "35.87 GiB" in table and "NOT reproducible" in table
    assert main(["models", "--preset", "rg10b"]) == 0
    detail = capsys.readouterr().out
    assert "res4  11110     17      11" in detail  # stage 3: width, depth, groups
    assert "14x14  0-8, 9-16" in detail  # output size at 224 px and checkpointed block groups


def test_models_unknown_preset_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--preset", "rg65gf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown model preset 'rg65gf'; choose one of: rg-tiny, rg-small, rg32gf" in err


@pytest.mark.slow  # a fresh interpreter importing torch: 5-15 s on a shared 2-core machine
def test_installed_console_script_runs() -> None:
    seer = Path(sys.executable).with_name("seer")
    if not seer.exists():
        pytest.fail(f"console script {seer} missing: run `make install`")
    out = subprocess.run(
        [str(seer), "models", "--preset", "rg-tiny", "--json"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trunk_params"] == 99_840
