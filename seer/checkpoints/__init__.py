"""Checkpoint tooling: consolidate DCP training checkpoints, slice, load sliced into sharded models,
and interoperate with VISSL, timm and torchvision weights (formats: consolidate.py, slice.py)."""

from seer.checkpoints.consolidate import (
    CONSOLIDATED_FORMAT,
    consolidate,
    open_consolidated,
    verify_consolidated,
)
from seer.checkpoints.convert import convert
from seer.checkpoints.io import CheckpointError
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.checkpoints.mapping import ArchitectureMismatchError
from seer.checkpoints.slice import (
    SLICED_FORMAT,
    CorruptSliceError,
    open_sliced,
    slice_checkpoint,
    verify_sliced,
)
from seer.checkpoints.vissl import export_vissl, import_vissl

__all__ = [
    "CONSOLIDATED_FORMAT",
    "SLICED_FORMAT",
    "ArchitectureMismatchError",
    "CheckpointError",
    "CorruptSliceError",
    "consolidate",
    "convert",
    "export_vissl",
    "import_vissl",
    "load_sliced_into_",
    "open_consolidated",
    "open_sliced",
    "slice_checkpoint",
    "verify_consolidated",
    "verify_sliced",
]
