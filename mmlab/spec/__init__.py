"""What an architecture is: the frozen spec, the presets, search spaces, ablations and grids (pure Python, no torch)."""

from mmlab.spec.ablations import ABLATIONS, Ablation, apply_ablation
from mmlab.spec.arch import ArchSpec, StageSpec
from mmlab.spec.grid import Grid, expand, load_grid
from mmlab.spec.params import param_breakdown, param_count
from mmlab.spec.presets import PAPER_PRESETS, PRESETS, get_preset, load_spec, preset_names
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace, space_names

__all__ = [
    "ABLATIONS",
    "Ablation",
    "ArchSpec",
    "DEFAULT_SPACE",
    "Grid",
    "PAPER_PRESETS",
    "PRESETS",
    "SearchSpace",
    "StageSpec",
    "apply_ablation",
    "expand",
    "get_preset",
    "load_grid",
    "load_spec",
    "param_breakdown",
    "param_count",
    "preset_names",
    "space_names",
]
