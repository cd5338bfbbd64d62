"""Load the MobileMamba authors' checkpoints and export to their layout.

mmlab's module names are the authors' with a few clean-ups (``stem`` for ``patch_embed``,
``stages.S.downsample`` / ``stages.S.blocks`` for ``blocks{S+1}``, no ``attn`` wrapper, ``ssm``
for ``global_atten``, ``head.fc`` for ``head.l``). The rename is a list of rules applied to
every key, so the two layouts map one-to-one and both directions come from the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mmlab.spec.arch import ArchSpec
from mmlab.model.net import MobileMamba, build

_OFFICIAL_MARKER = "patch_embed."


def _stage_rule(match: re.Match[str]) -> str:
    stage, kind, index = int(match.group(1)), match.group(2), int(match.group(3))
    # The authors put a stage's three downsample modules first in ``blocks{S+1}``, then its blocks.
    offset = 0 if kind == "downsample" or stage == 0 else 3
    return f"blocks{stage + 1}.{index + offset}."


_RULES: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"^stem\."), "patch_embed."),
    (re.compile(r"^stages\.(\d+)\.(downsample|blocks)\.(\d+)\."), _stage_rule),
    (re.compile(r"\.mixer\.m\."), ".mixer.m.attn."),
    (re.compile(r"\.global_op\.ssm\."), ".global_op.global_atten."),
    (re.compile(r"\.attn\.proj\."), ".attn.proj.1."),
    (re.compile(r"^head\.fc\."), "head.l."),
]


def _official_name(name: str) -> str:
    for pattern, repl in _RULES:
        name = pattern.sub(repl, name)
    return name


def official_key_map(spec: ArchSpec) -> dict[str, str]:
    """mmlab state-dict key → the authors' key, for every entry of ``build(spec)``'s state dict."""
    if spec.num_stages != 3 or spec.stem_stride != 16:
        raise ValueError(
            f"spec: {spec.num_stages} stages with stem stride {spec.stem_stride} has no official layout; "
            "the authors' code only builds 3 stages after a stride-16 stem"
        )
    with torch.device("meta"):
        keys = list(build(spec).state_dict())
    mapping = {k: _official_name(k) for k in keys}
    assert len(set(mapping.values())) == len(mapping), "rename rules must be one-to-one"
    return mapping


def _unwrap(obj: object, ema: bool) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint: expected a state dict or a dict holding one, got {type(obj).__name__}")
    wanted = ("net_E", "net") if ema else ("net", "model", "state_dict")
    for key in wanted:
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if ema and "net_E" not in obj and "net" in obj:
        raise ValueError("checkpoint: ema=True but the file holds no 'net_E' (EMA) weights")
    return obj


def load_checkpoint(source: str | Path | Mapping[str, object], spec: ArchSpec, *, ema: bool = False) -> MobileMamba:
    """Build ``spec`` and load a checkpoint into it with strict key checking.

    Args:
        source: a file path, or an already loaded dict. Either the authors' layout (bare, or
            wrapped as ``{"net": ..., "net_E": ...}``) or mmlab's own state dict.
        spec: the architecture the weights belong to.
        ema: take the authors' EMA weights (``net_E``) instead of ``net``.

    Returns:
        The model, in training mode as ``build`` returns it.
    """
    obj = torch.load(Path(source), map_location="cpu", weights_only=True) if isinstance(source, (str, Path)) else source
    state = dict(_unwrap(obj, ema))
    model = build(spec)
    if any(k.startswith(_OFFICIAL_MARKER) for k in state):
        to_ours = {v: k for k, v in official_key_map(spec).items()}
        unexpected = sorted(k for k in state if k not in to_ours)
        missing = sorted(v for k, v in to_ours.items() if k not in state)
        if unexpected or missing:
            raise ValueError(
                f"checkpoint does not match the spec: {len(missing)} missing keys (first: {missing[:3]}), "
                f"{len(unexpected)} unexpected (first: {unexpected[:3]})"
            )
        state = {to_ours[k]: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


def to_official_state_dict(model: nn.Module | Mapping[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Rename an mmlab model's (unfused) state dict to the authors' layout."""
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    mapping = official_key_map(spec)
    return {mapping[k]: v for k, v in state.items()}


def save_official_checkpoint(model: MobileMamba, path: str | Path) -> None:
    """Write ``{"net": state_dict}`` in the authors' layout, loadable by their code."""
    torch.save({"net": to_official_state_dict(model, model.spec)}, Path(path))
