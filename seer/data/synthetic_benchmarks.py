"""Generated evaluation benchmarks for the demo and tests: counting, copy detection, geo, fairness.

Each generator writes JPEG images plus manifests under an output URI (any `seer.storage` URI) and
returns the manifest URIs. Output is deterministic for a seed; images are small (64–96 px) so the
evaluations run on a CPU in seconds. Manifests are written last, so a set with manifests is complete.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from seer import storage
from seer.errors import ConfigError

SHAPES = ("circle", "square", "triangle")
# (name, latitude, longitude): the toy geolocalization set's cities.
CITIES = (
    ("paris", 48.8566, 2.3522),
    ("london", 51.5074, -0.1278),
    ("new-york", 40.7128, -74.0060),
    ("los-angeles", 34.0522, -118.2437),
    ("tokyo", 35.6762, 139.6503),
    ("sydney", -33.8688, 151.2093),
)
COPY_SPLITS = ("strong", "jpeg", "crops")


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _csv(rows: list[list[object]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int, low: int = 0, high: int = 256) -> Image.Image:
    """A random two-colour linear gradient with a little pixel noise, channel values in [low, high)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y + 1.5) / 3.0
    c0, c1 = np.array(_colour(rng, low, high)), np.array(_colour(rng, low, high))
    pixels = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _place(rng: np.random.Generator, n: int, size: int, radius: float) -> list[tuple[float, float]]:
    """`n` centres at least 2.2·radius apart inside the image (rejection sampling on a seeded rng)."""
    centres: list[tuple[float, float]] = []
    while len(centres) < n:
        c = tuple(rng.uniform(radius + 1, size - radius - 1, 2))
        if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 >= (2.2 * radius) ** 2 for o in centres):
            centres.append(c)  # type: ignore[arg-type]
    return centres


def _write_split(
    out_uri: str, split: str, items: list[tuple[str, Image.Image, list[object]]]
) -> list[list[object]]:
    """Write `(relative path, image, manifest fields)` items; return manifest rows."""
    rows = []
    for rel, image, fields in items:
        storage.write_bytes(storage.join(out_uri, split, rel), _jpeg(image))
        rows.append([f"{split}/{rel}", *fields])
    return rows


def _write_labelled_split(
    out_uri: str, split: str, items: list[tuple[str, Image.Image, list[object]]], header: list[str]
) -> str:
    """Write a split's images and its manifest `<split>.csv` (`header` row first, manifest last); return
    the manifest URI."""
    rows = _write_split(out_uri, split, items)
    uri = storage.join(out_uri, f"{split}.csv")
    storage.write_bytes(uri, _csv([header, *rows]))
    return uri


def make_counting_set(
    out_uri: str, *, n_train: int = 240, n_val: int = 120, max_count: int = 4, size: int = 64, seed: int = 0
) -> dict[str, str]:
    """CLEVR-count-like: 1..max_count bright random shapes on a dark gradient; label = the count.

    Writes `train/<count>/<i>.jpg`, `val/<count>/<i>.jpg` (an image-folder layout) and
    `train.csv` / `val.csv` (`path,label`).
    """
    if max_count < 2 or size < 32:
        raise ConfigError("counting set needs max_count >= 2 and size >= 32 px")
    rng = np.random.default_rng(seed)
    radius = size / (3.2 * max_count**0.5 + 2)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        items = []
        for i in range(n):
            count = i % max_count + 1
            image = _background(rng, size, 0, 110)
            draw = ImageDraw.Draw(image)
            for cx, cy in _place(rng, count, size, radius):
                r = radius * rng.uniform(0.7, 1.0)
                _draw_shape(draw, SHAPES[int(rng.integers(len(SHAPES)))], cx, cy, r, _colour(rng, 140, 256))
            items.append((f"{count}/{i:05d}.jpg", image, [count]))
        out[split] = _write_labelled_split(out_uri, split, items, ["path", "label"])
    return out


def _scene(rng: np.random.Generator, size: int) -> Image.Image:
    """A distinctive image: gradient, sinusoidal texture band and 4–8 coloured shapes."""
    image = _background(rng, size)
    pixels = np.asarray(image, dtype=np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    fx, fy = rng.uniform(0.1, 0.5, 2)
    pixels += 30 * np.sin(fx * x + fy * y)[..., None] * rng.uniform(-1, 1, 3)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, size, 2)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        _draw_shape(draw, shape, cx, cy, rng.uniform(size / 16, size / 5), _colour(rng))
    return image


def _crop(rng: np.random.Generator, image: Image.Image, low: float = 0.4, high: float = 0.7) -> Image.Image:
    size = image.width
    side = round(size * np.sqrt(rng.uniform(low, high)))
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    return image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)


def _recompress(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(_jpeg(image, quality=int(rng.integers(5, 16))))).convert("RGB")


def _strong(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Crop, rotation, colour change, text and shape overlays, then JPEG re-compression."""
    size = image.width
    image = _crop(rng, image, 0.5, 0.8)
    image = image.rotate(
        float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR, fillcolor=_colour(rng)
    )
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.8))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    draw = ImageDraw.Draw(image)
    draw.text(
        (rng.uniform(0, size / 2), rng.uniform(0, size - 12)),
        f"COPY {rng.integers(100)}",
        fill=_colour(rng),
    )
    _draw_shape(draw, "square", *rng.uniform(0, size, 2), size / 10, _colour(rng))
    return _recompress(rng, image)


_EDITS: dict[str, Callable[[np.random.Generator, Image.Image], Image.Image]] = {
    "strong": _strong,
    "jpeg": _recompress,
    "crops": _crop,
}


def make_copy_detection_set(
    out_uri: str,
    *,
    n_originals: int = 24,
    n_distractors: int = 48,
    n_train: int = 32,
    size: int = 96,
    seed: int = 0,
) -> dict[str, str]:
    """CopyDays-like: originals + distractors form the database; edited copies are the queries.

    Writes `database/`, `queries/<split>/`, `train/` (whitening set, disjoint from the database),
    and the manifests `database.csv` (`path`), `queries.csv` (`query,reference,split`, one edited
    copy of every original per split in COPY_SPLITS) and `train.csv` (`path`).
    """
    rng = np.random.default_rng(seed)
    originals = [_scene(rng, size) for _ in range(n_originals)]
    database = [(f"orig_{i:04d}.jpg", im, []) for i, im in enumerate(originals)]
    database += [(f"distractor_{i:04d}.jpg", _scene(rng, size), []) for i in range(n_distractors)]
    db_rows = _write_split(out_uri, "database", database)
    queries = []
    for split in COPY_SPLITS:
        edit = _EDITS[split]
        for i, original in enumerate(originals):
            queries.append(
                (f"{split}/q_{i:04d}.jpg", edit(rng, original), [f"database/orig_{i:04d}.jpg", split])
            )
    query_rows = _write_split(out_uri, "queries", queries)
    train_rows = _write_split(
        out_uri, "train", [(f"t_{i:04d}.jpg", _scene(rng, size), []) for i in range(n_train)]
    )
    out = {name: storage.join(out_uri, f"{name}.csv") for name in ("database", "queries", "train")}
    storage.write_bytes(out["train"], _csv([["path"], *train_rows]))
    storage.write_bytes(out["database"], _csv([["path"], *db_rows]))
    storage.write_bytes(
        out["queries"], _csv([["query", "reference", "split"], *[[r[0], r[1], r[2]] for r in query_rows]])
    )
    return out


def _city_image(rng: np.random.Generator, city: int, size: int) -> Image.Image:
    """Appearance tied to the city: its palette and its shape, with per-image variation."""
    palette = np.random.default_rng(1000 + city)
    base = palette.integers(40, 216, 3)
    image = _background(rng, size, 0, 256)
    pixels = 0.45 * np.asarray(image, dtype=np.float32) + 0.55 * base
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    shape = SHAPES[city % len(SHAPES)]
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, size, 2)
        _draw_shape(draw, shape, cx, cy, rng.uniform(size / 10, size / 5), tuple(int(v) for v in 255 - base))
    return image


def make_geo_set(
    out_uri: str,
    *,
    n_train: int = 240,
    n_val: int = 120,
    size: int = 64,
    spread_deg: float = 0.15,
    seed: int = 0,
) -> dict[str, str]:
    """Toy geolocalization: each image is taken near one of CITIES and looks like that city.

    Coordinates scatter around the city by `spread_deg` (Gaussian σ in degrees). Writes
    `train.csv` / `val.csv` (`path,lat,lon`) and `cells.csv` (`cell,lat,lon`: one cell per city).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        items = []
        for i in range(n):
            city = i % len(CITIES)
            _, lat, lon = CITIES[city]
            dlat, dlon = rng.normal(0, spread_deg, 2)
            items.append(
                (f"{i:05d}.jpg", _city_image(rng, city, size), [f"{lat + dlat:.5f}", f"{lon + dlon:.5f}"])
            )
        out[split] = _write_labelled_split(out_uri, split, items, ["path", "lat", "lon"])
    out["cells"] = storage.join(out_uri, "cells.csv")
    storage.write_bytes(out["cells"], _csv([["cell", "lat", "lon"], *[list(c) for c in CITIES]]))
    return out


def make_fairness_set(
    out_uri: str,
    *,
    n_train: int = 240,
    n_test: int = 120,
    size: int = 64,
    minority_share: float = 0.15,
    seed: int = 0,
) -> dict[str, str]:
    """Shape classification (label = SHAPES) with two groups: `light` and `dark` backgrounds.

    The `dark` group is only `minority_share` of the training set but half of the test set, so a
    classifier typically does worse on it. Writes `train.csv` / `test.csv` (`path,label,group`).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, dark_share in (("train", n_train, minority_share), ("test", n_test, 0.5)):
        items = []
        for i in range(n):
            dark = rng.uniform() < dark_share
            group = "dark" if dark else "light"
            image = _background(rng, size, 0, 90) if dark else _background(rng, size, 150, 256)
            shape = SHAPES[i % len(SHAPES)]
            draw = ImageDraw.Draw(image)
            r = rng.uniform(size / 6, size / 3.5)
            _draw_shape(draw, shape, *rng.uniform(r, size - r, 2), r, _colour(rng, 60, 200))
            items.append((f"{i:05d}.jpg", image, [shape, group]))
        out[split] = _write_labelled_split(out_uri, split, items, ["path", "label", "group"])
    return out


BENCHMARKS: dict[str, Callable[..., dict[str, str]]] = {
    "counting": make_counting_set,
    "copy-detection": make_copy_detection_set,
    "geo": make_geo_set,
    "fairness": make_fairness_set,
}
