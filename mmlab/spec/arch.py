"""The architecture spec: one frozen, validated description of a MobileMamba-family network.

Every number that the builder, the counters, the search and the tables need is either a field of
:class:`ArchSpec` / :class:`StageSpec` or a property computed here, so they can never disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

SCAN_MODES: tuple[str, ...] = ("forward", "bidi", "cross")
"""Scan directions of the 2-D SSM: ``forward`` = row-major sequence only (1 direction);
``bidi`` = row-major forward and reversed (2, the reference); ``cross`` = rows and columns,
each both ways (4)."""

STEM_STRIDES: tuple[int, ...] = (4, 8, 16)
MIN_STAGES, MAX_STAGES = 2, 4
MAX_WAVELET_LEVELS = 3
MAX_KERNEL = 15
MIN_WIDTH = 8


def _nearest_multiple_of_16(value: int) -> int:
    """Round to the nearest multiple of 16, a remainder of exactly 8 going up (the reference's rule)."""
    return (value // 16) * 16 + (16 if value % 16 >= 8 else 0)


def _discrete_wavelets() -> frozenset[str]:
    import pywt  # inline: only a spec with a non-default wavelet pays for importing PyWavelets

    return frozenset(pywt.wavelist(kind="discrete"))


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field_name}: {value!r} is not allowed; {allowed}")


def reject_unknown(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` for the first key of a TOML/JSON table that is not in ``allowed``."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if value < lo or (hi is not None and value > hi):
        _fail(name, value, f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "must be a number")
    return float(value)


@dataclass(frozen=True)
class StageSpec:
    """One stage: a downsample from the previous stage (if any), then ``depth`` blocks.

    Attributes:
        width: channels of the stage (``e`` in the paper's notation).
        depth: number of MobileMamba blocks.
        kernel: odd kernel size of the local depthwise conv and of the wavelet sub-band convs.
        global_ratio: share of channels for the global (wavelet + SSM) branch, before rounding.
        local_ratio: share of channels for the local (depthwise conv) branch, before clamping.
        wavelet_levels: wavelet decomposition levels of the global branch (0 = SSM only).
    """

    width: int
    depth: int
    kernel: int = 3
    global_ratio: float = 0.8
    local_ratio: float = 0.2
    wavelet_levels: int = 1

    def __post_init__(self) -> None:
        # Ratios are stored as floats so that 1 and 1.0 give the same spec (and the same key).
        for name in ("global_ratio", "local_ratio"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))

    def validate(self, where: str = "stage") -> None:
        """Raise ``ValueError`` naming the field, the value and what is allowed."""
        _check_int(f"{where}.width", self.width, MIN_WIDTH, 4096)
        _check_int(f"{where}.depth", self.depth, 1, 64)
        _check_int(f"{where}.kernel", self.kernel, 1, MAX_KERNEL)
        if self.kernel % 2 == 0:
            _fail(f"{where}.kernel", self.kernel, f"must be odd (1, 3, ..., {MAX_KERNEL})")
        for name in ("global_ratio", "local_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                _fail(f"{where}.{name}", value, "must be between 0 and 1")
        _check_int(f"{where}.wavelet_levels", self.wavelet_levels, 0, MAX_WAVELET_LEVELS)

    # ---- derived channel split, exactly as the reference computes it -------------------------
    @property
    def global_channels(self) -> int:
        """``int(global_ratio * width)`` rounded to the nearest multiple of 16 (ties up).

        Where that rounding would exceed the width (the reference would fail to build), the
        largest multiple of 16 that fits is used instead; it never happens for the presets.
        """
        g = _nearest_multiple_of_16(int(self.global_ratio * self.width))
        return g if g <= self.width else (self.width // 16) * 16

    @property
    def local_channels(self) -> int:
        """``int(local_ratio * width)``, clamped so that global + local <= width."""
        g, l = self.global_channels, int(self.local_ratio * self.width)
        return self.width - g if g + l > self.width else l

    @property
    def identity_channels(self) -> int:
        """Channels passed through the mixer untouched."""
        return self.width - self.global_channels - self.local_channels

    @property
    def dt_rank(self) -> int:
        """Rank of the SSM's Δ projection: ``ceil(global_channels / 16)``."""
        return math.ceil(self.global_channels / 16)


@dataclass(frozen=True)
class ArchSpec:
    """A complete MobileMamba-family network.

    The reference layout is three stages after a stride-16 stem, each later stage halving the
    resolution; ``len(stages)`` may be 2 to 4 and the stem stride 4, 8 or 16.

    Attributes:
        stages: per-stage settings, first stage first.
        resolution: input image side in pixels (square inputs).
        in_chans: input image channels.
        num_classes: classifier outputs (0 = no classifier, features only).
        ssm_ratio: SSM expansion ``d_inner / global_channels``.
        d_state: SSM state size N.
        scan: scan directions, one of :data:`SCAN_MODES`.
        wavelet: any discrete PyWavelets wavelet; ``db1`` (Haar) is the reference.
        ffn_ratio: hidden / input channels of every FFN (blocks and downsamples).
        drop_path: stochastic-depth rate of the last block (linear from 0 over all blocks).
        stem_stride: total stride of the stem (log2 of it stride-2 convs).
    """

    stages: tuple[StageSpec, ...]
    resolution: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    ssm_ratio: float = 2.0
    d_state: int = 1
    scan: str = "bidi"
    wavelet: str = "db1"
    ffn_ratio: float = 2.0
    drop_path: float = 0.0
    stem_stride: int = 16

    def __post_init__(self) -> None:
        stages = self.stages
        if not isinstance(stages, (tuple, list)) or not all(isinstance(s, StageSpec) for s in stages):
            _fail("stages", stages, "must be a sequence of StageSpec")
        object.__setattr__(self, "stages", tuple(stages))
        for name in ("ssm_ratio", "ffn_ratio", "drop_path"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, the value and what is allowed."""
        if not MIN_STAGES <= len(self.stages) <= MAX_STAGES:
            _fail("stages", f"{len(self.stages)} stages", f"must have {MIN_STAGES} to {MAX_STAGES} stages")
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        _check_int("resolution", self.resolution, 32, 2048)
        _check_int("in_chans", self.in_chans, 1, 64)
        _check_int("num_classes", self.num_classes, 0, 100_000)
        if not 0.0 < self.ssm_ratio <= 8.0:
            _fail("ssm_ratio", self.ssm_ratio, "must be > 0 and <= 8")
        for i, stage in enumerate(self.stages):
            if stage.global_channels and self.d_inner(i) < 1:
                _fail("ssm_ratio", self.ssm_ratio, f"gives d_inner = 0 in stage {i}; use a larger ratio")
        _check_int("d_state", self.d_state, 1, 64)
        if self.scan not in SCAN_MODES:
            _fail("scan", self.scan, f"allowed: {', '.join(SCAN_MODES)}")
        if self.wavelet not in _discrete_wavelets():
            _fail("wavelet", self.wavelet, "must be a discrete PyWavelets wavelet, e.g. db1 (Haar), db2, sym4")
        if not 0.0 < self.ffn_ratio <= 8.0 or any(int(self.ffn_ratio * s.width) < 1 for s in self.stages):
            _fail("ffn_ratio", self.ffn_ratio, "must be > 0 and <= 8 and give at least one hidden channel")
        if not 0.0 <= self.drop_path < 1.0:
            _fail("drop_path", self.drop_path, "must be >= 0 and < 1")
        if self.stem_stride not in STEM_STRIDES:
            _fail("stem_stride", self.stem_stride, f"allowed: {', '.join(map(str, STEM_STRIDES))}")

    # ---- derived numbers ------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def directions(self) -> int:
        """Number of scan directions K (``forward`` 1, ``bidi`` 2, ``cross`` 4)."""
        return {"forward": 1, "bidi": 2, "cross": 4}[self.scan]

    def d_inner(self, stage: int) -> int:
        """SSM inner width of a stage: ``int(ssm_ratio * global_channels)``."""
        return int(self.ssm_ratio * self.stages[stage].global_channels)

    def ffn_hidden(self, width: int) -> int:
        """Hidden channels of an FFN on ``width`` channels."""
        return int(self.ffn_ratio * width)

    @property
    def stem_channels(self) -> tuple[int, ...]:
        """Output channels of the stem's stride-2 convs: ``..., d0//4, d0//2, d0``."""
        n, d0 = int(math.log2(self.stem_stride)), self.stages[0].width
        return tuple(d0 // 2 ** (n - 1 - i) for i in range(n))

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """Feature-map side of each stage (every stride-2 conv gives ``ceil(side / 2)``)."""
        side = self.resolution
        for _ in self.stem_channels:
            side = math.ceil(side / 2)
        sides = [side]
        for _ in self.stages[1:]:
            sides.append(math.ceil(sides[-1] / 2))
        return tuple(sides)

    @property
    def block_drop_path(self) -> tuple[tuple[float, ...], ...]:
        """Per-block stochastic-depth rate, per stage: ``linspace(0, drop_path, total depth)``."""
        total = sum(self.depths)
        rates = [self.drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        out, start = [], 0
        for depth in self.depths:
            out.append(tuple(rates[start : start + depth]))
            start += depth
        return tuple(out)

    def splits(self) -> list[dict[str, int]]:
        """Per-stage channel split and sizes, as plain rows (for tables and ``--json``)."""
        rows = []
        for i, (stage, side) in enumerate(zip(self.stages, self.stage_resolutions)):
            rows.append(
                {
                    "stage": i + 1,
                    "width": stage.width,
                    "depth": stage.depth,
                    "kernel": stage.kernel,
                    "resolution": side,
                    "global_ch": stage.global_channels,
                    "local_ch": stage.local_channels,
                    "identity_ch": stage.identity_channels,
                    "d_inner": self.d_inner(i),
                    "dt_rank": stage.dt_rank,
                    "wavelet_levels": stage.wavelet_levels,
                }
            )
        return rows

    def to_row(self) -> dict[str, Any]:
        """Flat, table-friendly fields: scalars as they are, per-stage values comma-joined."""
        row: dict[str, Any] = {"spec_key": self.key}
        row.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "stages"})
        row["num_stages"] = self.num_stages
        for f in fields(StageSpec):
            column = f.name if f.name.endswith("s") else f"{f.name}s"
            row[column] = ",".join(str(getattr(s, f.name)) for s in self.stages)
        row["spec_json"] = self.to_json()
        return row

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (stages as a list of dicts); inverse of :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        out["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchSpec":
        """Build from a dict as written by :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            _fail("spec", data, "must be a table / object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            _fail("spec", unknown[0], f"unknown key; allowed: {', '.join(sorted(known))}")
        if "stages" not in data:
            raise ValueError("stages: missing; a spec needs a list of stages")
        if isinstance(data["stages"], (str, bytes)) or not isinstance(data["stages"], (list, tuple)):
            _fail("stages", data["stages"], "must be a list of stage tables")
        stage_keys = {f.name for f in fields(StageSpec)}
        stages = []
        for i, raw in enumerate(data["stages"]):
            if not isinstance(raw, Mapping):
                _fail(f"stages[{i}]", raw, "must be a table / object")
            bad = sorted(set(raw) - stage_keys)
            if bad:
                _fail(f"stages[{i}]", bad[0], f"unknown key; allowed: {', '.join(sorted(stage_keys))}")
            missing = sorted({"width", "depth"} - set(raw))
            if missing:
                raise ValueError(f"stages[{i}].{missing[0]}: missing; every stage needs width and depth")
            stages.append(StageSpec(**raw))
        return cls(**{**data, "stages": tuple(stages)})

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        return cls.from_dict(json.loads(text))

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> "ArchSpec":
        import tomllib

        data = tomllib.loads(text)
        # A file exported by `mmlab export` nests the spec under [arch] next to provenance.
        return cls.from_dict(data.get("arch", data))

    @property
    def key(self) -> str:
        """Stable short identifier: first 12 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "ArchSpec":
        """A copy with network-level fields changed (validated)."""
        return replace(self, **changes)

    def replace_stage(self, index: int, **changes: Any) -> "ArchSpec":
        """A copy with one stage's fields changed (validated)."""
        stages = list(self.stages)
        stages[index] = replace(stages[index], **changes)
        return replace(self, stages=tuple(stages))
