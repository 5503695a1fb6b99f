"""Sharded training checkpoints with torch.distributed.checkpoint (DCP), on local paths or object storage.

Layout (format `seer-dcp-v1`; `seer ckpt consolidate` and other readers rely on it)::

    <output>/checkpoints/iter-<NNNNNNNN>/          one folder per saved iteration (8 digits, zero-padded)
        .metadata, __<rank>_<n>.distcp            the DCP files (FileSystemWriter format)
        seer_checkpoint.json                       completion marker, written LAST

The DCP state dict has three top-level keys:

- `model`: the unwrapped `SwAVModel`'s state dict (`get_model_state_dict`): names are the plain
  module names, `trunk.stem.0.weight`, `trunk.trunk_output.block1.block1-0.f.a.0.weight`,
  `head.projection_head.0.weight`, `head.prototypes.0.weight`, … — no FSDP or checkpoint-wrapper
  prefixes; BatchNorm buffers included.
- `optim`: the optimizer state keyed by those names (`get_optimizer_state_dict`).
- `extra`: `iteration` (int, the number of completed iterations), `scheduler` (a pickled dict),
  and one `rank<r>` entry per rank holding that rank's pickled loader position and RNG states.

`seer_checkpoint.json` = `{"iteration", "preset", "config", "world_size", "created", "format",
"checksums"}`; `checksums` maps every file of the folder to its sha256 (each rank hashes the files
it wrote). On resume `latest_verified` checks them: a checkpoint whose files do not match is
skipped, with a warning, for the previous complete one (its marker is removed). Markers without
`checksums` (older saves) are trusted as they are. A folder without a marker is an interrupted save: it is never resumed from, and it is deleted when a
run starts and when a newer checkpoint completes. The newest `keep_last` complete checkpoints
are kept. A local `<output>` is written in place, so with several nodes it must be a filesystem
they all mount (or use object storage). For object storage each rank writes its DCP files to a
local staging folder and uploads them; rank 0 writes the marker after every rank has uploaded.
Restoring from object storage downloads `.metadata` and only the data files this rank reads.

Storage outages: every step of a save that touches storage is retried for `retry_seconds`; if it still
fails, all ranks agree (a collective) that the save failed, no marker is written and `SaveFailed` is
raised on every rank, so the trainer can go on and try again at the next save. A save given a
`deadline` (a preemption save) that passes it before the marker is written raises `SaveAbandoned`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.futures import Future

from seer import storage
from seer.errors import SeerError, StorageError

log = logging.getLogger(__name__)

FORMAT = "seer-dcp-v1"
MARKER = "seer_checkpoint.json"
_DIR_RE = re.compile(r"^iter-(\d{8})$")


class CheckpointError(SeerError):
    """A checkpoint cannot be written or read back."""


class SaveFailed(CheckpointError):
    """A save did not complete (storage unreachable within the retry budget); nothing looks complete."""


class SaveAbandoned(SaveFailed):
    """A save with a deadline (a preemption save) ran out of time before its marker was written."""


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint folder: its iteration, URI and whether its marker exists."""

    iteration: int
    uri: str
    complete: bool


def checkpoints_root(output_uri: str) -> str:
    return storage.join(output_uri, "checkpoints")


def checkpoint_uri(output_uri: str, iteration: int) -> str:
    """`<output>/checkpoints/iter-<NNNNNNNN>`."""
    return storage.join(checkpoints_root(output_uri), f"iter-{iteration:08d}")


def list_checkpoints(output_uri: str) -> list[CheckpointRef]:
    """Every checkpoint folder under `output_uri`, oldest first, complete or not."""
    root = checkpoints_root(output_uri)
    found: dict[int, bool] = {}
    for obj in storage.list(root, recursive=True):
        rel = obj.uri[len(root) :].lstrip("/").split("/")
        match = _DIR_RE.match(rel[0]) if rel else None
        if match:
            it = int(match.group(1))
            found[it] = found.get(it, False) or rel[-1] == MARKER
    return [CheckpointRef(it, checkpoint_uri(output_uri, it), found[it]) for it in sorted(found)]


def latest_complete(output_uri: str) -> CheckpointRef | None:
    """The newest checkpoint whose marker exists, or None."""
    complete = [c for c in list_checkpoints(output_uri) if c.complete]
    return complete[-1] if complete else None


def read_marker(ckpt_uri: str) -> dict[str, Any]:
    return storage.read_json(storage.join(ckpt_uri, MARKER))


def _delete(ref: CheckpointRef) -> None:
    if (
        ref.complete
    ):  # marker first: a crash mid-delete leaves an incomplete folder, never a torn "complete" one
        storage.delete(storage.join(ref.uri, MARKER))
    storage.delete_prefix(ref.uri.rstrip("/") + "/")


def remove_incomplete(output_uri: str) -> list[str]:
    """Delete every interrupted save (folder without marker); call it before anything writes. Returns URIs."""
    doomed = [c for c in list_checkpoints(output_uri) if not c.complete]
    for ref in doomed:
        _delete(ref)
    return [ref.uri for ref in doomed]


def prune(output_uri: str, keep_last: int) -> list[str]:
    """Keep the newest `keep_last` complete checkpoints; delete older ones and interrupted saves older
    than the newest complete one. Returns the deleted URIs."""
    refs = list_checkpoints(output_uri)
    complete = [c for c in refs if c.complete]
    if not complete:
        return []
    newest = complete[-1].iteration
    doomed = complete[: max(0, len(complete) - keep_last)]
    doomed += [c for c in refs if not c.complete and c.iteration < newest]
    for ref in doomed:
        _delete(ref)
    return [ref.uri for ref in doomed]


# ----------------------------------------------------------------------------------------------
# Per-rank state: RNG + loader position


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can touch on this rank."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Save / load


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _agree(ok: bool) -> bool:
    """Collective (also a barrier): True only when `ok` holds on every rank."""
    if not dist.is_initialized():
        return ok
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _retrying(action: Any, retry_seconds: float, what: str) -> Any:
    """`action()`, retried on StorageError with growing pauses until `retry_seconds` have passed."""
    deadline, pause = time.monotonic() + retry_seconds, 0.5
    while True:
        try:
            return action()
        except StorageError as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("%s failed (%s); retrying for %.0f s more", what, err, left)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 10.0)


def _sha256(stream: Any) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(8 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        with (folder / name).open("rb") as fh:
            out[name] = _sha256(fh)
    return out


def save(
    output_uri: str,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: dict[str, Any],
    rank_state: dict[str, Any],
    marker: dict[str, Any],
    keep_last: int,
    retry_seconds: float = 0.0,
    deadline: float | None = None,
) -> str:
    """Collective: write checkpoint `iteration` (every rank calls it); returns its URI.

    `rank_state` is this rank's own state (loader position, RNG); `marker` adds `preset` and
    `config` to the completion marker. Storage failures are retried for `retry_seconds`, then raise
    `SaveFailed` on every rank; passing `deadline` (time.monotonic()) before the marker is written
    raises `SaveAbandoned` on every rank. Either way the folder has no marker.
    """
    rank = _rank()
    uri = checkpoint_uri(output_uri, iteration)
    marker_uri = storage.join(uri, MARKER)
    error: Exception | None = None
    if deadline is not None:  # a preemption save retries only while the grace period lasts
        retry_seconds = min(retry_seconds, max(0.0, deadline - time.monotonic()))

    def clear() -> None:  # overwriting (a re-run after a crash): incomplete until we finish
        storage.delete(marker_uri)
        storage.delete_prefix(uri.rstrip("/") + "/")

    if rank == 0:
        try:
            _retrying(clear, retry_seconds, f"clearing {uri}")
        except StorageError as err:
            error = err
    if not _agree(error is None):
        raise SaveFailed(f"checkpoint {uri} was not saved: {error or 'rank 0 could not clear its folder'}")
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
        "extra": {
            "iteration": iteration,
            "scheduler": pickle.dumps(scheduler),
            f"rank{rank}": pickle.dumps(rank_state),
        },
    }
    checksums: dict[str, str] = {}
    local = storage.local_path(uri)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(local)))
        mine = [p.name for p in Path(local).iterdir() if p.name.startswith(f"__{rank}_")]
        checksums = _hash_files(Path(local), sorted(mine + ([".metadata"] if rank == 0 else [])))
    else:
        staging = Path(tempfile.mkdtemp(prefix=f"seer-ckpt-{iteration:08d}-rank{rank}-"))
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(staging)))
            checksums = _hash_files(staging, sorted(p.name for p in staging.iterdir()))
            for name in checksums:
                target = storage.join(uri, name)
                _retrying(
                    lambda n=name, t=target: storage.put(str(staging / n), t),
                    retry_seconds,
                    f"upload {target}",
                )
        except StorageError as err:
            error = err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    uploaded = _agree(error is None)  # every rank's files are in place
    gathered: list[Any] = [None] * _world()
    if dist.is_initialized():
        dist.all_gather_object(gathered, checksums)
    else:
        gathered = [checksums]
    if not uploaded:
        raise SaveFailed(
            f"checkpoint {uri} was not saved: {error or 'another rank could not upload its files'}"
        )
    if deadline is not None and not _agree(time.monotonic() < deadline):
        raise SaveAbandoned(f"checkpoint {uri} was abandoned: the grace period ended before it completed")
    if rank == 0:
        content = {
            "iteration": iteration,
            "world_size": _world(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": FORMAT,
            **marker,
            "checksums": {k: v for part in gathered for k, v in part.items()},
        }
        try:
            _retrying(lambda: storage.write_json(marker_uri, content), retry_seconds, f"writing {marker_uri}")
        except StorageError as err:
            error = err
        else:
            try:
                prune(output_uri, keep_last)
            except StorageError as err:  # old checkpoints stay a little longer; the next save prunes
                log.warning("could not prune old checkpoints under %s: %s", output_uri, err)
    if not _agree(error is None):
        raise SaveFailed(f"checkpoint {uri} was not saved: {error or 'rank 0 could not write its marker'}")
    return uri


def verify(ckpt_uri: str) -> list[str]:
    """Collective: the files of a complete checkpoint that are missing or fail their sha256 (each rank
    checks a share of them). Empty when all match, or when the marker has no checksums (older saves)."""
    expected: dict[str, str] = read_marker(ckpt_uri).get("checksums") or {}
    names = sorted(expected)[_rank() :: _world()]
    bad = []
    for name in names:
        try:
            with storage.open(storage.join(ckpt_uri, name), "rb") as fh:
                ok = _sha256(fh) == expected[name]
        except StorageError:
            ok = False
        if not ok:
            bad.append(name)
    gathered: list[Any] = [None] * _world()
    if dist.is_initialized():
        dist.all_gather_object(gathered, bad)
    else:
        gathered = [bad]
    return sorted(n for part in gathered for n in part)


def latest_verified(output_uri: str) -> CheckpointRef | None:
    """Collective: the newest complete checkpoint whose files match their checksums, or None.

    A newer one that fails is skipped with a warning and its marker is removed, so it is treated
    (and cleaned up) like an interrupted save from then on.
    """
    complete = [c for c in list_checkpoints(output_uri) if c.complete]
    for ref in reversed(complete):
        bad = verify(ref.uri)
        if not bad:
            return ref
        log.warning(
            "checkpoint %s is corrupt (%d file(s) fail their checksum: %s); using the previous complete one",
            ref.uri,
            len(bad),
            ", ".join(bad[:5]),
        )
        if _rank() == 0:
            storage.delete(storage.join(ref.uri, MARKER))
        _agree(True)
    return None


class _FetchingReader(dcp.FileSystemReader):
    """A DCP reader over a local folder that first downloads, from object storage, only the files
    holding what this rank's load plan reads (not the whole checkpoint on every rank)."""

    def __init__(self, folder: Path, remote_uri: str) -> None:
        super().__init__(str(folder))
        self._folder, self._remote = folder, remote_uri

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        needed = {self.storage_data[item.storage_index].relative_path for item in plan.items}
        for name in sorted(needed):
            if not (self._folder / name).exists():
                storage.get(storage.join(self._remote, name), self._folder / name)
        return super().read_data(plan, planner)


@dataclass
class Restored:
    """What `load` put back besides the model and optimizer."""

    iteration: int
    scheduler: dict[str, Any]
    rank_state: dict[str, Any] | None  # None when saved with another world size
    uri: str
    seconds: float


def load(ckpt_uri: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> Restored:
    """Collective: load a complete checkpoint into the sharded `model` and its `optimizer` (any world size)."""
    start = time.perf_counter()
    rank = _rank()
    local = storage.local_path(ckpt_uri)
    staging: Path | None = None
    if local is None:
        staging = Path(tempfile.mkdtemp(prefix=f"seer-restore-rank{rank}-"))
        storage.get(storage.join(ckpt_uri, ".metadata"), staging / ".metadata")
        folder = staging
    else:
        folder = Path(local)
    try:
        reader = dcp.FileSystemReader(str(folder)) if staging is None else _FetchingReader(staging, ckpt_uri)
        keys = reader.read_metadata().state_dict_metadata
        mine = f"extra.rank{rank}"
        state: dict[str, Any] = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optimizer),
            "extra": {"iteration": 0, "scheduler": b""},
        }
        if mine in keys:
            state["extra"][f"rank{rank}"] = b""
        dcp.load(state, storage_reader=reader)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {ckpt_uri} ({type(err).__name__}: {err}); delete its "
            f"{MARKER} to fall back to the previous checkpoint"
        ) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    extra = state["extra"]
    blob = extra.get(f"rank{rank}")
    return Restored(
        iteration=int(extra["iteration"]),
        scheduler=pickle.loads(extra["scheduler"]),
        rank_state=pickle.loads(blob) if blob else None,
        uri=ckpt_uri,
        seconds=time.perf_counter() - start,
    )
