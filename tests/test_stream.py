"""ShardStream / build_loader: exactly once per epoch over ranks x workers, exact resume, fallbacks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from seer import storage
from seer.data.shard import ShardSettings, shard
from seer.data.stream import ShardStream, buffer_shuffle_order, build_loader
from seer.data.synthetic import generate_corpus
from seer.data.transforms import MultiCropTransform
from seer.errors import ConfigError, NotFoundError


def key_transform(data: bytes, key: str, epoch: int) -> list[torch.Tensor]:
    """Cheap stand-in for multi-crop: one 'crop' carrying the key, so batches collate like the real one."""
    assert data[:2] == b"\xff\xd8"  # the sample's JPEG bytes
    return [torch.tensor([int(key), epoch])]


def make_shards(root: str, tmp_path: Path, n: int, per_shard: int) -> str:
    generate_corpus(tmp_path / "in", n, seed=11, min_size=40, max_size=72)
    output = storage.join(root, "shards")
    shard(
        [str(tmp_path / "in")], output, ShardSettings(max_samples_per_shard=per_shard), workers=1, log=print
    )
    return storage.join(output, "manifest.json")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("stream")
    return make_shards(str(tmp / "out"), tmp, n=47, per_shard=6)  # 8 shards: 7 x 6 + 1 x 5


def epoch_keys(manifest: str, epoch: int, *, ranks: int, workers: int, batch: int, **kw) -> list[list[str]]:
    """Keys each rank's loader yields over one full epoch."""
    out = []
    for rank in range(ranks):
        stream = ShardStream(manifest, key_transform, rank=rank, world_size=ranks, seed=7, epoch=epoch, **kw)
        loader = build_loader(stream, batch, num_workers=workers)
        keys = []
        for crops, batch_keys in loader:
            assert crops[0].shape == (batch, 2)
            assert crops[0][:, 0].tolist() == [int(k) for k in batch_keys] and set(
                crops[0][:, 1].tolist()
            ) == {epoch}
            keys += batch_keys
        assert stream.state_dict()["epoch"] == epoch + 1 and stream.consumed == 0
        out.append(keys)
    return out


def test_two_ranks_two_workers_every_sample_once_per_epoch(manifest: str) -> None:
    orders = []
    for epoch in (0, 1):
        per_rank = epoch_keys(manifest, epoch, ranks=2, workers=2, batch=3, shuffle_buffer=8)
        # 47 samples / 4 workers = 11 -> 9 per worker (whole batches of 3), 18 per rank, equal on every rank
        assert [len(keys) for keys in per_rank] == [18, 18]
        everything = per_rank[0] + per_rank[1]
        assert len(set(everything)) == len(everything) == 36
        assert set(everything) <= {f"{i:010d}" for i in range(47)}
        orders.append(everything)
    assert orders[0] != orders[1] and set(orders[0]) != set(orders[1])  # reshuffled, different tail dropped


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_resume_mid_epoch_continues_exactly(manifest: str) -> None:
    for workers, consumed_batches in ((2, 3), (2, 4), (0, 5), (3, 1)):
        reference = epoch_keys(manifest, 1, ranks=1, workers=workers, batch=2, shuffle_buffer=5)[0]
        stream = ShardStream(manifest, key_transform, seed=7, epoch=1, shuffle_buffer=5)
        loader = build_loader(stream, 2, num_workers=workers)
        before = []
        for _, keys in loader:
            before += keys
            if len(before) == consumed_batches * 2:
                break
        state = loader.state_dict()
        assert state["epoch"] == 1 and state["consumed"] == consumed_batches * 2

        resumed = ShardStream(manifest, key_transform, seed=7, shuffle_buffer=5)
        resumed_loader = build_loader(resumed, 2, num_workers=workers)
        resumed_loader.load_state_dict(state)
        resumed_loader.set_epoch(1)  # a trainer calling set_epoch for the resumed epoch keeps the position
        after = [key for _, keys in resumed_loader for key in keys]
        assert before + after == reference, workers  # same batches, same order: nothing repeated or skipped
        assert resumed.state_dict()["epoch"] == 2


def test_persistent_workers_follow_epochs(manifest: str) -> None:
    stream = ShardStream(manifest, key_transform, seed=3, shuffle_buffer=4)
    loader = build_loader(stream, 4, num_workers=2, persistent_workers=True)
    assert len(loader) == 10  # 47 // 2 = 23 -> 20 per worker, 40 per rank, 10 batches of 4
    epochs = [[k for _, keys in loader for k in keys] for _ in range(2)]
    assert all(len(set(keys)) == len(keys) == 40 for keys in epochs) and epochs[0] != epochs[1]


def test_more_workers_than_shards_split_samples(tmp_path: Path) -> None:
    manifest = make_shards(str(tmp_path / "out"), tmp_path, n=10, per_shard=6)  # 2 shards
    per_rank = epoch_keys(manifest, 0, ranks=2, workers=2, batch=1, shuffle_buffer=0)
    assert [len(keys) for keys in per_rank] == [4, 4]  # 10 // 4 = 2 per worker; 2 dropped
    assert len(set(per_rank[0] + per_rank[1])) == 8
    stream = ShardStream(manifest, key_transform, rank=0, world_size=2)
    with pytest.raises(
        ConfigError, match=r"10 samples cannot feed 2 ranks x 2 loader workers = 4 workers with batch size 3"
    ):
        build_loader(stream, 3, num_workers=2)


def test_stream_from_object_storage_with_multicrop(storage_root: str, tmp_path: Path) -> None:
    manifest = make_shards(storage_root, tmp_path, n=6, per_shard=4)
    transform = MultiCropTransform("tiny", seed=0)
    stream = ShardStream(manifest, transform, shuffle_buffer=3)
    loader = build_loader(stream, 3, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2 and len({k for _, keys in batches for k in keys}) == 6
    crops, keys = batches[0]
    assert [tuple(c.shape) for c in crops] == [(3, 3, 64, 64)] * 2 + [(3, 3, 32, 32)] * 2
    stream.set_epoch(0)
    again = next(iter(loader))
    assert again[1] == keys and all(torch.equal(a, b) for a, b in zip(again[0], crops, strict=True))


def test_state_mismatch_and_bad_arguments(manifest: str) -> None:
    stream = ShardStream(manifest, key_transform, world_size=2)
    build_loader(stream, 2, num_workers=1)
    state = stream.state_dict() | {"consumed": 4}
    other = ShardStream(manifest, key_transform, world_size=2)
    build_loader(other, 2, num_workers=2)
    with pytest.raises(ConfigError, match=r"num_workers 1 -> 2"):
        other.load_state_dict(state)
    other.load_state_dict(state | {"consumed": 0, "epoch": 3})  # an epoch boundary resumes under any layout
    assert other.state_dict()["epoch"] == 3
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        ShardStream(manifest, None, rank=2, world_size=2)
    with pytest.raises(NotFoundError, match="seer shard"):
        ShardStream(manifest.replace("manifest.json", "missing.json"), None)


def test_buffer_shuffle_order_is_a_bounded_permutation() -> None:
    order = buffer_shuffle_order(500, 16, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(500))
    assert all(order[i] <= i + 16 for i in range(500))  # never ahead of what a 16-slot buffer has read
    assert (order != np.arange(500)).mean() > 0.9
    assert Counter(buffer_shuffle_order(5, 0, np.random.default_rng(0)).tolist()) == Counter(range(5))
