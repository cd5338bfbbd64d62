"""torch modules of the MobileMamba family; ``build(spec)`` is the entry point.

Importing this package registers the presets with timm (``timm.create_model("mobilemamba_t2")``).
"""

from mmlab.model import timm_entrypoints as _timm_entrypoints  # noqa: F401  (registers the timm entrypoints)
from mmlab.model.checkpoint import load_checkpoint, save_official_checkpoint, to_official_state_dict
from mmlab.model.layers import fuse
from mmlab.model.net import MobileMamba, build

__all__ = ["MobileMamba", "build", "fuse", "load_checkpoint", "save_official_checkpoint", "to_official_state_dict"]
