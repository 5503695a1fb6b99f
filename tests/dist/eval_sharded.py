"""torchrun helper for tests/test_eval_sharded.py.

`eval_sharded.py load SLICED TRAIN VAL OUT`: load the sliced trunk sharded (`--shard on`), record every
slice read (name, rows kept, bytes kept), extract the train set's features, run kNN and the linear probe
sharded, and write OUT/rank<R>.json + OUT/features<R>.npy.
`eval_sharded.py meta PRESET OUT`: shard PRESET on the meta device (no weights read) and write the shard sizes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from seer.checkpoints import load_sliced
from seer.eval import knn, linear, sharded, test384
from seer.eval.datasets import load_dataset
from seer.eval.features import extract, parse_transform
from seer.eval.setup import FeatureOptions, RunSettings, load_model


def _options() -> FeatureOptions:
    return FeatureOptions(transform=parse_transform("square:32"), batch_size=4, num_workers=0)


def load(sliced: str, train: str, val: str, out: Path) -> None:
    reads: list[dict] = []
    real_read = load_sliced.read_slice

    def recording_read(entry, rows=None):
        data = real_read(entry, rows)
        reads.append({"fqn": entry.fqn, "shape": list(entry.shape or ()), "rows": rows, "kept_bytes": data.nbytes})
        return data

    load_sliced.read_slice = recording_read
    loaded = load_model(RunSettings(sliced, shard="on", device="cpu"))
    load_sliced.read_slice = real_read
    rank = dist.get_rank()
    np.save(out / f"features{rank}.npy", extract(loaded, load_dataset(train), _options()).stacked())
    common = {"checkpoint": sliced, "shard": "on", "device": "cpu", "options": _options()}
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "shard_sizes": loaded.shard_sizes,
        "reads": reads,
        "knn": knn.run(train, val, **common)["metrics"],
        "linear": linear.run(
            train, val, config=linear.LinearConfig.for_epochs(3), save_classifier_uri=str(out / "clf.pt"), **common
        )["metrics"],
    }
    # the probe's classifier references the sharded trunk; test384 loads that trunk sharded again
    result["test384"] = test384.run(val, str(out / "clf.pt"), shard="on", device="cpu", resolution=32)["metrics"]
    # the fast protocol's features: every rank writes its rows into one memory-mapped file, no gather
    real_gather, dist.all_gather_object = dist.all_gather_object, None
    fast = linear.LinearProtocol("fast", feature_dir=str(out / "features"))
    result["linear_fast"] = linear.run(
        train, val, config=linear.LinearConfig.for_epochs(3), protocol=fast, **common
    )["metrics"]
    dist.all_gather_object = real_gather
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def meta(preset: str, out: Path) -> None:
    import torch

    sharded.should_shard("on", "random", preset, torch.device("cpu"), 2)
    trunk = sharded._sharded_meta_trunk(preset, torch.device("cpu"))
    from seer.train.parallel.fsdp import shard_sizes

    sizes = {**shard_sizes(trunk), "all_meta": all(p.is_meta for p in trunk.parameters())}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(sizes))


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
    else:
        dist.init_process_group("gloo")
        meta(sys.argv[2], Path(sys.argv[3]))
    dist.destroy_process_group()
