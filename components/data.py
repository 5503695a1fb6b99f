"""Data steps: generate the demo corpus, list → shard partitions → merge (the sharding fan-out), and
resolve (or generate) the evaluation sets. Every output is a descriptor (seer.artifacts); the bytes
go under `data_root`."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output

from components import seer_component


@seer_component
def generate_corpus(
    images: Output[Dataset],
    data_root: str,
    count: int = 256,
    seed: int = 0,
    max_size: int = 128,
    source_uri: str = "",
):
    """Write `count` procedural images (`seer synth`) under `data_root`: the embedded default corpus.

    Args:
        images: Descriptor (seer-artifact/1) of the image folder `class_k/img_NNNNNN.<fmt>`.
        data_root: Folder or s3:// / minio:// prefix for the run's data (the images go to corpus/<key>/).
        count: Number of images.
        seed: The same seed writes the same images.
        max_size: Largest side length in pixels.
        source_uri: Real images the pipeline shards instead; when set, nothing is generated.
    """
    from seer.artifacts import metadata, write_descriptor
    from seer.data.steps import synthetic_corpus

    if source_uri:
        doc = write_descriptor(images.path, "images", source_uri)
        print(f"not generating: the pipeline shards {source_uri}")
    else:
        uri, count = synthetic_corpus(data_root, count, seed, max_size)
        doc = write_descriptor(images.path, "images", uri, count=count, seed=seed)
        print(f"{count} images in {uri}")
    images.metadata.update(metadata(doc))


@seer_component
def list_images(
    images: Input[Dataset],
    listing: Output[Dataset],
    data_root: str,
    run_id: str,
    partitions: int = 1,
    max_samples_per_shard: int = 10000,
    max_short_side: int = 0,
) -> NamedTuple("Listing", [("prefix", str), ("digest", str), ("indices", list)]):
    """List the images (streamed; per-object size and etag) for `partitions` shard steps.

    Never served from cache: it looks at the store on every run. The listing lands in
    `data_root/shards/<key>/_lists`, key = the listing digest and the shard settings, so the shard
    steps' cache keys (prefix, digest) change exactly when the listed bytes change.

    Args:
        images: Descriptor of the images (folder, .tar, list file, s3:// or minio:// prefix).
        listing: Descriptor of the listing: shards prefix, digest, counts.
        data_root: Folder or s3:// / minio:// prefix for the run's data.
        run_id: Pipeline run id (names the listing's staging folder).
        partitions: Number of shard steps (partitions) to split the listing into.
        max_samples_per_shard: Close a shard at this many samples (part of the shards prefix key).
        max_short_side: Downscale so the short side is at most this many pixels (0 keeps the size).
    """
    from collections import namedtuple

    from seer import storage
    from seer.artifacts import metadata, resolve, write_descriptor
    from seer.data.shard import ShardSettings
    from seer.data.steps import list_into_prefix

    settings = ShardSettings(
        max_samples_per_shard=max_samples_per_shard, max_short_side=max_short_side or None
    )
    listed = list_into_prefix([resolve(images.uri)], data_root, run_id, partitions, settings)
    doc = write_descriptor(
        listing.path,
        "listing",
        storage.join(listed["prefix"], "_lists"),
        prefix=listed["prefix"],
        digest=listed["digest"],
        count=listed["total"],
        partitions=partitions,
        counts=listed["counts"],
    )
    listing.metadata.update(metadata(doc))
    print(f"listed {listed['total']} images into {partitions} partitions under {listed['prefix']}")
    return namedtuple("Listing", ["prefix", "digest", "indices"])(
        listed["prefix"], listed["digest"], list(range(partitions))
    )


@seer_component
def shard_partition(
    part: Output[Dataset],
    prefix: str,
    digest: str,
    partition: int,
    partitions: int = 1,
    max_samples_per_shard: int = 10000,
    max_short_side: int = 0,
    workers: int = 0,
):
    """Shard partition `partition` of `partitions` of the listing under `prefix` (`seer shard --partition`).

    Resumable: a retried step continues after its last complete shard.

    Args:
        part: Descriptor of the partition folder pIIIII-of-NNNNN (shards + part.json).
        prefix: Shards prefix from the list step.
        digest: Listing digest from the list step (checked; it keys the step's cache).
        partition: This step's partition, 0..partitions-1.
        partitions: Number of partitions of the listing.
        max_samples_per_shard: Close a shard at this many samples.
        max_short_side: Downscale so the short side is at most this many pixels (0 keeps the size).
        workers: Decoding processes (0: all CPU cores).
    """
    from seer import storage
    from seer.artifacts import metadata, write_descriptor
    from seer.data.shard import ShardSettings, partition_dir
    from seer.data.steps import shard_listed_partition

    settings = ShardSettings(
        max_samples_per_shard=max_samples_per_shard, max_short_side=max_short_side or None
    )
    done = shard_listed_partition(prefix, digest, partition, partitions, settings, workers or None)
    totals = done["totals"]
    uri = storage.join(prefix, partition_dir(partition, partitions))
    doc = write_descriptor(
        part.path,
        "partition",
        uri,
        digest=digest,
        count=totals["samples"],
        bytes=totals["bytes"],
        totals=totals,
    )
    part.metadata.update(metadata(doc))


@seer_component
def merge_shards(shards: Output[Dataset], prefix: str, digest: str, partitions: int = 1):
    """Merge the partitions under `prefix` into one manifest (`seer shard merge`); idempotent.

    Args:
        shards: Descriptor of the shards: prefix, manifest URI and sha256, sample and byte counts.
        prefix: Shards prefix from the list step.
        digest: Listing digest from the list step (keys the step's cache).
        partitions: Number of partitions of the listing.
    """
    import hashlib

    from seer import storage
    from seer.artifacts import metadata, write_descriptor
    from seer.data.merge import merge_partitions

    manifest = merge_partitions(prefix, partitions)
    manifest_uri = storage.join(prefix, "manifest.json")
    totals = manifest["totals"]
    doc = write_descriptor(
        shards.path,
        "shards",
        prefix,
        manifest=manifest_uri,
        sha256=hashlib.sha256(storage.read_bytes(manifest_uri)).hexdigest(),
        digest=digest,
        count=totals["samples"],
        **{k: totals[k] for k in ("bytes", "shards", "rejected", "duplicates")},
    )
    shards.metadata.update(metadata(doc))
    print(f"{totals['samples']} samples in {totals['shards']} shards under {prefix}")


@seer_component
def eval_datasets(
    datasets: Output[Dataset],
    data_root: str,
    sources: dict = {},  # noqa: B006 - KFP parameter defaults must be literals
    benchmark_sizes: dict = {},  # noqa: B006
    seed: int = 0,
):
    """Resolve every evaluation set to a URI; generate the benchmark sets no source was given for.

    Writes `datasets.json` (role → URI) that each evaluation step reads; generated sets go to
    `data_root/eval-datasets/<key of the arguments>/` (the same arguments write the same files). Roles and the generated set
    that fills them: linear_train / linear_val (counting), copy_queries / copy_database /
    copy_whitening (copy-detection), geo_train / geo_val / geo_cells (geo), fairness_train /
    fairness_test (fairness). Never generated: copy_distractors (images added to the copy database)
    and test384_val (the 384 px test's set; default linear_val). Your own copy-detection sets must
    include copy_whitening: the whitening is never learnt on generated images behind your back.

    Args:
        datasets: Folder with `datasets.json` (role → URI).
        data_root: Folder or s3:// / minio:// prefix for the run's data.
        sources: Role → URI of your own sets, e.g. {"linear_train": "s3://b/imagenet/train.csv"}.
        benchmark_sizes: Generator keyword arguments per benchmark, e.g. {"counting": {"n_train": 60}}.
        seed: Seed of the generated sets.
    """
    from seer import storage
    from seer.artifacts import content_key, data_location
    from seer.data.synthetic_benchmarks import BENCHMARKS
    from seer.errors import ConfigError

    kinds = {
        "counting": {"linear_train": "train", "linear_val": "val"},
        "copy-detection": {"copy_queries": "queries", "copy_database": "database", "copy_whitening": "train"},
        "geo": {"geo_train": "train", "geo_val": "val", "geo_cells": "cells"},
        "fairness": {"fairness_train": "train", "fairness_test": "test"},
    }
    optional = {"copy_distractors", "test384_val"}
    known = {role for roles in kinds.values() for role in roles} | optional
    unknown = sorted(set(sources) - known)
    if unknown:
        raise ConfigError(f"unknown evaluation roles {unknown}; use some of {sorted(known)}")
    copy_roles = set(kinds["copy-detection"]) | {"copy_distractors"}
    if copy_roles & {r for r, v in sources.items() if v} and not sources.get("copy_whitening"):
        raise ConfigError(
            "copy-detection sources lack copy_whitening; give the separate whitening set (e.g. the "
            "whitening.csv of `seer eval import-copydays`) instead of letting a generated one stand in"
        )
    resolved = dict(sources)
    for kind, roles in kinds.items():
        if all(resolved.get(role) for role in roles if role != "geo_cells"):
            continue
        # KFP passes JSON numbers as floats; the generators count in ints.
        sizes = {k: int(v) if float(v).is_integer() else v for k, v in benchmark_sizes.get(kind, {}).items()}
        location = data_location(data_root, "eval-datasets", content_key(kind, sizes, seed), kind)
        made = BENCHMARKS[kind](location, seed=seed, **sizes)
        for role, key in roles.items():
            resolved.setdefault(role, made[key])
        print(f"generated the {kind} benchmark for {', '.join(roles)}")
    storage.write_json(storage.join(datasets.path, "datasets.json"), resolved)
    datasets.metadata.update(resolved)
