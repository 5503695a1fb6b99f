"""Artifacts by reference (seer.artifacts, docs/artifacts.md): descriptors stay small and point at the
data, and the shard steps' KFP cache key changes exactly when the listed images change."""

import hashlib
import json
import time
from pathlib import Path

import pytest
from kfp.dsl import Dataset

import components
from seer import artifacts, storage
from seer.data.synthetic import generate_corpus
from seer.errors import ConfigError, NotFoundError


def test_descriptor_roundtrip_resolve_and_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "shards")
    doc = artifacts.write_descriptor(path, "shards", "s3://b/run/shards", sha256="ab", count=3)
    assert artifacts.read_descriptor(path, "shards") == doc and doc["format"] == artifacts.FORMAT
    assert artifacts.resolve(path) == "s3://b/run/shards"
    data = tmp_path / "model.pt"
    data.write_bytes(b"{not a descriptor}")
    assert artifacts.resolve(str(data)) == str(data) and artifacts.resolve(str(tmp_path / "no")) == str(
        tmp_path / "no"
    )
    with pytest.raises(ConfigError, match="describes 'shards' data, this step needs 'run'"):
        artifacts.read_descriptor(path, "run")
    with pytest.raises(NotFoundError, match="not a seer artifact descriptor"):
        artifacts.read_descriptor(str(data))
    with pytest.raises(ConfigError, match="keep per-sample lists in the data folder"):
        artifacts.write_descriptor(str(tmp_path / "big"), "listing", "x", keys=["k" * 100] * 1000)
    assert not (tmp_path / "big").exists()
    with pytest.raises(ConfigError, match="set the pipeline parameter data_root"):
        artifacts.data_location("", "runs")


def kfp_cache_key(component, parameters: dict, artifact_names: dict | None = None) -> str:
    """The cache fingerprint the KFP backend gives a task (kubeflow/pipelines backend/src/v2/cacheutils/
    cache.go: GenerateCacheKey keeps input artifact *names* (MLMD ids, not content or metadata), input
    parameter values, output artifact types with URIs wiped, output parameter types and the container's
    image and command/args; GenerateFingerPrint is sha256 of its JSON with sorted keys)."""
    spec = component.component_spec
    container = spec.implementation.container
    key = {
        "inputArtifactNames": artifact_names or {},
        "inputParameterValues": {
            name: parameters.get(name, item.default)
            for name, item in (spec.inputs or {}).items()
            if not item.type.startswith("system.")
        },
        "outputArtifactsSpec": {name: item.type for name, item in (spec.outputs or {}).items()},
        "containerSpec": {"image": container.image, "cmdArgs": [*container.command, *(container.args or [])]},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _list(images: str, data_root: str, out: Path, run_id: str) -> tuple[dict, dict]:
    """Run the list step on `images`; returns (its outputs, the listing descriptor)."""
    source = Dataset(name="images", uri=str(out / f"images-{run_id}"), metadata={})
    artifacts.write_descriptor(source.path, "images", images)
    listing = Dataset(name="listing", uri=str(out / f"listing-{run_id}"), metadata={})
    result = components.list_images.python_func(
        images=source, listing=listing, data_root=data_root, run_id=run_id, partitions=2
    )
    return result._asdict(), artifacts.read_descriptor(listing.path, "listing")


def test_changing_the_images_changes_the_shard_steps_cache_key(storage_root: str, tmp_path: Path) -> None:
    """The list step is never cached (it looks at the store); the shard steps take only parameters
    from it (prefix, digest), so their KFP cache key is the listed bytes' (size and etag per object)."""
    local = tmp_path / "corpus"
    for path in generate_corpus(local, 6, seed=3, max_size=64):
        storage.put(str(path), storage.join(storage_root, "images", path.relative_to(local).as_posix()))
    images, data_root = storage.join(storage_root, "images"), storage.join(storage_root, "data")

    def key(listed: dict) -> str:
        args = {"prefix": listed["prefix"], "digest": listed["digest"], "partition": 0, "partitions": 2}
        return kfp_cache_key(components.shard_partition, args)

    first, listing = _list(images, data_root, tmp_path, "run1")
    assert listing["count"] == 6 and first["indices"] == [0, 1]
    assert first["prefix"].startswith(data_root) and listing["digest"] == first["digest"]
    again, _ = _list(images, data_root, tmp_path, "run2")
    assert key(again) == key(first), "unchanged images: a later run's shard steps are served from cache"
    assert not storage.list(storage.join(data_root, "listings")), "staging listings are removed"

    # Same name, same size, other bytes (an edited image): only its version (size:etag) tells.
    victim = storage.join(images, "class_0/img_000000.jpg")
    data = bytearray(storage.read_bytes(victim))
    data[-3] ^= 0xFF
    time.sleep(0.01)
    storage.write_bytes(victim, bytes(data))
    edited, _ = _list(images, data_root, tmp_path, "run3")
    assert key(edited) != key(first) and edited["prefix"] != first["prefix"]

    storage.copy(victim, storage.join(images, "class_0/img_new.jpg"))
    added, listing = _list(images, data_root, tmp_path, "run4")
    assert listing["count"] == 7 and key(added) not in {key(first), key(edited)}

    # The partitions and the merge work in the listed prefix; what KFP stores is a few hundred bytes.
    parts = []
    for partition in range(2):
        part = Dataset(name="part", uri=str(tmp_path / f"part{partition}"), metadata={})
        components.shard_partition.python_func(
            part=part,
            prefix=added["prefix"],
            digest=added["digest"],
            partition=partition,
            partitions=2,
            workers=1,
        )
        parts.append(artifacts.read_descriptor(part.path, "partition"))
    shards = Dataset(name="shards", uri=str(tmp_path / "shards"), metadata={})
    components.merge_shards.python_func(
        shards=shards, prefix=added["prefix"], digest=added["digest"], partitions=2
    )
    doc = artifacts.read_descriptor(shards.path, "shards")
    assert (
        doc["uri"] == added["prefix"] and doc["count"] == 6 and doc["duplicates"] == 1
    )  # img_new copies img_0
    assert sum(p["count"] + p["totals"]["duplicates"] for p in parts) == 7
    assert shards.metadata["sha256"] == doc["sha256"]
    assert doc["sha256"] == hashlib.sha256(storage.read_bytes(doc["manifest"])).hexdigest()
    assert Path(shards.path).stat().st_size < 2048
    with pytest.raises(ConfigError, match="pass the prefix and digest of the same list step"):
        components.shard_partition.python_func(
            part=part, prefix=added["prefix"], digest=first["digest"], partition=0, partitions=2, workers=1
        )
