"""Training checkpoint (DCP) → one consolidated file of trunk and heads, streamed tensor by tensor.

Consolidated file (`torch.save` format, loads with `torch.load(path, mmap=True, weights_only=True)`):

    {"format": "seer-consolidated-v1", "preset": str, "iteration": int | None, "config": dict | None,
     "trunk": {name: tensor},   # SeerRegNet state dict (torchvision names, no "trunk." prefix)
     "heads": {name: tensor}}   # SwAVHead state dict (`projection_head.*`, `prototypes.<k>.weight`)

Sidecar `<file>.json` (written after the file; its presence means the file is complete):
`{"format", "preset", "iteration", "config", "sha256" (of the file), "bytes", "tensors", "source"}`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from tqdm import tqdm

import seer.storage as storage
from seer.checkpoints.io import (
    CHUNK_BYTES,
    ArchiveReader,
    ArchiveWriter,
    CheckpointError,
    LazyTensor,
    crc32_combine,
    open_archive,
    tensor_bytes,
)
from seer.checkpoints.mapping import CLASSIFIER, check_names_and_shapes, expected_shapes

CONSOLIDATED_FORMAT = "seer-consolidated-v1"
DCP_FORMAT = "seer-dcp-v1"
DCP_MANIFEST = "seer_checkpoint.json"
GROUPS = ("trunk", "heads")
_MODEL_PREFIX = {"trunk": "trunk.", "heads": "head."}


@dataclass
class TensorSource:
    """One tensor to write: its group (`trunk`/`heads`), name, dtype, shape and a byte-chunk iterator."""

    group: str
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: Iterable[bytes | memoryview]
    crc: int | None = None  # crc32 of the bytes when known (saves a pass)


def sidecar_uri(uri: str) -> str:
    """Where the JSON sidecar of consolidated file `uri` lives."""
    return f"{uri}.json"


def write_consolidated(
    output_uri: str,
    preset: str | None,
    iteration: int | None,
    config: dict | None,
    tensors: Iterable[TensorSource],
    source: str = "",
) -> dict[str, Any]:
    """Write a consolidated file from streamed tensors, then its sidecar; returns the sidecar."""
    if storage.exists(sidecar_uri(output_uri)):
        storage.delete(sidecar_uri(output_uri))
    counts = dict.fromkeys(GROUPS, 0)
    with storage.open(output_uri, "wb") as raw:
        writer = ArchiveWriter(raw, archive="consolidated", hash_tensors=False, hash_file=True)
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for src in tensors:
            groups[src.group][src.name] = writer.write_stream(src.dtype, src.shape, src.chunks, src.crc)
            counts[src.group] += 1
        writer.close(
            {
                "format": CONSOLIDATED_FORMAT,
                "preset": preset,
                "iteration": iteration,
                "config": config,
                **groups,
            }
        )
    sidecar = {
        "format": CONSOLIDATED_FORMAT,
        "preset": preset,
        "iteration": iteration,
        "config": config,
        "sha256": writer.file_sha256.hexdigest(),
        "bytes": writer.bytes_written,
        "tensors": counts,
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(sidecar_uri(output_uri), sidecar)
    return sidecar


def open_consolidated(uri: str, preset: str | None = None) -> ArchiveReader:
    """Open a consolidated file (checks its format and, if given, its preset); close it when done."""
    reader = open_archive(uri)
    try:
        obj = reader.obj
        if not isinstance(obj, dict) or obj.get("format") != CONSOLIDATED_FORMAT:
            found = obj.get("format", obj.get("type")) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"{uri} is not a seer consolidated checkpoint (format {found!r}); "
                "use `seer ckpt import-vissl` or `seer ckpt convert` for other layouts"
            )
        if preset is not None and obj.get("preset") not in (None, preset):
            raise CheckpointError(
                f"{uri} holds preset {obj['preset']!r}, not {preset!r}; pass --preset {obj['preset']} "
                "or use the checkpoint made for this preset"
            )
    except BaseException:
        reader.close()
        raise
    return reader


def consolidated_tensors(reader: ArchiveReader) -> Iterator[tuple[str, str, LazyTensor]]:
    """(group, name, LazyTensor) for every tensor of an open consolidated file."""
    for group in GROUPS:
        for name, t in reader.obj.get(group, {}).items():
            yield group, name, t


def _dcp_stream(
    root: Path, md: Metadata, fqn: str, chunk_bytes: int
) -> tuple[Iterator[bytes | memoryview], int | None]:
    """The contiguous bytes of DCP tensor `fqn` and their crc32 if the stored items tell it.

    Streamed from the stored chunks when they are row blocks (FSDP's dim-0 shards) saved without
    storage transforms; otherwise the tensor is loaded whole.
    """
    tmd = md.state_dict_metadata[fqn]
    assert isinstance(tmd, TensorStorageMetadata)
    shape = tuple(tmd.size)
    chunks = sorted(tmd.chunks, key=lambda c: tuple(c.offsets))
    infos = [md.storage_data[MetadataIndex(fqn, c.offsets)] for c in chunks]
    row_blocks = all(
        tuple(c.sizes)[1:] == shape[1:] and all(o == 0 for o in tuple(c.offsets)[1:]) for c in chunks
    )
    rows = 0
    for c in chunks:
        row_blocks = row_blocks and (not shape or c.offsets[0] == rows)
        rows += c.sizes[0] if shape else 1
    streamable = row_blocks and (rows == shape[0] if shape else len(chunks) == 1)
    if not streamable or any(getattr(i, "transform_descriptors", None) for i in infos):
        return iter([tensor_bytes(_dcp_load_whole(root, fqn, tmd))]), None
    crc: int | None = 0
    for info in infos:
        with _dcp_item(root, info, fqn) as r:
            item_crc = r.record_crc(r.obj)
            crc = None if crc is None or item_crc is None else crc32_combine(crc, item_crc, r.obj.nbytes)

    def chunks() -> Iterator[bytes | memoryview]:
        for info in infos:
            with _dcp_item(root, info, fqn) as r:
                yield from r.iter_chunks(r.obj, chunk_bytes)

    return chunks(), crc


@contextlib.contextmanager
def _dcp_item(root: Path, info: Any, fqn: str) -> Iterator[ArchiveReader]:
    """The torch.save'd tensor item stored for `fqn` at `info` (file, offset, length) in a .distcp file."""
    path = root / info.relative_path
    if not path.exists():
        raise CheckpointError(f"DCP file {path} is missing; the checkpoint is incomplete or was moved")
    with open(path, "rb") as f, ArchiveReader(_Window(f, info.offset, info.length), name=str(path)) as r:
        if not isinstance(r.obj, LazyTensor):
            raise CheckpointError(f"{path}: item for {fqn} is not a tensor; the checkpoint is corrupt")
        yield r


def _dcp_load_whole(root: Path, fqn: str, tmd: TensorStorageMetadata) -> torch.Tensor:
    from torch.distributed.checkpoint import load

    tensor = torch.empty(tuple(tmd.size), dtype=tmd.properties.dtype)
    load({fqn: tensor}, storage_reader=FileSystemReader(str(root)), no_dist=True)
    return tensor


class _Window(io.RawIOBase):
    """A read-only, seekable view of `length` bytes of `f` starting at `start`."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._len, self._pos = f, start, length, 0

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self._len - self._pos))
        if not n:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:n])
        self._pos += got
        return got


def read_dcp_manifest(ckpt_uri: str) -> dict[str, Any]:
    """The `seer_checkpoint.json` of a training checkpoint folder (its absence = incomplete)."""
    uri = storage.join(ckpt_uri, DCP_MANIFEST)
    if not storage.exists(uri):
        raise CheckpointError(
            f"{ckpt_uri} has no {DCP_MANIFEST}: it is not a seer training checkpoint or was not fully "
            "written; pick a complete iter-* folder"
        )
    manifest = storage.read_json(uri)
    if manifest.get("format") != DCP_FORMAT:
        raise CheckpointError(f"{uri}: format {manifest.get('format')!r} is not {DCP_FORMAT!r}; upgrade seer")
    return manifest


class _LocalDir:
    """A local folder with the checkpoint files: the folder itself, or a temporary download."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._tmp: Any = None

    def __enter__(self) -> Path:
        path = storage.local_path(self.uri)
        if path is not None:
            return path
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="seer-dcp-")
        base = self.uri.rstrip("/") + "/"
        for info in storage.list(base):
            rel = info.uri[len(base) :]
            target = Path(self._tmp.name) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.get(info.uri, target)
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def consolidate(
    ckpt_uri: str, output_uri: str, preset: str | None = None, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    """Consolidate a seer DCP training checkpoint into one file + sidecar; returns the sidecar.

    Only the model (`trunk.*`, `head.*`) is kept; optimizer state is dropped. Memory stays near one
    chunk (`chunk_bytes`) for FSDP row-sharded tensors and one tensor otherwise.
    """
    manifest = read_dcp_manifest(ckpt_uri)
    ckpt_preset = manifest.get("preset")
    if preset is not None and ckpt_preset not in (None, preset):
        raise CheckpointError(
            f"{ckpt_uri} was trained with preset {ckpt_preset!r}, not {preset!r}; "
            f"pass --preset {ckpt_preset} (or omit it)"
        )
    with _LocalDir(ckpt_uri) as root:
        try:
            md = FileSystemReader(str(root)).read_metadata()
        except (OSError, EOFError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{ckpt_uri}: cannot read DCP metadata ({err}); the checkpoint is corrupt"
            ) from None
        found: dict[str, dict[str, tuple[int, ...]]] = {g: {} for g in GROUPS}
        entries: list[tuple[str, str, str, TensorStorageMetadata]] = []
        for fqn, tmd in md.state_dict_metadata.items():
            if not fqn.startswith("model.") or not isinstance(tmd, TensorStorageMetadata):
                continue
            name = fqn[len("model.") :]
            group = next((g for g, p in _MODEL_PREFIX.items() if name.startswith(p)), None)
            if group is None:
                raise CheckpointError(f"{ckpt_uri}: model key {name!r} is neither trunk.* nor head.*")
            short = name[len(_MODEL_PREFIX[group]) :]
            found[group][short] = tuple(tmd.size)
            entries.append((group, short, fqn, tmd))
        if ckpt_preset:
            protos = ((manifest.get("config") or {}).get("model") or {}).get("num_prototypes")
            # A fine-tuned model's head is a classifier (`clf.0.*`, as VISSL's `mlp` head): its input
            # width must be the trunk's; SwAV heads are checked against the preset.
            is_classifier = set(found["heads"]) == set(CLASSIFIER)
            if is_classifier:
                classes = found["heads"][CLASSIFIER[0]][0]
                expected = {CLASSIFIER[0]: (classes, _trunk_width(ckpt_preset)), CLASSIFIER[1]: (classes,)}
                check_names_and_shapes(expected, found["heads"], f"{ckpt_uri} (classifier)")
            for group in ("trunk",) if is_classifier else GROUPS:
                check_names_and_shapes(
                    expected_shapes(ckpt_preset, group, protos), found[group], f"{ckpt_uri} ({group})"
                )
        total = sum(t.size.numel() * t.properties.dtype.itemsize for *_, t in entries)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="consolidate", disable=None, leave=False)

        def sources() -> Iterator[TensorSource]:
            for group, short, fqn, tmd in entries:
                stream, crc = _dcp_stream(root, md, fqn, chunk_bytes)

                def counted(stream: Iterator[bytes | memoryview] = stream) -> Iterator[bytes | memoryview]:
                    for block in stream:
                        bar.update(len(block))
                        yield block

                yield TensorSource(group, short, tmd.properties.dtype, tuple(tmd.size), counted(), crc)

        with bar:
            return write_consolidated(
                output_uri,
                ckpt_preset,
                manifest.get("iteration"),
                manifest.get("config"),
                sources(),
                source=ckpt_uri,
            )


def _trunk_width(preset: str) -> int:
    """Features the preset's trunk gives a classifier (the SwAV head's input width)."""
    return expected_shapes(preset, "heads")["projection_head.0.weight"][1]


def describe(uri: str) -> dict[str, Any]:
    """Summary of a consolidated file: format, preset, iteration, tensor counts, bytes, largest tensor."""
    reader = open_consolidated(uri)
    with reader:
        tensors = list(consolidated_tensors(reader))
        largest = max(tensors, key=lambda t: t[2].nbytes, default=None)
        return {
            "format": CONSOLIDATED_FORMAT,
            "preset": reader.obj.get("preset"),
            "iteration": reader.obj.get("iteration"),
            "tensors": {g: sum(1 for t in tensors if t[0] == g) for g in GROUPS},
            "bytes": sum(t[2].nbytes for t in tensors),
            "largest": f"{largest[0]}.{largest[1]} {list(largest[2].shape)}" if largest else None,
        }


def verify_consolidated(uri: str) -> dict[str, Any]:
    """Check a consolidated file against its sidecar's sha256 and size; returns the sidecar."""
    side = sidecar_uri(uri)
    if not storage.exists(side):
        raise CheckpointError(
            f"{uri} has no sidecar {side}: it is incomplete or not written by seer; re-create it"
        )
    meta = storage.read_json(side)
    size = storage.stat(uri).size
    if size != meta.get("bytes"):
        raise CheckpointError(
            f"{uri} has {size} bytes, its sidecar says {meta.get('bytes')}: truncated; re-create it"
        )
    from seer.checkpoints.io import sha256_uri

    if sha256_uri(uri) != meta.get("sha256"):
        raise CheckpointError(f"{uri} does not match the sha256 in {side}: the file is corrupt; re-create it")
    return meta


__all__ = [
    "CONSOLIDATED_FORMAT",
    "TensorSource",
    "consolidate",
    "consolidated_tensors",
    "describe",
    "open_consolidated",
    "read_dcp_manifest",
    "verify_consolidated",
    "write_consolidated",
]
