"""SwAV multi-crop augmentation (seer_spec §2.3), deterministic per (seed, epoch, sample).

Per crop, in VISSL's order: RandomResizedCrop (ratio 3/4–4/3, bilinear, antialiased), horizontal flip
p 0.5, colour jitter (brightness/contrast/saturation 0.8, hue 0.2, random op order) with p 0.8,
grayscale p 0.2, Gaussian blur p 0.5 with sigma ~ U(0.1, 2), ImageNet normalisation. VISSL runs these
on PIL images (uint8 after every op, PIL's box-approximated blur); here they run in float, so values
differ by rounding, not by distribution.

Speed: a JPEG is decoded once, at a reduced DCT scale (PIL ``draft``) when every crop still gets at
least its output resolution; crops are cut from one channels-last uint8 tensor and resized there
(torch's fast uint8 antialiased path); the photometric ops then run in place on float crops, with
allocation-light formulas (same results as torchvision's functional ops). All randomness comes from one ``torch.Generator`` seeded from (seed, epoch, sample key), never from
global RNG state or the worker id, so a resumed run sees exactly the same crops.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf
from PIL import Image

from seer.data.padded import PaddedCrops, pad_crops
from seer.errors import ConfigError, SeerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
_GRAY_WEIGHTS = torch.tensor([[0.2989, 0.587, 0.114]])  # torchvision / ITU-R 601 luma


class TransformError(SeerError, ValueError):
    """An image or crop specification the multi-crop transform cannot use."""


@dataclass(frozen=True)
class CropSpec:
    """`count` random-resized crops of `size`×`size` px, area fraction drawn from `scale`."""

    size: int
    count: int
    scale: tuple[float, float]


SEER2021: tuple[CropSpec, ...] = (CropSpec(224, 2, (0.14, 1.0)), CropSpec(96, 4, (0.05, 0.14)))
SEER10B: tuple[CropSpec, ...] = (CropSpec(160, 2, (0.14, 1.0)), CropSpec(96, 4, (0.05, 0.14)))
TINY: tuple[CropSpec, ...] = (CropSpec(64, 2, (0.3, 1.0)), CropSpec(32, 2, (0.1, 0.3)))
CROP_PRESETS: dict[str, tuple[CropSpec, ...]] = {"seer2021": SEER2021, "seer10b": SEER10B, "tiny": TINY}


def as_crop_specs(crops: str | Sequence[Any]) -> tuple[CropSpec, ...]:
    """Validate crops given as a preset name, or as objects/dicts/tuples with size, count, scale."""
    if isinstance(crops, str):
        if crops not in CROP_PRESETS:
            raise ConfigError(f"unknown crop preset {crops!r}; use one of {sorted(CROP_PRESETS)}")
        return CROP_PRESETS[crops]
    specs = []
    for item in crops:
        if isinstance(item, dict):
            size, count, scale = item.get("size"), item.get("count"), item.get("scale")
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            size, count, scale = item
        else:
            size, count, scale = (getattr(item, k, None) for k in ("size", "count", "scale"))
        try:
            lo, hi = (float(s) for s in scale)
            spec = CropSpec(int(size), int(count), (lo, hi))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"bad crop spec {item!r}: give size (int), count (int) and scale (two floats)"
            ) from err
        if spec.size < 1 or spec.count < 1 or not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"bad crop spec {item!r}: need size >= 1, count >= 1 and 0 < scale[0] <= scale[1] <= 1"
            )
        specs.append(spec)
    if not specs:
        raise ConfigError(
            "no crops given; pass a preset name (seer2021, seer10b, tiny) or a list of crop specs"
        )
    return tuple(specs)


def sample_seed(seed: int, epoch: int, sample_key: str | int) -> int:
    """A stable 63-bit seed for one sample in one epoch (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{seed}|{epoch}|{sample_key!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class _Uniforms:
    """Uniform [0, 1) draws from a torch.Generator, fetched in blocks to keep per-draw cost low."""

    def __init__(self, generator: torch.Generator, block: int = 128) -> None:
        self._gen = generator
        self._block = block
        self._buf: list[float] = []

    def __call__(self) -> float:
        if not self._buf:
            self._buf = torch.rand(self._block, generator=self._gen, dtype=torch.float64).tolist()[::-1]
        return self._buf.pop()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self()

    def randint(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self() * n), n - 1)

    def permutation(self, n: int) -> list[int]:
        keys = [self() for _ in range(n)]
        return sorted(range(n), key=keys.__getitem__)


def _crop_box(
    height: int, width: int, scale: tuple[float, float], rng: _Uniforms
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): 10 tries at area ~ U(scale), log-uniform aspect ratio
    in [3/4, 4/3], then the largest centred box whose aspect ratio is in range."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*_LOG_RATIO))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(height - h + 1), rng.randint(width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class CropParams:
    """Everything random about one crop: box (top, left, h, w) in full-resolution pixels, flip, colour
    jitter factors (brightness, contrast, saturation, hue) and their order, grayscale, blur sigma."""

    box: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[float, float, float, float] | None
    jitter_order: tuple[int, ...]
    gray: bool
    blur_sigma: float | None


class MultiCropTransform:
    """Image → list of normalised float32 crops (3×size×size), in crop-spec order.

    ``transform(image, sample_key, epoch)`` accepts encoded bytes (JPEG decoded once, at reduced size
    when that still gives every crop its output resolution), a PIL image, or a uint8 tensor C×H×W
    (C = 1 or 3). The same (seed, epoch, sample_key) always gives the same crops.
    """

    def __init__(
        self,
        crops: str | Sequence[Any] = "seer2021",
        seed: int = 0,
        *,
        flip_p: float = 0.5,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        reduced_decode: bool = True,
    ) -> None:
        self.specs = as_crop_specs(crops)
        self.seed = int(seed)
        self.flip_p, self.jitter_p, self.grayscale_p, self.blur_p = flip_p, jitter_p, grayscale_p, blur_p
        s = jitter_strength
        self.jitter = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        self.blur_sigma = blur_sigma
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.reduced_decode = reduced_decode

    @property
    def num_crops(self) -> int:
        return sum(s.count for s in self.specs)

    def __repr__(self) -> str:
        crops = " + ".join(f"{s.count}x{s.size} scale{s.scale}" for s in self.specs)
        return f"MultiCropTransform({crops}, seed={self.seed})"

    def params(self, height: int, width: int, sample_key: str | int, epoch: int = 0) -> list[CropParams]:
        """The random choices for every crop of a `height`×`width` image (what ``__call__`` applies)."""
        rng = _Uniforms(torch.Generator().manual_seed(sample_seed(self.seed, epoch, sample_key)))
        return [self._sample(height, width, spec, rng) for spec in self.specs for _ in range(spec.count)]

    def __call__(
        self, image: bytes | Image.Image | torch.Tensor, sample_key: str | int, epoch: int = 0
    ) -> list[torch.Tensor]:
        image = self._open(image)
        full_h, full_w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[1:]
        params = self.params(full_h, full_w, sample_key, epoch)
        pixels = self._pixels(image, params)
        fy, fx = pixels.shape[1] / full_h, pixels.shape[2] / full_w
        out: list[torch.Tensor] = []
        remaining = iter(params)
        for spec in self.specs:
            group = [next(remaining) for _ in range(spec.count)]
            resized = []
            for p in group:
                top, left, h, w = p.box
                # Map the box from full-resolution to (possibly reduced) decoded coordinates.
                t, l_ = int(top * fy), int(left * fx)
                b, r = max(t + 1, round((top + h) * fy)), max(l_ + 1, round((left + w) * fx))
                resized.append(tvf.resize(pixels[:, t:b, l_:r], [spec.size, spec.size], antialias=True))
            batch = torch.stack(resized).float().div_(255.0)
            out.extend(self._photometric(batch, group).unbind(0))
        return out

    @staticmethod
    def _open(image: bytes | Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        """A lazily opened PIL image (header read, pixels not decoded yet) or a validated uint8 tensor."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                return Image.open(io.BytesIO(image))
            except Exception as err:
                raise TransformError(
                    f"cannot decode image bytes ({err}); pass JPEG/PNG bytes, a PIL image or a uint8 tensor"
                ) from err
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
                raise TransformError(
                    f"image tensor has dtype {image.dtype} and shape {tuple(image.shape)}; "
                    "pass a uint8 tensor shaped C×H×W with C = 1 or 3"
                )
            return image
        raise TransformError(
            f"cannot augment a {type(image).__name__}; pass encoded image bytes, a PIL image or a uint8 tensor"
        )

    def _pixels(self, image: Image.Image | torch.Tensor, params: list[CropParams]) -> torch.Tensor:
        """Channels-last uint8 view 3×h×w; a JPEG is decoded at the smallest DCT scale that still gives
        every crop of this sample at least its output resolution."""
        if isinstance(image, Image.Image):
            if self.reduced_decode and image.format == "JPEG":
                factor = self.decode_factor(params)
                if factor < 1:
                    image.draft("RGB", (math.ceil(image.width * factor), math.ceil(image.height * factor)))
            try:
                arr = np.array(image.convert("RGB"))
            except OSError as err:
                raise TransformError(
                    f"cannot decode image ({err}); the file is truncated or corrupt"
                ) from err
            return torch.from_numpy(arr).permute(2, 0, 1)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        # Channels-last memory makes uint8 antialiased resizing several times faster.
        return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)

    def decode_factor(self, params: list[CropParams]) -> float:
        """Smallest JPEG DCT scale (1/8, 1/4, 1/2 or 1) at which every crop box of `params` still spans
        at least its output size in pixels, so the reduced decode loses no resolution."""
        sizes = [s.size for s in self.specs for _ in range(s.count)]
        need = max(size / min(p.box[2], p.box[3]) for size, p in zip(sizes, params, strict=True))
        for factor in (1 / 8, 1 / 4, 1 / 2):
            if factor >= need:
                return factor
        return 1.0

    def _sample(self, height: int, width: int, spec: CropSpec, rng: _Uniforms) -> CropParams:
        box = _crop_box(height, width, spec.scale, rng)
        flip = rng() < self.flip_p
        jitter, order = None, ()
        if rng() < self.jitter_p:
            b, c, s, h = self.jitter
            jitter = (rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                      rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h))  # fmt: skip
            order = tuple(rng.permutation(4))
        gray = rng() < self.grayscale_p
        sigma = rng.uniform(*self.blur_sigma) if rng() < self.blur_p else None
        return CropParams(box, flip, jitter, order, gray, sigma)

    def _photometric(self, x: torch.Tensor, params: list[CropParams]) -> torch.Tensor:
        """Flip, jitter, grayscale, blur and normalise a float batch (N×3×S×S in [0, 1]) of same-size
        crops. Per-crop steps work in place on views of the batch; normalisation is batched."""
        for img, p in zip(x, params, strict=True):
            if p.flip:
                img.copy_(img.flip(-1))
            if p.jitter is not None:
                for op in p.jitter_order:
                    _JITTER_OPS[op](img, p.jitter[op])
            if p.gray:
                img.copy_(_luma(img).expand_as(img))
            if p.blur_sigma is not None:
                img.copy_(_gaussian_blur(img, p.blur_sigma))
        return x.sub_(self.mean).div_(self.std)


def _luma(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's grayscale weights) of a 3×H×W image, as 1×H×W."""
    return (_GRAY_WEIGHTS.to(img.dtype) @ img.reshape(3, -1)).view(1, *img.shape[1:])


def _brightness(img: torch.Tensor, f: float) -> None:
    img.mul_(f).clamp_(0.0, 1.0)


def _contrast(img: torch.Tensor, f: float) -> None:
    mean = _luma(img).mean()
    img.mul_(f).add_(mean, alpha=1.0 - f).clamp_(0.0, 1.0)


def _saturation(img: torch.Tensor, f: float) -> None:
    gray = _luma(img)
    img.mul_(f).add_(gray, alpha=1.0 - f).clamp_(0.0, 1.0)


def _hue(img: torch.Tensor, shift: float) -> None:
    """Rotate the hue of a 3×H×W image by `shift` turns in HSV space (saturation and value unchanged).

    Branch-free (the max channel's sextant is picked with 0/1 masks) and mostly in place: on CPU,
    ``torch.where``, ``remainder``, ``minimum`` on such data and fresh large allocations are slow.
    """
    r, g, b = img.unbind(0)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)
    torch.minimum(delta, b, out=delta)
    torch.sub(maxc, delta, out=delta)
    is_r = (maxc == r).to(img.dtype)
    is_g = (maxc == g).to(img.dtype).mul_(1 - is_r)
    # 6·hue ∈ [-1, 5]: (g−b)/Δ if r is max, 2 + (b−r)/Δ if g is, 4 + (r−g)/Δ if b is (any value if Δ = 0);
    # written as (r−g)/Δ + 4 + is_r·((g−b) − (r−g) − 4Δ)/Δ + is_g·((b−r) − (r−g) − 2Δ)/Δ.
    rg = r - g
    h6 = is_r.mul_((g - b).sub_(rg).sub_(delta, alpha=4)).add_(
        is_g.mul_((b - r).sub_(rg).sub_(delta, alpha=2))
    )
    h6.add_(rg).div_(delta.clamp_min(1e-12)).add_(4 + 6 * shift)
    # HSV → RGB per channel n ∈ (5, 3, 1): V − Δ·clamp(min(k, 4 − k), 0, 1), k = (n + 6·hue) mod 6,
    # with min(k, 4 − k) written 2 − |k − 2|.
    k = h6.unsqueeze(0) + torch.tensor([5.0, 3.0, 1.0], dtype=img.dtype).view(3, 1, 1)
    k.sub_(torch.floor(k / 6).mul_(6)).sub_(2).abs_().neg_().add_(2).clamp_(0.0, 1.0)
    img.copy_(k.mul_(delta).neg_().add_(maxc))


# In ColorJitter's numbering: 0 brightness, 1 contrast, 2 saturation, 3 hue. Each works in place.
_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 3×H×W image: kernel truncated at ceil(3·sigma), reflect padding
    (torchvision's ``gaussian_blur`` with kernel size 2·ceil(3·sigma) + 1). Depthwise convs on
    channels-last memory take oneDNN's fast path."""
    c, height, width = img.shape
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=img.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).expand(c, -1)
    y = nnf.pad(img.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    y = y.contiguous(memory_format=torch.channels_last)
    y = nnf.conv2d(y, kernel.reshape(c, 1, 1, -1), groups=c)
    return nnf.conv2d(y, kernel.reshape(c, 1, -1, 1), groups=c)[0]


def collate_multicrop(
    batch: Sequence[Sequence[torch.Tensor]], pad: bool = False
) -> list[torch.Tensor] | PaddedCrops:
    """Samples (each a list of crops) → crop-major list: one B×C×S×S tensor per crop index.

    With ``pad=True`` returns the 10B single-pass layout (all crops zero-padded to the largest size
    with a validity mask; see :func:`seer.data.padded.pad_crops`).
    """
    if not batch:
        raise TransformError("cannot collate an empty batch; the loader must yield at least one sample")
    n = len(batch[0])
    if any(len(sample) != n for sample in batch):
        counts = sorted({len(sample) for sample in batch})
        raise TransformError(
            f"samples have different crop counts {counts}; use one MultiCropTransform for the loader"
        )
    crops = [torch.stack([sample[i] for sample in batch]) for i in range(n)]
    return pad_crops(crops) if pad else crops
