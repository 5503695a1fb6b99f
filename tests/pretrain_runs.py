"""What the multi-process `seer pretrain` tests share (test_train_engine, test_train_faults): the
small run's flags, its environment, a run that must succeed, its log, a small sharded corpus, and the
processes a launcher started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from seer import storage
from seer.data.shard import ShardSettings, shard
from seer.data.synthetic import generate_corpus
from seer.metrics import read_jsonl


def run_args(iterations: int) -> list[str]:
    """Small, fast and still learning: 32/16 px crops, SEER-like LR (4.8 at batch 16), saves every 3."""
    return [
        "--recipe", "rg-tiny",
        "--set", f"train.iterations={iterations}",
        "--set", "train.checkpoint_every=3",
        "--set", "train.keep_last=2",
        "--set", "train.log_every=1",
        "--set", "train.batch_per_gpu=8",
        "--set", "data.num_workers=0",
        "--set", "data.crops=[{size: 32, count: 2, scale: [0.3, 1.0]}, {size: 16, count: 2, scale: [0.1, 0.3]}]",
        "--set", "optim.base_lr=4.8",
        "--set", "optim.base_batch=16",
        "--set", "optim.warmup_iters=3",
        "--set", "swav.freeze_prototypes_iters=2",
        "--set", "model.num_prototypes=[64]",  # one per image of the 64-image corpus (make_shards), as rg-tiny sizes K
    ]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    """This process's environment (S3 test settings included), one thread per rank, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run(cmd: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    """Run `cmd` to the end; it must exit 0 (the failure shows the tail of its output)."""
    done = subprocess.run(cmd, env=env(**extra_env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def records(output: str | Path) -> list[dict]:
    return read_jsonl(storage.join(output, "train_log.jsonl"))


def events(output: str | Path, event: str) -> list[dict]:
    return [r for r in records(output) if r["event"] == event]


def losses(output: str | Path) -> dict[int, float]:
    """Per-iteration loss; a re-run iteration keeps its last value."""
    return {r["iteration"]: r["loss"] for r in events(output, "step")}


def make_shards(root: Path) -> Path:
    """64 small synthetic images in shards of 16 under `root`; returns the shards folder."""
    generate_corpus(root / "images", 64, seed=3, min_size=48, max_size=96)
    shard([str(root / "images")], str(root / "shards"), ShardSettings(max_samples_per_shard=16), workers=1)
    return root / "shards"


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc; torchrun starts workers in new sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree
