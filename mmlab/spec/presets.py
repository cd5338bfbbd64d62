"""Named specs (the paper's six MobileMamba models, and a tiny one for tests) and ``load_spec``."""

from __future__ import annotations

import difflib
from pathlib import Path

from mmlab.spec.arch import ArchSpec, StageSpec

# Common to every released config: global (0.8, 0.7, 0.6), local (0.2, 0.2, 0.3), kernels
# (7, 5, 3), one Haar wavelet level, ssm_ratio 2, d_state 1, bidirectional scan.
_GLOBAL, _LOCAL, _KERNELS = (0.8, 0.7, 0.6), (0.2, 0.2, 0.3), (7, 5, 3)


def _mobilemamba(widths: tuple[int, int, int], depths: tuple[int, int, int], resolution: int, drop_path: float) -> ArchSpec:
    stages = tuple(
        StageSpec(width=w, depth=d, kernel=k, global_ratio=g, local_ratio=l, wavelet_levels=1)
        for w, d, k, g, l in zip(widths, depths, _KERNELS, _GLOBAL, _LOCAL)
    )
    return ArchSpec(stages=stages, resolution=resolution, drop_path=drop_path)


_B = ((200, 376, 448), (2, 3, 2))

PRESETS: dict[str, ArchSpec] = {
    "t2": _mobilemamba((144, 272, 368), (1, 2, 2), 192, 0.0),
    "t4": _mobilemamba((176, 368, 448), (1, 2, 2), 192, 0.0),
    "s6": _mobilemamba((192, 384, 448), (1, 2, 2), 224, 0.0),
    "b1": _mobilemamba(*_B, 256, 0.03),
    "b2": _mobilemamba(*_B, 384, 0.03),
    "b4": _mobilemamba(*_B, 512, 0.03),
    # Not a paper model: the smallest sensible member, so model tests run in milliseconds.
    "tiny": ArchSpec(
        stages=(
            StageSpec(width=32, depth=1, kernel=3, global_ratio=0.5, local_ratio=0.25),
            StageSpec(width=48, depth=1, kernel=3, global_ratio=0.4, local_ratio=0.3),
            StageSpec(width=64, depth=1, kernel=3, global_ratio=0.3, local_ratio=0.3),
        ),
        resolution=64,
        num_classes=10,
    ),
}

PAPER_PRESETS: tuple[str, ...] = ("t2", "t4", "s6", "b1", "b2", "b4")


def preset_names() -> list[str]:
    """All registered preset names, paper models first."""
    return list(PRESETS)


def get_preset(name: str) -> ArchSpec:
    """Look a preset up by name; an unknown name raises ``ValueError`` with the close matches."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})") from None


def load_spec(source: str | Path) -> ArchSpec:
    """Resolve a preset name or a ``.toml`` / ``.json`` spec file to an :class:`ArchSpec`."""
    text = str(source)
    path = Path(text)
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise ValueError(f"spec file {text!r} does not exist")
        content = path.read_text()
        try:
            return ArchSpec.from_toml(content) if path.suffix.lower() == ".toml" else ArchSpec.from_json(content)
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from None
    if text.lower() in preset_names():
        return get_preset(text.lower())
    return get_preset(text)  # raises with close matches
