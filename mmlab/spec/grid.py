"""Ablation grids read from TOML: factors of named ablations or spec fields, expanded into variants.

Grid files
==========
A grid is a TOML file; unknown keys are rejected, at the top level and in each factor::

    name = "paper_ablations"     # optional; default: the file's stem
    base = "s6"                  # a preset name or a .toml / .json spec file (relative to this file)
    mode = "one-at-a-time"       # or "factorial"; default one-at-a-time
    measure = ["params", "macs", "macs_paper", "latency", "signal"]   # any of MEASURES; default params, macs
    signal = "synflow"           # a signal name (mmlab.signals.SIGNALS), only with "signal" in measure;
                                 # default: the project's default signal (mmlab.signals.registry.DEFAULT_SIGNAL)
    data = "synthetic"           # data source for the signal; default synthetic
    seeds = [0, 1]               # one signal run per seed; default [0, 1] for trained accuracy, else [0]

    [[factor]]                   # one per axis, applied in file order
    name = "wavelet"             # the factor's column name (a Python identifier, unique)
    ablation = "wavelet_levels"  # a value-taking ablation, applied with each of the values...
    values = [0, 1, 2]

    [[factor]]
    name = "branch"              # ...or a list of value-less ablations, one per level
    ablation = ["no_global", "no_local", "no_identity"]

    [[factor]]
    name = "first_kernel"        # ...or a spec field, "d_state"-style or "stages[0].kernel"-style
    field = "stages[0].kernel"   # (negative stage indices count from the last stage)
    values = [3, 5]

A factor has ``name`` and exactly one of ``ablation`` / ``field``; ``values`` is required with a
value-taking ablation or a field, and not allowed with value-less ablations. Arrays inside
``values`` are levels too (``values = [[3, 3, 3], [5, 5, 5]]`` for ``kernels``). The level
``"base"``, in ``values`` or in an ablation list, means "leave the spec as it is", which lets a
factorial grid keep the untouched setting as one of its levels.

:func:`expand` turns a grid into :class:`Variant`\\ s. ``one-at-a-time``: the base, then each level
of each factor alone (other factors at ``"base"``). ``factorial``: the cartesian product of all
levels, the edits applied in factor order (so ``stages`` before ``kernels`` needs one kernel per
new stage). Labels name the levels that are not ``"base"`` (``wavelet=0``,
``wavelet=0 scan=cross``; sequences comma-joined, ``kernels=3,3,3``), or are ``base``. Variants with
the same spec key are merged: the first label is kept, the others become its ``aliases``.
Combinations whose edits raise ``ValueError`` are collected before anything is returned: by
default one ``ValueError`` lists them all with the reason for each; ``on_invalid="skip"`` leaves
them out and returns them as :attr:`Expansion.skipped`.

This layer is pure: a grid that measures a signal without naming it, or without seeds, keeps
``signal`` / ``seeds`` as None, and the runner (:func:`mmlab.study.grid.resolve_grid`) fills in
the defaults, which depend on the signal registry.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from mmlab.spec.ablations import apply_ablation, get_ablation
from mmlab.spec.arch import ArchSpec, StageSpec, reject_unknown
from mmlab.spec.presets import load_spec

__all__ = ["BASE", "MEASURES", "MODES", "Expansion", "Factor", "Grid", "InvalidCombination", "Variant", "expand", "load_grid"]

MODES: tuple[str, ...] = ("one-at-a-time", "factorial")
MEASURES: tuple[str, ...] = ("params", "macs", "macs_paper", "latency", "throughput", "signal")
BASE = "base"
"""The level that leaves the spec untouched (and the label of the untouched spec)."""


# ---- grids -------------------------------------------------------------------------------------
_GRID_KEYS = ("name", "base", "mode", "measure", "signal", "data", "seeds", "factor")
_FACTOR_KEYS = ("name", "ablation", "field", "values")
_NETWORK_FIELDS = tuple(f.name for f in fields(ArchSpec) if f.name != "stages")
_STAGE_FIELDS = tuple(f.name for f in fields(StageSpec))
_STAGE_FIELD = re.compile(r"stages\[(-?\d+)\]\.(\w+)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _freeze(where: str, value: Any) -> Any:
    """TOML arrays become tuples, so that levels are hashable and print as ``3,3,3``."""
    if isinstance(value, dict):
        raise ValueError(f"{where}: {value!r} is not allowed; a level is a value or an array, not a table")
    return tuple(_freeze(where, v) for v in value) if isinstance(value, list) else value


def _levels(where: str, values: Any) -> tuple[Any, ...]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {values!r} is not allowed; must be a non-empty array")
    levels = tuple(_freeze(where, v) for v in values)
    for i, level in enumerate(levels):
        if level in levels[:i]:
            raise ValueError(f"{where}: {level!r} is listed twice")
    return levels


def _check_field(where: str, path: Any) -> None:
    match = _STAGE_FIELD.fullmatch(path) if isinstance(path, str) else None
    name, allowed = (match[2], _STAGE_FIELDS) if match else (path, _NETWORK_FIELDS)
    if name not in allowed:
        raise ValueError(
            f"{where}: {path!r} is not allowed; allowed: {', '.join(_NETWORK_FIELDS)}, "
            f"or stages[i].<{'|'.join(_STAGE_FIELDS)}>"
        )


def _set_field(spec: ArchSpec, path: str, value: Any) -> ArchSpec:
    match = _STAGE_FIELD.fullmatch(path)
    if match is None:
        return spec.replace(**{path: value})
    index = int(match[1])
    if not -spec.num_stages <= index < spec.num_stages:
        raise ValueError(f"{path}: stage index {index} is not allowed; the spec has {spec.num_stages} stages")
    return spec.replace_stage(index, **{match[2]: value})


def _takes_value(where: str, name: Any) -> bool:
    if name == BASE:
        return False
    try:
        return get_ablation(name).takes_value
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _format(level: Any) -> str:
    return ",".join(map(str, level)) if isinstance(level, tuple) else str(level)


@dataclass(frozen=True)
class Factor:
    """One axis of a grid.

    Attributes:
        name: the factor's column name in tables.
        levels: the levels in file order: values for ``ablation`` or ``field``, otherwise the
            names of value-less ablations; :data:`BASE` leaves the spec untouched.
        ablation: the value-taking ablation applied with each level, if any.
        field: the spec field set to each level (``"d_state"``, ``"stages[0].kernel"``), if any.
    """

    name: str
    levels: tuple[Any, ...]
    ablation: str | None = None
    field: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "factor") -> "Factor":
        """Parse one ``[[factor]]`` table; ``where`` prefixes error messages."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {data!r} is not allowed; must be a table")
        reject_unknown(where, data, _FACTOR_KEYS)
        name = data.get("name")
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"{where}.name: {name!r} is not allowed; must be an identifier (letters, digits, _)")
        if ("ablation" in data) == ("field" in data):
            raise ValueError(f"{where}: give exactly one of ablation or field")
        values = data.get("values")
        if "field" in data:
            _check_field(f"{where}.field", data["field"])
            return cls(name, _levels(f"{where}.values", values), field=data["field"])
        ablation = data["ablation"]
        if isinstance(ablation, str) and _takes_value(f"{where}.ablation", ablation):
            if values is None:
                raise ValueError(f"{where}.values: missing; ablation {ablation!r} takes a value per level")
            return cls(name, _levels(f"{where}.values", values), ablation=ablation)
        names = _levels(f"{where}.ablation", [ablation] if isinstance(ablation, str) else ablation)
        for level in names:
            if _takes_value(f"{where}.ablation", level):
                raise ValueError(
                    f"{where}.ablation: {level!r} is not allowed in a list; it takes a value: "
                    f"use ablation = {level!r} with values = [...]"
                )
        if values is not None:
            raise ValueError(f"{where}.values: not allowed with value-less ablations; each listed ablation is a level")
        return cls(name, names)

    def apply(self, spec: ArchSpec, level: Any) -> ArchSpec:
        """The spec with this factor set to ``level`` (:data:`BASE`: unchanged)."""
        if level == BASE:
            return spec
        if self.ablation is not None:
            return apply_ablation(spec, self.ablation, level)
        if self.field is not None:
            return _set_field(spec, self.field, level)
        return apply_ablation(spec, level)


@dataclass(frozen=True)
class Grid:
    """An ablation grid: a base spec, its factors, and what to measure on every variant.

    Attributes:
        name: the grid's name (default: the file's stem).
        base: the spec every variant starts from.
        base_source: ``base`` as written in the file (a preset name or a spec file).
        mode: one of :data:`MODES`.
        factors: the axes, in file order (the order edits are applied in).
        measure: what to measure, a subset of :data:`MEASURES`.
        signal: the accuracy signal (a name in :data:`mmlab.signals.SIGNALS`, checked when the grid
            runs) when ``measure`` lists ``signal``; None: not measured, or the default signal.
        data: the data source for the signal.
        seeds: seeds of the signal, one run each; None when ``measure`` lists ``signal`` and the
            file gives none (the runner picks the signal's default).
    """

    name: str
    base: ArchSpec
    base_source: str
    mode: str
    factors: tuple[Factor, ...]
    measure: tuple[str, ...] = ("params", "macs")
    signal: str | None = None
    data: str = "synthetic"
    seeds: tuple[int, ...] | None = (0,)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "grid", root: str | Path = ".") -> "Grid":
        """Parse a grid table (a loaded TOML file).

        Args:
            data: the table.
            name: the grid's name when the table has none.
            root: the folder a relative spec-file ``base`` is resolved against.

        Raises:
            ValueError: naming the key, the value and what is allowed.
        """
        reject_unknown("grid", data, _GRID_KEYS)
        name = data.get("name", name)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: {name!r} is not allowed; must be a non-empty string")
        source = data.get("base")
        if not isinstance(source, str) or not source:
            raise ValueError(f"base: {source!r} is not allowed; give a preset name or a .toml / .json spec file")
        try:
            is_file = Path(source).suffix.lower() in (".toml", ".json")
            base = load_spec(Path(root) / source if is_file else source)
        except ValueError as err:
            raise ValueError(f"base: {err}") from None
        mode = data.get("mode", MODES[0])
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
        measure = _levels("measure", data.get("measure", list(cls.measure)))
        for item in measure:
            if item not in MEASURES:
                raise ValueError(f"measure: {item!r} is not allowed; allowed: {', '.join(MEASURES)}")
        signal = data.get("signal")
        if signal is not None and (not isinstance(signal, str) or not signal):
            raise ValueError(f"signal: {signal!r} is not allowed; give a signal name (see `mmlab score --help`)")
        if signal is not None and "signal" not in measure:
            raise ValueError(f"signal: {signal!r} is not allowed here; measure does not list 'signal' "
                             "(add it, or drop the signal)")
        source_data = data.get("data", cls.data)
        if not isinstance(source_data, str) or not source_data:
            raise ValueError(f"data: {source_data!r} is not allowed; must be a non-empty string")
        seeds: tuple[int, ...] | None = None if "signal" in measure else (0,)
        if "seeds" in data:
            seeds = _levels("seeds", data["seeds"])
            for seed in seeds:
                if isinstance(seed, bool) or not isinstance(seed, int):
                    raise ValueError(f"seeds: {seed!r} is not allowed; seeds are integers")
        raw = data.get("factor")
        if not isinstance(raw, list) or not raw:
            raise ValueError("factor: missing; a grid needs at least one [[factor]] table")
        factors = tuple(Factor.from_dict(table, f"factor[{i}]") for i, table in enumerate(raw))
        names = [f.name for f in factors]
        for i, factor_name in enumerate(names):
            if factor_name in names[:i]:
                raise ValueError(f"factor[{i}].name: {factor_name!r} is used twice; factor names are column names")
        return cls(name, base, source, mode, factors, measure, signal, source_data, seeds)


def load_grid(path: str | Path) -> Grid:
    """Read a grid file; error messages start with the file's name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {str(path)!r} does not exist")
    try:
        return Grid.from_dict(tomllib.loads(path.read_text()), name=path.stem, root=path.parent)
    except ValueError as err:  # tomllib.TOMLDecodeError included
        raise ValueError(f"{path.name}: {err}") from None


@dataclass(frozen=True)
class Variant:
    """One distinct spec of a grid.

    Attributes:
        label: the levels that differ from the base (``"wavelet=0"``), or ``"base"``.
        factors: factor name → level (:data:`BASE` for untouched factors).
        spec: the edited spec.
        aliases: labels of later combinations that gave the same spec key.
        alias_factors: the levels of each alias, in the same order.
    """

    label: str
    factors: Mapping[str, Any]
    spec: ArchSpec
    aliases: tuple[str, ...] = ()
    alias_factors: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class InvalidCombination:
    """A combination of levels whose edits make no valid spec.

    Attributes:
        label: as a :class:`Variant`'s would be.
        factors: factor name → level.
        reason: the ``ValueError`` message.
    """

    label: str
    factors: Mapping[str, Any]
    reason: str


@dataclass(frozen=True)
class Expansion:
    """What :func:`expand` returns.

    Attributes:
        variants: distinct specs, in expansion order.
        skipped: invalid combinations (only with ``on_invalid="skip"``).
    """

    variants: tuple[Variant, ...]
    skipped: tuple[InvalidCombination, ...] = ()


def _combinations(grid: Grid) -> list[dict[str, Any]]:
    names = [f.name for f in grid.factors]
    if grid.mode == "factorial":
        return [dict(zip(names, levels)) for levels in itertools.product(*(f.levels for f in grid.factors))]
    untouched = dict.fromkeys(names, BASE)
    return [untouched] + [{**untouched, f.name: level} for f in grid.factors for level in f.levels]


def expand(grid: Grid, on_invalid: Literal["raise", "skip"] = "raise") -> Expansion:
    """Every combination of the grid's levels as a spec, duplicates merged, invalid ones reported.

    Nothing is built or measured: this only edits specs, so a runner can call it first and stop
    before any work when a combination is impossible.

    Args:
        grid: the grid.
        on_invalid: ``"raise"``: one ``ValueError`` listing every invalid combination and why;
            ``"skip"``: leave them out and return them in :attr:`Expansion.skipped`.

    Returns:
        The distinct variants (first label kept, later ones as aliases) and the skipped combinations.
    """
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid: {on_invalid!r} is not allowed; allowed: raise, skip")
    combinations = _combinations(grid)
    by_key: dict[str, tuple[str, dict[str, Any], ArchSpec, list[tuple[str, dict[str, Any]]]]] = {}
    invalid: list[InvalidCombination] = []
    for levels in combinations:
        label = " ".join(f"{name}={_format(level)}" for name, level in levels.items() if level != BASE) or BASE
        spec = grid.base
        try:
            for factor in grid.factors:
                spec = factor.apply(spec, levels[factor.name])
        except ValueError as err:
            invalid.append(InvalidCombination(label, levels, str(err)))
            continue
        if spec.key in by_key:
            by_key[spec.key][3].append((label, levels))
        else:
            by_key[spec.key] = (label, levels, spec, [])
    if invalid and on_invalid == "raise":
        lines = "\n".join(f"  {c.label}: {c.reason}" for c in invalid)
        raise ValueError(
            f"{grid.name}: {len(invalid)} of {len(combinations)} combinations are invalid "
            f"(on_invalid='skip' leaves them out):\n{lines}"
        )
    variants = tuple(
        Variant(label, levels, spec, tuple(a for a, _ in aliases), tuple(f for _, f in aliases))
        for label, levels, spec, aliases in by_key.values()
    )
    return Expansion(variants, tuple(invalid))
