"""Decode, validate and normalise one input image into the RGB JPEG that goes into a shard.

Conversion rules (every accepted image ends up 8-bit RGB):

- EXIF orientation is applied, then the orientation tag no longer matters (the output has no EXIF).
- Animated images (GIF, APNG, WebP) keep their first frame.
- Alpha (RGBA, LA, PA, palette or grey/RGB images with a transparency key) is composited over
  **white**: most transparent web images are logos and cut-outs drawn for a white page.
- CMYK, YCbCr, LAB, HSV, 1-bit and palette images are converted with Pillow's converters.
- 16-bit and 32-bit grey images (``I;16*``, ``I``) keep their high byte (linear rescale to 0..255);
  float images (``F``) are clipped to 0..255.

Pass-through: a source that is already a valid baseline RGB (YCbCr) JPEG needing no orientation,
conversion or downscale keeps its compressed bytes. It is still verified by a full entropy decode
(at 1/8 DCT scale, which skips the inverse DCT but reads every coded block, so truncation and
broken Huffman data fail exactly as in a full decode); only the metadata segments (APP1 EXIF/XMP,
APP13 IPTC, COM) and anything after the end-of-image marker are dropped, so the output has no
EXIF either way. Everything else is decoded once (at reduced DCT scale when ``max_short_side``
allows) and re-encoded.

Rejection reasons (the strings the manifest counts): ``empty``, ``not_an_image``, ``truncated``,
``decompression_bomb``, ``corrupt``, ``unreadable`` (the latter set by the caller when bytes cannot
be read at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Files whose names look like images; anything else in a folder or tar is ignored, not rejected.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default (Image.MAX_IMAGE_PIXELS)
_ORIENTATION = 0x0112  # EXIF tag
REJECT_REASONS = ("empty", "not_an_image", "truncated", "decompression_bomb", "corrupt", "unreadable")


class ImageRejected(Exception):
    """An input cannot become a sample; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodedImage:
    """A normalised sample: JPEG bytes plus what the manifest and sidecar record about it."""

    jpeg: bytes
    sha256: str  # of ``jpeg``: the exact-dedup key (same bytes = same training sample)
    width: int
    height: int
    source_width: int
    source_height: int
    source_format: str
    source_mode: str
    converted: tuple[str, ...]  # conversions applied, e.g. ("exif_orientation", "alpha_over_white")
    passed_through: bool = False  # True: ``jpeg`` is the source's own entropy-coded data (see module doc)


def has_image_extension(name: str) -> bool:
    """True when ``name`` ends with one of IMAGE_EXTENSIONS (case-insensitive)."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


@contextlib.contextmanager
def _strict_decoding(max_pixels: int) -> Iterator[None]:
    """Pillow globals for one decode: truncated data fails, and Pillow's own bomb check (which
    refuses more than 2 x MAX_IMAGE_PIXELS at open) never undercuts ``max_pixels``."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise ImageRejected("decompression_bomb", str(err)) from None
        except UnidentifiedImageError:
            raise ImageRejected("not_an_image", "Pillow cannot identify the bytes as an image") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageRejected("corrupt", f"header unreadable: {err}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected(
            "decompression_bomb", f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    return image


def _to_rgb(image: Image.Image, converted: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in image.info):
        if "transparency" in image.info:
            image = image.convert("RGBA")
        else:
            converted.append("palette")
            return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        converted.append("alpha_over_white")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    import numpy as np  # only for these rare modes: keeps decoder start-up (one per worker) short

    if mode.startswith("I;16") or mode == "I":
        converted.append("16bit")
        pixels = np.asarray(image).astype(np.int64)
        if mode == "I" and pixels.max(initial=0) <= 255:
            pixels = np.clip(pixels, 0, 255)
        else:
            pixels = np.clip(pixels, 0, 65535) >> 8
        return Image.fromarray(pixels.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        converted.append("float")
        pixels = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "L").convert("RGB")
    converted.append(mode.lower())
    return image.convert("RGB")


def _draft_for_short_side(image: Image.Image, max_short_side: int | None) -> None:
    """Let libjpeg decode at a reduced power-of-two scale that still keeps the short side >= target."""
    if max_short_side is None or image.format != "JPEG":
        return
    width, height = image.size
    short = min(width, height)
    if short <= max_short_side * 2:
        return
    scale = max_short_side / short
    image.draft(image.mode, (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))))


_DROPPED_SEGMENTS = frozenset({0xE1, 0xED, 0xFE})  # APP1 (EXIF, XMP), APP13 (IPTC), COM
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """``data`` without EXIF/XMP/IPTC/comment segments and trailing bytes; None if the markers are odd.

    Walks the marker segments up to the first start-of-scan; the coded data is kept up to and
    including the end-of-image marker (0xFF bytes inside coded data are always stuffed, so the first
    FF D9 after the scan header is the end).
    """
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, size = [data[:2]], 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: keep the rest up to end-of-image
            end = data.find(b"\xff\xd9", pos)
            if end < 0:
                return None
            out.append(data[pos : end + 2])
            return b"".join(out)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            return None
        if marker not in _DROPPED_SEGMENTS:
            out.append(data[pos : pos + 2 + length])
        pos += 2 + length
    return None


def _can_pass_through(image: Image.Image, max_short_side: int | None) -> bool:
    """A baseline 3-channel JPEG in RGB, upright, already within the size limit."""
    if image.format != "JPEG":
        return False
    try:
        upright = image.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # unreadable EXIF: the decode path decides
        return False
    return (
        upright
        and image.mode == "RGB"
        and not image.info.get("progressive")
        and not image.info.get("progression")
        and (max_short_side is None or min(image.size) <= max_short_side)
    )


def _verify_jpeg(image: Image.Image) -> None:
    """Entropy-decode every block at 1/8 scale (no full-size inverse DCT); raises like a full decode."""
    width, height = image.size
    image.draft("RGB", ((width + 7) // 8, (height + 7) // 8))
    image.load()


def encode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_short_side: int | None = None,
    quality: int = 90,
    pass_through: bool = True,
) -> EncodedImage:
    """Decode ``data``, normalise to RGB (see module doc), downscale, re-encode as JPEG.

    With ``pass_through`` a source JPEG that needs no change keeps its coded bytes (verified, see the
    module doc). Raises ImageRejected with a reason from REJECT_REASONS when the bytes cannot
    become a sample.
    """
    with _strict_decoding(max_pixels):
        return _encode(data, max_pixels, max_short_side, quality, pass_through)


def _decode_error(err: Exception) -> ImageRejected:
    if isinstance(err, OSError):
        reason = "truncated" if "truncated" in str(err) or "broken data stream" in str(err) else "corrupt"
        return ImageRejected(reason, f"decoding failed: {err}")
    return ImageRejected("corrupt", f"decoding failed: {err}")


def _passed_through(data: bytes, image: Image.Image) -> EncodedImage | None:
    stripped = strip_jpeg_metadata(data)
    if stripped is None:
        return None  # unusual marker layout: let the decoder judge it and re-encode
    width, height = image.size
    try:
        _verify_jpeg(image)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise _decode_error(err) from None
    return EncodedImage(
        jpeg=stripped,
        sha256=hashlib.sha256(stripped).hexdigest(),
        width=width,
        height=height,
        source_width=width,
        source_height=height,
        source_format="JPEG",
        source_mode="RGB",
        converted=(),
        passed_through=True,
    )


def _encode(
    data: bytes, max_pixels: int, max_short_side: int | None, quality: int, pass_through: bool
) -> EncodedImage:
    image = _open(data, max_pixels)
    if pass_through and _can_pass_through(image, max_short_side):
        encoded = _passed_through(data, image)
        if encoded is not None:
            return encoded
    source_format = image.format or "unknown"
    source_mode = image.mode
    source_width, source_height = image.size
    converted: list[str] = []
    try:
        if getattr(image, "n_frames", 1) > 1:
            converted.append("first_frame")
            image.seek(0)
        _draft_for_short_side(image, max_short_side)
        image.load()
        if image.getexif().get(_ORIENTATION, 1) != 1:
            converted.append("exif_orientation")
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image, converted)
        if max_short_side is not None and min(rgb.size) > max_short_side:
            scale = max_short_side / min(rgb.size)
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
            converted.append("downscaled")
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise _decode_error(err) from None
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    jpeg = out.getvalue()
    return EncodedImage(
        jpeg=jpeg,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        width=rgb.width,
        height=rgb.height,
        source_width=source_width,
        source_height=source_height,
        source_format=source_format,
        source_mode=source_mode,
        converted=tuple(converted),
    )
