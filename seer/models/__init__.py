"""The SEER model zoo: RegNetY trunks on torchvision's RegNet, SwAV heads, presets and their costs."""

from seer.models.heads import SwAVHead
from seer.models.init import init_weights_, materialize_, place_
from seer.models.presets import PRESETS, ModelPreset, StageSpec, get_preset
from seer.models.regnet import SeerRegNet, build_trunk
from seer.models.swav_model import SwAVModel, build_head, build_swav_model

__all__ = [
    "PRESETS",
    "ModelPreset",
    "SeerRegNet",
    "StageSpec",
    "SwAVHead",
    "SwAVModel",
    "build_head",
    "build_swav_model",
    "build_trunk",
    "get_preset",
    "init_weights_",
    "materialize_",
    "place_",
]
