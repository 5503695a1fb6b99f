"""Stream tar shards back to every rank and DataLoader worker, shuffled and resumable.

The order of one epoch is a pure function of (manifest, seed, epoch, world_size, num_workers,
batch_size, shuffle_buffer):

1. The shards are permuted with a generator seeded by (seed, epoch) and their samples laid end to
   end into one virtual sequence of N samples.
2. With G = world_size × max(1, num_workers) global workers (global worker g = rank × W + w), each
   gets the contiguous span [g·L, (g+1)·L) with L = ⌊⌊N / G⌋ / batch_size⌋ · batch_size. The
   remaining N − G·L samples are dropped for this epoch (a different tail every epoch, because the
   shard order changes), so every rank yields exactly W·L samples and distributed training never
   waits on a rank that ran out. A span may start or end inside a shard: a worker streams its
   shards from the start and skips the prefix it does not own. With more global workers than
   shards this is the documented fallback — several workers read one shard, each keeps its own
   slice (more bytes read, still every sample exactly once); only L = 0 is an error.
3. Each worker shuffles its span with a buffer of ``shuffle_buffer`` samples. The buffer's
   decisions only depend on positions, so the output order is computed up front from a generator
   seeded by (seed, epoch, g) and streamed with at most about ``shuffle_buffer`` samples in memory.

Exclusions: after `seer shard merge`, a shard may hold copies of samples kept in another
partition; the manifest counts only the kept ones and names the keys to skip (read lazily, one
partition's exclusion file at a time). The virtual sequence runs over kept samples only.

Resume: the DataLoader takes batches from its workers round-robin, so after the trainer consumed
B = consumed / batch_size batches, worker role r has produced ⌈(B − r) / W⌉ of them. A resumed
loader rotates the roles (DataLoader worker i plays role (i + B) mod W) and each role skips what it
already produced, without decoding it; the batches that follow are exactly those the
uninterrupted run would have produced, in the same order. The state is identical on all ranks.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import multiprocessing.sharedctypes
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from seer import storage
from seer.data.shard import read_exclusions, read_manifest
from seer.errors import ConfigError, SeerError

Transform = Callable[[bytes, str, int], Any]
_STATE_KEYS = ("seed", "world_size", "num_workers", "batch_size", "shuffle_buffer", "manifest")


class StreamError(SeerError):
    """A shard does not match its manifest entry."""


def buffer_shuffle_order(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Output order (as input positions) of a streaming shuffle buffer of ``buffer_size`` over n items.

    The buffer fills with the first ``buffer_size`` items; each further item replaces a uniformly
    drawn buffer slot whose item is emitted; at the end the rest is emitted in random order.
    Any emitted position is at most ``buffer_size`` items behind the read position.
    """
    if buffer_size <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    size = min(buffer_size, n)
    slots = list(range(size))
    draws = rng.integers(0, size, max(0, n - size)).tolist()
    out = np.empty(n, dtype=np.int64)
    for emitted, incoming in enumerate(range(size, n)):
        slot = draws[emitted]
        out[emitted] = slots[slot]
        slots[slot] = incoming
    out[n - size :] = np.asarray(slots, dtype=np.int64)[rng.permutation(size)]
    return out


class ShardStream(IterableDataset):
    """Iterable over (transform(jpeg_bytes, key, epoch), key) for one rank; see the module doc.

    ``transform`` receives the sample's JPEG bytes, its key and the epoch (a
    ``seer.data.transforms.MultiCropTransform`` decodes once, at reduced size where lossless);
    ``None`` yields the raw bytes. Use ``build_loader`` to iterate: it batches, runs workers and
    records how many samples the trainer consumed, which ``state_dict()`` reports.
    """

    def __init__(
        self,
        manifest_uri: str,
        transform: Transform | None,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        epoch: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"rank {rank} is not in [0, world_size={world_size}): pass the global rank and world size"
            )
        if shuffle_buffer < 0 or epoch < 0:
            raise ConfigError(f"shuffle_buffer ({shuffle_buffer}) and epoch ({epoch}) must be >= 0")
        manifest = read_manifest(manifest_uri)
        prefix = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
        self.manifest_uri = manifest_uri
        self.shards = [
            (storage.join(prefix, s["name"]), int(s["samples"])) for s in manifest["shards"] if s["samples"]
        ]
        # Shards holding samples a merge excluded (duplicates across partitions): index -> entry.
        kept = [s for s in manifest["shards"] if s["samples"]]
        self._excluded = {i: s for i, s in enumerate(kept) if s.get("excluded")}
        self._exclusion_cache: dict[str, dict[str, set[str]]] = {}
        self.num_samples = sum(count for _, count in self.shards)
        self.manifest_id = hashlib.sha256(
            json.dumps(manifest["shards"], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.transform = transform
        self.rank, self.world_size, self.seed, self.shuffle_buffer = rank, world_size, seed, shuffle_buffer
        self.batch_size = 1  # set by build_loader; workers yield whole batches
        self.num_workers = 0  # set by build_loader
        self.consumed = 0  # samples of this epoch the trainer has taken (kept by ShardLoader)
        self.epoch = epoch
        # (epoch, consumed) at the start of an iteration, shared with (persistent) loader workers.
        self._start = multiprocessing.sharedctypes.RawArray("q", 2)
        self._share_position()

    # ---- state -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a no-op when already in that epoch, e.g. after a resume)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = int(epoch), 0
        self._share_position()

    def _share_position(self) -> None:
        """Publish (epoch, consumed) to loader workers, which read it when their iteration starts."""
        self._start[0], self._start[1] = self.epoch, self.consumed

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: epoch, samples consumed in it, and the layout that order depends on."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
            "manifest": self.manifest_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a recorded position; mid-epoch this needs the same layout as when it was recorded."""
        if int(state["consumed"]) > 0:
            mine = self.state_dict()
            differ = [f"{k} {state.get(k)!r} -> {mine[k]!r}" for k in _STATE_KEYS if state.get(k) != mine[k]]
            if differ:
                raise ConfigError(
                    f"cannot resume the data stream mid-epoch with a different layout ({', '.join(differ)}): "
                    "resume with the recorded seed/world size/workers/batch size/manifest, or restart the "
                    "epoch by loading the state with consumed=0"
                )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._share_position()

    def samples_per_worker(self, num_workers: int | None = None) -> int:
        """L: samples each global worker yields per epoch (see the module doc)."""
        workers = max(1, self.num_workers if num_workers is None else num_workers)
        total = self.world_size * workers
        per_worker = self.num_samples // total // self.batch_size * self.batch_size
        if per_worker == 0:
            raise ConfigError(
                f"{self.num_samples} samples cannot feed {self.world_size} ranks x {workers} loader workers "
                f"= {total} workers with batch size {self.batch_size} (each needs at least one batch): "
                "shard more images, or use fewer ranks, loader workers or a smaller batch size"
            )
        return per_worker

    def samples_per_rank(self, num_workers: int | None = None) -> int:
        """Samples every rank yields per epoch (the same on all ranks)."""
        return max(1, self.num_workers if num_workers is None else num_workers) * self.samples_per_worker(
            num_workers
        )

    # ---- iteration -----------------------------------------------------------------------------

    def _pieces(self, epoch: int, global_worker: int, per_worker: int) -> list[tuple[int, int, int]]:
        """(shard index, first, stop) sample ranges that make up a global worker's span, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        counts = [self.shards[i][1] for i in order]
        ends = np.cumsum(counts).tolist()
        begin, end = global_worker * per_worker, (global_worker + 1) * per_worker
        pieces = []
        position = bisect.bisect_right(ends, begin)
        while begin < end:
            shard_start = ends[position] - counts[position]
            stop = min(end, ends[position])
            pieces.append((int(order[position]), begin - shard_start, stop - shard_start))
            begin, position = stop, position + 1
        return pieces

    def _read(
        self, pieces: list[tuple[int, int, int]], needed: np.ndarray
    ) -> Iterator[tuple[int, str, bytes]]:
        """(span position, key, jpeg bytes) for every needed position, in stream order."""
        position = 0
        for shard, first, stop in pieces:
            uri = self.shards[shard][0]
            count = stop - first
            if not needed[position : position + count].any():
                position += count
                continue
            excluded: set[str] = set()
            if shard in self._excluded:
                excluded = read_exclusions(self.manifest_uri, self._excluded[shard], self._exclusion_cache)
            found = 0
            samples = _tar_samples(uri, first, stop, needed[position : position + count], excluded)
            for index, key, data in samples:
                found = index - first + 1
                if data is not None:
                    yield position + index - first, key, data
            if found != count:
                raise StreamError(
                    f"{uri} ends after sample {first + found} but the manifest promises {stop} samples: "
                    "re-run `seer shard` for this output (the shard or manifest was modified)"
                )
            position += count

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, consumed = int(self._start[0]), int(self._start[1])
        if info is None:  # iterating in this process: the live attributes are the truth
            epoch, consumed = self.epoch, self.consumed
        if workers > 1:
            if consumed % self.batch_size:
                raise ConfigError(
                    f"resume position {consumed} is not a multiple of batch size {self.batch_size}: "
                    "record the state between batches (ShardLoader does)"
                )
            batches = consumed // self.batch_size
            role = (worker_id + batches) % workers
            skip = max(0, (batches - role + workers - 1) // workers) * self.batch_size
        else:
            role, skip = 0, consumed
        per_worker = self.samples_per_worker(workers)
        global_worker = self.rank * workers + role
        order = buffer_shuffle_order(
            per_worker, self.shuffle_buffer, np.random.default_rng([self.seed, epoch, global_worker, 1])
        )[skip:]
        needed = np.zeros(per_worker, dtype=bool)
        needed[order] = True
        samples = self._read(self._pieces(epoch, global_worker, per_worker), needed)
        pending: dict[int, tuple[str, bytes]] = {}
        for target in order.tolist():
            while target not in pending:
                position, key, data = next(samples)
                pending[position] = (key, data)
            key, data = pending.pop(target)
            yield (data if self.transform is None else self.transform(data, key, epoch)), key
        samples.close()


def _tar_samples(
    uri: str, first: int, stop: int, needed: np.ndarray, excluded: set[str]
) -> Iterator[tuple[int, str, bytes | None]]:
    """(sample index, key, jpeg bytes or None when not needed) for samples first..stop-1 of a shard.

    Samples whose key is in ``excluded`` do not count: indices run over the remaining samples.
    """
    index, current = -1, None
    with storage.open(uri, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, extension = info.name.partition(".")
            if key in excluded:
                continue
            if key != current:
                index, current = index + 1, key
                if index >= stop:
                    return
            if index < first or extension.lower() not in ("jpg", "jpeg"):
                continue
            if needed[index - first]:
                member = tar.extractfile(info)
                yield index, key, member.read() if member is not None else b""
            else:
                yield index, key, None


class ShardLoader:
    """A DataLoader over a ShardStream that counts what the trainer consumed and ends epochs.

    Iterating yields (crops, keys): crops as collated by ``collate_multicrop`` (crop-major), keys the
    sample keys. Finishing an iteration moves the stream to the next epoch; breaking out of it
    keeps the position, so ``state_dict()`` at any time is the exact resume point.
    """

    def __init__(self, stream: ShardStream, loader: DataLoader) -> None:
        self.stream, self.loader = stream, loader

    def __len__(self) -> int:
        return self.stream.samples_per_rank() // self.stream.batch_size

    def __iter__(self) -> Iterator[tuple[Any, list[str]]]:
        stream = self.stream
        stream.samples_per_worker()  # fail here, with the numbers, rather than inside a worker
        stream._share_position()
        for crops, keys in self.loader:
            stream.consumed += len(keys)
            yield crops, keys
        stream.set_epoch(stream.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)


def _collate(samples: Sequence[tuple[Any, str]], pad: bool) -> tuple[Any, list[str]]:
    crops = [sample[0] for sample in samples]
    keys = [sample[1] for sample in samples]
    if isinstance(crops[0], (bytes, bytearray)):
        return crops, keys  # raw bytes: no need to import the transforms (torchvision) at all
    from seer.data.transforms import collate_multicrop

    return collate_multicrop(crops, pad=pad), keys


def build_loader(
    stream: ShardStream,
    batch_size: int,
    num_workers: int = 0,
    *,
    prefetch_factor: int = 2,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    pad: bool = False,
    multiprocessing_context: str | None = None,
) -> ShardLoader:
    """Batch a ShardStream (drop_last per worker, so every rank gets the same number of batches).

    ``pad=True`` collates crops into the 10B single-pass padded layout. ``persistent_workers`` keeps
    workers (and their imports) alive across epochs; the position still travels to them.
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"batch_size ({batch_size}) must be >= 1 and num_workers ({num_workers}) >= 0")
    stream.batch_size, stream.num_workers = batch_size, num_workers
    stream.samples_per_worker()
    loader = DataLoader(
        stream,
        batch_size=batch_size,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=functools.partial(_collate, pad=pad),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=pin_memory and torch.cuda.is_available(),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
    )
    return ShardLoader(stream, loader)
