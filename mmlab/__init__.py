"""mmlab: an ablation and architecture-search workbench for MobileMamba-style vision backbones.

Describe a network once as an :class:`ArchSpec` (or take a preset), then build, count, time,
score, search and ablate it. Attributes load on first use, so ``import mmlab`` is instant;
``import mmlab.model`` (or any model attribute) registers the presets with timm
(``timm.create_model("mobilemamba_t2")``).
"""

from mmlab._lazy import lazy_exports
from mmlab._version import __version__

__all__ = [
    "ArchSpec",
    "EvalPlan",
    "MobileMamba",
    "Record",
    "SearchConfig",
    "StageSpec",
    "ablate",
    "build",
    "evaluate",
    "export",
    "fuse",
    "get_preset",
    "load_checkpoint",
    "load_spec",
    "measure",
    "preset_names",
    "proxy_check",
    "report",
    "save_official_checkpoint",
    "score",
    "search",
    "to_official_state_dict",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(("ArchSpec", "StageSpec", "get_preset", "load_spec", "preset_names"), "mmlab.spec"),
    **dict.fromkeys(("MobileMamba", "build", "fuse", "load_checkpoint", "save_official_checkpoint",
                     "to_official_state_dict"), "mmlab.model"),
    "measure": "mmlab.meter.measure",
    "score": "mmlab.signals.score",
    "Record": "mmlab.record",
    "EvalPlan": "mmlab.study.candidate",
    "evaluate": "mmlab.study.candidate",
    "SearchConfig": "mmlab.study.search",
    **dict.fromkeys(("search", "ablate", "proxy_check", "report", "export"), "mmlab.api"),
})
