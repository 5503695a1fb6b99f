"""Multi-crop transforms: presets, determinism, equality with torchvision's ops, decoding, collation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvf
from PIL import Image

from seer.config import CropSpec as ConfigCropSpec
from seer.data.padded import PaddedCrops
from seer.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropParams,
    CropSpec,
    MultiCropTransform,
    TransformError,
    as_crop_specs,
    collate_multicrop,
)
from seer.errors import ConfigError, SeerError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, colourful uint8 image (3×H×W) with some texture."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 5, 7, generator=gen), size=(height, width), mode="bicubic"
    )
    texture = torch.rand(1, 3, height, width, generator=gen) * 0.1
    return (base + texture).clamp(0, 1)[0].mul(255).round().byte()


def jpeg(img: torch.Tensor, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("preset", "sizes"),
    [
        ("seer2021", [224, 224, 96, 96, 96, 96]),
        ("seer10b", [160, 160, 96, 96, 96, 96]),
        ("tiny", [64, 64, 32, 32]),
    ],
)
def test_presets_give_seer_crop_layout(preset: str, sizes: list[int]) -> None:
    t = MultiCropTransform(preset, seed=0)
    crops = t(photo(300, 400), "img-0", epoch=0)
    assert [c.shape for c in crops] == [(3, s, s) for s in sizes]
    assert all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in crops)
    assert t.num_crops == len(sizes)
    if preset != "tiny":
        assert [s.scale for s in t.specs] == [(0.14, 1.0), (0.05, 0.14)]


def test_same_seed_epoch_and_key_give_identical_crops_regardless_of_global_rng() -> None:
    img = photo(200, 260)
    t = MultiCropTransform("tiny", seed=7)
    torch.manual_seed(1)
    first = t(img, "sample-42", epoch=3)
    torch.manual_seed(999)
    torch.rand(100)
    t(img, "other", epoch=3)  # interleaved calls do not shift the stream
    again = MultiCropTransform("tiny", seed=7)(img, "sample-42", epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("change", ["epoch", "key", "seed"])
def test_changing_epoch_key_or_seed_changes_the_crops(change: str) -> None:
    img = photo(200, 260)
    args = {"seed": 1, "key": 5, "epoch": 0}
    base = MultiCropTransform("tiny", seed=args["seed"])(img, args["key"], args["epoch"])
    args[change] = args[change] + 1
    other = MultiCropTransform("tiny", seed=args["seed"])(img, args["key"], args["epoch"])
    assert not torch.equal(base[0], other[0])


def reference_crop(img: torch.Tensor, p: CropParams, size: int) -> torch.Tensor:
    """The same crop built step by step with torchvision.transforms.v2.functional."""
    top, left, h, w = p.box
    x = tvf.resized_crop(img, top, left, h, w, [size, size], antialias=True).float() / 255
    if p.flip:
        x = tvf.horizontal_flip(x)
    if p.jitter is not None:
        ops = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue]
        for op in p.jitter_order:
            x = ops[op](x, p.jitter[op])
    if p.gray:
        x = tvf.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur_sigma is not None:
        k = 2 * math.ceil(3 * p.blur_sigma) + 1
        x = tvf.gaussian_blur(x, [k, k], [p.blur_sigma, p.blur_sigma])
    return tvf.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_crops_equal_torchvision_functional_pipeline_with_the_same_draws() -> None:
    img = photo(180, 240, seed=3)
    img_cl = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # same resize kernel as the transform
    t = MultiCropTransform("tiny", seed=11)
    seen_ops = set()
    for key in range(6):
        params = t.params(180, 240, key, epoch=2)
        crops = t(img, key, epoch=2)
        sizes = [s.size for s in t.specs for _ in range(s.count)]
        for crop, p, size in zip(crops, params, sizes, strict=True):
            torch.testing.assert_close(crop, reference_crop(img_cl, p, size), atol=2e-4, rtol=0)
            used = {
                "flip": p.flip,
                "jitter": p.jitter is not None,
                "gray": p.gray,
                "blur": p.blur_sigma is not None,
            }
            seen_ops |= {name for name, on in used.items() if on}
    assert seen_ops == {"flip", "jitter", "gray", "blur"}


def test_random_choices_follow_the_seer_probabilities_and_ranges() -> None:
    t = MultiCropTransform("seer2021", seed=0)
    params = [(i, p) for key in range(400) for i, p in enumerate(t.params(480, 640, key))]
    for idx, lo, hi in [((0, 1), 0.14, 1.0), ((2, 3, 4, 5), 0.05, 0.14)]:
        group = [p for i, p in params if i in idx]
        areas = [p.box[2] * p.box[3] / (480 * 640) for p in group]
        ratios = [p.box[3] / p.box[2] for p in group]
        assert lo * 0.97 <= min(areas) and max(areas) <= hi * 1.03
        assert min(ratios) >= 0.74 and max(ratios) <= 1.36
        assert all(0 <= p.box[0] <= 480 - p.box[2] and 0 <= p.box[1] <= 640 - p.box[3] for p in group)
    ps = [p for _, p in params]
    n = len(ps)
    assert abs(sum(p.flip for p in ps) / n - 0.5) < 0.04
    assert abs(sum(p.jitter is not None for p in ps) / n - 0.8) < 0.04
    assert abs(sum(p.gray for p in ps) / n - 0.2) < 0.04
    assert abs(sum(p.blur_sigma is not None for p in ps) / n - 0.5) < 0.04
    jit = [p.jitter for p in ps if p.jitter is not None]
    assert min(j[0] for j in jit) >= 0.2 and max(j[0] for j in jit) <= 1.8
    assert min(j[3] for j in jit) >= -0.2 and max(j[3] for j in jit) <= 0.2
    assert {tuple(sorted(p.jitter_order)) for p in ps if p.jitter} == {(0, 1, 2, 3)}
    assert len({p.jitter_order for p in ps if p.jitter}) == 24  # every op order occurs
    sig = [p.blur_sigma for p in ps if p.blur_sigma is not None]
    assert min(sig) >= 0.1 and max(sig) <= 2.0


def test_bytes_pil_and_tensor_inputs_give_the_same_crops() -> None:
    img = photo(150, 200)
    data = jpeg(img)
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    t = MultiCropTransform("tiny", seed=2)
    from_bytes = t(data, "k")
    from_pil = t(Image.open(io.BytesIO(data)), "k")
    from_tensor = t(decoded.contiguous(), "k")
    for a, b, c in zip(from_bytes, from_pil, from_tensor, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    gray = t(img[:1].contiguous(), "k")
    assert all(c.shape[0] == 3 for c in gray)


def test_reduced_jpeg_decode_keeps_crop_geometry_and_content() -> None:
    big = photo(1200, 1600, seed=5)
    data = jpeg(big)
    fast = MultiCropTransform("seer10b", seed=0)
    exact = MultiCropTransform("seer10b", seed=0, reduced_decode=False)
    sizes = [160, 160, 96, 96, 96, 96]
    factors = []
    for key in range(40):
        params = fast.params(1200, 1600, key)
        factor = fast.decode_factor(params)
        factors.append(factor)
        # Every crop keeps at least its output resolution, and half that scale would not.
        assert all(min(p.box[2], p.box[3]) * factor >= s for p, s in zip(params, sizes, strict=True))
        assert factor == 0.125 or any(
            min(p.box[2], p.box[3]) * factor / 2 < s for p, s in zip(params, sizes, strict=True)
        )
    assert min(factors) < 1  # most samples of a large photo decode at reduced size
    for key in range(2):
        for a, b in zip(fast(data, key), exact(data, key), strict=True):
            # Same region, resampled from a reduced DCT decode: small differences only.
            assert (a - b).abs().mean() < 0.03


def test_bad_images_and_crop_specs_raise_seer_errors() -> None:
    t = MultiCropTransform("tiny")
    with pytest.raises(TransformError, match="uint8 tensor shaped C×H×W"):
        t(torch.rand(3, 20, 20), "k")
    with pytest.raises(TransformError, match="cannot decode image bytes"):
        t(b"not an image", "k")
    with pytest.raises(TransformError, match="pass encoded image bytes"):
        t([1, 2, 3], "k")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown crop preset 'seer3000'"):
        MultiCropTransform("seer3000")
    with pytest.raises(ConfigError, match="0 < scale"):
        MultiCropTransform([{"size": 32, "count": 2, "scale": [0.5, 0.2]}])
    with pytest.raises(SeerError, match="no crops given"):
        as_crop_specs([])


def test_crop_specs_accept_config_objects_dicts_and_tuples() -> None:
    specs = as_crop_specs(
        [
            ConfigCropSpec(64, 2, [0.3, 1.0]),
            {"size": 32, "count": 1, "scale": [0.1, 0.3]},
            (16, 1, (0.05, 0.1)),
        ]
    )
    assert specs == (CropSpec(64, 2, (0.3, 1.0)), CropSpec(32, 1, (0.1, 0.3)), CropSpec(16, 1, (0.05, 0.1)))


def test_collate_is_crop_major_and_pads_for_single_pass() -> None:
    t = MultiCropTransform("tiny", seed=0)
    samples = [t(photo(100, 120, seed=i), i) for i in range(3)]
    batch = collate_multicrop(samples)
    assert [b.shape for b in batch] == [(3, 3, 64, 64)] * 2 + [(3, 3, 32, 32)] * 2
    assert torch.equal(batch[2][1], samples[1][2])
    padded = collate_multicrop(samples, pad=True)
    assert isinstance(padded, PaddedCrops)
    assert (
        padded.tensor.shape == (12, 3, 64, 64) and padded.sizes == [64, 64, 32, 32] and padded.batch_size == 3
    )
    assert torch.equal(padded.tensor[2 * 3 + 1, :, :32, :32], samples[1][2])
    assert padded.tensor[2 * 3 + 1, :, 32:, :].abs().sum() == 0
    assert padded.valid[7, :32, :32].all() and not padded.valid[7, 32:, :].any() and padded.valid[0].all()
    with pytest.raises(TransformError, match="different crop counts"):
        collate_multicrop([samples[0], samples[1][:3]])
