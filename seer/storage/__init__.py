"""One object-storage API over local folders (`/path`, `file:///path`) and S3 (`s3://`, `minio://`).

    import seer.storage as storage
    storage.write_json("s3://bucket/run/manifest.json", {"shards": 12})
    with storage.open("minio://mlpipeline/ckpt/model.pt", "wb") as f:   # visible only after close
        torch.save(state, f)

Writes are atomic: a reader never sees a half-written file or object, and a write interrupted by an
exception leaves nothing behind. S3 requests retry transient failures within a bounded time.
Configuration (endpoint, keys, TLS, retries, part size) comes from environment variables listed in
docs/storage.md. "Folders" are key prefixes: `list` / `delete_prefix` treat `prefix` as a folder.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from seer.errors import NotFoundError, StorageError
from seer.storage import _local
from seer.storage._common import AtomicWriter, Location, ObjectInfo, UriLike, copy_stream, join, parse

if TYPE_CHECKING:
    from seer.storage._s3 import S3Store

__all__ = [
    "AtomicWriter",
    "ObjectInfo",
    "copy",
    "delete",
    "delete_prefix",
    "exists",
    "get",
    "is_remote",
    "join",
    "list",
    "local_path",
    "open",
    "put",
    "read_bytes",
    "read_json",
    "read_text",
    "stat",
    "write_bytes",
    "write_json",
    "write_text",
]


def is_remote(uri: UriLike) -> bool:
    """True for s3:// and minio:// URIs, False for local paths and file:// URIs."""
    return not parse(uri).is_local


def local_path(uri: UriLike) -> Path | None:
    """The filesystem path of a local path / file:// URI, or None for a remote URI."""
    return parse(uri).path


def stat(uri: UriLike) -> ObjectInfo:
    """Size, mtime and etag of one object; NotFoundError if it does not exist."""
    loc = parse(uri)
    return _local.stat(loc) if loc.is_local else _s3_store().stat(loc)


def exists(uri: UriLike) -> bool:
    """Whether an object (file) exists at `uri`; folders count as absent.

    A missing S3 bucket raises NotFoundError instead of answering False, so a typo is not
    mistaken for "not written yet".
    """
    loc = parse(uri)
    return _local.exists(loc) if loc.is_local else _s3_store().exists(loc)


def open(uri: UriLike, mode: str = "rb") -> BinaryIO:
    """Open an object for streaming.

    "rb": a seekable binary reader that fetches data as it is read (never the whole object).
    "wb": an `AtomicWriter`; use it as a context manager: the object appears only when the block
    ends normally; an exception inside the block discards everything written.
    """
    loc = parse(uri)
    if mode == "rb":
        return _local.open_read(loc) if loc.is_local else _s3_store().open_read(loc)
    if mode == "wb":
        return _open_write(loc)
    raise StorageError(
        f"unsupported mode {mode!r} for storage.open({loc.uri!r}): use 'rb' or 'wb' "
        "(read_text / write_text for text)"
    )


def _open_write(loc: Location, size_hint: int | None = None) -> AtomicWriter:
    return _local.LocalWriter(loc) if loc.is_local else _s3_store().open_write(loc, size_hint)


def put(src: UriLike | bytes | bytearray | memoryview | BinaryIO, uri: UriLike) -> None:
    """Upload `src` to `uri` atomically.

    `src` is a local file path (str / Path), the content itself (bytes-like), or a readable binary
    stream. If reading `src` fails midway, nothing appears at `uri`.
    """
    loc = parse(uri)
    if isinstance(src, (bytes, bytearray, memoryview)):
        with _open_write(loc, len(src)) as writer:
            writer.write(src)
        return
    if hasattr(src, "read"):
        with _open_write(loc) as writer:
            copy_stream(src, writer, None, f"upload {loc.uri}")  # type: ignore[arg-type]
        return
    path = Path(os.fspath(src)).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise NotFoundError(f"cannot upload {path} to {loc.uri}: no such file; check the source path")
    if not path.is_file():
        raise StorageError(f"cannot upload {path} to {loc.uri}: it is not a file; upload the files inside it")
    size = path.stat().st_size
    with builtins.open(path, "rb") as source, _open_write(loc, size) as writer:
        copy_stream(source, writer, size, f"upload {path.name}")


def get(uri: UriLike, local_path: UriLike) -> Path:
    """Download `uri` to the local file `local_path` (into it, if it is an existing folder).

    The file appears complete or not at all. Returns the path written.
    """
    target = Path(os.fspath(local_path)).expanduser()
    loc = parse(uri)
    if target.is_dir():
        target = target / (loc.path.name if loc.path is not None else loc.key.rsplit("/", 1)[-1])
    dst = Location(uri=str(target), scheme="", path=target)
    with open(uri, "rb") as source, _local.LocalWriter(dst) as writer:
        copy_stream(source, writer, _size_of(source), f"download {target.name}")
    return target


def copy(src_uri: UriLike, dst_uri: UriLike) -> None:
    """Copy one object, within a backend or across backends (S3 to S3 copies server-side)."""
    src, dst = parse(src_uri), parse(dst_uri)
    if not src.is_local and not dst.is_local:
        _s3_store().copy(src, dst)
        return
    with open(src.uri, "rb") as source:
        size = _size_of(source)
        with _open_write(dst, size) as writer:
            copy_stream(source, writer, size, f"copy {src.uri}")


def list(prefix: UriLike, recursive: bool = True) -> builtins.list[ObjectInfo]:
    """Objects under the folder `prefix`, sorted by URI, with URIs in the same form as `prefix`.

    recursive=True: every object below, at any depth. recursive=False: the direct children, with
    sub-folders as `ObjectInfo(is_dir=True)`. A folder that does not exist lists as empty.
    """
    loc = parse(prefix)
    return _local.list_objects(loc, recursive) if loc.is_local else _s3_store().list(loc, recursive)


def delete(uri: UriLike) -> None:
    """Delete one object. Deleting an object that does not exist is not an error."""
    loc = parse(uri)
    if loc.is_local:
        _local.delete(loc)
    else:
        _s3_store().delete(loc)


def delete_prefix(prefix: UriLike) -> int:
    """Delete every object under the folder `prefix`; returns how many were deleted."""
    loc = parse(prefix)
    return _local.delete_prefix(loc) if loc.is_local else _s3_store().delete_prefix(loc)


def read_bytes(uri: UriLike) -> bytes:
    """The whole content of one object."""
    with open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: UriLike, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `uri` atomically (replacing any existing object)."""
    put(data, uri)


def read_text(uri: UriLike, encoding: str = "utf-8") -> str:
    """The content of one object, decoded."""
    return read_bytes(uri).decode(encoding)


def write_text(uri: UriLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `uri` atomically."""
    put(text.encode(encoding), uri)


def read_json(uri: UriLike) -> Any:
    """Parse one object as JSON; invalid JSON raises StorageError naming the URI."""
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(
            f"{os.fspath(uri)} is not valid JSON ({exc}): rewrite it or check the URI"
        ) from exc


def write_json(uri: UriLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as UTF-8 JSON (newline-terminated) to `uri` atomically."""
    write_text(uri, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _s3_store() -> S3Store:
    """The S3 backend for the current environment (imported on first use: local-only runs skip minio)."""
    from seer.storage import _s3

    return _s3.store()


def _size_of(stream: BinaryIO) -> int | None:
    raw = getattr(stream, "raw", stream)
    if isinstance(raw, io.FileIO):
        return os.fstat(raw.fileno()).st_size
    size = getattr(raw, "size", None)  # S3Reader knows its object's size
    return size if isinstance(size, int) else None
