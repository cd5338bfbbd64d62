"""``evaluate(spec, plan)``: the one function that turns an architecture into a :class:`~mmlab.record.Record`.

Counts first (exact, cached); over the MAC budget the candidate stops there. Then the timing of
the fused network (cached); over the latency budget it stops there. Then the accuracy signals
(cached under the spec, the signal, its provenance and a digest of the signal code).

Timing isolation between the processes of a study on one machine (:class:`MachineLock`): a timing
holds an exclusive lock, every other heavy step (building, counting, scoring, training) a shared
one, so nothing of the study runs beside a timing; a waiting timing goes before newcomers (a
turnstile), so it is never starved. Each timing records its spread ((p90 - p10) / median), the
1-minute load average and the share of the CPUs that other processes used while it ran; a timing
that those say was disturbed is retaken (:data:`TIMING_TRIES` in all), and if every try was
disturbed the steadiest is kept and flagged ``timing_disturbed`` — in the record and in the
cache, where a flagged timing is retaken the next time it is asked for.
"""

from __future__ import annotations

import fcntl
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from mmlab.meter.cache import MeasurementCache, cache_key, code_digest
from mmlab.meter.devices import DEVICES
from mmlab.meter.measure import _timing_key, cached_counts, measure
from mmlab.record import COUNT_FIELDS, Record
from mmlab.signals.score import ScoreSettings, score
from mmlab.spec.arch import ArchSpec

__all__ = ["EvalPlan", "MachineLock", "cached_score", "evaluate", "timing_lock", "timing_quality"]

SPREAD_LIMIT = 0.25
"""A timing whose (p90 - p10) / median exceeds this was disturbed."""
OTHER_CPU_LIMIT = 0.5
"""A timing during which other processes used more than this share of all CPUs was disturbed."""
TIMING_TRIES = 3
"""Timings taken at most per candidate (the first, then retakes while disturbed)."""


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
        timing_tries: timings taken at most while they come out disturbed (>= 1).
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
    timing_tries: int = TIMING_TRIES


class MachineLock:
    """Shared / exclusive lock of one device across the processes of this machine (lock files next
    to the measurement cache). Hold :meth:`exclusive` to time, :meth:`shared` for other heavy work.

    Never request :meth:`exclusive` while holding :meth:`shared` in the same process (flock locks of
    two open files conflict even within one process); nested :meth:`shared` calls are free.
    """

    def __init__(self, device: str, directory: Path) -> None:
        self.path = Path(directory) / f".timing-{device}.lock"
        self.turnstile = Path(directory) / f".timing-{device}.turnstile"
        self._depth = 0
        self._fh: Any = None

    def _open(self, path: Path) -> Any:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a")

    @contextmanager
    def shared(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._open(self.turnstile) as gate:  # wait behind any timing already queued
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(gate, fcntl.LOCK_UN)
        fh = self._open(self.path)
        try:
            fcntl.flock(fh, fcntl.LOCK_SH)
            self._depth, self._fh = 1, fh
            yield
        finally:
            self._depth, self._fh = 0, None
            fh.close()  # closing releases the lock

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self._depth:
            raise RuntimeError("MachineLock.exclusive() requested while this process holds the shared lock")
        with self._open(self.turnstile) as gate, self._open(self.path) as fh:
            fcntl.flock(gate, fcntl.LOCK_EX)  # newcomers wait at the gate while we wait for the lock
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            yield


@contextmanager
def timing_lock(device: str, cache: MeasurementCache) -> Iterator[None]:
    """Serialise timings on one device across processes (the exclusive side of :class:`MachineLock`)."""
    with MachineLock(device, cache.directory).exclusive():
        yield


class CpuProbe:
    """Share of all CPUs used by *other* processes between construction and :meth:`stop` (Linux:
    /proc/stat minus this process's own CPU time; elsewhere estimated from the load average)."""

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()

    def stop(self, threads: int) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        busy = _busy_seconds()
        if busy is not None and self.busy is not None and wall > 0:
            other = max(0.0, (busy - self.busy) - (_own_seconds() - self.own)) / (wall * self.cpus)
        else:
            other = max(0.0, load1 - threads) / self.cpus
        return {"timing_load1": round(load1, 2), "timing_other_cpu": round(min(other, 1.0), 3)}


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timing_quality(row: dict[str, Any]) -> tuple[float, bool]:
    """(spread, disturbed) of a timing row: spread = (p90 - p10) / median; disturbed when the
    spread, the other processes' CPU share or an earlier flag says so."""
    median, p10, p90 = row.get("latency_ms"), row.get("latency_p10_ms"), row.get("latency_p90_ms")
    spread = (p90 - p10) / median if median else float("inf")
    other = row.get("timing_other_cpu")
    disturbed = bool(row.get("timing_disturbed")) or spread > SPREAD_LIMIT \
        or (isinstance(other, (int, float)) and other > OTHER_CPU_LIMIT)
    return spread, disturbed


def signal_key(spec: ArchSpec, signal: str, settings: ScoreSettings) -> str:
    parts: dict[str, Any] = {"kind": "signal", "spec": spec.key, "signal": signal, **asdict(settings),
                             "code": code_digest("spec", "model", "meter", "signals")}
    return cache_key(parts)


def cached_score(spec: ArchSpec, signal: str, settings: ScoreSettings, cache: MeasurementCache | None) -> float:
    """``score(spec, signal)`` under ``settings``, from the cache when present."""
    key = signal_key(spec, signal, settings)
    if cache is not None and (hit := cache.get(key)) is not None:
        return float(hit["signal"])  # the cache serves only entries with a finite number here
    value = float(score(spec, signal, data=settings.data, resolution=settings.resolution,
                        batch_size=settings.batch_size, seed=settings.seed, epochs=settings.epochs,
                        device=settings.device, max_per_class=settings.max_per_class, space=settings.space))
    if cache is not None:
        cache.put(key, {"signal": value})
    return value


def timed(spec: ArchSpec, plan: EvalPlan, cache: MeasurementCache | None, model: torch.nn.Module | None,
          lock: MachineLock) -> dict[str, Any]:
    """The timing row of ``spec`` (see the module docstring: exclusive lock, retakes, flag)."""
    store = cache if cache is not None else MeasurementCache()
    threads = plan.threads or (os.cpu_count() or 1)
    tries: list[tuple[float, dict[str, Any]]] = []
    for attempt in range(max(1, plan.timing_tries)):
        with lock.exclusive():
            probe = CpuProbe()
            row = measure(spec, device=plan.device, threads=plan.threads, cache=store,
                          use_cache=cache is not None and attempt == 0, max_time_s=plan.timing_s, model=model,
                          runtime=plan.runtime)
            quality = probe.stop(threads)
        if row["measure_s"] == 0:  # a cache hit: judged by what was recorded when it was taken
            spread, disturbed = timing_quality(row)
            if not disturbed or plan.timing_tries <= 1:  # one try asked for: served, flag and all
                return {**row, "timing_spread": round(spread, 4), "timing_tries": 0}
            continue  # a flagged or noisy cached timing is taken again
        if plan.device != "cpu":
            quality["timing_other_cpu"] = 0.0  # a GPU timing is not disturbed by busy CPUs
        row.update(quality)
        spread, disturbed = timing_quality(row)
        tries.append((spread, row))
        if not disturbed:
            break
        time.sleep(0.2)
    spread, best = min(tries, key=lambda t: t[0]) if tries else (float("inf"), row)
    _, disturbed = timing_quality({**best, "timing_disturbed": False})
    best = {**best, "timing_spread": round(spread, 4), "timing_tries": len(tries), "timing_disturbed": disturbed}
    if cache is not None:  # what the cache keeps says how the figure was taken, flag included
        key = _timing_key(spec, plan.device, DEVICES[plan.device].default_batch, threads, "float32", plan.runtime,
                          plan.timing_s)[1]
        if (entry := store.get(key)) is not None:
            store.put(key, {**entry, **{k: v for k, v in best.items() if k.startswith(("timing_", "latency", "throughput"))}})
    return best


def evaluate(spec: ArchSpec, plan: EvalPlan, cache: MeasurementCache | None = None, *,
             model: torch.nn.Module | None = None, preset: str = "", lock: MachineLock | None = None) -> Record:
    """Measure ``spec`` as ``plan`` says, stopping at the first budget it breaks.

    Args:
        spec: the architecture.
        plan: what to measure and the budgets.
        cache: the measurement cache (None: measure everything afresh, store nothing).
        model: ``build(spec)`` if the caller has it (counted and fused, never modified).
        preset: the preset name, recorded with the row.
        lock: the machine's timing lock (default: the one next to the cache); the caller must not
            hold its shared side.
    """
    record = Record(spec=spec, preset=preset, signal=plan.signals[0] if plan.signals else "",
                    provenance={k: v for k, v in asdict(plan.score).items() if v is not None})
    lock = lock or MachineLock(plan.device, (cache or MeasurementCache()).directory)
    started = time.perf_counter()
    with lock.shared():
        record.counts = {k: v for k, v in cached_counts(spec, cache, model).items() if k in COUNT_FIELDS}
    if plan.budget_mflops is not None:
        record.constraints["macs_mflops"] = record.counts["macs"] / 1e6 - plan.budget_mflops
    if record.feasible and (plan.timing or plan.budget_ms is not None):
        row = timed(spec, plan, cache, model, lock)
        record.timing = {k: v for k, v in row.items()
                         if k.startswith(("latency", "throughput", "env_", "cuda_graph", "timing_"))}
        if plan.budget_ms is not None:
            record.constraints["latency_ms"] = row["latency_ms"] - plan.budget_ms
    record.seconds["measure_s"] = time.perf_counter() - started
    if record.feasible and plan.signals:
        started = time.perf_counter()
        with lock.shared():
            for name in plan.signals:
                record.signals[name] = cached_score(spec, name, plan.score, cache)
        record.seconds["score_s"] = time.perf_counter() - started
    return record
