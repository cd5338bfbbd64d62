"""``evaluate(spec, plan)``: the one function that turns an architecture into a :class:`~mmlab.record.Record`.

Counts first (exact, cached); over the MAC budget the candidate stops there. Then the timing of
the fused network (cached; serialised across processes by :func:`timing_lock`); over the latency
budget it stops there. Then the accuracy signals (cached under the spec, the signal, its
provenance and a digest of the signal code).
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

from mmlab.meter.cache import MeasurementCache, cache_key, code_digest
from mmlab.meter.measure import cached_counts, measure
from mmlab.record import COUNT_FIELDS, Record
from mmlab.signals.score import ScoreSettings, score
from mmlab.spec.arch import ArchSpec

__all__ = ["EvalPlan", "cached_score", "evaluate", "timing_lock"]


@dataclass(frozen=True)
class EvalPlan:
    """What to measure for each candidate, and the budgets that stop the work early.

    Attributes:
        timing: time the fused network.
        device / threads / timing_s / runtime: timing settings (see :func:`mmlab.meter.measure`).
        signals: signals to compute; the first is the primary one (the search objective).
        score: provenance of the signals (data, seed, epochs, device...).
        budget_mflops: MAC budget in millions (complete count); None: none.
        budget_ms: latency budget in ms; None: none.
    """

    timing: bool = True
    device: str = "cpu"
    threads: int | None = None
    timing_s: float = 2.0
    runtime: str = "eager"
    signals: tuple[str, ...] = ()
    score: ScoreSettings = ScoreSettings()
    budget_mflops: float | None = None
    budget_ms: float | None = None


@contextmanager
def timing_lock(device: str, cache: MeasurementCache) -> Iterator[None]:
    """Serialise timings on one device across processes (a lock file next to the cache)."""
    cache.directory.mkdir(parents=True, exist_ok=True)
    with open(cache.directory / f".timing-{device}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def signal_key(spec: ArchSpec, signal: str, settings: ScoreSettings) -> str:
    parts: dict[str, Any] = {"kind": "signal", "spec": spec.key, "signal": signal, **asdict(settings),
                             "code": code_digest("spec", "model", "meter", "signals")}
    return cache_key(parts)


def cached_score(spec: ArchSpec, signal: str, settings: ScoreSettings, cache: MeasurementCache | None) -> float:
    """``score(spec, signal)`` under ``settings``, from the cache when present."""
    key = signal_key(spec, signal, settings)
    if cache is not None and (hit := cache.get(key)) is not None and isinstance(hit, dict) \
            and isinstance(hit.get("signal"), (int, float)):
        return float(hit["signal"])
    value = float(score(spec, signal, data=settings.data, resolution=settings.resolution,
                        batch_size=settings.batch_size, seed=settings.seed, epochs=settings.epochs,
                        device=settings.device))
    if cache is not None:
        cache.put(key, {"signal": value})
    return value


def evaluate(spec: ArchSpec, plan: EvalPlan, cache: MeasurementCache | None = None, *,
             model: torch.nn.Module | None = None, preset: str = "") -> Record:
    """Measure ``spec`` as ``plan`` says, stopping at the first budget it breaks.

    Args:
        spec: the architecture.
        plan: what to measure and the budgets.
        cache: the measurement cache (None: measure everything afresh, store nothing).
        model: ``build(spec)`` if the caller has it (counted and fused, never modified).
        preset: the preset name, recorded with the row.
    """
    record = Record(spec=spec, preset=preset, signal=plan.signals[0] if plan.signals else "",
                    provenance={k: v for k, v in asdict(plan.score).items() if v is not None})
    started = time.perf_counter()
    record.counts = {k: v for k, v in cached_counts(spec, cache, model).items() if k in COUNT_FIELDS}
    if plan.budget_mflops is not None:
        record.constraints["macs_mflops"] = record.counts["macs"] / 1e6 - plan.budget_mflops
    if record.feasible and (plan.timing or plan.budget_ms is not None):
        store = cache if cache is not None else MeasurementCache()
        with timing_lock(plan.device, store):
            row = measure(spec, device=plan.device, threads=plan.threads, cache=store, use_cache=cache is not None,
                          max_time_s=plan.timing_s, model=model, runtime=plan.runtime)
        record.timing = {k: v for k, v in row.items() if k.startswith(("latency", "throughput", "env_", "cuda_graph"))}
        if plan.budget_ms is not None:
            record.constraints["latency_ms"] = row["latency_ms"] - plan.budget_ms
    record.seconds["measure_s"] = time.perf_counter() - started
    if record.feasible and plan.signals:
        started = time.perf_counter()
        for name in plan.signals:
            record.signals[name] = cached_score(spec, name, plan.score, cache)
        record.seconds["score_s"] = time.perf_counter() - started
    return record
