"""Consolidated → sliced checkpoints (one file per tensor), in seer's and in VISSL's layout.

seer layout (folder; relative paths, so it can move or live in object storage):

    DIR/index.json   {"format": "seer-sliced-v1", "preset", "iteration", "config", "source",
                      "entries": {fqn: {"file": "tensors/<fqn>.pt", "shape", "dtype", "sha256", "bytes"}}}
    DIR/tensors/<fqn>.pt   torch file {"type": "slice", "weight": tensor}

`fqn` is the SwAVModel name (`trunk.…`, `head.…`); `sha256` is over the tensor's bytes. The index is
written last (atomically), and deleted first when a folder is re-sliced, so a folder with an index
is complete.

VISSL layout (seer_spec §4): a torch file `{"type": "slice_list", "classy_state_dict": {"base_model":
{"model": {"trunk": {vissl name: absolute path}, "heads": {"0.<name>": absolute path}}}}}` and the
slices in `<index without extension>_layers/<sha1(name)>.torch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

import seer.storage as storage
from seer.checkpoints.consolidate import (
    consolidated_tensors,
    open_consolidated,
)
from seer.checkpoints.io import (
    ArchiveReader,
    ArchiveWriter,
    CheckpointError,
    LazyTensor,
    dtype_from_name,
    dtype_name,
    open_archive,
    tensor_bytes,
)
from seer.checkpoints.mapping import (
    seer_to_vissl_head,
    seer_to_vissl_trunk,
    vissl_to_seer_head,
    vissl_to_seer_trunk,
)
from seer.errors import NotFoundError

SLICED_FORMAT = "seer-sliced-v1"
INDEX_NAME = "index.json"
_WHOLE_OBJECT_MAX = 64 << 20
_PREFIX = {"trunk": "trunk.", "heads": "head."}


class CorruptSliceError(CheckpointError):
    """A slice file is missing, truncated or does not match its index entry."""


@dataclass(frozen=True)
class SliceEntry:
    """Where one tensor's slice lives and what it must contain (None: not recorded, not checked)."""

    fqn: str
    uri: str
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    sha256: str | None = None
    nbytes: int | None = None


@dataclass
class SlicedIndex:
    """A sliced checkpoint: entries by model name (`trunk.…`, `head.…`) plus its metadata."""

    uri: str
    layout: str
    entries: dict[str, SliceEntry]
    preset: str | None = None
    iteration: int | None = None


class _BackgroundCommits:
    """Commits finished slice files (fsync + rename, or upload) in threads while the next slice is written."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="slice-commit")
        self._pending: list[Future] = []

    def submit(self, stream: Any) -> None:
        self._pending.append(self._pool.submit(stream.close))

    def wait(self, raise_errors: bool = True) -> None:
        """Wait for every commit; re-raise the first failure unless `raise_errors` is False."""
        try:
            for job in self._pending:
                if raise_errors:
                    job.result()
                else:
                    job.exception()
        finally:
            self._pool.shutdown()


def _write_slice(
    uri: str,
    src_chunks: Any,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    crc: int | None,
    commits: _BackgroundCommits,
) -> Any:
    f = storage.open(uri, "wb")
    try:
        writer = ArchiveWriter(f, archive="slice", hash_tensors=True)
        record = writer.write_stream(dtype, shape, src_chunks, crc)
        writer.close({"type": "slice", "weight": record})
    except BaseException:
        f.discard()  # type: ignore[attr-defined]
        raise
    commits.submit(f)
    return record


def _cleanup(uris: list[str]) -> None:
    for uri in uris:
        with contextlib.suppress(Exception):  # best effort: the caller re-raises the original error
            storage.delete(uri)


def slice_checkpoint(consolidated_uri: str, output_uri: str, layout: str = "seer") -> str:
    """Slice a consolidated file into `output_uri` (a folder for `seer`, the index file for `vissl`).

    Returns the index URI. On error, the slices written by this call are removed.
    """
    if layout not in ("seer", "vissl"):
        raise CheckpointError(f"unknown slice layout {layout!r}; use 'seer' or 'vissl'")
    reader = open_consolidated(consolidated_uri)
    written: list[str] = []
    with reader:
        obj = reader.obj
        tensors = list(consolidated_tensors(reader))
        index_uri = storage.join(output_uri, INDEX_NAME) if layout == "seer" else output_uri
        layers = _vissl_layers_dir(output_uri)
        _remove_previous(index_uri, layers if layout == "vissl" else None)
        bar = tqdm(
            total=sum(t.nbytes for *_, t in tensors),
            unit="B",
            unit_scale=True,
            desc="slice",
            disable=None,
            leave=False,
        )
        commits = _BackgroundCommits()
        try:
            entries: dict[str, Any] = {}
            vissl_model: dict[str, dict[str, str]] = {"trunk": {}, "heads": {}}
            for group, name, t in tensors:
                fqn = _PREFIX[group] + name
                if layout == "seer":
                    rel = f"tensors/{fqn}.pt"
                    uri = storage.join(output_uri, rel)
                else:
                    key = seer_to_vissl_trunk(name) if group == "trunk" else seer_to_vissl_head(name)
                    uri = storage.join(layers, hashlib.sha1(key.encode()).hexdigest() + ".torch")
                    vissl_model[group][key] = _absolute(uri)
                written.append(uri)
                chunks = _counted(reader.iter_chunks(t), bar)
                record = _write_slice(uri, chunks, t.dtype, t.shape, reader.record_crc(t), commits)
                if layout == "seer":
                    entries[fqn] = {
                        "file": rel,
                        "shape": list(t.shape),
                        "dtype": dtype_name(t.dtype),
                        "sha256": record.sha256,
                        "bytes": record.nbytes,
                    }
            commits.wait()
            if layout == "seer":
                storage.write_json(
                    index_uri,
                    {
                        "format": SLICED_FORMAT,
                        "preset": obj.get("preset"),
                        "iteration": obj.get("iteration"),
                        "config": obj.get("config"),
                        "source": consolidated_uri,
                        "entries": entries,
                    },
                )
            else:
                buf = io.BytesIO()
                torch.save(
                    {
                        "type": "slice_list",
                        "iteration": obj.get("iteration"),
                        "classy_state_dict": {"base_model": {"model": vissl_model}},
                    },
                    buf,
                )
                storage.write_bytes(index_uri, buf.getvalue())
        except BaseException:
            commits.wait(raise_errors=False)
            _cleanup(written)
            raise
        finally:
            bar.close()
    return index_uri


def _remove_previous(index_uri: str, vissl_layers: str | None) -> None:
    """Delete an earlier slicing's index (first, so the folder stops looking complete), then its slices."""
    if vissl_layers is not None:
        if storage.exists(index_uri):
            storage.delete(index_uri)
        storage.delete_prefix(vissl_layers)
        return
    if not storage.exists(index_uri):
        return
    try:
        old = [e["file"] for e in storage.read_json(index_uri).get("entries", {}).values()]
    except (ValueError, AttributeError, KeyError, TypeError):
        old = []
    storage.delete(index_uri)
    _cleanup([storage.join(index_uri.rsplit("/", 1)[0], f) for f in old])


def _counted(chunks: Iterator[memoryview], bar: tqdm) -> Iterator[memoryview]:
    for block in chunks:
        bar.update(len(block))
        yield block


def _vissl_layers_dir(index_uri: str) -> str:
    stem = index_uri.rsplit(".", 1)[0] if "." in index_uri.rsplit("/", 1)[-1] else index_uri
    return stem + "_layers"


def _absolute(uri: str) -> str:
    path = storage.local_path(uri)
    return str(path.resolve()) if path is not None else uri


def open_sliced(index_uri: str) -> SlicedIndex:
    """Read a sliced checkpoint's index: a seer folder / `index.json`, or a VISSL `slice_list` file."""
    uri = index_uri
    if (
        not uri.endswith(".json")
        and not storage.exists(uri)
        and storage.exists(storage.join(uri, INDEX_NAME))
    ):
        uri = storage.join(uri, INDEX_NAME)
    if not storage.exists(uri):
        raise CheckpointError(
            f"{index_uri} has no sliced-checkpoint index (no {INDEX_NAME}): slicing did not finish; "
            "run `seer ckpt slice` again"
        )
    if uri.endswith(".json"):
        index = storage.read_json(uri)
        if index.get("format") != SLICED_FORMAT:
            raise CheckpointError(f"{uri}: format {index.get('format')!r} is not {SLICED_FORMAT!r}")
        base = uri.rsplit("/", 1)[0]
        if not isinstance(index.get("entries"), dict):
            raise CheckpointError(f"{uri} has no entries; it is damaged, run `seer ckpt slice` again")
        entries = {
            fqn: SliceEntry(
                fqn,
                storage.join(base, e["file"]),
                tuple(e["shape"]),
                dtype_from_name(e["dtype"]),
                e.get("sha256"),
                e.get("bytes"),
            )
            for fqn, e in index["entries"].items()
        }
        return SlicedIndex(uri, "seer", entries, index.get("preset"), index.get("iteration"))
    with open_archive(uri) as reader:
        obj = reader.obj
    if not isinstance(obj, dict) or obj.get("type") != "slice_list":
        raise CheckpointError(
            f"{uri} is not a sliced checkpoint (neither {INDEX_NAME} nor a VISSL slice_list)"
        )
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{uri}: slice_list without classy_state_dict.base_model.model; re-slice it"
        ) from None
    layers = _vissl_layers_dir(uri)
    entries = {}
    for group, items in (("trunk", model.get("trunk", {})), ("heads", model.get("heads", {}))):
        for key, path in items.items():
            name = vissl_to_seer_trunk(key) if group == "trunk" else vissl_to_seer_head(key)
            where = path if storage.exists(path) else storage.join(layers, path.rsplit("/", 1)[-1])
            entries[_PREFIX[group] + name] = SliceEntry(_PREFIX[group] + name, where)
    return SlicedIndex(uri, "vissl", entries, None, obj.get("iteration"))


def read_slice(entry: SliceEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Read one slice and check it against its index entry (shape, dtype, sha256).

    `rows=(start, stop)` returns only those rows of dim 0 (an FSDP shard): the file is streamed,
    every byte still goes into the checksum, but only the rows are kept in memory.
    """
    local = storage.local_path(entry.uri)
    try:
        # Local files and big objects are streamed; small objects come in one request.
        if local is not None:
            stream: Any = open(local, "rb")  # noqa: SIM115
        elif entry.nbytes is not None and entry.nbytes > _WHOLE_OBJECT_MAX:
            stream = storage.open(entry.uri, "rb")
        else:
            stream = io.BytesIO(storage.read_bytes(entry.uri))
    except (NotFoundError, FileNotFoundError):
        raise CorruptSliceError(
            f"slice for {entry.fqn} is missing ({entry.uri}); re-run `seer ckpt slice`"
        ) from None
    try:
        with ArchiveReader(stream, name=entry.uri) as reader:
            weight = reader.obj.get("weight") if isinstance(reader.obj, dict) else None
            if reader.obj.get("type") != "slice" or not isinstance(weight, LazyTensor):
                raise CorruptSliceError(
                    f"{entry.uri} (tensor {entry.fqn}) is not a slice file; re-run `seer ckpt slice`"
                )
            if (entry.shape is not None and weight.shape != entry.shape) or entry.dtype not in (
                None,
                weight.dtype,
            ):
                raise CorruptSliceError(
                    f"slice {entry.uri} for {entry.fqn} holds {weight.dtype} {list(weight.shape)}, the index says "
                    f"{entry.dtype} {list(entry.shape or ())}; re-run `seer ckpt slice`"
                )
            digest = hashlib.sha256() if entry.sha256 else None
            if rows is None or not weight.shape or not weight.is_contiguous:
                tensor = reader.read(weight)
                if digest is not None:
                    digest.update(tensor_bytes(tensor))
                if rows is not None and weight.shape:
                    tensor = tensor[rows[0] : rows[1]].clone()
            else:
                tensor = _read_rows(reader, weight, rows, digest)
    except CorruptSliceError:
        raise
    except CheckpointError as err:
        raise CorruptSliceError(f"slice for {entry.fqn}: {err}") from None
    if digest is not None and digest.hexdigest() != entry.sha256:
        raise CorruptSliceError(
            f"slice {entry.uri} for {entry.fqn} fails its sha256 check (corrupt file); re-run `seer ckpt slice`"
        )
    return tensor


def _read_rows(reader: ArchiveReader, weight: LazyTensor, rows: tuple[int, int], digest: Any) -> torch.Tensor:
    start, stop = rows
    row_bytes = weight.nbytes // weight.shape[0] if weight.shape[0] else 0
    out = torch.empty((stop - start, *weight.shape[1:]), dtype=weight.dtype)
    dst = tensor_bytes(out) if out.numel() else memoryview(b"")
    lo, hi, pos = start * row_bytes, stop * row_bytes, 0
    for block in reader.iter_chunks(weight):
        if digest is not None:
            digest.update(block)
        a, b = max(lo, pos), min(hi, pos + len(block))
        if a < b:
            dst[a - lo : b - lo] = block[a - pos : b - pos]
        pos += len(block)
        if digest is None and pos >= hi:
            break
    return out


def verify_sliced(index_uri: str) -> SlicedIndex:
    """Read every slice and check it (sizes, dtypes, checksums); returns the index."""
    index = open_sliced(index_uri)
    for entry in tqdm(index.entries.values(), desc="verify", unit="slice", disable=None, leave=False):
        read_slice(entry)
    return index


def slice_shape(entry: SliceEntry) -> tuple[int, ...]:
    if entry.shape is not None:
        return entry.shape
    if not storage.exists(entry.uri):
        raise CorruptSliceError(
            f"slice for {entry.fqn} is missing ({entry.uri}); copy the whole _layers folder"
        )
    with open_archive(entry.uri) as reader:
        weight = reader.obj.get("weight") if isinstance(reader.obj, dict) else None
        if not isinstance(weight, LazyTensor):
            raise CorruptSliceError(f"{entry.uri} (tensor {entry.fqn}) is not a slice file")
        return weight.shape
