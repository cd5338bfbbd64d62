"""Rank statistics with their uncertainty: how well a signal orders architectures like training does.

Everything is paired: a bootstrap resample draws architectures with replacement and recomputes
every statistic on the same draw, so the difference between two signals is judged on the same
architectures. Intervals are percentile 95% intervals over ``n_boot`` resamples with a fixed seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _rank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ (average ranks for ties); NaN if either side is constant."""
    rx, ry = _rank(x), _rank(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman's ρ of x and y with z partialled out (Pearson partial correlation of the ranks)."""
    rxy, rxz, ryz = spearman(x, y), spearman(x, z), spearman(y, z)
    if any(math.isnan(v) for v in (rxy, rxz, ryz)) or abs(rxz) >= 1 or abs(ryz) >= 1:
        return math.nan
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))


def top_precision(x: np.ndarray, y: np.ndarray, fraction: float = 0.25) -> float:
    """Share of the signal's top ``fraction`` that is also in training's top ``fraction``."""
    k = max(1, int(round(fraction * len(x))))
    return len(set(np.argsort(-x, kind="stable")[:k]) & set(np.argsort(-y, kind="stable")[:k])) / k


def regret(x: np.ndarray, y: np.ndarray) -> float:
    """Best trained accuracy in the sample minus that of the signal's top pick (0 is perfect)."""
    return float(y.max() - y[int(np.argmax(x))])


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def contains(self, v: float) -> bool:
        return self.low <= v <= self.high

    def fmt(self, digits: int = 2) -> str:
        if math.isnan(self.value):
            return "-"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(columns: dict[str, np.ndarray], target: np.ndarray, statistic, *, n_boot: int = 2000,
              seed: int = 0) -> tuple[dict[str, Interval], np.ndarray]:
    """``statistic(column, target)`` per column with paired-bootstrap 95% intervals.

    Returns the intervals and the (n_boot, n_columns) matrix of resampled values, so paired
    comparisons between columns can be made on the same draws.
    """
    names = list(columns)
    n = len(target)
    rng = np.random.default_rng(seed)
    draws = np.full((n_boot, len(names)), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        for j, name in enumerate(names):
            draws[b, j] = statistic(columns[name][idx], target[idx])
    out = {}
    for j, name in enumerate(names):
        finite = draws[:, j][np.isfinite(draws[:, j])]
        point = statistic(columns[name], target)
        low, high = (np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan))
        out[name] = Interval(point, float(low), float(high))
    return out, draws


def probability_better(draws: np.ndarray, j: int, k: int) -> float:
    """Paired-bootstrap probability that column j's statistic exceeds column k's."""
    a, b = draws[:, j], draws[:, k]
    ok = np.isfinite(a) & np.isfinite(b)
    return float((a[ok] > b[ok]).mean()) if ok.any() else math.nan
