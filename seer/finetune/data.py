"""The labelled training set of a fine-tune: samples with class indices, and a resumable loader.

Any layout `seer.eval.datasets.load_dataset` reads (image folder, CSV/JSONL manifest, shards). A
geo set (`path,lat,lon`) is labelled by its nearest cell centre (haversine), as
`seer.eval.geolocalization.assign_cells` does; each cell's predicted location is the mean of its
training images' coordinates.

`LabelledLoader` gives every rank the same number of batches: per epoch, one permutation seeded by
(seed, epoch), split into strided rank slices, cut into batches (drop last). The crop of a sample
depends only on (seed, epoch, key) (`MultiCropTransform`), so a loader restored from `state_dict()`
(epoch, batches consumed) yields exactly the batches the interrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from seer.data.transforms import MultiCropTransform
from seer.errors import ConfigError
from seer.eval.datasets import Sample, load_dataset, read_image_bytes
from seer.eval.geolocalization import assign_cells, load_cells
from seer.finetune.config import FinetuneConfig


@dataclass
class LabelledSet:
    """Training samples (`label` = class index), the class names and, for geo, each class's location."""

    samples: list[Sample]
    classes: list[str]
    locations: list[list[float]]


def load_labelled(cfg: FinetuneConfig, data_uri: str) -> LabelledSet:
    """The training set of `cfg.data.task` at `data_uri`, validated (bad rows per `data.max_bad_rows`)."""
    policy = cfg.data.max_bad_rows
    if cfg.data.task == "classification":
        ds = load_dataset(data_uri, "classification", max_bad_rows=policy)
        return LabelledSet(ds.samples, ds.classes, [])
    if not cfg.data.cells:
        raise ConfigError("data.cells: a geo fine-tune needs the cell,lat,lon CSV of its cell centres")
    ds = load_dataset(data_uri, "geo", max_bad_rows=policy)
    cell, locations = assign_cells(ds.coordinates, load_cells(cfg.data.cells))
    samples = [Sample(**{**s.__dict__, "label": int(c)}) for s, c in zip(ds.samples, cell, strict=True)]
    return LabelledSet(samples, [str(i) for i in range(len(locations))], locations.round(6).tolist())


class _Crops(Dataset):
    """(sample index, epoch) → (normalised crop 3×S×S, label, key)."""

    def __init__(self, samples: list[Sample], transform: MultiCropTransform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        index, epoch = item
        sample = self.samples[index]
        (crop,) = self.transform(read_image_bytes(sample), sample.key, epoch)
        return crop, sample.label, sample.key


def _collate(
    items: list[tuple[torch.Tensor, int, str]],
) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
    images = torch.stack([i[0] for i in items])
    labels = torch.tensor([i[1] for i in items], dtype=torch.long)
    return (images, labels), [i[2] for i in items]


def train_transform(cfg: FinetuneConfig) -> MultiCropTransform:
    """One RandomResizedCrop of `data.crop_size` + flip + colour distortion + blur (VISSL fulltune)."""
    d = cfg.data
    return MultiCropTransform(
        [{"size": d.crop_size, "count": 1, "scale": d.crop_scale}],
        seed=cfg.train.seed,
        flip_p=d.flip_p,
        jitter_strength=d.jitter_strength,
        jitter_p=d.jitter_p,
        grayscale_p=d.grayscale_p,
        blur_p=d.blur_p,
    )


def batches_per_epoch(images: int, batch_per_rank: int, world_size: int) -> int:
    """Full global batches in one pass over `images` (the rest of an epoch is dropped)."""
    per_epoch = images // (batch_per_rank * world_size)
    if per_epoch < 1:
        raise ConfigError(
            f"the training set has {images} images, fewer than one global batch "
            f"({batch_per_rank} × {world_size} ranks); lower train.batch_per_gpu or use more data"
        )
    return per_epoch


class LabelledLoader:
    """Yields `((images, labels), keys)` batches of this rank; one `iter()` = the rest of an epoch."""

    def __init__(
        self,
        samples: list[Sample],
        transform: MultiCropTransform,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
    ) -> None:
        self.dataset = _Crops(samples, transform)
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.num_workers = seed, num_workers
        self.epoch = self.position = 0
        self.per_epoch = batches_per_epoch(len(samples), batch_size, world_size)

    def _batches(self) -> list[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        mine = order[self.rank :: self.world_size]
        b = self.batch_size
        return [[(i, self.epoch) for i in mine[k * b : (k + 1) * b]] for k in range(self.per_epoch)]

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], list[str]]]:
        loader = DataLoader(
            self.dataset,
            batch_sampler=self._batches()[self.position :],
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        for batch in loader:
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
