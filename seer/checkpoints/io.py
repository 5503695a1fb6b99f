"""Streaming reads and writes of `torch.save` files, tensor by tensor and chunk by chunk.

`torch.save` writes a zip archive: `<archive>/data.pkl` (the pickled object, whose tensors point at
storage records by key) and one stored (uncompressed, 64-byte aligned) record `<archive>/data/<key>`
per storage. `ArchiveWriter` writes that format without ever holding more than one chunk of a tensor
in memory; `ArchiveReader` parses the pickle into a tree whose tensors are `LazyTensor`s and reads
them (whole, or as byte chunks) only on demand. Files written here load with
`torch.load(path, mmap=True, weights_only=True)`; files from `torch.save` read here.

Checksums: `sha256` of a tensor is the sha256 of its contiguous little-endian bytes, so a tensor has
the same digest in a consolidated file, a slice and in memory.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

import seer.storage as storage
from seer.errors import SeerError

CHUNK_BYTES = 8 << 20
_PARALLEL_MIN = 1 << 20
_ALIGN = 64
_U32 = 0xFFFFFFFF

# dtype <-> the legacy storage class name torch.save pickles (e.g. `torch FloatStorage`).
_STORAGE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "FloatStorage",
    torch.float64: "DoubleStorage",
    torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage",
    torch.int64: "LongStorage",
    torch.int32: "IntStorage",
    torch.int16: "ShortStorage",
    torch.int8: "CharStorage",
    torch.uint8: "ByteStorage",
    torch.bool: "BoolStorage",
}
_DTYPES_BY_STORAGE = {name: dtype for dtype, name in _STORAGE_NAMES.items()}


class CheckpointError(SeerError):
    """A checkpoint file is missing, truncated, corrupt or of the wrong kind."""


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` → `"float32"` (the form stored in JSON indexes)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of `dtype_name`."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in a checkpoint index; re-create the index")
    return dtype


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The contiguous bytes of a CPU tensor, without a copy when it is already contiguous."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _gf2_times(matrix: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= matrix[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32 of A+B from crc32(A), crc32(B) and len(B), in O(log len2) (no data re-read)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # operator for one zero bit
    op = _gf2_square(_gf2_square(_gf2_square(odd)))  # eight zero bits: one zero byte
    while len2:  # apply len2 zero bytes to crc1, one bit of len2 at a time
        if len2 & 1:
            crc1 = _gf2_times(op, crc1)
        len2 >>= 1
        op = _gf2_square(op)
    return crc1 ^ crc2


def sha256_tensor(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's contiguous bytes."""
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def sha256_uri(uri: str, chunk: int = CHUNK_BYTES) -> str:
    """sha256 of a whole file or object, read in chunks."""
    digest = hashlib.sha256()
    with storage.open(uri, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LazyTensor:
    """A tensor inside an archive, not read yet: its storage record, dtype, shape, stride and offset."""

    record: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected, acc = [], 1
        for size in reversed(self.shape):
            expected.append(acc)
            acc *= size
        return all(
            sz == 1 or st == ex
            for sz, st, ex in zip(self.shape, self.stride, reversed(expected), strict=True)
        )


class _StorageRef:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Opaque:
    """Stands in for pickled objects of classes we do not need (optimizer state, configs, …)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_lazy(storage_ref: _StorageRef, offset: int, shape: tuple, stride: tuple, *_: Any) -> LazyTensor:
    return LazyTensor(storage_ref.key, storage_ref.dtype, tuple(shape), tuple(stride), int(offset))


class _LazyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_lazy
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "torch" and name in _DTYPES_BY_STORAGE:
            return _DTYPES_BY_STORAGE[name]
        if (module, name) in {("collections", "OrderedDict"), ("torch", "Size")}:
            return collections.OrderedDict if name == "OrderedDict" else tuple
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict", "slice"):
            return getattr(__import__("builtins"), name)
        if module == "torch" and name == "device":
            return str
        return type(name, (_Opaque,), {"__module__": "seer.checkpoints.io.opaque"})

    def persistent_load(self, pid: Any) -> _StorageRef:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise CheckpointError(f"unsupported persistent id {kind!r} in a torch file")
        dtype = storage_type if isinstance(storage_type, torch.dtype) else torch.uint8
        return _StorageRef(str(key), dtype, int(_numel))


class ArchiveReader:
    """Reads a `torch.save` zip archive from a seekable binary stream, tensor by tensor.

    `obj` is the unpickled object with every tensor replaced by a `LazyTensor`.
    """

    def __init__(self, stream: BinaryIO, name: str = "checkpoint") -> None:
        self.name = name
        self._f = stream
        try:
            zf = zipfile.ZipFile(stream)
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise CheckpointError(
                f"{name} is not a readable torch checkpoint (truncated, or not saved by torch.save >= 1.6: {err}); "
                "re-create or re-download it"
            ) from None
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{name} has no data.pkl record; it is not a torch.save file")
        self._prefix = pkl[0].filename[: -len("data.pkl")]
        self._records = {i.filename: i for i in infos}
        self._zip = zf
        try:
            data = zf.read(pkl[0])
            self.obj: Any = _LazyUnpickler(io.BytesIO(data)).load()
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, zlib.error) as err:
            raise CheckpointError(f"{name} is corrupt ({err}); re-create or re-download it") from None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._f.close()

    def _data_offset(self, t: LazyTensor) -> tuple[int, int]:
        info = self._records.get(f"{self._prefix}data/{t.record}")
        if info is None:
            raise CheckpointError(f"{self.name}: storage record {t.record!r} is missing; the file is corrupt")
        self._f.seek(info.header_offset)
        header = self._f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.name}: bad zip header for record {t.record!r}; the file is corrupt")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if (t.offset + t.numel) * t.dtype.itemsize > info.file_size and t.numel:
            raise CheckpointError(
                f"{self.name}: tensor in record {t.record!r} overruns its storage; corrupt file"
            )
        return start, info.file_size

    def record_crc(self, t: LazyTensor) -> int | None:
        """The stored crc32 of the tensor's bytes when the tensor is exactly its storage record, else None."""
        info = self._records.get(f"{self._prefix}data/{t.record}")
        if info is None or not t.is_contiguous or t.offset or t.nbytes != info.file_size:
            return None
        return info.CRC

    def iter_chunks(self, t: LazyTensor, chunk: int = CHUNK_BYTES) -> Iterator[memoryview]:
        """The tensor's contiguous bytes in pieces of at most `chunk` bytes."""
        if not t.is_contiguous:
            yield tensor_bytes(self.read(t))
            return
        start, _ = self._data_offset(t)
        self._f.seek(start + t.offset * t.dtype.itemsize)
        left = t.nbytes
        buf = bytearray(min(chunk, left))
        while left:
            view = memoryview(buf)[: min(chunk, left)]
            got = self._f.readinto(view)
            while got and got < len(view):
                more = self._f.readinto(view[got:])
                if not more:
                    break
                got += more
            if got != len(view):
                raise CheckpointError(
                    f"{self.name} is truncated (record {t.record!r} ends early); re-create or re-download it"
                )
            left -= len(view)
            yield view

    def read(self, t: LazyTensor) -> torch.Tensor:
        """The tensor, read into fresh memory."""
        start, _size = self._data_offset(t)
        if t.numel == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride, strict=True))
        raw = torch.empty(span * t.dtype.itemsize, dtype=torch.uint8)
        self._f.seek(start + t.offset * t.dtype.itemsize)
        view = memoryview(raw.numpy()).cast("B")
        got = 0
        while got < len(view):
            n = self._f.readinto(view[got:])
            if not n:
                raise CheckpointError(
                    f"{self.name} is truncated (record {t.record!r} ends early); re-create or re-download it"
                )
            got += n
        flat = raw.view(t.dtype)
        return flat.as_strided(t.shape, t.stride).contiguous() if not t.is_contiguous else flat.view(t.shape)


def open_archive(uri: str) -> ArchiveReader:
    """An `ArchiveReader` over a file or object (remote objects are read with ranged requests).

    Use it as a context manager, or close it when done.
    """
    if not storage.exists(uri):
        raise CheckpointError(f"{uri} does not exist; check the path")
    stream = storage.open(uri, "rb")
    try:
        return ArchiveReader(stream, name=uri)
    except BaseException:
        stream.close()
        raise


@dataclass(frozen=True)
class TensorRecord:
    """A tensor written by `ArchiveWriter`; put it in the object passed to `close`.

    `sha256` is the digest of its bytes ("" when the writer does not hash tensors).
    """

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    sha256: str


class _TorchPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, TensorRecord):
            stride, acc = [], 1
            for size in reversed(obj.shape):
                stride.append(acc)
                acc *= size
            ref = _StorageRef(obj.key, obj.dtype, obj.nbytes // obj.dtype.itemsize)
            args = (ref, 0, tuple(obj.shape), tuple(reversed(stride)), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args
        return NotImplemented

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return ("storage", getattr(torch, _STORAGE_NAMES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


class ArchiveWriter:
    """Writes a `torch.save`-compatible zip archive to a binary stream, one record at a time.

    Records use data descriptors (as torch's own writer does), so the stream is never seeked and
    may be an object-storage upload. Call `close(obj)` with the object to pickle, in which
    `TensorRecord`s returned by `write_tensor` / `write_stream` stand for the tensors.
    """

    def __init__(
        self, stream: BinaryIO, archive: str = "archive", hash_tensors: bool = True, hash_file: bool = False
    ) -> None:
        self._f = stream
        self._archive = archive
        self._hash_tensors = hash_tensors
        self.file_sha256 = hashlib.sha256() if hash_file else None
        self._pos = 0
        self._central: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset
        self._next_key = 0
        self._pool: ThreadPoolExecutor | None = None

    @property
    def bytes_written(self) -> int:
        return self._pos

    def _write(self, data: bytes | memoryview) -> None:
        if self.file_sha256 is not None:
            self.file_sha256.update(data)
        self._f.write(data)
        self._pos += len(data)

    def _write_data(self, block: bytes | memoryview, crc: int, hasher: Any, compute_crc: bool = True) -> int:
        """Write one data block; crc32 and the sha256 digests run in threads meanwhile (they release the GIL)."""
        if len(block) < _PARALLEL_MIN:
            crc = zlib.crc32(block, crc) if compute_crc else crc
            if hasher is not None:
                hasher.update(block)
            self._write(block)
            return crc
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="ckpt-digest")
        jobs = [self._pool.submit(h.update, block) for h in (hasher, self.file_sha256) if h is not None]
        crc_job = self._pool.submit(zlib.crc32, block, crc) if compute_crc else None
        self._f.write(block)
        self._pos += len(block)
        for job in jobs:
            job.result()
        return crc_job.result() if crc_job is not None else crc

    def _begin(self, name: bytes) -> int:
        offset = self._pos
        pad = (-(offset + 30 + len(name) + 4)) % _ALIGN
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0x0808, 0, 0, 0x21, 0, 0, 0, len(name), len(extra)
        )
        self._write(header + name + extra)
        return offset

    def _end(self, name: bytes, offset: int, crc: int, size: int) -> None:
        self._write(struct.pack("<IIQQ", 0x08074B50, crc, size, size))
        self._central.append((name, crc, size, offset))

    def _record(
        self, name: str, chunks: Iterable[bytes | memoryview], hasher: Any = None, crc: int | None = None
    ) -> int:
        """Write one record; a known `crc` (e.g. the source record's) is used instead of computing it."""
        encoded = f"{self._archive}/{name}".encode()
        offset = self._begin(encoded)
        running, size = 0, 0
        for block in chunks:
            running = self._write_data(block, running, hasher, compute_crc=crc is None)
            size += len(block)
        self._end(encoded, offset, running if crc is None else crc, size)
        return size

    def write_stream(
        self,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        chunks: Iterable[bytes | memoryview],
        crc: int | None = None,
    ) -> TensorRecord:
        """Write one tensor from its contiguous bytes given in pieces (sizes are checked).

        `crc`: the bytes' crc32 when already known (saves a pass over the data).
        """
        if dtype not in _STORAGE_NAMES:
            raise CheckpointError(f"dtype {dtype} is not supported in checkpoints; cast it to float32 first")
        key = str(self._next_key)
        self._next_key += 1
        hasher = hashlib.sha256() if self._hash_tensors else None
        size = self._record(f"data/{key}", chunks, hasher, crc)
        expected = dtype.itemsize
        for s in shape:
            expected *= s
        if size != expected:
            raise CheckpointError(f"tensor record {key} got {size} bytes but shape {shape} needs {expected}")
        return TensorRecord(key, dtype, tuple(shape), size, hasher.hexdigest() if hasher else "")

    def write_tensor(self, tensor: torch.Tensor) -> TensorRecord:
        """Write one in-memory tensor."""
        return self.write_stream(tensor.dtype, tuple(tensor.shape), [tensor_bytes(tensor)])

    def close(self, obj: Any) -> None:
        """Pickle `obj` as data.pkl, then write the small records and the zip central directory."""
        buf = io.BytesIO()
        _TorchPickler(buf, protocol=2).dump(obj)
        self._record("data.pkl", [buf.getvalue()])
        self._record(".format_version", [b"1"])
        self._record(".storage_alignment", [str(_ALIGN).encode()])
        self._record("byteorder", [b"little"])
        self._record("version", [b"3\n"])
        cd_start = self._pos
        for name, crc, size, offset in self._central:
            zip64 = struct.pack("<HHQQQ", 1, 24, size, size, offset)
            self._write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    45,
                    45,
                    0x0808,
                    0,
                    0,
                    0x21,
                    crc,
                    _U32,
                    _U32,
                    len(name),
                    len(zip64),
                    0,
                    0,
                    0,
                    0,
                    _U32,
                )
                + name
                + zip64
            )
        cd_size = self._pos - cd_start
        n = len(self._central)
        eocd64 = self._pos
        self._write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
        self._write(struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1))
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, _U32, _U32, 0))
        if self._pool is not None:
            self._pool.shutdown()


def save_streamed(
    uri: str, build: Callable[[ArchiveWriter], Any], archive: str = "archive", hash_tensors: bool = False
) -> None:
    """Write a torch file at `uri` atomically: `build(writer)` writes tensors and returns the object to pickle."""
    with storage.open(uri, "wb") as f:
        writer = ArchiveWriter(f, archive, hash_tensors=hash_tensors)
        writer.close(build(writer))
