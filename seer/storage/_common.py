"""Pieces shared by the storage backends: URI parsing, `ObjectInfo`, the atomic-writer base, copying."""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

from tqdm import tqdm

from seer.errors import StorageError

UriLike = str | os.PathLike[str]

S3_SCHEMES = ("s3", "minio")
SUPPORTED = "a local path, file:///abs/path, s3://bucket/key or minio://bucket/key"
COPY_CHUNK = 8 << 20
PROGRESS_MIN_BYTES = 64 << 20

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class ObjectInfo:
    """One object (file) or, in non-recursive listings, one "directory" (`is_dir=True`, size 0).

    `mtime` is seconds since the epoch (0.0 for directories); `etag` changes when the content
    changes (S3: the server's ETag; local: derived from mtime and size; None for directories).
    """

    uri: str
    size: int
    mtime: float
    etag: str | None
    is_dir: bool = False


@dataclass(frozen=True)
class Location:
    """A parsed URI: local (`path` set) or S3 (`bucket`, `key` set)."""

    uri: str
    scheme: str  # "" for a plain path, "file", "s3" or "minio"
    path: Path | None = None
    bucket: str = ""
    key: str = ""

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def child_uri(self, relative: str) -> str:
        """URI of `relative` (a '/'-separated path) below this location, in this location's form."""
        rel = quote(relative, safe="/") if self.scheme == "file" else relative
        return join(self.uri, rel)


def parse(uri: UriLike) -> Location:
    """Parse a path or URI; an unsupported scheme or a malformed URI raises StorageError."""
    text = os.fspath(uri)
    if not isinstance(text, str):
        raise StorageError(f"storage URI must be text, got {text!r}: pass {SUPPORTED}")
    if not text:
        raise StorageError(f"empty storage URI: pass {SUPPORTED}")
    match = _SCHEME_RE.match(text)
    if match is None:
        return Location(uri=text, scheme="", path=Path(text).expanduser())
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise StorageError(
                f"file URI {text!r} must be absolute (file:///abs/path): "
                "a host other than localhost is not supported; use a plain path for relative paths"
            )
        return Location(uri=text, scheme=scheme, path=Path(unquote(rest)))
    if scheme in S3_SCHEMES:
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"URI {text!r} has no bucket name: write it as {scheme}://BUCKET/KEY")
        return Location(uri=text, scheme=scheme, bucket=bucket, key=key)
    raise StorageError(f"unsupported URI scheme {scheme!r} in {text!r}: use {SUPPORTED}")


def join(base: UriLike, *parts: str) -> str:
    """Join `parts` onto `base` with '/', keeping the scheme; slashes around each part are ignored."""
    text = os.fspath(base)
    match = _SCHEME_RE.match(text)
    head = match.group(0) if match else ""
    body = text[len(head) :]
    for part in parts:
        piece = os.fspath(part).strip("/")
        if piece:
            body = f"{body.rstrip('/')}/{piece}" if body else piece
    return head + body


class AtomicWriter(io.BufferedIOBase):
    """Write-only binary stream whose data appears at `uri` only when `close()` succeeds.

    Use it as a context manager: leaving the block normally commits, leaving it by an exception
    discards. `discard()` throws the data away explicitly; an unclosed writer that is garbage
    collected is discarded too, never committed.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError(f"write to a closed writer for {self.uri}")
        view = memoryview(data).cast("B")
        self._write(view)
        self._written += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._written

    def close(self) -> None:
        """Commit: make the data visible at `uri` (no-op if already closed or discarded)."""
        if self.closed:
            return
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise
        finally:
            super().close()

    def discard(self) -> None:
        """Throw the written data away; nothing appears at `uri`."""
        if self.closed:
            return
        try:
            self._abort()
        finally:
            super().close()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def __del__(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.discard()

    def _write(self, data: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


def copy_stream(src: BinaryIO, dst: BinaryIO, total: int | None, desc: str) -> int:
    """Copy `src` to `dst` in large chunks, with a progress bar for big transfers on a terminal."""
    copied = 0
    show = total is not None and total >= PROGRESS_MIN_BYTES
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=desc, disable=None if show else True, leave=False
    ) as bar:
        while chunk := src.read(COPY_CHUNK):
            dst.write(chunk)
            copied += len(chunk)
            bar.update(len(chunk))
    return copied
