"""Typed configs: recipes load, overrides apply, and bad input fails before any work with a precise message."""

from __future__ import annotations

import pytest

from seer.cli import main
from seer.config import ConfigError, config_to_dict, from_dict, global_batch, list_recipes, load_config


def test_every_bundled_recipe_loads_and_validates() -> None:
    names = list_recipes()
    assert {"rg-tiny", "rg-small", "rg32gf", "rg64gf", "rg128gf", "rg256gf", "rg10b"} <= set(names)
    for name in names:
        load_config(name)


def test_rg10b_recipe_carries_the_10b_settings() -> None:
    cfg = load_config("rg10b", world_size=496)
    assert cfg.model.preset == "rg10b"
    assert [(c.size, c.count) for c in cfg.data.crops] == [(160, 2), (96, 4)]
    assert cfg.swav.epsilon == 0.03 and cfg.swav.sinkhorn_iterations == 10
    assert global_batch(cfg, 496) == 7936
    assert cfg.optim.warmup_iters is None and cfg.optim.warmup_fraction == pytest.approx(0.043648)
    assert cfg.train.checkpoint_every == 100


def test_inherited_recipe_overrides_only_what_it_names() -> None:
    cfg = load_config("rg128gf")
    base = load_config("seer2021")
    assert cfg.model.preset == "rg128gf"
    assert config_to_dict(cfg)["optim"] == config_to_dict(base)["optim"]


def test_overrides_are_parsed_as_yaml_and_typed() -> None:
    cfg = load_config(
        "rg-tiny",
        [
            "optim.base_lr=0.6",
            "swav.crops_for_assign=[0, 1]",
            "train.activation_checkpointing=true",
            "train.iterations=7",
        ],
    )
    assert cfg.optim.base_lr == 0.6
    assert cfg.train.activation_checkpointing is True
    assert cfg.train.iterations == 7
    assert isinstance(cfg.optim.base_lr, float)


def test_round_trip_through_dict() -> None:
    cfg = load_config("rg10b", ["train.seed=3"])
    assert from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.lrr=0.1", ["unknown key 'train.lrr'", "allowed keys"]),
        ("train.lr=0.1", ["unknown key 'train.lr'", "did you mean optim.base_lr or optim.start_lr?"]),
        ("train.weight_decay=0.1", ["did you mean optim.weight_decay?"]),
        ("bogus.x=1", ["unknown key 'bogus'", "model, data, swav, optim, train"]),
        ("train.iterations=ten", ["train.iterations", "expected an integer", "'ten'"]),
        ("train.activation_checkpointing=3", ["train.activation_checkpointing", "true or false"]),
        ("train.precision=fp8", ["train.precision", "'fp8'", "'bf16'"]),
        ("optim.base_lr=-0.3", ["optim.base_lr", "-0.3"]),
        ("data.crops=[]", ["data.crops", "empty"]),
        ("data.crops=[{size: 64, count: 2, scale: [0.5, 0.2]}]", ["data.crops[0].scale", "low <= high"]),
        ("swav.crops_for_assign=[0, 9]", ["swav.crops_for_assign", "0..3"]),
        ("swav.epsilon=0", ["swav.epsilon", "> 0"]),
        ("model.preset=rg999", ["model.preset", "rg999", "rg10b"]),
        ("model.num_prototypes=256", ["model.num_prototypes", "got 256", "write [256] for a list of one"]),
        ("train.iterations", ["section.key=value"]),
    ],
)
def test_bad_values_fail_with_the_key_and_the_fix(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("rg-tiny", [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_global_batch_must_divide_the_world_size() -> None:
    with pytest.raises(ConfigError, match=r"train.global_batch: 7936 is not divisible by the world size 3"):
        load_config("rg10b", world_size=3)
    with pytest.raises(ConfigError, match=r"per rank, but train.batch_per_gpu is 16"):
        load_config("rg10b", world_size=248)


def test_unknown_recipe_lists_the_bundled_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*rg-tiny"):
        load_config("nope")


def test_yaml_file_with_inherit(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: rg-tiny\ntrain:\n  iterations: 5\n")
    cfg = load_config(str(path))
    assert cfg.model.preset == "rg-tiny" and cfg.train.iterations == 5
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"inherit: {loop}\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(str(loop))


def test_cli_prints_config_and_reports_errors_in_one_line(capsys) -> None:
    assert main(["config", "show", "--recipe", "rg-tiny", "--set", "train.iterations=9"]) == 0
    assert "iterations: 9" in capsys.readouterr().out
    assert main(["config", "show", "--set", "optim.base_lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.base_lr" in err[0]
