"""Fan-out sharding: list -> N partitions -> merge gives the single run's samples and accounting.

What users depend on: whatever N, every valid image becomes exactly one training sample (by
content hash, and with the key a single run gives it), rejects and duplicates add up the same, a
killed partition re-run loses or doubles nothing, and the merge can be repeated. Readers (here
``ShardStream``) skip the copies the merge excluded.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from seer import storage
from seer.cli import main
from seer.data.listing import list_inputs, partition_inputs, partition_of, read_listing
from seer.data.merge import merge_partitions
from seer.data.shard import (
    ShardSettings,
    iter_records,
    read_exclusions,
    read_manifest,
    shard,
    shard_partition,
)
from seer.data.stream import ShardStream, build_loader
from seer.data.synthetic import generate_corpus, generate_nasty_corpus
from seer.errors import ConfigError
from seer.eval.datasets import load_dataset
from tests.kill import sigkill_once_exists

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ShardSettings(max_samples_per_shard=3)
QUIET = {"log": lambda _: None}


def make_corpus(root: Path) -> Path:
    """Nasty cases + small images + copies of a few files at neighbouring listing indices (other partitions)."""
    folder = root / "in"
    generate_nasty_corpus(folder)
    paths = generate_corpus(folder / "gen", 14, seed=3, min_size=40, max_size=80, formats=("jpg", "png"))
    for copy in range(3):  # exact copies of a JPEG and a PNG, and of the nasty ok.jpg
        shutil.copyfile(paths[0], folder / f"copy{copy}_of_first.jpg")
        shutil.copyfile(paths[1], folder / f"copy{copy}_of_second.png")
        shutil.copyfile(folder / "ok.jpg", folder / "gen" / f"dup{copy}.jpg")
    return folder


def readable_samples(manifest_uri: str) -> list[tuple[str, str]]:
    """(key, sha256 of the jpeg) of every sample a reader yields, honouring exclusions."""
    manifest = read_manifest(manifest_uri)
    folder = manifest_uri.rsplit("/", 1)[0]
    out = []
    for entry in manifest["shards"]:
        excluded = read_exclusions(manifest_uri, entry)
        data = storage.read_bytes(storage.join(folder, entry["name"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            kept = [
                (info.name.split(".")[0], hashlib.sha256(tar.extractfile(info).read()).hexdigest())
                for info in tar
                if info.name.endswith(".jpg") and info.name.split(".")[0] not in excluded
            ]
        assert len(kept) == entry["samples"] and len(excluded) == entry.get("excluded", 0)
        out += kept
    return out


def accounting(manifest_uri: str) -> dict:
    manifest = read_manifest(manifest_uri)
    totals = {k: v for k, v in manifest["totals"].items() if k not in ("shards", "bytes", "excluded")}
    rejected = sorted((r["source"], r["reason"]) for r in iter_records(manifest_uri, "rejected"))
    duplicates = sorted(d["source"] for d in iter_records(manifest_uri, "duplicates"))
    return {
        "totals": totals,
        "rejected_by_reason": manifest["rejected_by_reason"],
        "ignored_by_reason": manifest["ignored_by_reason"],
        "rejected": rejected,
        "duplicates": duplicates,
    }


def fan_out(inputs: list[str], output: str, partitions: int, *, listed: bool) -> str:
    if listed:
        list_inputs(inputs, output, partitions)
    for partition in range(partitions):
        shard_partition([] if listed else inputs, output, f"{partition}/{partitions}", settings=SETTINGS,
                        workers=1, **QUIET)  # fmt: skip
    merge_partitions(output, partitions, **QUIET)
    return storage.join(output, "manifest.json")


def test_one_two_four_partitions_same_samples_and_accounting(tmp_path: Path) -> None:
    inputs = [str(make_corpus(tmp_path))]
    single = storage.join(str(tmp_path / "single"), "manifest.json")
    shard(inputs, str(tmp_path / "single"), SETTINGS, workers=1, **QUIET)
    reference = readable_samples(single)
    assert len(reference) == len({sha for _, sha in reference})  # every distinct image once
    expected = accounting(single)
    assert expected["totals"]["duplicates"] == 10 and expected["rejected_by_reason"] == {
        "decompression_bomb": 1, "empty": 1, "not_an_image": 1, "truncated": 1,
    }  # fmt: skip

    for partitions, listed in ((1, False), (2, True), (4, False)):
        manifest_uri = fan_out(inputs, str(tmp_path / f"n{partitions}"), partitions, listed=listed)
        manifest = read_manifest(manifest_uri)
        # Same samples under the same keys (the listing index), whatever N: first in listing order wins.
        assert sorted(readable_samples(manifest_uri)) == sorted(reference), partitions
        assert accounting(manifest_uri) == expected, partitions
        if partitions > 1:  # the copies really were spread: some duplicates met only in the merge
            assert manifest["totals"]["excluded"] > 0
            assert all(s["members"] - s.get("excluded", 0) == s["samples"] for s in manifest["shards"])
        stream = ShardStream(manifest_uri, None, shuffle_buffer=0)
        stream.batch_size = 1
        keys = [key for _, key in stream]
        assert sorted(keys) == sorted(key for key, _ in reference)  # the stream skips excluded copies
        evaluation_set = load_dataset(manifest_uri, "images")  # so do the evaluation readers
        assert len(evaluation_set.samples) == len(reference), partitions
    # Two ranks x two loader workers: each reads its span once, excluded copies never appear.
    spans = []
    for rank in range(2):
        loader = build_loader(ShardStream(manifest_uri, None, rank=rank, world_size=2), 2, num_workers=2)
        spans += [key for _, keys in loader for key in keys]
    assert len(spans) == len(set(spans)) == len(reference) // 8 * 8 and set(spans) <= {
        k for k, _ in reference
    }


def test_the_same_corpus_stored_elsewhere_gives_the_same_shards(tmp_path: Path) -> None:
    """The training order follows the shards, so a corpus copied to another folder (another clone's
    demo-output, another bucket) must give the same images under the same keys in the same shards,
    or the same recipe and seed train a different model there. Partitions used to hash the input's
    full URI: the two copies below then split differently. (The sidecars still name each source.)"""
    first = make_corpus(tmp_path / "a")
    second = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, second)
    layouts = []
    for corpus, out in ((first, tmp_path / "out-a"), (second, tmp_path / "out-b")):
        manifest_uri = fan_out([str(corpus)], str(out), 2, listed=True)
        names = [(s["name"], s["samples"]) for s in read_manifest(manifest_uri)["shards"]]
        layouts.append((names, readable_samples(manifest_uri)))  # samples in manifest, then tar, order
    assert len(layouts[0][0]) > 2 and layouts[0] == layouts[1]


def test_listing_streams_every_input_into_exactly_one_partition(tmp_path: Path, storage_root: str) -> None:
    paths = generate_corpus(tmp_path / "imgs", 12, seed=4, max_size=48, formats=("jpg",))
    source = storage.join(storage_root, "in")
    for path in paths:
        storage.put(path, storage.join(source, path.parent.name, path.name))
    storage.put(b"not an image", storage.join(source, "a-readme.md"))
    output = storage.join(storage_root, "out")
    assert main(["shard", "list", source, "--output", output, "--partitions", "3"]) == 0
    listing = list_inputs([source], output, 3)  # already there: returned as written
    assert listing["total"] == 12 and sum(listing["counts"]) == 12
    assert listing["ignored_by_reason"] == {"not_an_image_name": 1}
    everything = []
    for partition in range(3):
        refs, ignored = read_listing(output, [source], partition, 3)
        assert all(partition_of(i, 3) == partition for i, _ in refs)
        assert [i for i, _ in refs] == sorted(i for i, _ in refs)
        assert (refs, ignored) == partition_inputs([source], partition, 3)  # listing = streaming filter
        everything += refs
    listed = sorted(everything)
    # Listing order is the byte order of object names, the same on local folders and S3.
    assert [ref.uri for _, ref in listed] == sorted(
        info.uri for info in storage.list(source) if info.uri.endswith(".jpg")
    )
    assert [i for i, _ in listed] == list(range(12))
    with pytest.raises(ConfigError, match="--partition must look like I/N"):
        shard_partition([source], output, "3", **QUIET)
    with pytest.raises(ConfigError, match="partition 1/3 is not finished"):
        shard_partition([], output, "0/3", workers=1, **QUIET)
        merge_partitions(output, 3, **QUIET)


def test_merge_is_idempotent_and_redone_after_a_crash(tmp_path: Path) -> None:
    inputs = [str(make_corpus(tmp_path))]
    output = str(tmp_path / "out")
    manifest_uri = fan_out(inputs, output, 2, listed=False)
    first = storage.read_json(manifest_uri)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert merge_partitions(output, 2, **QUIET) == first  # complete: returned as is, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == files
    os.remove(manifest_uri)  # a merge killed before its last write
    again = merge_partitions(output, 2, **QUIET)
    assert {k: v for k, v in again.items() if k != "created_at"} == {
        k: v for k, v in first.items() if k != "created_at"
    }
    assert main(["shard", "merge", "--output", output, "--partitions", "2"]) == 0


@pytest.mark.slow
def test_sigkill_of_a_partition_then_rerun_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The partition runs as `python -m seer shard ... --partition 1/2` and is killed after its first shard."""
    folder = make_corpus(tmp_path)
    generate_corpus(folder / "more", 60, seed=9, min_size=96, max_size=200)
    inputs = [str(folder)]
    reference_uri = fan_out(inputs, str(tmp_path / "ref"), 2, listed=True)

    out = tmp_path / "out"
    list_inputs(inputs, str(out), 2)
    cmd = [sys.executable, "-m", "seer", "shard", "--partition", "1/2", "--output", str(out),
           "--max-samples-per-shard", "3", "--workers", "1"]  # fmt: skip
    part_dir = out / "p00001-of-00002"
    sigkill_once_exists(cmd, part_dir / "_parts" / "shard-000001.json", cwd=REPO)  # two shards committed
    assert not (part_dir / "part.json").exists()
    with pytest.raises(ConfigError, match="partition 0/2 is not finished"):
        merge_partitions(str(out), 2, **QUIET)

    messages: list[str] = []
    for partition in (1, 0):  # the killed one again (the same command), then the other
        shard_partition([], str(out), f"{partition}/2", settings=SETTINGS, workers=1, log=messages.append)
    assert messages[0].startswith("resuming: ")
    manifest_uri = merge_partitions(str(out), 2, **QUIET) and str(out / "manifest.json")
    assert sorted(readable_samples(manifest_uri)) == sorted(readable_samples(reference_uri))
    assert accounting(manifest_uri) == accounting(reference_uri)
    assert read_manifest(manifest_uri)["shards"] == read_manifest(reference_uri)["shards"]
    keys = Counter(key for key, _ in readable_samples(manifest_uri))
    assert max(keys.values()) == 1
