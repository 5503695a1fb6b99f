"""What the bench scripts share: peak memory readings, the VISSL-style baseline augmentation, the
printed table and the results file (written under a temporary name, then renamed)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux clear_refs 5) so the next reading covers one run only."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def result_header(bench: str, unit: str) -> dict[str, Any]:
    """The first fields of a CPU bench's results file: what was measured, in what, on which machine."""
    return {
        "bench": bench,
        "unit": unit,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def add_run_flags(parser: argparse.ArgumentParser, results: Path, *internal: str) -> None:
    """--out (the results file) and the hidden flags of one measurement in a fresh process:
    --variant plus `internal` (e.g. "--input"), which the script passes to itself."""
    parser.add_argument("--out", type=Path, default=results, help="where to write the JSON results")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    for flag in internal:
        parser.add_argument(flag, help=argparse.SUPPRESS)


class PilBlur:
    """VISSL's ImgPilGaussianBlur: p 0.5, PIL GaussianBlur radius ~ U(0.1, 2)."""

    def __call__(self, image):
        from PIL import ImageFilter

        if random.random() < 0.5:
            return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return image


def vissl_crop_chains(specs: Iterable[Any]) -> list:
    """One torchvision v1 chain per crop (VISSL's ImgPilToMultiCrop recipe), repeated `spec.count` times."""
    from torchvision import transforms as v1

    from seer.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    chains = []
    for spec in specs:
        chain = v1.Compose(
            [
                v1.RandomResizedCrop(spec.size, scale=spec.scale),
                v1.RandomHorizontalFlip(),
                v1.RandomApply([v1.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                v1.RandomGrayscale(p=0.2),
                PilBlur(),
                v1.ToTensor(),
                v1.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        chains += [chain] * spec.count
    return chains


def print_table(header: str, lines: Iterable[str]) -> None:
    """The header, a rule as wide as it, then one line a row."""
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)


def write_results(out: Path, result: dict[str, Any]) -> None:
    """`result` as JSON at `out`; a run cut short leaves only the temporary file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
