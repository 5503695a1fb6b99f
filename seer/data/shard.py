"""`seer shard`: turn folders, path lists, tar files or object-store prefixes into tar shards.

Output layout of a single run under the output prefix::

    shard-000000.tar ...    webdataset-style: `<key>.jpg` (+ `<key>.json` sidecar) per sample
    _parts/shard-000000.json  written right after its tar commits: the shard's manifest entry and
                              the resume state (input range, sample hashes, rejects)
    rejected.jsonl.gz       one line per rejected input ({source, reason, detail})
    duplicates.jsonl.gz     one line per dropped duplicate ({source, duplicate_of})
    manifest.json           written last; its presence means the whole run is complete. It lists
                            the shards (name, samples, bytes, sha256) and totals by reason; the
                            per-sample records stay in the .jsonl.gz files it names under "records".
                            "converted_by_kind" and "encoded" (passed_through / reencoded) count
                            the samples written to tars (after a merge: including excluded copies)

A fan-out run (``--partition I/N``, see ``shard_partition``) writes the same layout into
``pNNNNN-of-NNNNN/`` with ``part.json`` in place of manifest.json, plus ``samples.jsonl.gz`` (the
partition's samples sorted by hash) for ``seer.data.merge.merge_partitions``, which writes the
global manifest.json.

Determinism: inputs are enumerated in a fixed order (``seer.data.listing``), every kept sample is
keyed by its listing index, and a shard closes by a rule that only depends on that sequence. The
same command therefore always produces byte-identical shards, which is what makes resuming safe: a
re-run reloads the complete prefix of `_parts/`, continues from the input where the last complete
shard ended, and rewrites anything after it (a tar without a part file never counts as complete).

Dedup key: sha256 of the sample bytes as stored in the shard. A re-encoded sample is hashed after
orientation, RGB conversion, downscaling and re-encoding (the encoder is deterministic), so inputs
that become the same pixels are duplicates whatever their source format or metadata. A
passed-through JPEG (``seer.data.images``) is hashed as its coded data without metadata, so copies
of one JPEG file are duplicates even when their EXIF differs; a passed-through JPEG and, say, a PNG
of the same pixels are not (use ``pass_through=False`` / ``--no-pass-through`` to hash everything
re-encoded). The first one in listing order is kept.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import sys
import tarfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import PIL
from tqdm import tqdm

from seer import storage
from seer.data.images import DEFAULT_MAX_PIXELS, EncodedImage, ImageRejected, encode_image
from seer.data.listing import (
    InputRef,
    enumerate_inputs,
    parse_partition,
    partition_inputs,
    read_listing,
    tar_members,
)
from seer.errors import ConfigError, NotFoundError, SeerError

MANIFEST_NAME = "manifest.json"
PART_MANIFEST_NAME = "part.json"
SAMPLES_NAME = "samples.jsonl.gz"
PARTS_DIR = "_parts"
FORMAT = "seer-shards/2"
PART_FORMAT = "seer-shard-part/1"
_READABLE_FORMATS = ("seer-shards/1", FORMAT)  # /1 kept rejects inline and had no exclusions
_CHUNK = 8  # inputs per worker task
_TAR_BLOCK = 512


@dataclass(frozen=True)
class ShardSettings:
    """Everything besides the inputs that decides the shard bytes (part of the resume fingerprint)."""

    shard_size_mb: float = 256.0
    max_samples_per_shard: int = 10_000
    max_short_side: int | None = None
    quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS
    dedup: bool = True
    write_json: bool = True
    pass_through: bool = True  # keep valid baseline RGB JPEGs within limits as they are

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        checks = [
            (self.shard_size_mb > 0, f"--shard-size-mb must be > 0, got {self.shard_size_mb}"),
            (
                self.max_samples_per_shard >= 1,
                f"--max-samples-per-shard must be >= 1, got {self.max_samples_per_shard}",
            ),
            (
                self.max_short_side is None or self.max_short_side >= 8,
                f"--max-short-side must be >= 8, got {self.max_short_side}",
            ),
            (1 <= self.quality <= 100, f"--quality must be in 1..100, got {self.quality}"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True)
class Outcome:
    """What processing one input produced: an encoded sample or a rejection reason."""

    index: int
    ref: InputRef
    source_bytes: int
    image: EncodedImage | None = None
    reason: str | None = None
    detail: str = ""


# --------------------------------------------------------------------------------------------
# Per-input work (runs in worker processes)


def _read_source(ref: InputRef) -> bytes:
    if ref.uri.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(ref.uri, timeout=60) as response:
            return response.read()
    return storage.read_bytes(ref.uri)


def process_input(index: int, ref: InputRef, data: bytes | None, settings: ShardSettings) -> Outcome:
    """Read (unless ``data`` is given), decode, validate and encode one input; never raises."""
    if data is None:
        try:
            data = _read_source(ref)
        except (OSError, SeerError) as err:
            return Outcome(index, ref, 0, reason="unreadable", detail=str(err))
    try:
        image = encode_image(
            data,
            max_pixels=settings.max_pixels,
            max_short_side=settings.max_short_side,
            quality=settings.quality,
            pass_through=settings.pass_through,
        )
    except ImageRejected as err:
        return Outcome(index, ref, len(data), reason=err.reason, detail=err.detail)
    except Exception as err:  # a malformed file can make any decoder raise; it must not stop the run
        return Outcome(index, ref, len(data), reason="corrupt", detail=f"{type(err).__name__}: {err}")
    return Outcome(index, ref, len(data), image=image)


def _process_chunk(tasks: list[tuple[int, InputRef, bytes | None]], settings: ShardSettings) -> list[Outcome]:
    return [process_input(index, ref, data, settings) for index, ref, data in tasks]


class _TarMemberReader:
    """Hands out the bytes of tar members in enumeration order, streaming each tar once."""

    def __init__(self) -> None:
        self._uri: str | None = None
        self._members: Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]] | None = None

    def read(self, ref: InputRef) -> bytes:
        if ref.uri != self._uri or self._members is None:
            self._uri, self._members = ref.uri, tar_members(ref.uri)
        for info, tar in self._members:
            if info.name == ref.member and info.isfile():
                extracted = tar.extractfile(info)
                return extracted.read() if extracted is not None else b""
        raise ConfigError(
            f"tar {ref.uri} changed while sharding (member {ref.member} vanished): re-run seer shard"
        )


def _outcomes(
    refs: list[tuple[int, InputRef]], start: int, settings: ShardSettings, workers: int
) -> Iterator[Outcome]:
    """Process refs[start:] ((listing index, ref) pairs) and yield outcomes in order, across processes."""
    reader = _TarMemberReader()

    def chunks() -> Iterator[list[tuple[int, InputRef, bytes | None]]]:
        for begin in range(start, len(refs), _CHUNK):
            batch = []
            for index, ref in refs[begin : begin + _CHUNK]:
                batch.append((index, ref, reader.read(ref) if ref.member is not None else None))
            yield batch

    if workers <= 1:
        for batch in chunks():
            yield from _process_chunk(batch, settings)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        for batch in chunks():
            pending.append(pool.submit(_process_chunk, batch, settings))
            if len(pending) >= workers * 4:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# --------------------------------------------------------------------------------------------
# Shard writing and resume state


def shard_name(index: int) -> str:
    """File name of shard number ``index``."""
    return f"shard-{index:06d}.tar"


def sample_key(index: int) -> str:
    """The key of the sample made from listing index ``index`` (its tar member stem)."""
    return f"{index:010d}"


def _tar_bytes(size: int) -> int:
    return _TAR_BLOCK + (size + _TAR_BLOCK - 1) // _TAR_BLOCK * _TAR_BLOCK


class _HashingWriter:
    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)


class _TarWriter:
    """A shard being written: members stream into an atomic storage writer (invisible until commit).

    The tar is deterministic: fixed mtime, owner and mode, USTAR headers. Members are written as
    header + payload + padding in one write each (what tarfile's stream mode writes, without its
    small-chunk copying); the end is two zero blocks, padded to tar's 10240-byte record size.
    """

    def __init__(self, uri: str) -> None:
        self._sink = storage.open(uri, "wb")
        self._hashing = _HashingWriter(self._sink)

    def add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        self._hashing.write(header + payload + bytes(-len(payload) % _TAR_BLOCK))

    def commit(self) -> tuple[int, str]:
        """Finish the tar and make it visible; return (bytes, sha256)."""
        end = 2 * _TAR_BLOCK
        self._hashing.write(bytes(end + -(self._hashing.size + end) % tarfile.RECORDSIZE))
        self._sink.close()
        return self._hashing.size, self._hashing.sha256.hexdigest()

    def discard(self) -> None:
        self._sink.discard()


@dataclass
class _OpenShard:
    index: int
    start: int  # first position (in this run's refs) covered by this shard
    writer: _TarWriter | None = None  # opened with the first sample
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (key, source, sample sha256)
    estimated_bytes: int = 2 * _TAR_BLOCK
    rejected: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)
    passed_through: int = 0


def _sidecar(key: str, outcome: Outcome) -> bytes:
    image = outcome.image
    assert image is not None
    meta = {
        "key": key,
        "source": outcome.ref.source,
        "source_bytes": outcome.source_bytes,
        "source_format": image.source_format,
        "source_mode": image.source_mode,
        "source_size": [image.source_width, image.source_height],
        "size": [image.width, image.height],
        "converted": list(image.converted),
        "passed_through": image.passed_through,
        "sha256": image.sha256,
    }
    return json.dumps(meta, sort_keys=True).encode()


def _fingerprint(refs: list[tuple[int, InputRef]], settings: ShardSettings, scope: str = "") -> str:
    """Identifies the command: inputs, settings and the encoder (another Pillow may encode other bytes)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    digest.update(f"pillow {PIL.__version__}\n{scope}\n".encode())
    for index, ref in refs:
        digest.update(f"{index} {ref.source}\n".encode())
    return digest.hexdigest()


def _load_parts(output: str, fingerprint: str) -> list[dict]:
    """The complete prefix of part files made by this same command (stops at the first gap)."""
    parts = []
    while True:
        uri = storage.join(output, PARTS_DIR, shard_name(len(parts)).replace(".tar", ".json"))
        if not storage.exists(uri):
            return parts
        part = storage.read_json(uri)
        if part.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{output} already holds shards made from other inputs or settings ({uri}): "
                "pass --overwrite to replace them, or choose another --output"
            )
        shard_uri = storage.join(output, part["shard"]["name"])
        if not storage.exists(shard_uri) or storage.stat(shard_uri).size != part["shard"]["bytes"]:
            return parts
        parts.append(part)


def _delete_outputs(output: str) -> None:
    """Delete what `seer shard` writes (shards, parts, records, manifests) under ``output``, nothing else."""
    try:
        objects = storage.list(output, recursive=True)
    except NotFoundError:
        return
    records = (MANIFEST_NAME, PART_MANIFEST_NAME, SAMPLES_NAME, "rejected.jsonl.gz", "duplicates.jsonl.gz")
    for info in objects:
        if not info.uri.startswith(output + "/"):
            continue
        name = info.uri[len(output) + 1 :]
        base = name.rsplit("/", 1)[-1]
        if (
            base in records
            or f"/{name}".find(f"/{PARTS_DIR}/") >= 0
            or name.startswith("_merge/")
            or (base.startswith("shard-") and base.endswith(".tar"))
        ):
            storage.delete(info.uri)


def write_jsonl_gz(uri: str, rows: Iterable[Any]) -> int:
    """Write ``rows`` as gzip-compressed JSON lines to ``uri`` atomically; return how many."""
    count = 0
    with (
        storage.open(uri, "wb") as sink,
        gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6) as out,
    ):
        for row in rows:
            out.write((json.dumps(row, sort_keys=True) + "\n").encode())
            count += 1
    return count


def read_jsonl_gz(uri: str) -> Iterator[Any]:
    """Stream the rows of a file written by ``write_jsonl_gz``."""
    with storage.open(uri, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _default_log(message: str) -> None:
    print(message, file=sys.stderr)


def _prepare(settings: ShardSettings | None, workers: int | None) -> tuple[ShardSettings, int]:
    settings = settings or ShardSettings()
    settings.validate()
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    return settings, workers


def _check_existing(
    manifest_uri: str, fingerprint: str, overwrite: bool, output: str, log: Callable
) -> dict | None:
    if overwrite:
        _delete_outputs(output)
        return None
    if not storage.exists(manifest_uri):
        return None
    manifest = storage.read_json(manifest_uri)
    if manifest.get("fingerprint") == fingerprint:
        log(f"{manifest_uri} is complete for these inputs and settings; nothing to do")
        return manifest
    raise ConfigError(
        f"{manifest_uri} was made from other inputs or settings: "
        "pass --overwrite to replace it, or choose another --output"
    )


def shard(
    inputs: Sequence[str],
    output: str,
    settings: ShardSettings | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = _default_log,
) -> dict:
    """Shard ``inputs`` into tar shards + manifest.json under ``output``; return the manifest.

    Resumes a previous run of the same command (same inputs and settings) that was interrupted;
    returns the existing manifest when that run had completed. ``overwrite`` deletes shards,
    parts and manifest that a different command left under ``output`` first. With ``workers`` > 1
    the decoders are spawned processes: call this from under ``if __name__ == "__main__":``.
    The listing is held in memory: for very large corpora use ``shard_partition`` + ``merge_partitions``.
    """
    settings, workers = _prepare(settings, workers)
    if not inputs:
        raise ConfigError("no inputs given: pass folders, tar files, list files or s3:// prefixes")
    output = output.rstrip("/")
    plain, ignored = enumerate_inputs(inputs)
    refs = list(enumerate(plain))
    fingerprint = _fingerprint(refs, settings)
    manifest_uri = storage.join(output, MANIFEST_NAME)
    existing = _check_existing(manifest_uri, fingerprint, overwrite, output, log)
    if existing is not None:
        return existing
    manifest = _shard_refs(refs, output, settings, fingerprint, workers, log)
    _write_manifest(manifest_uri, FORMAT, manifest, inputs, command, ignored)
    totals = manifest["totals"]
    log(
        f"wrote {totals['shards']} shards with {totals['samples']} samples to {output} "
        f"({totals['rejected']} rejected, {totals['duplicates']} duplicates)"
    )
    return storage.read_json(manifest_uri)


def _write_manifest(
    uri: str,
    fmt: str,
    manifest: dict,
    inputs: Sequence[str],
    command: Sequence[str] | None,
    ignored: dict[str, int],
    **extra: object,
) -> None:
    """Write `manifest` (with provenance, `extra` and the ignored-file counts) last, as `fmt`, at `uri`."""
    manifest.update(_provenance(inputs, command), **extra)
    manifest["totals"]["ignored"] = sum(ignored.values())
    manifest["ignored_by_reason"] = dict(sorted(ignored.items()))
    storage.write_json(uri, {"format": fmt, **manifest})


def partition_dir(partition: int, partitions: int) -> str:
    """Folder (under the output prefix) of partition ``partition`` of ``partitions``."""
    return f"p{partition:05d}-of-{partitions:05d}"


def shard_partition(
    inputs: Sequence[str],
    output: str,
    partition: int | str,
    partitions: int | None = None,
    settings: ShardSettings | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = _default_log,
) -> dict:
    """Shard partition I of N (``partition="I/N"`` or ``partition=I, partitions=N``); return its part.json.

    The partition's inputs come from the listing `seer shard list` wrote under ``output`` (when it
    exists for these inputs and N; ``inputs`` may then be empty), else from streaming the listing of
    ``inputs`` and keeping the ones ``partition_of`` assigns to I. Output goes to
    ``output/pIIIII-of-NNNNN/``; resumable like ``shard`` (same command again after a kill).
    Duplicates are dropped within the partition; ``merge_partitions`` resolves them across partitions.
    """
    index, count = parse_partition(partition) if isinstance(partition, str) else (partition, partitions or 0)
    if isinstance(partition, int):
        parse_partition(f"{index}/{count}")
    settings, workers = _prepare(settings, workers)
    output = output.rstrip("/")
    listed = read_listing(output, inputs, index, count)
    if listed is None:
        if not inputs:
            raise ConfigError(
                f"no inputs given and no listing under {output}/_lists: pass the inputs, or run "
                f"`seer shard list INPUTS --output {output} --partitions {count}` first"
            )
        listed = partition_inputs(inputs, index, count)
    refs, ignored = listed
    part_out = storage.join(output, partition_dir(index, count))
    fingerprint = _fingerprint(refs, settings, scope=f"partition {index}/{count}")
    manifest_uri = storage.join(part_out, PART_MANIFEST_NAME)
    existing = _check_existing(manifest_uri, fingerprint, overwrite, part_out, log)
    if existing is not None:
        return existing
    part = _shard_refs(refs, part_out, settings, fingerprint, workers, log, samples_index=True)
    _write_manifest(manifest_uri, PART_FORMAT, part, inputs, command, ignored, partition=[index, count])
    totals = part["totals"]
    log(
        f"partition {index}/{count}: {totals['shards']} shards, {totals['samples']} samples "
        f"({totals['rejected']} rejected, {totals['duplicates']} duplicates within the partition)"
    )
    return storage.read_json(manifest_uri)


def _provenance(inputs: Sequence[str], command: Sequence[str] | None) -> dict:
    from seer import __version__

    return {
        "seer_version": __version__,
        "command": list(command if command is not None else sys.argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": list(inputs),
    }


def _shard_refs(
    refs: list[tuple[int, InputRef]],
    output: str,
    settings: ShardSettings,
    fingerprint: str,
    workers: int,
    log: Callable[[str], None],
    *,
    samples_index: bool = False,
) -> dict:
    """Write the shards and record files of ``refs`` under ``output``; return the manifest body."""
    parts = _load_parts(output, fingerprint)
    seen: dict[str, str] = {sample[2]: sample[1] for part in parts for sample in part["samples"]}
    start = parts[-1]["inputs"][1] if parts else 0
    if parts:
        log(f"resuming: {len(parts)} complete shards cover inputs 0..{start - 1} of {len(refs)}")

    limit_bytes = int(settings.shard_size_mb * (1 << 20))
    current = _OpenShard(index=len(parts), start=start)
    trailing: dict[str, list] = {"rejected": [], "duplicates": []}

    def close(shard_: _OpenShard, end: int) -> None:
        name = shard_name(shard_.index)
        assert shard_.writer is not None
        size, sha = shard_.writer.commit()
        part = {
            "fingerprint": fingerprint,
            "shard": {"name": name, "samples": len(shard_.samples), "bytes": size, "sha256": sha},
            "inputs": [shard_.start, end],
            "samples": shard_.samples,
            "rejected": shard_.rejected,
            "duplicates": shard_.duplicates,
            "converted": dict(shard_.converted),
            "passed_through": shard_.passed_through,
        }
        storage.write_json(storage.join(output, PARTS_DIR, name.replace(".tar", ".json")), part)
        parts.append(part)

    bar = tqdm(total=len(refs), initial=start, unit="img", desc="shard", disable=None, file=sys.stderr)
    try:
        for position, outcome in enumerate(_outcomes(refs, start, settings, workers), start):
            bar.update(1)
            if outcome.image is None:
                current.rejected.append(
                    {"source": outcome.ref.source, "reason": str(outcome.reason), "detail": outcome.detail}
                )
                continue
            digest = outcome.image.sha256
            if settings.dedup and digest in seen:
                current.duplicates.append({"source": outcome.ref.source, "duplicate_of": seen[digest]})
                continue
            key = sample_key(outcome.index)
            members = [(f"{key}.jpg", outcome.image.jpeg)]
            if settings.write_json:
                members.append((f"{key}.json", _sidecar(key, outcome)))
            added = sum(_tar_bytes(len(payload)) for _, payload in members)
            if current.samples and current.estimated_bytes + added > limit_bytes:
                close(current, position)
                current = _OpenShard(index=current.index + 1, start=position)
            if current.writer is None:
                current.writer = _TarWriter(storage.join(output, shard_name(current.index)))
            for name, payload in members:
                current.writer.add(name, payload)
            seen[digest] = outcome.ref.source
            current.samples.append((key, outcome.ref.source, digest))
            current.estimated_bytes += added
            current.converted.update(outcome.image.converted)
            current.passed_through += outcome.image.passed_through
            if len(current.samples) >= settings.max_samples_per_shard:
                close(current, position + 1)
                current = _OpenShard(index=current.index + 1, start=position + 1)
        if current.samples:
            close(current, len(refs))
        else:
            trailing = {"rejected": current.rejected, "duplicates": current.duplicates}
    except BaseException:
        if current.writer is not None:
            current.writer.discard()
        raise
    finally:
        bar.close()
    return _write_records(parts, trailing, len(refs), settings, fingerprint, output, samples_index)


def _write_records(
    parts: list[dict],
    trailing: dict[str, list],
    inputs: int,
    settings: ShardSettings,
    fingerprint: str,
    output: str,
    samples_index: bool,
) -> dict:
    """Write the per-sample record files; return the manifest body (shards, totals, record names)."""
    rejected_by_reason: Counter = Counter()
    converted: Counter = Counter()

    def rejected() -> Iterator[dict]:
        for entries in [part["rejected"] for part in parts] + [trailing["rejected"]]:
            for entry in entries:
                rejected_by_reason[entry["reason"]] += 1
                yield entry

    def duplicates() -> Iterator[dict]:
        for entries in [part["duplicates"] for part in parts] + [trailing["duplicates"]]:
            yield from entries

    n_rejected = write_jsonl_gz(storage.join(output, "rejected.jsonl.gz"), rejected())
    n_duplicates = write_jsonl_gz(storage.join(output, "duplicates.jsonl.gz"), duplicates())
    if samples_index:  # [sha256, listing index, shard, key, source] sorted: what merge_partitions streams
        rows = sorted(
            (sample[2], int(sample[0]), part["shard"]["name"], sample[0], sample[1])
            for part in parts
            for sample in part["samples"]
        )
        write_jsonl_gz(storage.join(output, SAMPLES_NAME), (list(row) for row in rows))
    for part in parts:
        converted.update(part["converted"])
    shards = [part["shard"] for part in parts]
    passed = sum(part["passed_through"] for part in parts)
    return {
        "settings": dataclasses.asdict(settings),
        "fingerprint": fingerprint,
        "shards": shards,
        "totals": {
            "inputs": inputs,
            "samples": sum(s["samples"] for s in shards),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "rejected": n_rejected,
            "duplicates": n_duplicates,
            "ignored": 0,
        },
        "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        "converted_by_kind": dict(sorted(converted.items())),
        "encoded": {"passed_through": passed, "reencoded": sum(s["samples"] for s in shards) - passed},
        "ignored_by_reason": {},
        "records": {"rejected": ["rejected.jsonl.gz"], "duplicates": ["duplicates.jsonl.gz"]},
    }


# --------------------------------------------------------------------------------------------
# Reading


def read_manifest(manifest_uri: str) -> dict:
    """Load and sanity-check a shard manifest; the error names what is wrong and how to fix it.

    Shard entries: ``name`` (relative to the manifest's folder), ``samples`` (samples a reader
    yields), ``bytes``, ``sha256``; after a merge also ``members`` (samples in the tar),
    ``excluded`` and ``exclusions`` (see ``read_exclusions``). Per-sample records: ``iter_records``.
    """
    if not storage.exists(manifest_uri):
        raise NotFoundError(
            f"no shard manifest at {manifest_uri}: run `seer shard ... --output <prefix>` first "
            "and pass <prefix>/manifest.json (a run without manifest.json did not finish)"
        )
    manifest = storage.read_json(manifest_uri)
    if manifest.get("format") not in _READABLE_FORMATS or not isinstance(manifest.get("shards"), list):
        raise ConfigError(
            f"{manifest_uri} is not a {FORMAT} manifest (format={manifest.get('format')!r}): "
            "re-create it with this version of `seer shard`"
        )
    return manifest


def _folder(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def iter_records(manifest_uri: str, kind: str) -> Iterator[dict]:
    """Stream the per-sample records of a manifest: ``kind`` is "rejected" or "duplicates"."""
    manifest = read_manifest(manifest_uri)
    if "records" not in manifest:  # seer-shards/1 kept them inline
        yield from manifest.get(kind, [])
        return
    for name in manifest["records"][kind]:
        yield from read_jsonl_gz(storage.join(_folder(manifest_uri), name))


def read_exclusions(
    manifest_uri: str, entry: dict, cache: dict[str, dict[str, set[str]]] | None = None
) -> set[str]:
    """Keys of the samples a reader must skip in the shard ``entry`` (duplicates resolved by a merge).

    Exclusion files hold one partition's exclusions each; ``cache`` (uri -> shard -> keys) keeps
    the last file read so a reader going through a partition's shards reads it once.
    """
    name = entry.get("exclusions")
    if not name or not entry.get("excluded"):
        return set()
    uri = storage.join(_folder(manifest_uri), name)
    cache = {} if cache is None else cache
    if uri not in cache:
        cache.clear()
        by_shard: dict[str, set[str]] = {}
        for row in read_jsonl_gz(uri):
            by_shard.setdefault(row["shard"], set()).add(row["key"])
        cache[uri] = by_shard
    return cache[uri].get(entry["name"], set())


def shard_uris(manifest_uri: str) -> list[tuple[str, set[str]]]:
    """(shard URI, keys a reader must skip) of every shard a manifest lists, next to the manifest;
    the keys are the cross-partition duplicates a merge excluded (empty for a single run)."""
    manifest = read_manifest(manifest_uri)
    cache: dict[str, dict[str, set[str]]] = {}
    return [
        (storage.join(_folder(manifest_uri), s["name"]), read_exclusions(manifest_uri, s, cache))
        for s in manifest["shards"]
    ]
