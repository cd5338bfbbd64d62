"""``ensemble``: a rank aggregation of zero-cost proxies against a fixed reference sample of the space.

Each proxy's value is turned into its quantile among the same proxy's values on a fixed, seeded
reference sample of the search space (mid-rank, so a quantile is never 0 or 1), and the signal is
Σ log(quantile) over the proxies (the AZ-NAS aggregation, with a fixed sample instead of the
trials seen so far, so every architecture gets one fixed scalar that Optuna can use). It is
invariant to the order of the proxies and non-decreasing in each. The reference values are
computed once per (space, data, seed, code) and cached.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from mmlab.meter.cache import MeasurementCache, cache_key, code_digest
from mmlab.spec.arch import ArchSpec
from mmlab.spec.space import SearchSpace, read_space_text

ENSEMBLE_PROXIES: tuple[str, ...] = ("naswot", "snip", "zico", "meco")
"""The proxies the ensemble aggregates (every data-driven proxy in the registry)."""
REFERENCE_SIZE = 16
REFERENCE_SEED = 20250611


def quantile(value: float, reference: Sequence[float]) -> float:
    """Mid-rank quantile of ``value`` among ``reference``, in (0, 1): (below + ties / 2 + 1/2) / (n + 1)."""
    below = sum(1 for r in reference if r < value)
    ties = sum(1 for r in reference if r == value)
    return (below + 0.5 * ties + 0.5) / (len(reference) + 1)


def aggregate(values: Mapping[str, float], reference: Mapping[str, Sequence[float]]) -> float:
    """Σ over proxies of log(quantile of the value among that proxy's reference values)."""
    return math.fsum(math.log(quantile(values[name], reference[name])) for name in sorted(values))


def reference_values(space: str, key_parts: dict, compute: Callable[[ArchSpec, str], float],
                     cache: MeasurementCache | None = None) -> dict[str, list[float]]:
    """Each ensemble proxy on the space's fixed reference sample, from the cache when present."""
    name, text = read_space_text(space)
    key = cache_key({"kind": "ensemble_reference", "space": text, "proxies": ENSEMBLE_PROXIES,
                     "n": REFERENCE_SIZE, "sample_seed": REFERENCE_SEED, **key_parts,
                     "code": code_digest("spec", "model", "meter", "signals")})
    cache = cache if cache is not None else MeasurementCache()
    hit = cache.get(key)
    if isinstance(hit, dict) and all(isinstance(hit.get(p), list) and len(hit[p]) == REFERENCE_SIZE for p in ENSEMBLE_PROXIES):
        return {p: [float(v) for v in hit[p]] for p in ENSEMBLE_PROXIES}
    specs = SearchSpace.from_text(text, name).sample(REFERENCE_SIZE, seed=REFERENCE_SEED)
    values = {p: [compute(spec, p) for spec in specs] for p in ENSEMBLE_PROXIES}
    cache.put(key, values)
    return values
