"""mmlab: an ablation and architecture-search workbench for MobileMamba-style vision backbones.

Describe a network once as an :class:`ArchSpec` (or take a preset), then build, count, time,
score, search and ablate it. Importing mmlab also registers the presets with timm
(``timm.create_model("mobilemamba_t2")``).
"""

__version__ = "0.1.0"

from mmlab import timm_models as _timm_models  # noqa: F401,E402  (registers the timm entrypoints)
from mmlab.arch import ArchSpec, StageSpec, load_spec
from mmlab.meter import measure
from mmlab.model import MobileMamba, build, fuse, load_checkpoint, save_official_checkpoint, to_official_state_dict
from mmlab.presets import get_preset, preset_names
from mmlab.proxies import Signal, score

__all__ = [
    "ArchSpec",
    "MobileMamba",
    "Signal",
    "StageSpec",
    "build",
    "fuse",
    "get_preset",
    "load_checkpoint",
    "load_spec",
    "measure",
    "preset_names",
    "save_official_checkpoint",
    "score",
    "to_official_state_dict",
]
