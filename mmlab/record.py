"""The one record of a measured candidate, read and written by every kind of run and every report.

A :class:`Record` is what mmlab knows about one architecture: its spec, exact counts, a timing
with its statistics and environment, accuracy signals with their provenance, and the budget
verdict. :func:`mmlab.study.evaluate` produces it; searches store ``to_row()`` as trial
attributes, grids and proxy-checks as JSON lines, and reports read rows back with
:meth:`Record.from_row`. Metric names carry their units (``latency_ms``, ``macs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from mmlab.spec.arch import ArchSpec

COUNT_FIELDS = ("params", "params_trainable", "macs", "macs_paper")
"""Exact counts: parameters (all, and trainable) and MACs (complete, and the paper's convention)."""


@dataclass
class Record:
    """One measured candidate.

    Attributes:
        spec: the architecture.
        preset: the preset name when the spec is one, else "".
        counts: :data:`COUNT_FIELDS`.
        timing: ``latency_ms`` (median), ``latency_p10_ms``, ``latency_p90_ms``, ``latency_runs``,
            ``throughput_ips`` and the ``env_*`` environment; empty when not timed.
        signals: signal name → value (higher predicts more accurate).
        signal: the primary signal's name (the search objective), or "".
        provenance: what the signals depend on besides the spec (data, seed, resolution, epochs...).
        constraints: budget name → violation (feasible when every violation <= 0).
        seconds: wall seconds spent measuring (``measure_s``) and scoring (``score_s``).
    """

    spec: ArchSpec
    preset: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, float] = field(default_factory=dict)
    signal: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())

    @property
    def primary(self) -> float | None:
        """The primary signal's value, None if it was not computed (e.g. over budget)."""
        return self.signals.get(self.signal)

    def to_row(self) -> dict[str, Any]:
        """One flat dict: spec fields (``spec_key``, ``spec_json`` ...), counts, timing, ``signal_<name>``
        per signal (and ``signal`` for the primary one), provenance as ``signal_data`` ..., budget
        violations as ``constraint_<name>``, ``feasible``, ``measure_s`` / ``score_s``."""
        row: dict[str, Any] = {**self.spec.to_row(), "preset": self.preset, **self.counts, **self.timing}
        row.update({f"signal_{name}": value for name, value in self.signals.items()})
        if self.signal:
            row["signal_name"] = self.signal
            row["signal"] = self.signals.get(self.signal, math.nan)
        row.update({f"signal_{k}": v for k, v in self.provenance.items()})
        row.update({f"constraint_{k}": v for k, v in self.constraints.items()})
        row["feasible"] = self.feasible
        row.update(self.seconds)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Record":
        """Inverse of :meth:`to_row` (unknown keys are ignored)."""
        spec = ArchSpec.from_json(row["spec_json"])
        spec_columns = set(spec.to_row())
        signal = str(row.get("signal_name") or "")
        provenance_keys = ("data", "seed", "resolution", "epochs", "device", "stem_stride", "batch_size")
        signals = {k[len("signal_"):]: float(v) for k, v in row.items()
                   if k.startswith("signal_") and k != "signal_name" and k[len("signal_"):] not in provenance_keys
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        timing = {k: v for k, v in row.items() if k.startswith(("latency", "throughput", "env_", "cuda_graph", "timing_"))}
        return cls(
            spec=spec,
            preset=str(row.get("preset") or ""),
            counts={k: int(row[k]) for k in COUNT_FIELDS if k in row and row[k] is not None},
            timing=timing,
            signals=signals,
            signal=signal,
            provenance={k: row[f"signal_{k}"] for k in provenance_keys if f"signal_{k}" in row},
            constraints={k[len("constraint_"):]: float(v) for k, v in row.items() if k.startswith("constraint_")},
            seconds={k: float(row[k]) for k in ("measure_s", "score_s") if k in row and row[k] is not None},
        )
