"""Enumerate `seer shard` inputs as a stream, and split the listing into partitions.

Order: inputs in CLI order; a folder or prefix in byte order of its object names (what an S3
listing returns, and what a sorted local walk gives); a list file or tar in its own order. The
position of an input in this order is its *listing index*: the sample key (``%010d``) and the
global "first one wins" order of deduplication, whatever the number of partitions.

Partitions: the input at listing index ``i`` belongs to partition ``partition_of(i, N)`` (round
robin), so every input lands in exactly one of N partitions, a re-run puts it in the same one, no
input is lost or doubled for any N, and the split depends on the listing order alone: the same
corpus copied to another folder or bucket gives the same partitions, shards and training order.
Nothing here holds the whole listing: S3 prefixes are read page by page and local folders walked
lazily.

``list_inputs`` writes the listing once as N compressed JSON-lines files that the partitions read
(``_lists/list-00003-of-00008.jsonl.gz``: ``{"i": index, "uri": ..., "member": ..., "v": version}``
per line), and ``_lists/listing.json`` last (inputs, counts per partition, ignored files by reason,
and ``digest``). An input's *version* is ``size:etag`` of the object it is read from (S3: the
listing page's ETag; local: mtime and size; a tar member: its tar's), so the listing's ``digest``
changes when any listed image changes, is added or is removed, or lands in another partition. Entries
of list files and URLs are not stat-ed (that would cost one request each): for them the list file's own
version counts.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seer import storage
from seer.data.images import has_image_extension
from seer.data.parallel_listing import LIST_WORKERS, Split, list_parallel
from seer.errors import ConfigError, NotFoundError

TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv")
LISTS_DIR = "_lists"
LISTING_NAME = "listing.json"
LISTING_FORMAT = "seer-shard-listing/1"
_LIST_COLUMNS = ("uri", "url", "path", "file", "filename", "image")


@dataclass(frozen=True)
class InputRef:
    """One input image: a file/object URI, or a member of a tar file."""

    uri: str
    member: str | None = None
    version: str | None = field(default=None, compare=False)  # size:etag of the object read

    @property
    def source(self) -> str:
        return f"{self.uri}#{self.member}" if self.member is not None else self.uri


@dataclass(frozen=True)
class Ignored:
    """A file that is not an image name (counted, never processed)."""

    uri: str
    reason: str = "not_an_image_name"


def partition_of(index: int, partitions: int) -> int:
    """The partition (0..partitions-1) that owns listing index ``index`` (an ignored file's index
    counts ignored files): round robin, independent of where the inputs are stored."""
    return index % partitions


def parse_partition(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); a ConfigError names the expected form."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--partition must look like I/N (e.g. 3/8), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--partition {spec}: need N >= 1 and 0 <= I < N")
    return index, count


def _is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_EXTENSIONS)


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."


def tar_members(uri: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Stream a (possibly compressed) tar once: (member info, the open tar to extract it from)."""
    with storage.open(uri, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        yield from ((info, tar) for info in tar)


def object_version(info: storage.ObjectInfo) -> str:
    """``size:etag`` of an object: changes when its bytes change (local etag: mtime and size)."""
    return f"{info.size}:{info.etag}"


def _version_of(uri: str) -> str | None:
    """The version of an existing object, None for prefixes, folders and URLs."""
    if uri.startswith(("http://", "https://")) or not storage.exists(uri):
        return None
    return object_version(storage.stat(uri))


def _expand_tar(uri: str, version: str | None = None) -> Iterator[InputRef | Ignored]:
    version = version or _version_of(uri)
    try:
        for info, _ in tar_members(uri):
            if info.isfile() and has_image_extension(info.name):
                yield InputRef(uri, info.name, version)
            elif info.isfile():
                yield Ignored(f"{uri}#{info.name}")
    except tarfile.TarError as err:
        raise ConfigError(f"input tar {uri} is not a readable tar file ({err}): fix or remove it") from None


def _read_list(uri: str) -> Iterator[str]:
    with storage.open(uri, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig")
        lines = (line for line in text if line.strip() and not line.lstrip().startswith("#"))
        if not uri.lower().endswith((".csv", ".tsv")):
            yield from (line.strip() for line in lines)
            return
        rows = csv.reader(lines, delimiter="\t" if uri.lower().endswith(".tsv") else ",")
        column = 0
        first = next(rows, None)
        if first is not None:
            header = [cell.strip().lower() for cell in first]
            named = [header.index(name) for name in _LIST_COLUMNS if name in header]
            if named:
                column = named[0]
            elif len(first) > column and first[column].strip():
                yield first[column].strip()
        yield from (row[column].strip() for row in rows if len(row) > column and row[column].strip())


def _resolve(entry: str, list_uri: str) -> str:
    if "://" in entry or entry.startswith("/"):
        return entry
    return storage.join(_parent(list_uri), entry)


def _expand_object(uri: str, version: str | None) -> Iterator[InputRef | Ignored]:
    if _is_tar(uri):
        yield from _expand_tar(uri, version)
    elif has_image_extension(uri):
        yield InputRef(uri, None, version)
    else:
        yield Ignored(uri)


def _walk_sorted(root: Path, uri: str) -> Iterator[tuple[str, str]]:
    """(URI, version) of the files under ``root`` in byte order of their relative names (a folder
    sorts as ``name/``)."""
    with os.scandir(root) as scan:
        entries = [(entry.name + "/" if entry.is_dir() else entry.name, entry) for entry in scan]
    for name, entry in sorted(entries, key=lambda item: item[0].encode()):
        if name.endswith("/"):
            yield from _walk_sorted(Path(entry.path), f"{uri}/{entry.name}")
        elif entry.is_file() and not storage._local.is_temp_name(entry.name):
            yield f"{uri}/{entry.name}", object_version(storage._local._info("", entry.stat()))


def iter_objects(prefix: str, workers: int = LIST_WORKERS) -> Iterator[tuple[str, str]]:
    """(URI, version) of the objects under ``prefix`` in byte order, streamed. S3: size and ETag come
    with the listing pages; ``workers`` concurrent listings of disjoint key ranges
    (`seer.data.parallel_listing`), yielded in the order one listing would give."""
    loc = storage.parse(prefix)
    base = prefix.rstrip("/")
    if loc.is_local:
        root = storage.local_path(prefix)
        if root is not None and root.is_dir():
            yield from _walk_sorted(root, base)
        return
    key = loc.key.strip("/")
    client = storage._s3_store().client

    def version(obj: object) -> str:
        return f"{obj.size}:{(obj.etag or '').strip(chr(34))}"

    def recursive(sub: str) -> Iterator[tuple[str, str]]:
        for obj in client.list_objects(bucket_name=loc.bucket, prefix=sub or None, recursive=True):
            name = obj.object_name or ""
            if not name.endswith("/"):  # zero-byte "folder" markers made by consoles
                yield name, version(obj)

    def level(sub: str) -> Iterator[tuple[str, str | None]]:
        for obj in client.list_objects(bucket_name=loc.bucket, prefix=sub or None, recursive=False):
            name = obj.object_name or ""
            if obj.is_dir:
                yield name, None
            elif not name.endswith("/"):
                yield name, version(obj)

    for name, ver in list_parallel(f"{key}/" if key else "", recursive, level, Split(workers=workers)):
        yield f"{loc.scheme}://{loc.bucket}/{name}", ver


def iter_inputs(inputs: Sequence[str]) -> Iterator[InputRef | Ignored]:
    """Every input image (and every ignored file) in listing order; see the module doc.

    Each input is a folder or prefix (all images below it; tars inside are expanded), a tar file
    (its image members), a list file (.txt/.lst: one path or URI per line; .csv/.tsv: the column
    named uri/url/path/file/filename/image, else the first; relative entries are relative to the
    list), or one image file. Entries of a list are not checked here: a missing one is rejected
    as ``unreadable`` later, while a missing top-level input is an error.
    """
    for item in inputs:
        if item.startswith(("http://", "https://")):
            yield InputRef(item)
        elif storage.exists(item):
            if item.lower().endswith(LIST_EXTENSIONS):
                for entry in _read_list(item):
                    resolved = _resolve(entry, item)
                    yield from _expand_tar(resolved) if _is_tar(resolved) else (InputRef(resolved),)
            else:
                yield from _expand_object(item, _version_of(item))
        else:
            found = False
            try:
                for uri, version in iter_objects(item):
                    found = True
                    yield from _expand_object(uri, version)
            except NotFoundError:
                pass
            if not found:
                raise NotFoundError(
                    f"input {item!r} is neither a file nor a non-empty folder/prefix: "
                    "check the path or URI (folders, tar files, .txt/.csv lists and s3:// prefixes work)"
                )


def enumerate_inputs(inputs: Sequence[str]) -> tuple[list[InputRef], dict[str, int]]:
    """The whole listing in memory: (refs in listing order, ignored counts by reason). Small runs only."""
    refs: list[InputRef] = []
    ignored: Counter = Counter()
    for item in iter_inputs(inputs):
        if isinstance(item, Ignored):
            ignored[item.reason] += 1
        else:
            refs.append(item)
    return refs, dict(ignored)


def _dealt_inputs(inputs: Sequence[str], partitions: int) -> Iterator[tuple[int, int, InputRef | Ignored]]:
    """(owner partition, index, item) for every input image and ignored file in listing order. An
    image's index is its listing index; an ignored file's counts ignored files only (``partition_of``
    deals both round robin, so the partitions' ignored counts add up to the whole listing's)."""
    index = ignored_index = 0
    for item in iter_inputs(inputs):
        if isinstance(item, Ignored):
            yield partition_of(ignored_index, partitions), ignored_index, item
            ignored_index += 1
        else:
            yield partition_of(index, partitions), index, item
            index += 1


def partition_inputs(
    inputs: Sequence[str], partition: int, partitions: int
) -> tuple[list[tuple[int, InputRef]], dict[str, int]]:
    """(listing index, ref) of the inputs partition ``partition`` owns, and its ignored counts.

    Streams the listing (``_dealt_inputs``) and keeps one partition's share.
    """
    refs: list[tuple[int, InputRef]] = []
    ignored: Counter = Counter()
    for owner, index, item in _dealt_inputs(inputs, partitions):
        if owner != partition:
            continue
        if isinstance(item, Ignored):
            ignored[item.reason] += 1
        else:
            refs.append((index, item))
    return refs, dict(ignored)


def list_file_name(partition: int, partitions: int) -> str:
    return f"list-{partition:05d}-of-{partitions:05d}.jsonl.gz"


def list_inputs(inputs: Sequence[str], output: str, partitions: int) -> dict:
    """Stream the listing of ``inputs`` into ``partitions`` list files under ``output/_lists``.

    Memory stays constant whatever the number of inputs (one open compressed writer per
    partition). ``listing.json`` is written last and returned; a listing that already exists for
    the same inputs and partition count is returned as is.
    """
    if partitions < 1:
        raise ConfigError(f"--partitions must be >= 1, got {partitions}")
    if not inputs:
        raise ConfigError("no inputs given: pass folders, tar files, list files or s3:// prefixes")
    output = output.rstrip("/")
    listing_uri = storage.join(output, LISTS_DIR, LISTING_NAME)
    if storage.exists(listing_uri):
        existing = storage.read_json(listing_uri)
        if existing.get("inputs") == list(inputs) and existing.get("partitions") == partitions:
            return existing
    sinks = [
        storage.open(storage.join(output, LISTS_DIR, list_file_name(p, partitions)), "wb")
        for p in range(partitions)
    ]
    writers = [gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6) for sink in sinks]
    counts = [0] * partitions
    ignored: list[Counter] = [Counter() for _ in range(partitions)]
    digest = hashlib.sha256(json.dumps([[[i, _version_of(i)] for i in inputs], partitions]).encode())
    try:
        for owner, index, item in _dealt_inputs(inputs, partitions):
            if isinstance(item, Ignored):
                ignored[owner][item.reason] += 1
                continue
            record = {"i": index, "uri": item.uri, "member": item.member, "v": item.version}
            line = (json.dumps(record) + "\n").encode()
            digest.update(f"{owner} ".encode() + line)  # the split is part of what the shards hold
            writers[owner].write(line)
            counts[owner] += 1
    except BaseException:
        for sink in sinks:
            sink.discard()
        raise
    for writer, sink in zip(writers, sinks, strict=True):
        writer.close()
        sink.close()
    listing = {
        "format": LISTING_FORMAT,
        "inputs": list(inputs),
        "partitions": partitions,
        "total": sum(counts),
        "counts": counts,
        "ignored_by_reason": dict(sorted(sum(ignored, Counter()).items())),
        "ignored_by_partition": [dict(sorted(counts.items())) for counts in ignored],
        "lists": [list_file_name(p, partitions) for p in range(partitions)],
    }
    digest.update(json.dumps(listing["ignored_by_partition"]).encode())
    listing["digest"] = digest.hexdigest()
    storage.write_json(listing_uri, listing)
    return listing


def read_listing(
    output: str, inputs: Sequence[str], partition: int, partitions: int
) -> tuple[list[tuple[int, InputRef]], dict[str, int]] | None:
    """The partition's share from a `seer shard list` listing under ``output``; None when there is none.

    ``inputs`` empty means "whatever was listed"; otherwise the listing must be of the same inputs.
    Ignored files are counted by partition as ``partition_inputs`` counts them.
    """
    listing_uri = storage.join(output.rstrip("/"), LISTS_DIR, LISTING_NAME)
    if not storage.exists(listing_uri):
        return None
    listing = storage.read_json(listing_uri)
    if listing.get("partitions") != partitions or (inputs and listing.get("inputs") != list(inputs)):
        if not inputs:
            raise ConfigError(
                f"{listing_uri} lists {listing.get('partitions')} partitions, not {partitions}: "
                f"re-run `seer shard list ... --partitions {partitions}` or pass the inputs"
            )
        return None
    refs = []
    uri = storage.join(output.rstrip("/"), LISTS_DIR, list_file_name(partition, partitions))
    with storage.open(uri, "rb") as raw, gzip.open(raw, "rt") as lines:
        for line in lines:
            record = json.loads(line)
            refs.append((int(record["i"]), InputRef(record["uri"], record["member"], record.get("v"))))
    return refs, dict(listing["ignored_by_partition"][partition])
