"""Named ablations as pure ``ArchSpec -> ArchSpec`` edits, and ablation grids read from TOML.

Ablations
=========
Each ablation is a plain function of a spec (and, for most, one value) that returns a new,
validated spec; ablations compose by applying one after the other. An edit that would make an
invalid spec raises that spec's ``ValueError`` ("field: value is not allowed; ..."). The registry
:data:`ABLATIONS` maps each name to an :class:`Ablation`; :func:`apply_ablation` applies one by
name. Without a value: ``no_wavelet``, ``no_global``, ``no_local``, ``no_identity``. With one:
``wavelet_levels``, ``kernels``, ``ssm_ratio``, ``d_state``, ``scan``, ``stages``, ``ffn_ratio``,
``resolution``, ``width_mult``.

``stages(n)`` changes the number of stages at the same final stride (stem stride × 2^(stages−1)).
Going up, it puts a copy of the first stage, at half its width (rounded to a multiple of 8, at
least 16), in front of it and halves the stem stride, once per added stage. Going down, it drops
leading stages and doubles the stem stride. On the reference layout (stem /16, stages at /16, /32,
/64), ``stages(4)`` gives a stem of stride 8 and stages at /8, /16, /32, /64: the last three are the
base's stages unchanged, and the new first one is the base's first stage at half width (S6:
192 → 96 channels at 28×28 for 224 px, with the stem's convs ending at 24, 48, 96). The stem then
has one stride-2 conv fewer, so its last conv (96 → 192 for S6) is replaced by the new stage and a
downsample. ``stages(3)`` of that spec gives the base back, and ``stages(3)`` of a 3-stage spec is
the spec itself.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mmlab.spec.arch import ArchSpec

__all__ = [
    "ABLATIONS",
    "Ablation",
    "apply_ablation",
    "get_ablation",
    "d_state",
    "ffn_ratio",
    "kernels",
    "no_global",
    "no_identity",
    "no_local",
    "no_wavelet",
    "resolution",
    "scan",
    "ssm_ratio",
    "stages",
    "wavelet_levels",
    "width_mult",
]


# ---- the ablations ----------------------------------------------------------------------------
def _each_stage(spec: ArchSpec, **changes: Any) -> ArchSpec:
    return spec.replace(stages=tuple(dataclasses.replace(s, **changes) for s in spec.stages))


def _round_width(width: float) -> int:
    """Nearest multiple of 8 (halves up), at least 16."""
    return max(16, int(width / 8 + 0.5) * 8)


def no_wavelet(spec: ArchSpec) -> ArchSpec:
    """Global branch without its wavelet path (SSM only): wavelet_levels 0 in every stage."""
    return wavelet_levels(spec, 0)


def wavelet_levels(spec: ArchSpec, levels: int) -> ArchSpec:
    """Wavelet decomposition levels of the global branch in every stage (0-3)."""
    return _each_stage(spec, wavelet_levels=levels)


def no_global(spec: ArchSpec) -> ArchSpec:
    """No global (wavelet + SSM) branch: global_ratio 0 in every stage; local unclamped, the rest identity."""
    return _each_stage(spec, global_ratio=0.0)


def no_local(spec: ArchSpec) -> ArchSpec:
    """No local (depthwise conv) branch: local_ratio 0 in every stage; its channels pass as identity."""
    return _each_stage(spec, local_ratio=0.0)


def no_identity(spec: ArchSpec) -> ArchSpec:
    """No identity channels: local_ratio 1 in every stage, so the local branch takes width - global."""
    return _each_stage(spec, local_ratio=1.0)


def kernels(spec: ArchSpec, kernel: int | Sequence[int]) -> ArchSpec:
    """Kernel size of the local and wavelet convs: one per stage, or one value for every stage."""
    if isinstance(kernel, (list, tuple)):
        if len(kernel) != spec.num_stages:
            raise ValueError(
                f"kernels: {tuple(kernel)!r} is not allowed; give one kernel, or one per stage ({spec.num_stages})"
            )
        per_stage = tuple(kernel)
    else:
        per_stage = (kernel,) * spec.num_stages
    return spec.replace(stages=tuple(dataclasses.replace(s, kernel=k) for s, k in zip(spec.stages, per_stage)))


def ssm_ratio(spec: ArchSpec, ratio: float) -> ArchSpec:
    """SSM expansion d_inner / global channels."""
    return spec.replace(ssm_ratio=ratio)


def d_state(spec: ArchSpec, n: int) -> ArchSpec:
    """SSM state size N."""
    return spec.replace(d_state=n)


def scan(spec: ArchSpec, mode: str) -> ArchSpec:
    """Scan directions of the SSM: forward (1), bidi (2, the reference) or cross (4)."""
    return spec.replace(scan=mode)


def stages(spec: ArchSpec, n: int) -> ArchSpec:
    """Stage count at the same final stride: half-width copies of stage 1 added in front, or leading stages dropped."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"stages: {n!r} is not allowed; must be an integer")
    layout = list(spec.stages)
    added = n - len(layout)
    for _ in range(added):
        layout.insert(0, dataclasses.replace(layout[0], width=_round_width(layout[0].width / 2)))
    del layout[: max(0, -added)]
    # Keep stem_stride * 2 ** (stages - 1); a stride outside 4, 8, 16 is left for the spec to reject.
    stride = spec.stem_stride // 2**added if added >= 0 else spec.stem_stride * 2**-added
    return spec.replace(stages=tuple(layout), stem_stride=stride)


def ffn_ratio(spec: ArchSpec, ratio: float) -> ArchSpec:
    """Hidden / input channels of every FFN (blocks and downsamples)."""
    return spec.replace(ffn_ratio=ratio)


def resolution(spec: ArchSpec, pixels: int) -> ArchSpec:
    """Input image side in pixels."""
    return spec.replace(resolution=pixels)


def width_mult(spec: ArchSpec, mult: float) -> ArchSpec:
    """Every stage width times mult, rounded to a multiple of 8 (at least 16)."""
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult <= 0:
        raise ValueError(f"width_mult: {mult!r} is not allowed; must be a number > 0")
    return spec.replace(stages=tuple(dataclasses.replace(s, width=_round_width(s.width * mult)) for s in spec.stages))


@dataclass(frozen=True)
class Ablation:
    """A named spec edit.

    Attributes:
        name: the registry name, as used in grid files and ``mmlab ablations``.
        description: one line for listings.
        fn: the edit: ``fn(spec)``, or ``fn(spec, value)`` when ``takes_value``.
        takes_value: whether the edit needs a value.
    """

    name: str
    description: str
    fn: Callable[..., ArchSpec]
    takes_value: bool


_VALUELESS = (no_wavelet, no_global, no_local, no_identity)
_VALUED = (wavelet_levels, kernels, ssm_ratio, d_state, scan, stages, ffn_ratio, resolution, width_mult)

ABLATIONS: dict[str, Ablation] = {
    fn.__name__: Ablation(fn.__name__, fn.__doc__.splitlines()[0], fn, fn in _VALUED) for fn in _VALUELESS + _VALUED
}
"""Every named ablation, value-less ones first."""


def get_ablation(name: str) -> Ablation:
    """The registered ablation ``name``; an unknown name raises ``ValueError`` with close matches."""
    if name in ABLATIONS:
        return ABLATIONS[name]
    close = difflib.get_close_matches(str(name), ABLATIONS, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown ablation {name!r}{hint} (known: {', '.join(ABLATIONS)})")


def apply_ablation(spec: ArchSpec, name: str, value: Any = None) -> ArchSpec:
    """Apply one named ablation.

    Args:
        spec: the spec to edit (left unchanged).
        name: a key of :data:`ABLATIONS`.
        value: the ablation's value; required when it takes one, not allowed otherwise.

    Returns:
        The edited, validated spec.

    Raises:
        ValueError: unknown name (with close matches), a missing or unexpected value, or an edit
            that makes an invalid spec (the spec's own message).
    """
    ablation = get_ablation(name)
    if not ablation.takes_value:
        if value is not None:
            raise ValueError(f"{name}: {value!r} is not allowed; {name} takes no value")
        return ablation.fn(spec)
    if value is None:
        raise ValueError(f"{name}: missing value; {name} needs one ({ablation.description})")
    return ablation.fn(spec, value)
