"""Data steps: generate the demo corpus, shard images, and resolve (or generate) the evaluation sets."""

from kfp.dsl import Dataset, Input, Output

from components import seer_component


@seer_component
def generate_corpus(
    images: Output[Dataset], count: int = 256, seed: int = 0, max_size: int = 128, source_uri: str = ""
):
    """Write `count` procedural images (`seer synth`) as an image folder: the embedded default corpus.

    Args:
        images: Image folder `class_k/img_NNNNNN.<fmt>`.
        count: Number of images.
        seed: The same seed writes the same images.
        max_size: Largest side length in pixels.
        source_uri: Real images the pipeline shards instead; when set, nothing is generated.
    """
    import os

    from seer.data.synthetic import generate_corpus as generate

    os.makedirs(images.path, exist_ok=True)
    if source_uri:
        images.metadata["source"] = source_uri
        print(f"not generating: the pipeline shards {source_uri}")
        return
    paths = generate(images.path, count, seed, min_size=min(48, max_size), max_size=max_size)
    images.metadata.update({"images": len(paths), "seed": seed})
    print(f"wrote {len(paths)} images to {images.uri}")


@seer_component
def shard_images(
    images: Input[Dataset],
    shards: Output[Dataset],
    source_uri: str = "",
    max_samples_per_shard: int = 10000,
    max_short_side: int = 0,
    workers: int = 0,
):
    """Pack images into tar shards + `manifest.json` (`seer shard`).

    Args:
        images: Generated image folder, used when `source_uri` is empty.
        shards: Shards folder holding `manifest.json`.
        source_uri: Images to shard instead: folder, .tar, list file or s3:// / minio:// prefix.
        max_samples_per_shard: Close a shard at this many samples.
        max_short_side: Downscale so the short side is at most this many pixels (0 keeps the size).
        workers: Decoding processes (0: all CPU cores).
    """
    from seer.data.shard import ShardSettings, shard

    settings = ShardSettings(
        max_samples_per_shard=max_samples_per_shard, max_short_side=max_short_side or None
    )
    manifest = shard([source_uri or images.uri], shards.path, settings, workers=workers or None)
    shards.metadata.update(manifest["totals"])
    print(f"sharded {manifest['totals']['samples']} images into {shards.uri}")


@seer_component
def eval_datasets(
    datasets: Output[Dataset],
    sources: dict = {},  # noqa: B006 - KFP parameter defaults must be literals
    benchmark_sizes: dict = {},  # noqa: B006
    seed: int = 0,
):
    """Resolve every evaluation set to a URI; generate the benchmark sets no source was given for.

    Writes `datasets.json` (role → URI) that each evaluation step reads. Roles and the generated set
    that fills them: linear_train / linear_val (counting), copy_queries / copy_database /
    copy_whitening (copy-detection), geo_train / geo_val / geo_cells (geo), fairness_train /
    fairness_test (fairness). Never generated: copy_distractors (images added to the copy database)
    and test384_val (the 384 px test's set; default linear_val). Your own copy-detection sets must
    include copy_whitening: the whitening is never learnt on generated images behind your back.

    Args:
        datasets: Folder with `datasets.json` and any generated sets.
        sources: Role → URI of your own sets, e.g. {"linear_train": "s3://b/imagenet/train.csv"}.
        benchmark_sizes: Generator keyword arguments per benchmark, e.g. {"counting": {"n_train": 60}}.
        seed: Seed of the generated sets.
    """
    from seer import storage
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
        made = BENCHMARKS[kind](storage.join(datasets.path, kind), seed=seed, **sizes)
        for role, key in roles.items():
            resolved.setdefault(role, made[key])
        print(f"generated the {kind} benchmark for {', '.join(roles)}")
    # Generated sets were written under the local path; name them by the artifact URI they are stored at.
    resolved = {k: v.replace(datasets.path, datasets.uri, 1) for k, v in resolved.items()}
    storage.write_json(storage.join(datasets.path, "datasets.json"), resolved)
    datasets.metadata.update(resolved)
