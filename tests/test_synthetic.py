"""Synthetic corpora: procedural images and the nasty corpus, checked through the image normaliser."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seer.cli import main
from seer.data.images import ImageRejected, encode_image
from seer.data.synthetic import generate_corpus, generate_nasty_corpus
from seer.errors import ConfigError


def test_corpus_is_varied_deterministic_and_decodable(tmp_path: Path) -> None:
    paths = generate_corpus(tmp_path / "a", 12, seed=3, min_size=48, max_size=160)
    again = generate_corpus(tmp_path / "b", 12, seed=3, min_size=48, max_size=160)
    other = generate_corpus(tmp_path / "c", 12, seed=4, min_size=48, max_size=160)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in paths] != [p.read_bytes() for p in other]
    assert {p.suffix for p in paths} == {".jpg", ".png", ".webp", ".bmp"}
    sizes, hashes = set(), set()
    for path in paths:
        with Image.open(path) as image:
            assert 48 <= image.width <= 160 and 48 <= image.height <= 160
            assert image.mode == "RGB"
            sizes.add(image.size)
            pixels = np.asarray(image)
            assert pixels.std() > 5  # not a flat colour
        hashes.add(encode_image(path.read_bytes()).sha256)
    assert len(sizes) > 6 and len(hashes) == len(paths)
    assert {p.parent.name for p in paths} == {"class_0", "class_1", "class_2", "class_3"}


def test_corpus_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_size"):
        generate_corpus(tmp_path, 3, min_size=100, max_size=50)
    with pytest.raises(ConfigError, match="choose from"):
        generate_corpus(tmp_path, 3, formats=("gif",))


def test_nasty_corpus_outcomes_match_the_normaliser(tmp_path: Path) -> None:
    cases = generate_nasty_corpus(tmp_path)
    assert {c.outcome for c in cases.values()} == {"valid", "converted", "rejected", "duplicate", "ignored"}
    assert {c.reason for c in cases.values() if c.outcome == "rejected"} == {
        "empty",
        "truncated",
        "not_an_image",
        "decompression_bomb",
    }
    for name, case in cases.items():
        data = (tmp_path / name).read_bytes()
        if case.outcome in ("rejected",):
            with pytest.raises(ImageRejected) as info:
                encode_image(data)
            assert info.value.reason == case.reason, name
            continue
        if case.outcome == "ignored":
            continue
        encoded = encode_image(data)
        if case.outcome == "duplicate":
            original = encode_image((tmp_path / case.duplicate_of).read_bytes())
            assert encoded.sha256 == original.sha256
            continue
        assert (encoded.width, encoded.height) == case.output_size, name
        assert bool(encoded.converted) == (case.outcome == "converted"), (name, encoded.converted)
        decoded = Image.open(io.BytesIO(encoded.jpeg))
        assert decoded.mode == "RGB" and decoded.size == case.output_size
        if case.probe:
            (x, y), expected = case.probe
            got = decoded.getpixel((x, y))
            assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 12, (name, got, expected)


def test_truncated_stays_rejected_when_pillow_is_told_to_accept_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    generate_nasty_corpus(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # e.g. set by another library
    with pytest.raises(ImageRejected, match="truncated"):
        encode_image((tmp_path / "truncated.jpg").read_bytes())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_pixel_limit_and_downscale(tmp_path: Path) -> None:
    generate_corpus(tmp_path, 1, seed=0, min_size=300, max_size=300, formats=("jpg",))
    data = next(tmp_path.rglob("*.jpg")).read_bytes()
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        encode_image(data, max_pixels=300 * 300 - 1)
    small = encode_image(data, max_short_side=64)
    assert min(small.width, small.height) == 64 and "downscaled" in small.converted


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert (
        main(
            ["synth", "--output", str(out), "--count", "5", "--max-size", "64", "--formats", "png", "--nasty"]
        )
        == 0
    )
    assert len(list(out.glob("class_*/*.png"))) == 5
    assert (out / "nasty" / "bomb.png").exists()
    assert "wrote 5 images" in capsys.readouterr().out
    assert main(["synth", "--output", "s3://bucket/x", "--count", "1"]) == 2
    assert "local folder" in capsys.readouterr().err
