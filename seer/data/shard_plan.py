"""`seer shard --plan`: wall time and pod count to shard a corpus with the fan-out run.

The model is throughput = pods × cores × per-core rate (images per CPU-second, as `bench/shard.py`
measures it on JPEG inputs with full validation). Sharding is embarrassingly parallel across
partitions, so wall time = images / throughput, plus the listing (one pod: `LIST_WORKERS` concurrent
S3 listings of key ranges, 1000 keys per page, written into the partitions' list files by one
process, whichever is slower) and the merge (a streaming k-way merge of the partitions'
sorted sample files). A partition holds its own sample hashes in memory (~``BYTES_PER_SAMPLE``
each) to deduplicate and to sort its samples file, which bounds how few partitions are sensible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seer.data.parallel_listing import LIST_WORKERS
from seer.errors import ConfigError

# Per-core rate from `bench/shard.py` (JPEG inputs, 256-1024 px, full validation, --max-short-side
# none/256), rounded down; measure your own images with the bench and pass --rate.
DEFAULT_RATE = 120.0
LIST_RATE = 5_000.0  # objects/s of one S3 listing stream (1000-key pages, ~0.2 s each)
LIST_WRITE_RATE = (
    30_000.0  # listed entries/s written into the partitions' gzip list files (one core, measured)
)
MERGE_RATE = 300_000.0  # samples/s of the k-way merge (gzip JSON lines, one core)
BYTES_PER_SAMPLE = 400  # partition memory per kept sample (dedup map, part records, sort)


@dataclass(frozen=True)
class ShardPlan:
    images: int
    pods: int
    cores: int
    rate: float
    shard_hours: float
    list_hours: float
    merge_hours: float
    total_hours: float
    target_hours: float
    pods_for_target: int
    partition_images: int
    partition_memory_gib: float


def plan_sharding(
    images: float, *, pods: int, cores: int, rate: float | None = None, target_hours: float = 24.0
) -> ShardPlan:
    """The plan for ``images`` inputs at ``pods`` × ``cores`` (one partition per pod)."""
    rate = DEFAULT_RATE if rate is None else rate
    if images < 1 or pods < 1 or cores < 1 or rate <= 0 or target_hours <= 0:
        raise ConfigError(
            f"--plan needs --images >= 1, --pods >= 1, --cores >= 1, --rate > 0 and --target-hours > 0 "
            f"(got {images}, {pods}, {cores}, {rate}, {target_hours})"
        )
    images = int(images)
    shard_hours = images / (pods * cores * rate) / 3600
    list_hours = images / min(LIST_RATE * LIST_WORKERS, LIST_WRITE_RATE) / 3600
    merge_hours = images / MERGE_RATE / 3600
    shard_budget = target_hours - list_hours - merge_hours
    pods_for_target = (
        math.ceil(images / (cores * rate * shard_budget * 3600)) if shard_budget > 0 else 0
    )  # 0: listing + merge alone exceed the target
    partition_images = math.ceil(images / pods)
    return ShardPlan(
        images=images,
        pods=pods,
        cores=cores,
        rate=rate,
        shard_hours=shard_hours,
        list_hours=list_hours,
        merge_hours=merge_hours,
        total_hours=shard_hours + list_hours + merge_hours,
        target_hours=target_hours,
        pods_for_target=pods_for_target,
        partition_images=partition_images,
        partition_memory_gib=partition_images * BYTES_PER_SAMPLE / (1 << 30),
    )


def print_plan(plan: ShardPlan) -> None:
    """Print the plan as a short table."""
    rows = [
        ("images", f"{plan.images:,}"),
        ("pods x cores", f"{plan.pods} x {plan.cores} = {plan.pods * plan.cores} cores"),
        ("per-core rate", f"{plan.rate:g} images/s"),
        (f"listing (1 pod, {LIST_WORKERS} streams)", f"{plan.list_hours:.1f} h"),
        ("sharding", f"{plan.shard_hours:.1f} h"),
        ("merge (1 pod)", f"{plan.merge_hours:.1f} h"),
        ("total wall time", f"{plan.total_hours:.1f} h ({plan.total_hours / 24:.1f} days)"),
        (
            f"pods for {plan.target_hours:g} h",
            f"{plan.pods_for_target} x {plan.cores} cores"
            if plan.pods_for_target
            else "impossible: listing + merge alone take longer",
        ),
        (
            "per partition",
            f"{plan.partition_images:,} images, ~{plan.partition_memory_gib:.1f} GiB memory",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
