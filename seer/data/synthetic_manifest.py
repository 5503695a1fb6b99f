"""A merged-run manifest with fake shard records (no tars, no images) for scale tests and benches.

``write_synthetic_manifest`` writes what `seer shard merge` would write for ``partitions``
partitions of ``shards`` shards with ``samples_per_shard`` samples each, ``records`` per-sample
reject records, and every ``exclude_every``-th shard holding one excluded cross-partition copy.
The shard files themselves are not written: use it for what only reads the manifest.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable

from seer import storage
from seer.data.merge import exclusions_name
from seer.data.shard import FORMAT, MANIFEST_NAME, partition_dir, sample_key, shard_name


def write_synthetic_manifest(
    output: str,
    *,
    shards: int,
    samples_per_shard: int,
    records: int,
    partitions: int = 4,
    exclude_every: int = 10,
) -> str:
    """Write the manifest (and its record files) under ``output``; return the manifest URI."""
    per_partition = -(-shards // partitions)
    entries, exclusions = [], {p: [] for p in range(partitions)}
    for index in range(shards):
        partition, local = divmod(index, per_partition)
        name = f"{partition_dir(partition, partitions)}/{shard_name(local)}"
        entry = {"name": name, "samples": samples_per_shard, "members": samples_per_shard,
                 "bytes": samples_per_shard * 40_000, "sha256": f"{index:064x}"}  # fmt: skip
        if index % exclude_every == 0:
            entry.update(
                samples=samples_per_shard - 1, excluded=1, exclusions=exclusions_name(partition, partitions)
            )
            key = sample_key(index * samples_per_shard)
            exclusions[partition].append({"shard": name, "key": key, "source": f"s3://b/{key}.jpg"})
        entries.append(entry)
    for partition, rows in exclusions.items():
        _write_rows(
            storage.join(output, exclusions_name(partition, partitions)), (json.dumps(r) for r in rows)
        )
    rejected = "rejected.jsonl.gz"
    line = '{{"source": "s3://bucket/images/{:012d}.jpg", "reason": "corrupt", "detail": "decoding failed"}}'
    _write_rows(storage.join(output, rejected), (line.format(i) for i in range(records)))
    samples = sum(e["samples"] for e in entries)
    manifest = {
        "format": FORMAT,
        "partitions": partitions,
        "shards": entries,
        "totals": {
            "inputs": samples + records,
            "samples": samples,
            "shards": shards,
            "bytes": sum(e["bytes"] for e in entries),
            "rejected": records,
            "duplicates": sum(e.get("excluded", 0) for e in entries),
        },
        "rejected_by_reason": {"corrupt": records},
        "records": {
            "rejected": [rejected],
            "duplicates": [exclusions_name(p, partitions) for p in exclusions],
        },
    }
    uri = storage.join(output, MANIFEST_NAME)
    storage.write_json(uri, manifest, indent=None)
    return uri


def _write_rows(uri: str, lines: Iterable[str]) -> None:
    with (
        storage.open(uri, "wb") as sink,
        gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=1) as out,
    ):
        batch: list[str] = []
        for text in lines:
            batch.append(text)
            if len(batch) == 10_000:
                out.write(("\n".join(batch) + "\n").encode())
                batch = []
        if batch:
            out.write(("\n".join(batch) + "\n").encode())
