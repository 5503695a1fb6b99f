"""Feature-extraction throughput: `seer.eval.features.extract` vs a plain torchvision loop, same run.

Baseline: `torchvision.datasets.ImageFolder` + PIL + `Resize(256)` / `CenterCrop(224)` / `ToTensor` /
`Normalize`, a `DataLoader` with the same batch size and workers, and the same trunk (a torchvision
`RegNet`) called in fp32 under `no_grad`. seer: `extract` on the same folder (storage reads, JPEG
DCT-scaled decoding, `inference_mode`, bf16 autocast on CUDA, pinned memory), tap `avgpool`,
cold (no cache), then again with the feature cache filled (a re-evaluation of the same checkpoint).

Images: --images procedural JPEGs of --image-size px (photo-like sizes, so decoding is real work).
Each variant runs once untimed, then --repeats times interleaved; images/s = images / median
wall time. Prints a table and writes bench/results/features.json.

    .venv/bin/python bench/features.py [--preset rg-tiny] [--images 256] [--device auto]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from seer.checkpoints.load import load_trunk
from seer.data.synthetic import synthetic_image
from seer.eval.datasets import load_dataset
from seer.eval.features import extract, parse_transform
from seer.eval.setup import FeatureOptions, resolve_device

RESULTS = Path(__file__).parent / "results"


def _write_images(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image = synthetic_image(rng, size, size * 3 // 4)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        (folder / f"{i:05d}.jpg").write_bytes(buffer.getvalue())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torchvision_loop(
    root: str, trunk: torch.nn.Module, device: torch.device, batch: int, workers: int
) -> int:
    """The plain loop a user would write; returns the number of images seen."""
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    loader = DataLoader(datasets.ImageFolder(root, tf), batch_size=batch, num_workers=workers)
    seen = 0
    with torch.no_grad():
        for images, _ in loader:
            out = trunk(images.to(device))
            seen += len(out.cpu())
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="rg-tiny", help="model preset to extract with")
    parser.add_argument("--images", type=int, default=256, help="number of generated JPEGs")
    parser.add_argument(
        "--image-size", type=int, default=480, help="width of the generated JPEGs (height 3/4)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (both loops)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers (both loops)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    device = resolve_device(args.device)
    loaded = load_trunk("random", args.preset, device=device)
    with tempfile.TemporaryDirectory(prefix="seer-bench-features-") as tmp:
        root = Path(tmp) / "images"
        _write_images(root, args.images, args.image_size)
        dataset = load_dataset(str(root))
        dataset.sha256()  # hashing the set once is part of loading it, not of extracting
        options = FeatureOptions(
            transform=parse_transform("shorter:256:224"), batch_size=args.batch_size, num_workers=args.workers
        )
        cached = FeatureOptions(**{**options.__dict__, "cache": str(Path(tmp) / "cache")})
        variants = {
            "torchvision ImageFolder loop (fp32)": lambda: torchvision_loop(
                str(root), loaded.trunk, device, args.batch_size, args.workers
            ),
            "seer extract (cold)": lambda: len(extract(loaded, dataset, options).arrays),
            "seer extract (cache hit)": lambda: len(extract(loaded, dataset, cached).arrays),
        }
        for run in variants.values():  # warm-up (CUDA context, cuDNN choices, page cache); fills the cache
            run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                _sync(device)
                start = time.perf_counter()
                assert run() == args.images
                _sync(device)
                times[name].append(time.perf_counter() - start)
    base = args.images / statistics.median(times["torchvision ImageFolder loop (fp32)"])
    rows = []
    print(
        f"{args.preset} on {device} ({args.images} JPEGs {args.image_size}px → 224, batch {args.batch_size}, {args.workers} workers)"
    )
    print(f"{'variant':<38} {'img/s':>10} {'vs baseline':>12}")
    for name, values in times.items():
        rate = args.images / statistics.median(values)
        rows.append({"variant": name, "images_per_s": rate, "ratio": rate / base, "seconds": values})
        print(f"{name:<38} {rate:>10.1f} {rate / base:>11.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "features.json"
    out.write_text(
        json.dumps(
            {
                "preset": args.preset,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or "cpu",
                "images": args.images,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "load_average": os.getloadavg(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
