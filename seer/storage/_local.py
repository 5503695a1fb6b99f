"""Local-folder backend: plain paths and file:// URIs. Writes go to a hidden temp file, then os.replace."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from seer.errors import NotFoundError, StorageError
from seer.storage._common import AtomicWriter, Location, ObjectInfo

TMP_SUFFIX = ".seer-tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


def is_temp_name(name: str) -> bool:
    """True for the hidden temp files of writers still in progress (never listed)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


@contextlib.contextmanager
def os_errors(loc: Location, action: str) -> Iterator[None]:
    """Turn OSErrors into StorageError / NotFoundError naming the path and what to check."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"cannot {action} {loc.uri}: no such file or directory ({exc.filename}): "
            "check the path, or that the step that writes it has run"
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot {action} {loc.uri}: {exc.strerror or exc} ({exc.filename or loc.path}): "
            "check that the path is a file in a writable folder"
        ) from exc


def _info(uri: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(uri=uri, size=st.st_size, mtime=st.st_mtime, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}")


def _path(loc: Location) -> Path:
    assert loc.path is not None
    return loc.path


def stat(loc: Location) -> ObjectInfo:
    with os_errors(loc, "stat"):
        st = os.stat(_path(loc))
    if not os.path.isfile(_path(loc)):
        raise StorageError(f"{loc.uri} is a directory, not a file: use storage.list() to see what is inside")
    return _info(loc.uri, st)


def exists(loc: Location) -> bool:
    return _path(loc).is_file()


def open_read(loc: Location) -> BinaryIO:
    if _path(loc).is_dir():
        raise StorageError(f"cannot read {loc.uri}: it is a directory; name a file inside it")
    with os_errors(loc, "read"):
        return open(_path(loc), "rb")


class LocalWriter(AtomicWriter):
    """Writes a hidden temp file next to the target; close() fsyncs and renames it into place."""

    def __init__(self, loc: Location) -> None:
        super().__init__(loc.uri)
        self._target = _path(loc)
        if self._target.is_dir():
            raise StorageError(f"cannot write {loc.uri}: it is a directory; name a file inside it")
        self._loc = loc
        with os_errors(loc, "write"):
            self._target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self._target.parent, prefix=f".{self._target.name}.", suffix=TMP_SUFFIX
            )
            os.fchmod(fd, _FILE_MODE)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: memoryview) -> None:
        with os_errors(self._loc, "write"):
            self._file.write(data)

    def _commit(self) -> None:
        with os_errors(self._loc, "write"):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._target)
            _fsync_dir(self._target.parent)

    def _abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_objects(loc: Location, recursive: bool) -> list[ObjectInfo]:
    root = _path(loc)
    if not root.is_dir():
        return []
    out: list[ObjectInfo] = []
    with os_errors(loc, "list"):
        if recursive:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                rel_dir = Path(dirpath).relative_to(root).as_posix()
                for name in filenames:
                    if is_temp_name(name):
                        continue
                    full = os.path.join(dirpath, name)
                    if not os.path.isfile(full):
                        continue
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    out.append(_info(loc.child_uri(rel), os.stat(full)))
        else:
            with os.scandir(root) as entries:
                for entry in entries:
                    if entry.is_dir():
                        out.append(ObjectInfo(loc.child_uri(entry.name), 0, 0.0, None, is_dir=True))
                    elif entry.is_file() and not is_temp_name(entry.name):
                        out.append(_info(loc.child_uri(entry.name), entry.stat()))
    out.sort(key=lambda info: info.uri)
    return out


def delete(loc: Location) -> None:
    path = _path(loc)
    if path.is_dir() and not path.is_symlink():
        raise StorageError(f"cannot delete {loc.uri}: it is a directory; use storage.delete_prefix()")
    with os_errors(loc, "delete"):
        path.unlink(missing_ok=True)


def delete_prefix(loc: Location) -> int:
    root = _path(loc)
    if root.resolve() == Path(root.anchor):
        raise StorageError(f"refusing to delete everything under the filesystem root ({loc.uri})")
    if not root.is_dir():
        return 0
    count = len(list_objects(loc, recursive=True))
    with os_errors(loc, "delete"):
        shutil.rmtree(root)
    return count
