"""Frozen-trunk feature extraction: trunk → tap → pooling, batched, cached in storage (the trunk comes
from `seer.checkpoints.load`).

`extract(dataset, options)` returns a `FeatureSet`. Features are cached under `options.cache` keyed
by (checkpoint sha256, dataset sha256, tap, pooling, transform, precision): a second call with the
same key reads the cache instead of running the trunk. Under torchrun (WORLD_SIZE > 1) each rank
extracts a strided share of the images and the shares are gathered, so every rank returns the
whole set; rank 0 writes the cache. With `spill_dir` (one process, fixed-size features) the
features are written batch by batch into a memory-mapped .npy file instead of being held in RAM.

`augmented_batches` streams features of per-epoch random crops (`TrainAugment`) for the VISSL
linear-probe protocol; `published_features` names the tap and pooling SEER published per model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from seer import storage
from seer.errors import ConfigError
from seer.eval.datasets import EvalDataset, read_image
from seer.models.presets import AVGPOOL_FEATURE, PRESETS

if TYPE_CHECKING:  # the options are defined with the harness, which runs this extraction
    from seer.checkpoints.load import LoadedTrunk
    from seer.eval.setup import FeatureOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TAPS = ("res2", "res3", "res4", "res5", "avgpool")
PUBLISHED = "published"  # tap and pool value: the feature SEER published for the model
CACHE_VERSION = 1


def published_features(preset: str) -> tuple[str, str]:
    """(tap, pool) of SEER's published linear-probe result for `preset` (`ModelPreset.linear_feature`);
    avgpool / avg for the other models."""
    found = PRESETS.get(preset)
    return found.linear_feature if found is not None else AVGPOOL_FEATURE


# ---------------------------------------------------------------------------------------------
# Transforms and pooling


@dataclass(frozen=True)
class TransformSpec:
    """Test-time image transform.

    mode `shorter`: resize the shorter side to `resize`, centre-crop `crop` (VISSL 256→224; 384→384
    for test384); `square`: resize to `resize`×`resize` (the CLEVR protocol); `longer`: resize the
    longer side to `resize`, keep the aspect ratio, no crop (copy detection). ImageNet normalisation.
    JPEGs are decoded at the largest power-of-two reduction that stays >= `resize` (`read_image`).
    """

    mode: str = "shorter"
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"

    def key(self) -> str:
        return f"{self.mode}:{self.resize}:{self.crop}:{self.interpolation}"

    def text(self) -> str:
        """The `parse_transform` spelling of this transform."""
        size = f"{self.resize}:{self.crop}" if self.mode == "shorter" else str(self.resize)
        return f"{self.mode}:{size}" + (":bicubic" if self.interpolation == "bicubic" else "")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Resized uint8 C×H×W tensor; `normalize` scales and normalises a batch on the model's device."""
        interp = (
            TF.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
        )
        w, h = image.size
        if self.mode == "square":
            image = image.resize((self.resize, self.resize), _PIL_INTERP[self.interpolation])
        elif self.mode == "longer":
            scale = self.resize / max(w, h)
            image = image.resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), _PIL_INTERP[self.interpolation]
            )
        else:
            image = TF.resize(image, self.resize, interpolation=interp, antialias=True)
            image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)


_PIL_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def normalize(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 B×3×H×W → float on `device`, scaled to [0, 1] and ImageNet-normalised (channels-last on
    CUDA). Moving uint8 and normalising there sends 4× fewer bytes and spares the decoding workers."""
    x = images.to(device, non_blocking=True).float()
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def parse_transform(text: str) -> TransformSpec:
    """`shorter:256:224[:bicubic]`, `square:224[:bicubic]` or `longer:224[:bicubic]`."""
    parts = text.split(":")
    interp = parts.pop() if parts[-1] in _PIL_INTERP else "bilinear"
    try:
        if parts[0] == "shorter" and len(parts) == 3:
            return TransformSpec("shorter", int(parts[1]), int(parts[2]), interp)
        if parts[0] in ("square", "longer") and len(parts) == 2:
            return TransformSpec(parts[0], int(parts[1]), int(parts[1]), interp)
    except ValueError:
        pass
    raise ConfigError(
        f"invalid transform {text!r}; use shorter:RESIZE:CROP, square:SIZE or longer:SIZE, "
        "optionally ending in :bicubic (e.g. shorter:256:224, square:64, longer:224)"
    )


_POOL_RE = re.compile(r"^(none|avg|adaptive:(\d+)x(\d+)|rmac:(\d+))$")


def parse_pool(text: str) -> str:
    """Validate a pooling name: `none` (keep the map), `avg`, `adaptive:HxW` or `rmac:LEVELS`."""
    if text != PUBLISHED and not _POOL_RE.match(text):
        raise ConfigError(
            f"invalid pooling {text!r}; use none, avg, adaptive:HxW (e.g. adaptive:2x1, §5.1), rmac:3 (§5.3) "
            "or published (linear probe: the model's published feature)"
        )
    return text


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC regions as Tolias et al.'s reference (and VISSL's ``get_rmac_region_coordinates``) place
    them, as (y0, x0, side, side). Level l has squares of side ⌊2·min(H,W)/(l+1)⌋; the long dimension
    gets l + d regions, where d ∈ 1..6 is chosen so that neighbouring level-1 squares overlap by about
    40 %; centres are spaced evenly and floored; boxes crossing the border are shifted back inside.
    A 10×14 map gives 2 + 6 + 12 = 20 regions; a square map l² per level (1 + 4 + 9)."""
    short, long_ = min(height, width), max(height, width)
    overlap = [
        abs((short * short - short * (long_ - short) / (n - 1)) / (short * short) - 0.4) for n in range(2, 8)
    ]
    extra = overlap.index(min(overlap)) + 1
    extra_w, extra_h = (extra, 0) if height < width else (0, extra) if height > width else (0, 0)

    def origins(extent: int, side: int, count: int) -> list[int]:
        step = (extent - side) / (count - 1) if count > 1 else 0.0
        half = math.floor(side / 2 - 1)
        return [min(math.floor(half + step * i) - half, extent - side) for i in range(count)]

    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        regions += [
            (y, x, side, side)
            for y in origins(height, side, level + extra_h)
            for x in origins(width, side, level + extra_w)
        ]
    return regions


def rmac_region_descriptors(fmap: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """(C, H, W) map → (regions, C): max-pooled over each R-MAC region, then L2-normalised."""
    regions = rmac_regions(fmap.shape[-2], fmap.shape[-1], levels)
    pooled = torch.stack([fmap[:, y : y + h, x : x + w].amax(dim=(-2, -1)) for y, x, h, w in regions])
    return F.normalize(pooled.float(), dim=1)


def pool_tensor(x: torch.Tensor, pool: str) -> torch.Tensor:
    """avg / adaptive:HxW / none pooling of a (B, C[, H, W]) batch, in fp32."""
    if pool == "avg":
        return x.float().mean(dim=(-2, -1)) if x.dim() == 4 else x.float()
    if pool.startswith("adaptive:"):
        h, w = (int(v) for v in pool.split(":")[1].split("x"))
        return F.adaptive_avg_pool2d(x.float(), (h, w))
    return x.float()


def _pool_batch(x: torch.Tensor, pool: str) -> list[np.ndarray]:
    """Apply pooling to a batch; one array per image (rmac arrays are (regions, C))."""
    if pool.startswith("rmac:"):
        levels = int(pool.split(":")[1])
        return [rmac_region_descriptors(m, levels).cpu().numpy() for m in x]
    return list(pool_tensor(x, pool).cpu().numpy())


# ---------------------------------------------------------------------------------------------
# Training-time augmentation (VISSL linear probe)


@dataclass(frozen=True)
class TrainAugment:
    """RandomResizedCrop (torchvision defaults: scale 0.08–1, ratio 3/4–4/3, bilinear) + horizontal flip
    with p 0.5, the train transform of VISSL's linear benchmarks (seer_spec §5.1). Randomness comes
    from the `rng` passed in, so crops depend on (seed, epoch, image) only, not on worker scheduling."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width): up to 10 draws of area share and log-uniform aspect ratio that
        fit the image, else the largest centred box with the ratio clamped into range."""
        area = width * height
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(low, high))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        w, h = width, height
        if width / height < self.ratio[0]:
            h = round(width / self.ratio[0])
        elif width / height > self.ratio[1]:
            w = round(height * self.ratio[1])
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = self.crop_box(*image.size, rng)
        out = TF.resized_crop(
            image, top, left, h, w, [self.size, self.size], TF.InterpolationMode.BILINEAR, antialias=True
        )
        if rng.random() < 0.5:
            out = TF.horizontal_flip(out)
        return TF.pil_to_tensor(out)


# ---------------------------------------------------------------------------------------------
# Checkpoints


# ---------------------------------------------------------------------------------------------
# Extraction


@dataclass
class FeatureSet:
    """Per-image features in dataset order: `arrays[i]` is image i's features ((C,), (C, h, w) or,
    for R-MAC, (regions, C)). `meta` records the cache key fields; `from_cache` says how they came."""

    arrays: list[np.ndarray]
    meta: dict
    from_cache: bool = False
    matrix: np.ndarray | None = None  # the (N, ...) memory-mapped matrix `arrays` are rows of

    def stacked(self) -> np.ndarray:
        """(N, ...) array; fails for ragged features (R-MAC over images of different shapes)."""
        if self.matrix is not None:
            return self.matrix
        shapes = {a.shape for a in self.arrays}
        if len(shapes) != 1:
            raise ConfigError(
                f"features have different shapes {sorted(shapes)[:3]}; use a fixed-size transform"
            )
        return np.stack(self.arrays)


class _Images(Dataset):
    def __init__(self, dataset: EvalDataset, indices: list[int], transform: TransformSpec) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        index = self.indices[i]
        image = read_image(self.dataset.samples[index], min_size=self.transform.resize)
        return index, self.transform(image)


def _collate(batch: list[tuple[int, torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    """Stack a batch in the worker, one stack per image shape (fixed-size transforms give one)."""
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for index, tensor in batch:
        groups.setdefault(tuple(tensor.shape), []).append((index, tensor))
    return [([i for i, _ in items], torch.stack([t for _, t in items])) for items in groups.values()]


def cache_key(checkpoint_sha256: str, dataset_sha256: str, options: FeatureOptions) -> str:
    """Hex key of a feature cache entry."""
    fields = {
        "version": CACHE_VERSION,
        "checkpoint": checkpoint_sha256,
        "dataset": dataset_sha256,
        "tap": options.tap,
        "pool": options.pool,
        "transform": options.transform.key(),
        "precision": options.precision,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _save_cache(uri: str, features: FeatureSet) -> None:
    flat = (
        np.concatenate([a.reshape(-1) for a in features.arrays])
        if features.arrays
        else np.zeros(0, np.float32)
    )
    shapes = np.array([list(a.shape) + [0] * (3 - a.ndim) for a in features.arrays], dtype=np.int64)
    ndims = np.array([a.ndim for a in features.arrays], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, flat=flat.astype(np.float32), shapes=shapes, ndims=ndims, meta=json.dumps(features.meta))
    storage.write_bytes(uri, buffer.getvalue())


def _load_cache(uri: str) -> FeatureSet:
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        flat, shapes, ndims, meta = data["flat"], data["shapes"], data["ndims"], json.loads(str(data["meta"]))
    arrays, offset = [], 0
    for shape, ndim in zip(shapes, ndims, strict=True):
        dims = tuple(int(d) for d in shape[:ndim])
        size = int(np.prod(dims))
        arrays.append(flat[offset : offset + size].reshape(dims))
        offset += size
    return FeatureSet(arrays, meta, from_cache=True)


def join_process_group() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when launched with WORLD_SIZE > 1."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run_trunk(
    loaded: LoadedTrunk,
    dataset: EvalDataset,
    indices: list[int],
    options: FeatureOptions,
    show: bool,
    sink: Callable[[list[int], list[np.ndarray]], None],
) -> None:
    device = next(loaded.trunk.parameters()).device
    if device.type == "cuda":
        loaded.trunk.to(memory_format=torch.channels_last)
    loader = DataLoader(
        _Images(dataset, indices, options.transform),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = (group for groups in loader for group in groups)
    sharded = loaded.shard_sizes is not None
    if sharded:
        batches = _in_lockstep(batches, device)
    # FSDP2 all-gathers into tensors it reuses, which inference mode forbids: no_grad when sharded.
    with (
        torch.no_grad() if sharded else torch.inference_mode(),
        tqdm(total=len(indices), desc="features", unit="img", disable=None if show else True) as bar,
    ):
        for batch in batches:
            batch_indices, images = batch or ([], _idle_batch(options.transform))
            with _autocast(device, options.precision):
                fmap = loaded.trunk(normalize(images, device), taps=[options.tap])[options.tap]
            if batch_indices:
                sink(batch_indices, _pool_batch(fmap, options.pool))
                bar.update(len(batch_indices))


def _in_lockstep(
    batches: Iterator[tuple[list[int], torch.Tensor]], device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor] | None]:
    """Yield this rank's batches until every rank has run out, then None (an idle forward) while others
    still have some: with a sharded trunk each forward all-gathers every unit's weights, so all ranks
    must run the same number of forwards (their shares differ by up to one image and group)."""
    flag_device = device if device.type == "cuda" else torch.device("cpu")
    while True:
        batch = next(batches, None)
        more = torch.tensor([batch is not None], dtype=torch.int32, device=flag_device)
        dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if not more.item():
            return
        yield batch


def _idle_batch(transform: TransformSpec) -> torch.Tensor:
    """One black image for an idle forward (its output is discarded)."""
    return torch.zeros((1, 3, transform.crop, transform.crop), dtype=torch.uint8)


class _MemmapSink:
    """Writes each batch's rows into the (N, ...) .npy file at `path`: created at the first batch, when
    the shape is known, or (`opened`) the file another rank created, opened for writing."""

    def __init__(self, path: str, count: int, opened: bool = False) -> None:
        self.path, self.count = path, count
        self.matrix = np.load(path, mmap_mode="r+") if opened else None

    def __call__(self, indices: list[int], arrays: list[np.ndarray]) -> None:
        if self.matrix is None:
            shape = (self.count, *arrays[0].shape)
            self.matrix = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
        for i, a in zip(indices, arrays, strict=True):
            if a.shape != self.matrix.shape[1:]:
                raise ConfigError(
                    f"features have different shapes {a.shape} and {self.matrix.shape[1:]}; "
                    "use a fixed-size transform to memory-map them"
                )
            self.matrix[i] = a


def _one_node(world: int) -> bool:
    """Whether all torchrun ranks run on this node (so a local folder is shared by all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world


def _feature_shape(loaded: LoadedTrunk, options: FeatureOptions) -> tuple[int, ...]:
    """One image's feature shape for a fixed-size transform: one forward of a black image (on every
    rank, so a sharded trunk stays in lockstep)."""
    device = next(loaded.trunk.parameters()).device
    with torch.no_grad(), _autocast(device, options.precision):
        fmap = loaded.trunk(normalize(_idle_batch(options.transform), device), taps=[options.tap])[
            options.tap
        ]
    return _pool_batch(fmap, options.pool)[0].shape


def _spill(
    loaded: LoadedTrunk,
    dataset: EvalDataset,
    indices: list[int],
    options: FeatureOptions,
    path: str,
    rank: int,
    world: int,
) -> np.ndarray:
    """Write this rank's rows into one memory-mapped (N, ...) .npy file at `path` and return it opened
    read-only. One process creates it at its first batch; torchrun ranks share one file in a folder of
    their node (rank 0 creates it from the shape of one forward), and nothing is gathered: ranks read
    the rows through the page cache."""
    if rank == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if world == 1:
        sink = _MemmapSink(path, len(dataset))
    else:
        shape = _feature_shape(loaded, options)
        if rank == 0:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(dataset), *shape)).flush()
        dist.barrier()
        sink = _MemmapSink(path, len(dataset), opened=True)
    _run_trunk(loaded, dataset, indices, options, rank == 0, sink)
    sink.matrix.flush()
    if world > 1:
        dist.barrier()
    return np.load(path, mmap_mode="r")


def extract(
    loaded: LoadedTrunk, dataset: EvalDataset, options: FeatureOptions, spill_dir: str | None = None
) -> FeatureSet:
    """Features of every image of `dataset` (cached when `options.cache` is set). With `spill_dir` (a
    local folder, the same on every rank) they are memory-mapped from a .npy file there, not held in
    RAM: one process writes it as it goes; torchrun ranks on one node each write their rows into the
    same file, and nothing is gathered (fixed-size transforms; else the shares are gathered)."""
    options.validate()
    if PUBLISHED in (options.tap, options.pool):
        raise ConfigError(
            "tap/pool 'published' names the linear probe's per-model feature; give a tap and pooling here"
        )
    key = cache_key(loaded.sha256, dataset.sha256(), options)
    meta = {
        "cache_key": key,
        "checkpoint_sha256": loaded.sha256,
        "dataset_sha256": dataset.sha256(),
        "preset": loaded.preset,
        "tap": options.tap,
        "pool": options.pool,
        "transform": options.transform.key(),
        "precision": options.precision,
        "count": len(dataset),
    }
    cache_uri = storage.join(options.cache, f"{key}.npz") if options.cache else None
    if cache_uri and storage.exists(cache_uri):
        return _load_cache(cache_uri)
    rank, world = join_process_group()
    indices = list(range(rank, len(dataset), world))
    shared_file = world == 1 or (_one_node(world) and options.transform.mode != "longer")
    if spill_dir and len(dataset) and shared_file:
        matrix = _spill(loaded, dataset, indices, options, os.path.join(spill_dir, f"{key}.npy"), rank, world)
        features = FeatureSet(list(matrix), meta, matrix=matrix)
        if cache_uri and rank == 0:
            _save_cache(cache_uri, features)
        if world > 1:
            dist.barrier()
        return features
    mine: dict[int, np.ndarray] = {}
    _run_trunk(loaded, dataset, indices, options, rank == 0, lambda i, a: mine.update(zip(i, a, strict=True)))
    if world > 1:
        parts: list[dict[int, np.ndarray]] = [{} for _ in range(world)]
        dist.all_gather_object(parts, mine)
        mine = {i: a for part in parts for i, a in part.items()}
    features = FeatureSet([mine[i] for i in range(len(dataset))], meta)
    if cache_uri and rank == 0:
        _save_cache(cache_uri, features)
    if world > 1:
        dist.barrier()
    return features


# ---------------------------------------------------------------------------------------------
# Streamed features of augmented crops


class _Augmented(Dataset):
    def __init__(self, dataset: EvalDataset, order: np.ndarray, augment: TrainAugment, seed: tuple) -> None:
        self.dataset, self.order, self.augment, self.seed = dataset, order, augment, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        index = int(self.order[i])
        rng = np.random.default_rng((*self.seed, index))
        return index, self.augment(read_image(self.dataset.samples[index]), rng)


def augmented_batches(
    loaded: LoadedTrunk,
    dataset: EvalDataset,
    options: FeatureOptions,
    augment: TrainAugment,
    batch_size: int,
    seed: int,
    epoch: int,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """One epoch over `dataset` in a (seed, epoch)-shuffled order: (image indices, pooled fp32 features
    on the CPU) per mini-batch of `batch_size` fresh random crops through the frozen trunk. Nothing
    is kept between batches, so memory does not grow with the dataset (one process)."""
    device = next(loaded.trunk.parameters()).device
    order = np.random.default_rng((seed, epoch)).permutation(len(dataset))
    loader = DataLoader(
        _Augmented(dataset, order, augment, (seed, epoch)),
        batch_size=batch_size,
        num_workers=options.num_workers,
        pin_memory=device.type == "cuda",
    )
    for indices, images in loader:
        chunks = []
        with torch.no_grad():
            for part in images.split(options.batch_size):
                with _autocast(device, options.precision):
                    fmap = loaded.trunk(normalize(part, device), taps=[options.tap])[options.tap]
                chunks.append(pool_tensor(fmap, options.pool).cpu())
        yield indices.numpy(), torch.cat(chunks)


def resolve_published(options: FeatureOptions, preset: str) -> FeatureOptions:
    """`options` with tap / pool `published` replaced by the model's published feature."""
    tap, pool = published_features(preset)
    return replace(
        options,
        tap=tap if options.tap == PUBLISHED else options.tap,
        pool=pool if options.pool == PUBLISHED else options.pool,
    )
