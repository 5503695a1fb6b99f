"""The data steps of the pipelines, each one call from a component: write the synthetic corpus and
list the inputs into a content-addressed shards prefix under ``data_root``, and shard one
partition of that listing.

Content-addressed folders make KFP caching sound: a step whose inputs (parameters and digests)
are the same writes to, and reads from, the same folder; when the input images change, the
listing digest changes, and with it the shards prefix and the shard steps' cache keys.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

from seer import storage
from seer.artifacts import content_key, data_location
from seer.data.listing import LISTING_NAME, LISTS_DIR, list_inputs
from seer.data.shard import ShardSettings, shard_partition
from seer.data.synthetic import generate_corpus
from seer.errors import ConfigError

CORPUS_DONE = "corpus.json"


def synthetic_corpus(data_root: str, count: int, seed: int = 0, max_size: int = 128) -> tuple[str, int]:
    """Write the demo corpus once under ``data_root/corpus/<key>`` (key of the arguments); return
    (its URI, the number of images). A second call with the same arguments reuses it."""
    uri = data_location(data_root, "corpus", content_key(count, seed, max_size))
    done = storage.join(uri, CORPUS_DONE)
    if storage.exists(done):
        return uri, int(storage.read_json(done)["images"])
    local = storage.local_path(uri)
    with tempfile.TemporaryDirectory(prefix="seer-corpus-") as tmp:
        folder = local if local is not None else Path(tmp)
        paths = generate_corpus(folder, count, seed, min_size=min(48, max_size), max_size=max_size)
        if local is None:
            for path in paths:
                storage.put(str(path), storage.join(uri, path.relative_to(folder).as_posix()))
    storage.write_json(done, {"images": len(paths), "seed": seed, "max_size": max_size})  # last
    return uri, len(paths)


def list_into_prefix(
    inputs: Sequence[str], data_root: str, run_id: str, partitions: int, settings: ShardSettings
) -> dict:
    """List ``inputs`` for ``partitions`` shard steps; return the listing with ``prefix`` added.

    The listing is written to ``data_root/listings/<run_id>`` first, then copied into
    ``data_root/shards/<key>/_lists`` where key = the listing digest (per-object size and etag)
    and the shard settings; the partitions and the merge then work in that prefix. Re-listing
    unchanged images gives the same prefix, so finished partitions there are reused."""
    staging = data_location(data_root, "listings", run_id)
    storage.delete_prefix(staging)  # a retried step lists again: the images may have changed since
    listing = list_inputs(list(inputs), staging, partitions)
    prefix = data_location(data_root, "shards", content_key(listing["digest"], dataclasses.asdict(settings)))
    final = storage.join(prefix, LISTS_DIR, LISTING_NAME)
    if not (storage.exists(final) and storage.read_json(final).get("digest") == listing["digest"]):
        for name in listing["lists"]:
            storage.copy(storage.join(staging, LISTS_DIR, name), storage.join(prefix, LISTS_DIR, name))
        storage.write_json(final, listing)  # last: the listing is complete
    storage.delete_prefix(staging)
    return {**listing, "prefix": prefix}


def shard_listed_partition(
    prefix: str, digest: str, partition: int, partitions: int, settings: ShardSettings, workers: int | None
) -> dict:
    """Shard one partition of the listing under ``prefix`` (see ``list_into_prefix``); return its part.json.

    ``digest`` must be the listing's: the step's cache key then names the listed bytes."""
    listing = storage.read_json(storage.join(prefix, LISTS_DIR, LISTING_NAME))
    if listing.get("digest") != digest:
        raise ConfigError(
            f"{prefix} holds the listing {listing.get('digest')}, not {digest}: pass the prefix and digest "
            "of the same list step"
        )
    return shard_partition([], prefix, partition, partitions, settings, workers=workers)
