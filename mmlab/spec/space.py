"""Search spaces as data: studies/*.toml parsed into frozen dataclasses; ``suggest(trial) -> ArchSpec``.

A space file gives, for each network field and for each stage, either a fixed value, a list of
choices, or a range table ``{ low, high, step?, log? }`` (integers if low, high and step are all
integers). Every parameter is suggested on every trial, so the sampler always sees the same space.
Combinations that cannot exist are impossible by construction: a stage's local share is sampled
as ``local_fraction`` of what the global ratio leaves (``local_ratio = local_fraction · (1 −
global_ratio)``), and stages past ``num_stages`` are suggested but unused. Example::

    name = "tiny"
    resolution = [64, 96]
    scan = ["forward", "bidi"]
    num_stages = 3

    [[stage]]
    width = { low = 16, high = 48, step = 16 }
    depth = 1
    kernel = [3, 5]
    global_ratio = { low = 0.0, high = 0.8, step = 0.2 }
    local_fraction = { low = 0.0, high = 1.0 }
    wavelet_levels = [0, 1]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from mmlab.spec.arch import MAX_STAGES, MIN_STAGES, SCAN_MODES, ArchSpec, StageSpec, reject_unknown

if TYPE_CHECKING:  # optuna is imported where trials are made, not by commands that only read a space
    import optuna

DEFAULT_SPACE = "default"
"""The space ``mmlab search`` uses: every knob of the family around the six presets."""


def space_names() -> list[str]:
    """The spaces that ship with mmlab (package data under ``mmlab/spec/spaces/``)."""
    return sorted(f.name[:-5] for f in resources.files("mmlab.spec").joinpath("spaces").iterdir() if f.name.endswith(".toml"))


def read_space_text(source: str | Path) -> tuple[str, str]:
    """(name, TOML text) of a shipped space name (``default``, ``tiny``) or a space file path."""
    text = str(source)
    if text in space_names():
        return text, resources.files("mmlab.spec").joinpath("spaces", f"{text}.toml").read_text()
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ValueError(f"space: {text!r} is not allowed; give a shipped space ({', '.join(space_names())}) "
                         "or a .toml file")
    if not path.is_file():
        raise ValueError(f"space: file {text!r} does not exist")
    return path.stem, path.read_text()

NETWORK_KEYS = ("resolution", "in_chans", "num_classes", "ssm_ratio", "d_state", "scan", "wavelet",
                "ffn_ratio", "drop_path", "stem_stride", "num_stages")
STAGE_KEYS = ("width", "depth", "kernel", "global_ratio", "local_fraction", "wavelet_levels")
_NETWORK_DEFAULTS = {f.name: f.default for f in fields(ArchSpec) if f.name != "stages"}
_STAGE_DEFAULTS = {"kernel": 3, "global_ratio": 0.8, "local_fraction": 1.0, "wavelet_levels": 1}
_DECIMALS = 6  # suggested floats are rounded so that 0.1 steps give 0.7, not 0.7000000000000001

Scalar = Union[int, float, str]


def _cost_order(key: str, value: Scalar) -> float:
    """Sort key of a choice by the MACs it costs (see :meth:`Param.cheapest`)."""
    if key == "scan":
        return SCAN_MODES.index(str(value))
    if key == "wavelet":
        import pywt  # inline: only a space with several wavelets pays for importing PyWavelets

        return pywt.Wavelet(str(value)).dec_len
    if key == "stem_stride":
        return -float(value)
    return float(value)


@dataclass(frozen=True)
class Param:
    """One knob: fixed (``value``), categorical (``choices``) or a range (``low``..``high``)."""

    name: str
    value: Scalar | None = None
    choices: tuple[Scalar, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @classmethod
    def parse(cls, name: str, raw: Any) -> "Param":
        if isinstance(raw, list):
            if not raw:
                raise ValueError(f"{name}: [] is not allowed; give at least one choice")
            return cls(name, choices=tuple(raw)) if len(raw) > 1 else cls(name, value=raw[0])
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {"low", "high", "step", "log"})
            if unknown:
                raise ValueError(f"{name}: unknown range key {unknown[0]!r}; allowed: low, high, step, log")
            if "low" not in raw or "high" not in raw or raw["low"] > raw["high"]:
                raise ValueError(f"{name}: {raw!r} is not allowed; a range needs low <= high")
            return cls(name, low=raw["low"], high=raw["high"], step=raw.get("step"), log=bool(raw.get("log", False)))
        if isinstance(raw, (int, float, str)):
            return cls(name, value=raw)
        raise ValueError(f"{name}: {raw!r} is not allowed; use a value, a list of choices or {{low, high, step}}")

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high) + ((self.step,) if self.step is not None else ()))

    @property
    def fixed(self) -> bool:
        return self.value is not None

    def suggest(self, trial: optuna.Trial) -> Scalar:
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return round(trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log), _DECIMALS)

    def cheapest(self) -> Scalar:
        """The value that costs the fewest MACs, whatever order the file lists it in.

        Every knob costs more as it grows except ``stem_stride`` (a larger stride shrinks every
        feature map) and the string-valued ones: ``scan`` by its number of directions, ``wavelet``
        by its filter length.
        """
        if self.value is not None:
            return self.value
        key = self.name.rsplit(".", 1)[-1]
        if self.choices is not None:
            return min(self.choices, key=lambda v: _cost_order(key, v))
        if key == "stem_stride":
            return int(self.high) if self.is_int else float(self.high)
        return int(self.low) if self.is_int else float(self.low)

    def contains(self, value: Scalar) -> bool:
        if self.value is not None:
            return value == self.value
        if self.choices is not None:
            return value in self.choices
        if not self.low - 1e-9 <= value <= self.high + 1e-9:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-6


@dataclass(frozen=True)
class SearchSpace:
    """A space of :class:`ArchSpec`: network-level params and per-stage params (up to 4 stages)."""

    name: str
    network: tuple[Param, ...]
    stages: tuple[tuple[Param, ...], ...]
    description: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "space") -> "SearchSpace":
        data = dict(data)
        name = data.pop("name", name)
        description = data.pop("description", "")
        raw_stages = data.pop("stage", None)
        reject_unknown("space", data, NETWORK_KEYS + ("name", "description", "stage"))
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ValueError("stage: missing; a space needs [[stage]] tables, one per stage")
        network = tuple(Param.parse(key, data.get(key, _NETWORK_DEFAULTS.get(key, len(raw_stages)))) for key in NETWORK_KEYS)
        stages = []
        for i, raw in enumerate(raw_stages):
            reject_unknown(f"stage[{i}]", raw, STAGE_KEYS)
            for required in ("width", "depth"):
                if required not in raw:
                    raise ValueError(f"stage[{i}].{required}: missing; every stage needs width and depth")
            stages.append(tuple(Param.parse(f"stage{i + 1}.{key}", raw.get(key, _STAGE_DEFAULTS.get(key))) for key in STAGE_KEYS))
        space = cls(name, network, tuple(stages), description)
        space._check()
        return space

    @classmethod
    def load(cls, source: str | Path | None = None) -> "SearchSpace":
        """Read a shipped space by name (default: ``default``) or a space file."""
        name, text = read_space_text(source if source is not None else DEFAULT_SPACE)
        return cls.from_text(text, name)

    @classmethod
    def from_text(cls, text: str, name: str) -> "SearchSpace":
        """Parse TOML text (as stored with a study, so a report never needs the original file)."""
        try:
            return cls.from_dict(tomllib.loads(text), name=name)
        except (ValueError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"space {name!r}: {err}") from None

    def param(self, key: str) -> Param:
        return self.network[NETWORK_KEYS.index(key)]

    def _check(self) -> None:
        counts = self.param("num_stages")
        for n in counts.choices or (counts.value,):
            if not (isinstance(n, int) and MIN_STAGES <= n <= MAX_STAGES and n <= len(self.stages)):
                raise ValueError(f"num_stages: {n!r} is not allowed; between {MIN_STAGES} and "
                                 f"{min(MAX_STAGES, len(self.stages))} ([[stage]] tables given: {len(self.stages)})")
        self.build(self.smallest_params())  # the cheapest corner must be a valid spec

    def build(self, values: dict[str, Scalar]) -> ArchSpec:
        """Turn a full assignment (param name → value) into a spec."""
        get = lambda p: values[p.name] if p.name in values else p.cheapest()  # noqa: E731
        net = {p.name: get(p) for p in self.network}
        n = int(net.pop("num_stages"))
        stages = []
        for params in self.stages[:n]:
            s = {p.name.split(".", 1)[1]: get(p) for p in params}
            g = float(s["global_ratio"])
            local = round(float(s.pop("local_fraction")) * (1.0 - g), _DECIMALS)
            stages.append(StageSpec(**{**s, "global_ratio": g, "local_ratio": local}))
        return ArchSpec(stages=tuple(stages), **net)

    def suggest(self, trial: optuna.Trial) -> ArchSpec:
        """Suggest every parameter (all stages, used or not) and build the spec."""
        values = {p.name: p.suggest(trial) for p in self.network}
        for params in self.stages:
            values.update({p.name: p.suggest(trial) for p in params})
        return self.build(values)

    def smallest_params(self) -> dict[str, Scalar]:
        """Every knob at its cheapest value (:meth:`Param.cheapest`; local_fraction 0: identity, not conv)."""
        return {p.name: p.cheapest() for p in self.all_params()}

    def smallest(self) -> ArchSpec:
        return self.build(self.smallest_params())

    def all_params(self) -> list[Param]:
        return list(self.network) + [p for params in self.stages for p in params]

    def params_for(self, spec: ArchSpec) -> dict[str, Scalar] | None:
        """The assignment that builds ``spec``, or None if the space does not contain it."""
        values: dict[str, Scalar] = {p: getattr(spec, p) for p in NETWORK_KEYS if p != "num_stages"}
        values["num_stages"] = spec.num_stages
        for i, params in enumerate(self.stages):
            stage = spec.stages[i] if i < spec.num_stages else spec.stages[-1]
            room = 1.0 - stage.global_ratio
            fraction = min(1.0, stage.local_ratio / room) if room > 0 else 1.0
            for p in params:
                key = p.name.split(".", 1)[1]
                values[p.name] = round(fraction, _DECIMALS) if key == "local_fraction" else getattr(stage, key)
        assignment = {}
        for p in self.all_params():
            v = values[p.name]
            if not p.contains(v):
                if p.name.startswith("stage") and int(p.name[5]) > spec.num_stages:
                    v = p.cheapest()  # unused stage: any value
                else:
                    return None
            if not p.fixed:
                assignment[p.name] = v
        return assignment if self.build(assignment).key == spec.key else None

    def describe(self) -> list[str]:
        """One line per parameter: name and its range / choices / value."""
        out = []
        for p in self.all_params():
            if p.value is not None:
                what = f"= {p.value}"
            elif p.choices is not None:
                what = "in {" + ", ".join(map(str, p.choices)) + "}"
            else:
                what = f"in [{p.low}, {p.high}]" + (f" step {p.step}" if p.step else "") + (" log" if p.log else "")
            out.append(f"{p.name} {what}")
        return out

    def sample(self, n: int, seed: int = 0) -> list[ArchSpec]:
        """``n`` architectures drawn uniformly at random (seeded), duplicates removed."""
        import optuna  # inline: see the TYPE_CHECKING import above

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        specs: dict[str, ArchSpec] = {}
        for _ in range(50 * n):
            if len(specs) == n:
                break
            spec = self.suggest(study.ask())
            specs.setdefault(spec.key, spec)
        return list(specs.values())
