"""Procedural image corpora for the demo and tests, and a "nasty" corpus of every bad-input case."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seer.errors import ConfigError

FORMATS = ("jpg", "png", "webp", "bmp")
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
_KINDS = ("gradient", "shapes", "texture", "noise", "checker")


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x / w + np.sin(angle) * y / h + 1.0) / 2.0
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.3), rng.uniform(0.01, 0.3), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 127.5 * np.sin(fx * x + fy * y + phase) * np.cos(fy * x - phase))
    return np.stack(channels, axis=-1)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cell = int(rng.integers(1, 9))
    small = rng.uniform(0, 255, ((h + cell - 1) // cell, (w + cell - 1) // cell, 3))
    return np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:h, :w]


def _checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cell = int(rng.integers(4, 33))
    y, x = np.mgrid[0:h, 0:w]
    mask = ((x // cell + y // cell) % 2).astype(bool)
    out = np.empty((h, w, 3), np.float32)
    out[mask], out[~mask] = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return out


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One procedural RGB image: a background pattern, some shapes and a little noise."""
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    if kind == "shapes":
        base = _gradient(rng, height, width) * 0.5 + 64
    else:
        base = {"gradient": _gradient, "texture": _texture, "noise": _noise, "checker": _checker}[kind](
            rng, height, width
        )
    base = base + rng.normal(0, rng.uniform(0, 12), base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1 if kind == "shapes" else 0, 8))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            points = [(int(rng.integers(width)), int(rng.integers(height))) for _ in range(3)]
            draw.polygon(points, fill=fill)
    return image


def generate_corpus(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    min_size: int = 48,
    max_size: int = 512,
    formats: tuple[str, ...] = FORMATS,
    classes: int = 4,
) -> list[Path]:
    """Write ``n`` varied procedural images to ``out_dir/class_k/img_000000.<fmt>``; return their paths.

    Sizes are drawn uniformly per side in [min_size, max_size], formats cycle through ``formats``.
    The class folders only exist so the tree also loads as a torchvision ImageFolder (benchmarks).
    The same arguments always produce the same files.
    """
    if n < 0 or min_size < 8 or max_size < min_size or classes < 1:
        raise ConfigError(
            f"bad corpus request n={n}, sizes {min_size}..{max_size}, classes={classes}: "
            "use n >= 0, 8 <= min_size <= max_size and classes >= 1"
        )
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"unknown image formats {unknown or formats}: choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        fmt = formats[i % len(formats)]
        path = out / f"class_{i % classes}" / f"img_{i:06d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_image(rng, width, height).save(
            path, _PIL_FORMAT[fmt], **({"quality": 90} if fmt != "bmp" else {})
        )
        paths.append(path)
    return paths


@dataclass(frozen=True)
class NastyCase:
    """What `seer shard` must do with one file of the nasty corpus.

    outcome: "valid" (kept as is), "converted" (kept after a conversion), "rejected" (counted under
    ``reason``), "duplicate" (dropped as an exact copy of ``duplicate_of``) or "ignored" (not an
    image name). ``output_size`` and ``probe`` ((x, y), (r, g, b)) describe the kept sample.
    """

    outcome: str
    reason: str | None = None
    duplicate_of: str | None = None
    output_size: tuple[int, int] | None = None
    probe: tuple[tuple[int, int], tuple[int, int, int]] | None = None


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def generate_nasty_corpus(out_dir: str | Path, seed: int = 0) -> dict[str, NastyCase]:
    """Write one file per bad-input case into ``out_dir``; return {file name: expected outcome}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: dict[str, NastyCase] = {}

    def write(name: str, data: bytes, case: NastyCase) -> None:
        (out / name).write_bytes(data)
        cases[name] = case

    plain = synthetic_image(rng, 96, 64)
    write("ok.jpg", _save(plain, "JPEG", quality=92), NastyCase("valid", output_size=(96, 64)))
    write("ok.png", _save(synthetic_image(rng, 80, 120), "PNG"), NastyCase("valid", output_size=(80, 120)))
    write("ok.webp", _save(synthetic_image(rng, 64, 64), "WEBP"), NastyCase("valid", output_size=(64, 64)))
    write("ok.bmp", _save(synthetic_image(rng, 50, 70), "BMP"), NastyCase("valid", output_size=(50, 70)))
    shutil.copyfile(out / "ok.jpg", out / "zz_copy_of_ok.jpg")
    cases["zz_copy_of_ok.jpg"] = NastyCase("duplicate", duplicate_of="ok.jpg")

    write("zero_bytes.jpg", b"", NastyCase("rejected", "empty"))
    full = _save(synthetic_image(rng, 256, 256), "JPEG", quality=95)
    write("truncated.jpg", full[: len(full) // 2], NastyCase("rejected", "truncated"))
    write("text_named.jpg", b"this is a text file, not a JPEG\n" * 20, NastyCase("rejected", "not_an_image"))
    write("bomb.png", decompression_bomb_png(), NastyCase("rejected", "decompression_bomb"))
    (out / "notes.txt").write_text("not an image name: ignored\n")
    cases["notes.txt"] = NastyCase("ignored")

    cmyk = Image.new("CMYK", (40, 30), (255, 0, 0, 0))  # pure cyan
    write(
        "cmyk.jpg",
        _save(cmyk, "JPEG", quality=95),
        NastyCase("converted", output_size=(40, 30), probe=((20, 15), (0, 255, 255))),
    )
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(palette).rectangle((16, 0, 31, 31), fill=1)
    write(
        "palette_transparent.png",
        _save(palette, "PNG", transparency=1),
        NastyCase("converted", output_size=(32, 32), probe=((24, 16), (255, 255, 255))),
    )
    ramp = (np.tile(np.linspace(0, 65535, 64), (48, 1))).astype(np.uint16)
    write(
        "gray16.png",
        _save(Image.fromarray(ramp), "PNG"),
        NastyCase("converted", output_size=(64, 48), probe=((63, 24), (255, 255, 255))),
    )
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (0, 128, 0, 255)  # opaque green left half, fully transparent right half
    write(
        "rgba.png",
        _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        NastyCase("converted", output_size=(40, 40), probe=((32, 20), (255, 255, 255))),
    )
    la = np.zeros((24, 24, 2), np.uint8)
    la[:, :, 0] = 40
    la[:12, :, 1] = 255
    write(
        "gray_alpha.png",
        _save(Image.fromarray(la, "LA"), "PNG"),
        NastyCase("converted", output_size=(24, 24), probe=((12, 20), (255, 255, 255))),
    )
    frames = [Image.new("RGB", (36, 28), colour) for colour in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    write(
        "animated.gif",
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        NastyCase("converted", output_size=(36, 28), probe=((18, 14), (0, 0, 255))),
    )
    wide = np.zeros((30, 60, 3), np.uint8)
    wide[:, :30] = (255, 0, 0)  # red left half, black right half; orientation 6 = rotate 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    write(
        "exif_rotated.jpg",
        _save(Image.fromarray(wide), "JPEG", quality=95, exif=exif.tobytes()),
        NastyCase("converted", output_size=(30, 60), probe=((15, 10), (255, 0, 0))),
    )
    return cases
