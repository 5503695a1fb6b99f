"""Multi-crop augmentation throughput: seer's MultiCropTransform vs a plain PIL + torchvision v1 pipeline.

Both pipelines start from the same encoded JPEG bytes (decode included) and produce the same crops
(normalised float tensors). Measured on one core (torch and PIL single-threaded, CPU time of this
process, so other load on the machine does not count). Prints a table, writes
bench/results/augment.json and reports ours / baseline as a ratio.

    .venv/bin/python bench/augment.py [--presets seer2021 seer10b] [--sizes 500x375 1080x1080 2048x1536]
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from _common import print_table, vissl_crop_chains, write_results
from PIL import Image, ImageDraw

from seer.data.transforms import CROP_PRESETS, CropSpec, MultiCropTransform

RESULTS = Path(__file__).parent / "results" / "augment.json"


def make_jpegs(width: int, height: int, count: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (quality 90): smooth colour fields, shapes and mild sensor noise."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        field = nnf.interpolate(torch.rand(1, 3, 6, 8, generator=gen), size=(height, width), mode="bicubic")
        noise = torch.randn(3, height, width, generator=gen) * 0.03
        pixels = (field[0] + noise).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(np.ascontiguousarray(pixels))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1, y1 = x0 + rng.randrange(width // 3 + 1), y0 + rng.randrange(height // 3 + 1)
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class BaselineMultiCrop:
    """The VISSL-style reference: decode with PIL, then one v1 transform chain per crop."""

    def __init__(self, specs: tuple[CropSpec, ...]) -> None:
        self.chains = vissl_crop_chains(specs)

    def __call__(self, data: bytes) -> list[torch.Tensor]:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return [chain(img) for chain in self.chains]


def images_per_second(fn, images: list[bytes], min_seconds: float) -> float:
    """Images per CPU-second of this process, over whole passes until `min_seconds` have elapsed."""
    fn(images[0], 0)
    done, start = 0, time.process_time()
    while True:
        for i, data in enumerate(images):
            fn(data, i)
        done += len(images)
        elapsed = time.process_time() - start
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["seer2021", "seer10b"], choices=sorted(CROP_PRESETS),
                        help="crop presets to measure")  # fmt: skip
    parser.add_argument("--sizes", nargs="+", default=["500x375", "1080x1080", "2048x1536"],
                        help="source JPEG sizes WIDTHxHEIGHT (ImageNet-like, Instagram-like, camera photo)")  # fmt: skip
    parser.add_argument("--images", type=int, default=8, help="distinct JPEGs per size")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum CPU seconds per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()

    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        images = make_jpegs(width, height, args.images)
        for preset in args.presets:
            ours = MultiCropTransform(preset, seed=0)
            baseline = BaselineMultiCrop(CROP_PRESETS[preset])
            ours_ips = images_per_second(lambda data, i, t=ours: t(data, i, 0), images, args.seconds)
            base_ips = images_per_second(lambda data, i, t=baseline: t(data), images, args.seconds)
            rows.append(
                {"preset": preset, "source": size, "ours_img_per_s": round(ours_ips, 2),
                 "baseline_img_per_s": round(base_ips, 2), "ratio": round(ours_ips / base_ips, 3)}
            )  # fmt: skip

    header = f"{'preset':<10} {'source':>10} {'ours img/s':>11} {'PIL+v1 img/s':>13} {'ratio':>6}"
    print("multi-crop augmentation, one core, JPEG decode included")
    print_table(header, (f"{r['preset']:<10} {r['source']:>10} {r['ours_img_per_s']:>11.1f} "
                         f"{r['baseline_img_per_s']:>13.1f} {r['ratio']:>6.2f}" for r in rows))  # fmt: skip
    geo = float(np.exp(np.mean([np.log(r["ratio"]) for r in rows])))
    print(f"geometric-mean ratio ours/baseline: {geo:.2f}x")
    result = {
        "bench": "augment",
        "unit": "images per CPU-second, one thread",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
        "geomean_ratio": round(geo, 3),
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
