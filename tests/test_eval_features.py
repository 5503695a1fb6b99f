"""Feature extraction: taps and pooling, the storage cache, every checkpoint format, torchrun."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from seer import storage
from seer.checkpoints.load import CheckpointLoadError, load_trunk
from seer.checkpoints.mapping import seer_to_timm_name
from seer.checkpoints.slice import slice_checkpoint
from seer.data.synthetic_benchmarks import make_counting_set
from seer.errors import ConfigError
from seer.eval import features
from seer.eval.datasets import load_dataset
from seer.eval.features import TransformSpec, cache_key, extract, parse_pool, parse_transform
from seer.eval.setup import FeatureOptions
from seer.models import build_trunk


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("features")
    return make_counting_set(str(root / "set"), n_train=10, n_val=2, max_count=2, size=32, seed=0)["train"]


def _options(**kw) -> FeatureOptions:
    return FeatureOptions(transform=parse_transform("square:32"), batch_size=4, **kw)


def test_taps_and_pooling_shapes(images: str) -> None:
    dataset = load_dataset(images)
    trunk = load_trunk("random", "rg-tiny", seed=1)
    width = trunk.trunk.feature_dim
    avg = extract(trunk, dataset, _options(tap="avgpool", pool="avg"))
    assert len(avg.arrays) == 10 and avg.stacked().shape == (10, width)
    res4 = extract(trunk, dataset, _options(tap="res4", pool="adaptive:2x1"))
    assert res4.stacked().shape[1:] == (64, 2, 1)
    rmac = extract(trunk, dataset, _options(tap="res4", pool="rmac:3"))
    regions = rmac.arrays[0]
    assert regions.ndim == 2 and regions.shape[1] == 64
    np.testing.assert_allclose(np.linalg.norm(regions, axis=1), 1.0, rtol=1e-5)
    # global average of res5 equals the trunk's own pooled output
    res5 = extract(trunk, dataset, _options(tap="res5", pool="avg")).stacked()
    np.testing.assert_allclose(res5, avg.stacked(), rtol=1e-5, atol=1e-6)


def test_bad_options_are_config_errors() -> None:
    for text in ("shorter:256", "square:x", "circle:3"):
        with pytest.raises(ConfigError, match="invalid transform"):
            parse_transform(text)
    with pytest.raises(ConfigError, match="invalid pooling"):
        parse_pool("max")
    with pytest.raises(ConfigError, match="unknown tap"):
        _options(tap="res7").validate()
    assert parse_transform("shorter:384:384:bicubic") == TransformSpec("shorter", 384, 384, "bicubic")


def test_a_value_outside_a_fields_choices_names_the_choices() -> None:
    """What the CLI's argparse `choices` refuses is refused the same way when the config comes from a
    pipeline step or Python (seer.eval.setup.check_choices)."""
    from seer.eval.fairness import FairnessConfig
    from seer.eval.geolocalization import GeoConfig
    from seer.eval.linear import LinearProtocol

    cases = [
        (GeoConfig(method="knn"), "unknown method 'knn'; choose one of nn, cells, finetuned"),
        (FairnessConfig(classifier="svm"), "unknown classifier 'svm'; choose one of linear, knn"),
        (FairnessConfig(indicator="x"), "unknown indicator 'x'; choose one of accuracy, geographic"),
        (LinearProtocol(protocol="x"), "unknown protocol 'x'; choose one of vissl, fast"),
        (_options(precision="fp8"), "unknown precision 'fp8'; choose one of auto, fp32, bf16"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            config.validate()


def test_second_extraction_hits_the_storage_cache(images: str, storage_root: str, monkeypatch) -> None:
    dataset = load_dataset(images)
    trunk = load_trunk("random", "rg-tiny")
    options = _options(tap="res4", pool="rmac:3", cache=storage.join(storage_root, "cache"))
    first = extract(trunk, dataset, options)
    assert not first.from_cache
    assert [o.uri.rsplit("/", 1)[1] for o in storage.list(options.cache)] == [
        f"{first.meta['cache_key']}.npz"
    ]

    def no_trunk(*args, **kwargs):
        raise AssertionError("the trunk ran although the cache holds these features")

    monkeypatch.setattr(features, "_run_trunk", no_trunk)
    second = extract(trunk, load_dataset(images), options)
    assert second.from_cache and second.meta == first.meta
    for a, b in zip(first.arrays, second.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    # any change of checkpoint, tap or transform is a different entry
    other = FeatureOptions(**{**options.__dict__, "tap": "res5"})
    assert cache_key(trunk.sha256, dataset.sha256(), other) != first.meta["cache_key"]
    assert cache_key("0" * 64, dataset.sha256(), options) != first.meta["cache_key"]


def test_bf16_autocast_stays_close_to_fp32(images: str) -> None:
    dataset = load_dataset(images)
    trunk = load_trunk("random", "rg-tiny")
    fp32 = extract(trunk, dataset, _options(precision="fp32")).stacked()
    bf16 = extract(trunk, dataset, _options(precision="bf16")).stacked()
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, rtol=0.1, atol=0.05)


def _trunk_state(seed: int = 3) -> dict[str, torch.Tensor]:
    return build_trunk("rg-tiny", device="cpu", seed=seed).state_dict()


def test_every_checkpoint_format_gives_the_same_features(images: str, tmp_path) -> None:
    dataset = load_dataset(images)
    state = _trunk_state()
    consolidated = str(tmp_path / "conso.pt")
    torch.save(
        {"format": "seer-consolidated-v1", "preset": "rg-tiny", "iteration": 5, "trunk": state, "heads": {}},
        consolidated,
    )
    plain = str(tmp_path / "plain.pt")
    torch.save(state, plain)
    timm = str(tmp_path / "timm.pt")
    torch.save(
        {seer_to_timm_name(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}, timm
    )
    sliced = str(tmp_path / "sliced")
    slice_checkpoint(consolidated, sliced)

    reference = extract(load_trunk(consolidated), dataset, _options()).stacked()
    for uri, preset in ((plain, "rg-tiny"), (timm, "rg-tiny"), (sliced, None)):
        loaded = load_trunk(uri, preset)
        assert loaded.preset == "rg-tiny"
        np.testing.assert_allclose(
            extract(loaded, dataset, _options()).stacked(), reference, rtol=1e-5, atol=1e-6
        )
    assert load_trunk(consolidated).sha256 != load_trunk(plain, "rg-tiny").sha256

    with pytest.raises(CheckpointLoadError, match="pass --preset"):
        load_trunk(plain)
    with pytest.raises(CheckpointLoadError, match="holds preset 'rg-tiny', not 'rg-small'"):
        load_trunk(consolidated, "rg-small")
    with pytest.raises(CheckpointLoadError, match="does not fit preset 'rg-small'"):
        load_trunk(plain, "rg-small")
    with pytest.raises(CheckpointLoadError, match="needs --preset"):
        load_trunk("random")


@pytest.mark.slow
def test_torchrun_ranks_extract_strided_shares_and_gather(images: str, tmp_path) -> None:
    script = tmp_path / "extract.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np, torch.distributed as dist
            from seer.eval.datasets import load_dataset
            from seer.checkpoints.load import load_trunk
            from seer.eval.features import extract, parse_transform
            from seer.eval.setup import FeatureOptions
            options = FeatureOptions(transform=parse_transform("square:32"), batch_size=3, cache={str(tmp_path / "cache")!r})
            feats = extract(load_trunk("random", "rg-tiny"), load_dataset({images!r}), options)
            np.save(f"{tmp_path}/rank{{dist.get_rank()}}.npy", feats.stacked())
            """
        )
    )
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        check=True,
        timeout=300,
    )
    single = extract(load_trunk("random", "rg-tiny"), load_dataset(images), _options()).stacked()
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), single, rtol=1e-5, atol=1e-6)
    # rank 0 wrote the gathered set to the cache
    assert len(storage.list(str(tmp_path / "cache"))) == 1
