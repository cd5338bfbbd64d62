"""Registers the presets with timm: ``timm.create_model("mobilemamba_t2")`` after ``import mmlab.model``.

No weights are hosted anywhere, so ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(
file="path/to/ckpt.pth")``; the authors' files load through :func:`mmlab.load_checkpoint`.
"""

from __future__ import annotations

from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from mmlab.model.checkpoint import official_key_map
from mmlab.model.net import MobileMamba, build
from mmlab.spec.presets import PAPER_PRESETS, PRESETS


def _cfg(resolution: int) -> dict[str, Any]:
    # The authors evaluate at resize(size / 0.875) + center crop(size), bicubic.
    return {
        "num_classes": 1000, "input_size": (3, resolution, resolution), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.0.c", "classifier": "head.fc",
        "license": "apache-2.0", "paper_ids": "arXiv:2411.15941",
    }


default_cfgs = generate_default_cfgs({f"mobilemamba_{name}": _cfg(PRESETS[name].resolution) for name in PAPER_PRESETS})


def _filter_official(state_dict: dict, model: MobileMamba) -> dict:
    """Accept the authors' checkpoints (wrapped or not) as ``pretrained`` files."""
    state = state_dict.get("net", state_dict)
    if any(k.startswith("patch_embed.") for k in state):
        to_ours = {v: k for k, v in official_key_map(model.spec).items()}
        state = {to_ours.get(k, k): v for k, v in state.items()}
    return state


def _entrypoint(name: str) -> Callable[..., MobileMamba]:
    spec = PRESETS[name]

    def create(pretrained: bool = False, **kwargs: Any) -> MobileMamba:
        overrides = {k: kwargs.pop(k) for k in ("num_classes", "in_chans") if k in kwargs}
        if "drop_path_rate" in kwargs:
            overrides["drop_path"] = kwargs.pop("drop_path_rate")
        kwargs.pop("drop_rate", None)  # the architecture has no dropout
        return build_model_with_cfg(
            lambda **_: build(spec.replace(**overrides)), f"mobilemamba_{name}", pretrained,
            pretrained_filter_fn=_filter_official, **kwargs,
        )

    create.__name__ = f"mobilemamba_{name}"
    create.__qualname__ = create.__name__
    create.__module__ = __name__
    create.__doc__ = f"MobileMamba-{name.upper()} at {spec.resolution} px (He et al., CVPR 2025)."
    return create


for _name in PAPER_PRESETS:
    globals()[f"mobilemamba_{_name}"] = register_model(_entrypoint(_name))
