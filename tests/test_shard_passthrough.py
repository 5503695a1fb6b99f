"""JPEG pass-through: valid baseline RGB JPEGs keep their coded data, with the same validation.

Relies on the JPEG marker layout of ITU-T T.81 (Annex B: SOI, length-prefixed segments, SOS, coded
data with stuffed 0xFF bytes, EOI) and on Pillow's ``draft`` choosing a libjpeg DCT scale.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from seer.data.images import ImageRejected, encode_image, strip_jpeg_metadata
from seer.data.synthetic import synthetic_image


def jpeg(size: tuple[int, int] = (120, 90), **save) -> bytes:
    out = io.BytesIO()
    synthetic_image(np.random.default_rng(1), *size).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def with_metadata(data: bytes, gps: bytes) -> bytes:
    """``data`` with an EXIF (APP1) segment and a comment after SOI, and junk after EOI."""
    exif = b"Exif\x00\x00" + gps
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    comment = b"\xff\xfe" + (9).to_bytes(2, "big") + b"comment"
    return data[:2] + app1 + comment + data[2:] + b"trailing junk"


def test_baseline_rgb_jpeg_is_passed_through_without_metadata() -> None:
    source = jpeg()
    tagged = with_metadata(source, b"GPS 48.85N 2.35E")
    encoded = encode_image(tagged)
    assert encoded.passed_through and encoded.jpeg == source  # coded data kept, EXIF/comment/junk dropped
    assert encoded.sha256 == hashlib.sha256(source).hexdigest()
    assert encode_image(with_metadata(source, b"other camera")).sha256 == encoded.sha256  # same picture: dup
    assert (encoded.width, encoded.height) == (120, 90)
    pixels = np.asarray(Image.open(io.BytesIO(tagged)).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded.jpeg))), pixels)  # bit-identical decode


@pytest.mark.parametrize(
    ("data", "max_short_side", "why"),
    [
        (jpeg(progressive=True), None, "progressive"),
        (jpeg((400, 300)), 128, "needs downscaling"),
        (jpeg(), 64, "short side 90 > 64"),
    ],
)
def test_other_jpegs_are_reencoded(data: bytes, max_short_side: int | None, why: str) -> None:
    encoded = encode_image(data, max_short_side=max_short_side)
    assert not encoded.passed_through, why
    assert Image.open(io.BytesIO(encoded.jpeg)).info.get("progressive") is None
    if max_short_side:
        assert min(encoded.width, encoded.height) == max_short_side


def test_grey_cmyk_and_rotated_jpegs_are_converted_not_passed_through() -> None:
    grey = io.BytesIO()
    Image.new("L", (32, 32), 128).save(grey, "JPEG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(cmyk, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = jpeg((60, 30), exif=exif.tobytes())
    for data in (grey.getvalue(), cmyk.getvalue(), rotated):
        encoded = encode_image(data)
        assert not encoded.passed_through and Image.open(io.BytesIO(encoded.jpeg)).mode == "RGB"
    assert (encode_image(rotated).width, encode_image(rotated).height) == (30, 60)


def test_pass_through_validates_like_a_full_decode() -> None:
    source = jpeg((256, 256))
    for cut in (len(source) // 2, len(source) - 40):
        for pass_through in (True, False):
            with pytest.raises(ImageRejected) as err:
                encode_image(source[:cut], pass_through=pass_through)
            assert err.value.reason == "truncated", (cut, pass_through)
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        encode_image(source, max_pixels=256 * 255)
    assert not encode_image(source, pass_through=False).passed_through


def test_strip_metadata_refuses_odd_marker_layouts() -> None:
    source = jpeg()
    assert strip_jpeg_metadata(b"GIF89a") is None
    assert strip_jpeg_metadata(source[:2] + b"\x00\x00" + source[2:]) is None  # not a marker
    assert strip_jpeg_metadata(source[: source.find(b"\xff\xda") + 20]) is None  # no end-of-image
    assert strip_jpeg_metadata(source) == source
