"""`seer shard`: turn folders, path lists, tar files or object-store prefixes into tar shards.

Output layout under the output prefix::

    shard-000000.tar ...    webdataset-style: `<key>.jpg` (+ `<key>.json` sidecar) per sample
    _parts/shard-000000.json  written right after its tar commits: the shard's manifest entry and
                              the resume state (input range, sample hashes, rejects)
    manifest.json           written last; its presence means the whole run is complete

Determinism: inputs are enumerated in a fixed order (CLI order; folders and prefixes sorted;
list files and tars in their own order), every kept sample is keyed by its input index, and a
shard closes by a rule that only depends on that sequence. The same command therefore always
produces byte-identical shards, which is what makes resuming safe: a re-run reloads the complete
prefix of `_parts/`, continues from the input index where the last complete shard ended, and
rewrites anything after it (a tar without a part file never counts as complete).

Dedup key: sha256 of the sample's JPEG bytes, i.e. of the decoded pixels after orientation, RGB
conversion, downscaling and re-encoding (the encoder is deterministic). Two inputs are duplicates
when they would become the same training sample, whatever their source format or metadata; this
is cheaper than hashing raw pixels. The first one in input order is kept.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import PIL
from tqdm import tqdm

from seer import storage
from seer.data.images import (
    DEFAULT_MAX_PIXELS,
    EncodedImage,
    ImageRejected,
    encode_image,
    has_image_extension,
)
from seer.errors import ConfigError, NotFoundError, SeerError

MANIFEST_NAME = "manifest.json"
PARTS_DIR = "_parts"
FORMAT = "seer-shards/1"
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv")
_LIST_COLUMNS = ("uri", "url", "path", "file", "filename", "image")
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
class InputRef:
    """One input image: a file/object URI, or a member of a tar file."""

    uri: str
    member: str | None = None

    @property
    def source(self) -> str:
        return f"{self.uri}#{self.member}" if self.member is not None else self.uri


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
# Input enumeration


def _is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_EXTENSIONS)


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."


def _tar_members(uri: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Stream a (possibly compressed) tar once: (member info, the open tar to extract it from)."""
    with storage.open(uri, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for info in tar:
            yield info, tar


def _expand_tar(uri: str, refs: list[InputRef], ignored: Counter) -> None:
    try:
        for info, _ in _tar_members(uri):
            if info.isfile() and has_image_extension(info.name):
                refs.append(InputRef(uri, info.name))
            elif info.isfile():
                ignored["not_an_image_name"] += 1
    except tarfile.TarError as err:
        raise ConfigError(f"input tar {uri} is not a readable tar file ({err}): fix or remove it") from None


def _read_list(uri: str) -> list[str]:
    text = storage.read_bytes(uri).decode("utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not uri.lower().endswith((".csv", ".tsv")):
        return [line.strip() for line in lines]
    rows = list(csv.reader(lines, delimiter="\t" if uri.lower().endswith(".tsv") else ","))
    column = 0
    if rows:
        header = [cell.strip().lower() for cell in rows[0]]
        named = [header.index(name) for name in _LIST_COLUMNS if name in header]
        if named:
            column, rows = named[0], rows[1:]
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


def _resolve(entry: str, list_uri: str) -> str:
    if "://" in entry or entry.startswith("/"):
        return entry
    return storage.join(_parent(list_uri), entry)


def _expand_object(uri: str, refs: list[InputRef], ignored: Counter) -> None:
    if _is_tar(uri):
        _expand_tar(uri, refs, ignored)
    elif has_image_extension(uri):
        refs.append(InputRef(uri))
    else:
        ignored["not_an_image_name"] += 1


def enumerate_inputs(inputs: Sequence[str]) -> tuple[list[InputRef], dict[str, int]]:
    """List every input image in a deterministic order; return (refs, ignored counts by reason).

    Each input is a folder or prefix (all images below it, sorted; tars inside are expanded), a
    tar file (its image members), a list file (.txt/.lst: one path or URI per line; .csv/.tsv: the
    column named uri/url/path/file/filename/image, else the first; relative entries are relative to
    the list), or one image file. Entries of a list are not checked here: a missing one is
    rejected as ``unreadable`` later, while a missing top-level input is an error.
    """
    refs: list[InputRef] = []
    ignored: Counter = Counter()
    for item in inputs:
        if item.startswith(("http://", "https://")):
            refs.append(InputRef(item))
        elif storage.exists(item):
            if item.lower().endswith(LIST_EXTENSIONS):
                for entry in _read_list(item):
                    resolved = _resolve(entry, item)
                    if _is_tar(resolved):
                        _expand_tar(resolved, refs, ignored)
                    else:
                        refs.append(InputRef(resolved))
            else:
                _expand_object(item, refs, ignored)
        else:
            try:
                objects = storage.list(item, recursive=True)
            except NotFoundError:
                objects = []
            if not objects:
                raise NotFoundError(
                    f"input {item!r} is neither a file nor a non-empty folder/prefix: "
                    "check the path or URI (folders, tar files, .txt/.csv lists and s3:// prefixes work)"
                )
            for info in sorted(objects, key=lambda o: o.uri):
                _expand_object(info.uri, refs, ignored)
    return refs, dict(ignored)


# --------------------------------------------------------------------------------------------
# Per-input work (runs in worker processes)


def _read_source(ref: InputRef) -> bytes:
    if ref.uri.startswith(("http://", "https://")):
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
            self._uri, self._members = ref.uri, _tar_members(ref.uri)
        for info, tar in self._members:
            if info.name == ref.member and info.isfile():
                extracted = tar.extractfile(info)
                return extracted.read() if extracted is not None else b""
        raise ConfigError(
            f"tar {ref.uri} changed while sharding (member {ref.member} vanished): re-run seer shard"
        )


def _outcomes(refs: list[InputRef], start: int, settings: ShardSettings, workers: int) -> Iterator[Outcome]:
    """Process refs[start:] and yield outcomes in input order (parallel across processes)."""
    reader = _TarMemberReader()

    def chunks() -> Iterator[list[tuple[int, InputRef, bytes | None]]]:
        for begin in range(start, len(refs), _CHUNK):
            batch = []
            for index in range(begin, min(begin + _CHUNK, len(refs))):
                ref = refs[index]
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

    The tar is deterministic: fixed mtime, owner and mode, USTAR headers.
    """

    def __init__(self, uri: str) -> None:
        self._sink = storage.open(uri, "wb")
        self._hashing = _HashingWriter(self._sink)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        self._tar.addfile(info, io.BytesIO(payload))

    def commit(self) -> tuple[int, str]:
        """Finish the tar and make it visible; return (bytes, sha256)."""
        self._tar.close()
        self._sink.close()
        return self._hashing.size, self._hashing.sha256.hexdigest()

    def discard(self) -> None:
        self._sink.discard()


@dataclass
class _OpenShard:
    index: int
    start: int  # first input index covered by this shard
    writer: _TarWriter | None = None  # opened with the first sample
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (key, source, sample sha256)
    estimated_bytes: int = 2 * _TAR_BLOCK
    rejected: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)


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
        "sha256": image.sha256,
    }
    return json.dumps(meta, sort_keys=True).encode()


def _fingerprint(refs: list[InputRef], settings: ShardSettings) -> str:
    """Identifies the command: inputs, settings and the encoder (another Pillow may encode other bytes)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    digest.update(f"pillow {PIL.__version__}\n".encode())
    for ref in refs:
        digest.update(ref.source.encode() + b"\n")
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
    """Delete what `seer shard` writes (shards, parts, manifest) under ``output``, nothing else."""
    try:
        objects = storage.list(output, recursive=True)
    except NotFoundError:
        return
    for info in objects:
        if not info.uri.startswith(output + "/"):
            continue
        name = info.uri[len(output) + 1 :]
        if (
            name == MANIFEST_NAME
            or name.startswith(PARTS_DIR + "/")
            or (name.startswith("shard-") and name.endswith(".tar"))
        ):
            storage.delete(info.uri)


def shard(
    inputs: Sequence[str],
    output: str,
    settings: ShardSettings | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict:
    """Shard ``inputs`` into tar shards + manifest.json under ``output``; return the manifest.

    Resumes a previous run of the same command (same inputs and settings) that was interrupted;
    returns the existing manifest when that run had completed. ``overwrite`` deletes shards,
    parts and manifest that a different command left under ``output`` first. With ``workers`` > 1
    the decoders are spawned processes: call this from under ``if __name__ == "__main__":``.
    """
    settings = settings or ShardSettings()
    settings.validate()
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not inputs:
        raise ConfigError("no inputs given: pass folders, tar files, list files or s3:// prefixes")
    output = output.rstrip("/")
    refs, ignored = enumerate_inputs(inputs)
    fingerprint = _fingerprint(refs, settings)
    manifest_uri = storage.join(output, MANIFEST_NAME)
    if overwrite:
        _delete_outputs(output)
    elif storage.exists(manifest_uri):
        manifest = storage.read_json(manifest_uri)
        if manifest.get("fingerprint") == fingerprint:
            log(f"{manifest_uri} is complete for these inputs and settings; nothing to do")
            return manifest
        raise ConfigError(
            f"{manifest_uri} was made from other inputs or settings: "
            "pass --overwrite to replace it, or choose another --output"
        )
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
        }
        storage.write_json(storage.join(output, PARTS_DIR, name.replace(".tar", ".json")), part)
        parts.append(part)

    bar = tqdm(total=len(refs), initial=start, unit="img", desc="shard", disable=None, file=sys.stderr)
    try:
        for outcome in _outcomes(refs, start, settings, workers):
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
            key = f"{outcome.index:010d}"
            members = [(f"{key}.jpg", outcome.image.jpeg)]
            if settings.write_json:
                members.append((f"{key}.json", _sidecar(key, outcome)))
            added = sum(_tar_bytes(len(payload)) for _, payload in members)
            if current.samples and current.estimated_bytes + added > limit_bytes:
                close(current, outcome.index)
                current = _OpenShard(index=current.index + 1, start=outcome.index)
            if current.writer is None:
                current.writer = _TarWriter(storage.join(output, shard_name(current.index)))
            for name, payload in members:
                current.writer.add(name, payload)
            seen[digest] = outcome.ref.source
            current.samples.append((key, outcome.ref.source, digest))
            current.estimated_bytes += added
            current.converted.update(outcome.image.converted)
            if len(current.samples) >= settings.max_samples_per_shard:
                close(current, outcome.index + 1)
                current = _OpenShard(index=current.index + 1, start=outcome.index + 1)
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

    manifest = _build_manifest(parts, trailing, refs, ignored, settings, fingerprint, inputs, command)
    storage.write_json(manifest_uri, manifest)
    totals = manifest["totals"]
    log(
        f"wrote {totals['shards']} shards with {totals['samples']} samples to {output} "
        f"({totals['rejected']} rejected, {totals['duplicates']} duplicates)"
    )
    return manifest


def _build_manifest(
    parts: list[dict],
    trailing: dict[str, list],
    refs: list[InputRef],
    ignored: dict[str, int],
    settings: ShardSettings,
    fingerprint: str,
    inputs: Sequence[str],
    command: Sequence[str] | None,
) -> dict:
    from seer import __version__

    rejected = [entry for part in parts for entry in part["rejected"]] + trailing["rejected"]
    duplicates = [entry for part in parts for entry in part["duplicates"]] + trailing["duplicates"]
    converted: Counter = Counter()
    for part in parts:
        converted.update(part["converted"])
    shards = [part["shard"] for part in parts]
    return {
        "format": FORMAT,
        "seer_version": __version__,
        "command": list(command if command is not None else sys.argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": list(inputs),
        "settings": dataclasses.asdict(settings),
        "fingerprint": fingerprint,
        "shards": shards,
        "totals": {
            "inputs": len(refs),
            "samples": sum(s["samples"] for s in shards),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "rejected": len(rejected),
            "duplicates": len(duplicates),
            "ignored": sum(ignored.values()),
        },
        "rejected_by_reason": dict(sorted(Counter(entry["reason"] for entry in rejected).items())),
        "converted_by_kind": dict(sorted(converted.items())),
        "ignored_by_reason": ignored,
        "rejected": rejected,
        "duplicates": duplicates,
    }


def read_manifest(manifest_uri: str) -> dict:
    """Load and sanity-check a shard manifest; the error names what is wrong and how to fix it."""
    if not storage.exists(manifest_uri):
        raise NotFoundError(
            f"no shard manifest at {manifest_uri}: run `seer shard ... --output <prefix>` first "
            "and pass <prefix>/manifest.json (a run without manifest.json did not finish)"
        )
    manifest = storage.read_json(manifest_uri)
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
        raise ConfigError(
            f"{manifest_uri} is not a {FORMAT} manifest (format={manifest.get('format')!r}): "
            "re-create it with this version of `seer shard`"
        )
    return manifest


def shard_uris(manifest_uri: str) -> list[tuple[str, int]]:
    """(shard URI, sample count) of every shard a manifest lists, next to the manifest."""
    manifest = read_manifest(manifest_uri)
    prefix = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return [(storage.join(prefix, s["name"]), int(s["samples"])) for s in manifest["shards"]]
