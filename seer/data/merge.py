"""`seer shard merge`: one manifest.json over the N partitions of a fan-out `seer shard` run.

Duplicates across partitions: every partition already dropped its own duplicates (first in listing
order wins) and wrote its kept samples sorted by content hash (``samples.jsonl.gz``). The merge
streams those N sorted files together (a k-way merge: memory grows with N, not with samples) and,
for each hash held by several partitions, keeps the copy with the lowest listing index — the global
order, so the kept sample is the one a single unpartitioned run keeps, whatever N is. The shards are
never rewritten: each losing copy is recorded as an exclusion
(``_merge/excluded-IIIII-of-NNNNN.jsonl.gz``, one file per partition, lines
``{"source", "duplicate_of", "shard", "key", "sha256"}``); the manifest's shard entry carries ``members``
(samples in the tar), ``excluded`` and ``exclusions`` (the file), and ``samples`` counts only what
readers yield. Readers (``ShardStream``, ``seer.data.shard.read_exclusions``) skip excluded keys, so
every distinct sample is read exactly once.

Idempotent and resumable: every output is written atomically and manifest.json last, with a
fingerprint of the partitions' part.json files; running the merge again returns the existing
manifest when it is complete for the same partitions, and otherwise redoes the (streaming) merge.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from seer import storage
from seer.data.shard import (
    FORMAT,
    MANIFEST_NAME,
    PART_MANIFEST_NAME,
    SAMPLES_NAME,
    _default_log,
    _provenance,
    partition_dir,
    read_jsonl_gz,
)
from seer.errors import ConfigError

MERGE_DIR = "_merge"


def exclusions_name(partition: int, partitions: int) -> str:
    return f"{MERGE_DIR}/excluded-{partition:05d}-of-{partitions:05d}.jsonl.gz"


_Sample = tuple[str, int, int, str, str, str]  # sha256, listing index, partition, shard, key, source


def _sorted_samples(output: str, partition: int, partitions: int) -> Iterator[_Sample]:
    """The kept samples of one partition in (sha256, listing index) order."""
    folder = partition_dir(partition, partitions)
    for sha, index, shard, key, source in read_jsonl_gz(storage.join(output, folder, SAMPLES_NAME)):
        yield sha, index, partition, shard, key, source


class _Exclusions:
    """One lazily opened compressed writer per partition that has exclusions."""

    def __init__(self, output: str, partitions: int) -> None:
        self.output, self.partitions = output, partitions
        self.open: dict[int, tuple[object, gzip.GzipFile]] = {}
        self.per_shard: Counter = Counter()

    def add(self, sample: _Sample, winner: _Sample) -> None:
        sha, _, partition, shard, key, source = sample
        if partition not in self.open:
            sink = storage.open(storage.join(self.output, exclusions_name(partition, self.partitions)), "wb")
            self.open[partition] = (sink, gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6))
        name = f"{partition_dir(partition, self.partitions)}/{shard}"  # as the manifest names the shard
        row = {"source": source, "duplicate_of": winner[5], "shard": name, "key": key, "sha256": sha}
        self.open[partition][1].write((json.dumps(row, sort_keys=True) + "\n").encode())
        self.per_shard[(partition, shard)] += 1

    def close(self) -> None:
        for sink, writer in self.open.values():
            writer.close()
            sink.close()  # type: ignore[attr-defined]

    def discard(self) -> None:
        for sink, _ in self.open.values():
            sink.discard()  # type: ignore[attr-defined]


def merge_partitions(
    output: str,
    partitions: int,
    *,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = _default_log,
) -> dict:
    """Write ``output/manifest.json`` over the ``partitions`` partitions of a fan-out run; return it.

    Every partition must be complete (its part.json exists); see the module doc for duplicates.
    """
    if partitions < 1:
        raise ConfigError(f"--partitions must be >= 1, got {partitions}")
    output = output.rstrip("/")
    parts = []
    for partition in range(partitions):
        uri = storage.join(output, partition_dir(partition, partitions), PART_MANIFEST_NAME)
        if not storage.exists(uri):
            raise ConfigError(
                f"partition {partition}/{partitions} is not finished ({uri} is missing): run "
                f"`seer shard ... --partition {partition}/{partitions} --output {output}` first"
            )
        parts.append(storage.read_json(uri))
        if parts[-1]["settings"] != parts[0]["settings"]:
            raise ConfigError(
                f"partition {partition}/{partitions} was sharded with other settings than partition 0 "
                f"({uri}): re-run it with the same flags (--overwrite) before merging"
            )
    fingerprint = hashlib.sha256(
        "\n".join(f"{p['fingerprint']} {p['totals']['samples']}" for p in parts).encode()
    ).hexdigest()
    manifest_uri = storage.join(output, MANIFEST_NAME)
    if storage.exists(manifest_uri) and storage.read_json(manifest_uri).get("fingerprint") == fingerprint:
        log(f"{manifest_uri} is complete for these {partitions} partitions; nothing to do")
        return storage.read_json(manifest_uri)

    exclusions = _Exclusions(output, partitions)
    streams = [_sorted_samples(output, p, partitions) for p in range(partitions)]
    dedup = parts[0]["settings"]["dedup"]
    winner: _Sample | None = None
    try:
        for sample in heapq.merge(*streams):
            if dedup and winner is not None and sample[0] == winner[0]:
                exclusions.add(sample, winner)
            else:
                winner = sample
    except BaseException:
        exclusions.discard()
        raise
    exclusions.close()

    manifest = _global_manifest(parts, partitions, exclusions, fingerprint)
    manifest.update(_provenance(parts[0]["inputs"], command))
    storage.write_json(manifest_uri, manifest)
    totals = manifest["totals"]
    log(
        f"merged {partitions} partitions: {totals['shards']} shards, {totals['samples']} samples "
        f"({totals['rejected']} rejected, {totals['duplicates']} duplicates, "
        f"{totals['excluded']} of them excluded across partitions)"
    )
    return storage.read_json(manifest_uri)


def _global_manifest(parts: list[dict], partitions: int, exclusions: _Exclusions, fingerprint: str) -> dict:
    shards = []
    for partition, part in enumerate(parts):
        folder = partition_dir(partition, partitions)
        for entry in part["shards"]:
            excluded = exclusions.per_shard[(partition, entry["name"])]
            merged = {
                "name": f"{folder}/{entry['name']}",
                "samples": entry["samples"] - excluded,
                "members": entry["samples"],
                "bytes": entry["bytes"],
                "sha256": entry["sha256"],
            }
            if excluded:
                merged.update(excluded=excluded, exclusions=exclusions_name(partition, partitions))
            shards.append(merged)
    excluded_total = sum(exclusions.per_shard.values())

    def added(key: str) -> dict[str, int]:
        total: Counter = Counter()
        for part in parts:
            total.update(part[key])
        return dict(sorted(total.items()))

    totals = {key: sum(part["totals"][key] for part in parts) for key in parts[0]["totals"]}
    totals.update(
        samples=sum(s["samples"] for s in shards),
        duplicates=totals["duplicates"] + excluded_total,
        excluded=excluded_total,
    )
    records: dict[str, list[str]] = {"rejected": [], "duplicates": []}
    for partition, part in enumerate(parts):
        folder = partition_dir(partition, partitions)
        for kind in records:
            records[kind] += [f"{folder}/{name}" for name in part["records"][kind]]
    records["duplicates"] += [exclusions_name(p, partitions) for p in sorted(exclusions.open)]
    return {
        "format": FORMAT,
        "partitions": partitions,
        "settings": parts[0]["settings"],
        "fingerprint": fingerprint,
        "shards": shards,
        "totals": totals,
        "rejected_by_reason": added("rejected_by_reason"),
        "converted_by_kind": added("converted_by_kind"),
        "encoded": added("encoded"),
        "ignored_by_reason": added("ignored_by_reason"),
        "records": records,
    }
