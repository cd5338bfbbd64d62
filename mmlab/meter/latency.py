"""Wall-clock timing of a model's forward pass: CPU latency, CUDA latency and throughput, and the
interleaved comparison of several networks in one run (:func:`time_interleaved`)."""

from __future__ import annotations

import math
import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Per-forward-pass wall time over repeated runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> "Timing":
        ordered = sorted(samples_ms)
        q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 9
        return cls(statistics.median(ordered), q[0], q[-1], len(ordered))


def time_cpu(
    fn: Callable[[], object], *, warmup_s: float = 0.5, round_runs: int = 10,
    max_runs: int = 300, max_time_s: float = 5.0, settle_tol: float = 0.02,
) -> Timing:
    """Time ``fn`` until the median settles or a time cap is hit.

    Warm-up runs for ``warmup_s`` (at least three calls); then timed calls in rounds of
    ``round_runs``; it stops after a round that moved the running median by at most
    ``settle_tol`` (relative), or when ``max_time_s`` or ``max_runs`` is reached.
    """
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < warmup_s:
        fn()
        calls += 1
    samples: list[float] = []
    previous = None
    start = time.perf_counter()
    while True:
        for _ in range(round_runs):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        median = statistics.median(samples)
        settled = previous is not None and abs(median - previous) <= settle_tol * previous
        if settled or len(samples) >= max_runs or time.perf_counter() - start >= max_time_s:
            return Timing.of(samples)
        previous = median


def time_cuda(fn: Callable[[], object], *, warmup: int = 20, runs: int = 50) -> Timing:
    """Time ``fn`` on the current CUDA stream with events (synchronised per run)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
    return Timing.of(samples)


def cuda_graph(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture one forward pass of ``model`` on the static input ``x``; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


# ---- interleaved comparison ----------------------------------------------------------------------
@dataclass(frozen=True)
class Ratio:
    """How much slower one network is than the base: the median over rounds of (variant / base),
    with a bootstrap interval.

    Attributes:
        ratio: median of the per-round ratios variant time / base time.
        low, high: the bootstrap percentile interval of that median.
        rounds: how many rounds (paired samples) it rests on.
        level: the interval's coverage (0.95: a 95% interval).
    """

    ratio: float
    low: float
    high: float
    rounds: int
    level: float = 0.95

    @property
    def measurable(self) -> bool:
        """False when the interval contains 1 (a change of 0 %): no measurable difference."""
        return not self.low <= 1.0 <= self.high

    @property
    def pct(self) -> tuple[float, float, float]:
        """The change and its interval in percent of the base: ``(delta, low, high)``."""
        return 100.0 * (self.ratio - 1.0), 100.0 * (self.low - 1.0), 100.0 * (self.high - 1.0)


def ratio_interval(base_ms: Sequence[float], variant_ms: Sequence[float], *, level: float = 0.95,
                   resamples: int = 4000, seed: int = 0) -> Ratio:
    """Median per-round ratio ``variant / base`` and its percentile-bootstrap interval.

    The two sequences are paired by round (sample ``k`` of each was taken in the same round), so
    whatever load the machine had during a round divides out. Rounds are resampled with
    replacement ``resamples`` times (seeded: the same samples always give the same interval).
    """
    base, variant = np.asarray(base_ms, dtype=float), np.asarray(variant_ms, dtype=float)
    if base.shape != variant.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(f"ratio_interval: need two equally long, non-empty sequences; got {base.shape} and {variant.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level: {level!r} is not allowed; must be between 0 and 1")
    ratios = variant / base
    picks = np.random.default_rng(seed).integers(0, ratios.size, size=(resamples, ratios.size))
    medians = np.median(ratios[picks], axis=1)
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return Ratio(float(np.median(ratios)), float(low), float(high), int(ratios.size), level)


@dataclass(frozen=True)
class Interleaved:
    """What :func:`time_interleaved` measured.

    Attributes:
        samples_ms: per function, per round: the per-call time of that function's block in that
            round (median of the block's calls), in milliseconds.
        block_runs: calls per block, per function.
        ratios: each function after the first against the first (the base).
        seconds: wall time of the whole comparison, warm-up included.
    """

    samples_ms: tuple[tuple[float, ...], ...]
    block_runs: tuple[int, ...]
    ratios: tuple[Ratio, ...]
    seconds: float

    @property
    def rounds(self) -> int:
        return len(self.samples_ms[0])

    def timing(self, index: int) -> Timing:
        """Function ``index``'s per-round samples as a :class:`Timing`."""
        return Timing.of(list(self.samples_ms[index]))


def time_interleaved(
    fns: Sequence[Callable[[], object]], *, rounds: int = 200, min_rounds: int = 10, max_time_s: float = 60.0,
    warmup_s: float = 0.5, block_ms: float = 1.0, level: float = 0.95, seed: int = 0,
    sync: Callable[[], object] | None = None,
) -> Interleaved:
    """Time several functions against the first, interleaved in the same run.

    Timing networks one after another, minutes apart, turns a change in the machine's load into
    a difference between networks. Here every round runs one block of each function, in a fresh
    random order (seeded), so all of them see the same conditions and no one always runs right
    after another; the ratio to the base is taken within each round and summarised by its median
    over rounds with a bootstrap interval (:func:`ratio_interval`).

    Warm-up calls every function in turn for ``warmup_s`` (at least three calls each) and sizes
    each function's block to about ``block_ms`` (at least one call): with the default, any network
    slower than half a millisecond runs one call per block, A, B, A, B..., because the load on a
    shared machine changes within tens of milliseconds and only a short alternation sees it alike
    for all (two builds of one network measured 1.5 s this way, 40 times on a busy 2-core machine:
    every median ratio within 1 % of 1, where blocks of 20 ms gave ratios up to 8 % off).
    Rounds stop after ``rounds``, or once ``max_time_s`` has passed (warm-up excluded) and at
    least ``min_rounds`` are done.

    Args:
        fns: the base first, then the variants; each call runs one forward pass.
        rounds: most rounds.
        min_rounds: fewest rounds, whatever the time cap.
        max_time_s: time cap in seconds for the rounds.
        warmup_s: warm-up time in seconds.
        block_ms: target duration of one block (several calls of a very short function make one sample).
        level: the intervals' coverage.
        seed: seeds the block order and the bootstrap.
        sync: called after each call before reading the clock (``torch.cuda.synchronize`` on CUDA).
    """
    if len(fns) < 2:
        raise ValueError(f"fns: {len(fns)} functions given; need the base and at least one variant")
    if not 1 <= min_rounds <= rounds:
        raise ValueError(f"rounds: need 1 <= min_rounds ({min_rounds}) <= rounds ({rounds})")
    sync = sync or (lambda: None)
    started = time.perf_counter()
    last = [0.0] * len(fns)
    calls = 0
    while calls < 3 or time.perf_counter() - started < warmup_s:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            last[i] = (time.perf_counter() - t0) * 1e3
        calls += 1
    block_runs = tuple(max(1, round(block_ms / max(ms, 1e-6))) for ms in last)
    order = list(range(len(fns)))
    shuffle = random.Random(seed).shuffle
    samples: list[list[float]] = [[] for _ in fns]
    rounds_started = time.perf_counter()
    for done in range(1, rounds + 1):
        shuffle(order)
        for i in order:
            block = []
            for _ in range(block_runs[i]):
                t0 = time.perf_counter()
                fns[i]()
                sync()
                block.append((time.perf_counter() - t0) * 1e3)
            samples[i].append(statistics.median(block))
        if done >= min_rounds and time.perf_counter() - rounds_started >= max_time_s:
            break
    ratios = tuple(ratio_interval(samples[0], s, level=level, seed=seed) for s in samples[1:])
    return Interleaved(tuple(map(tuple, samples)), block_runs, ratios, time.perf_counter() - started)


_PROBE_WORK = "20 products of two 256 x 256 float32 matrices"


def host_probe(threads: int, *, runs: int = 300) -> Timing:
    """Wall time of one fixed CPU workload (20 products of two 256 x 256 float32 matrices) at
    ``threads`` threads, over exactly ``runs`` calls (:func:`time_cpu`, never stopping early, so
    that two probes are comparable).

    The arithmetic is the same on every call. On one machine, a higher median than usual means
    that something else held the cores: another process, or a neighbour on a shared host, which
    the load average does not show. Benchmarks take one probe before a run and one after
    (:func:`probe_note`). Compare probes from one machine only. About ``runs`` x 2-3 ms on 2 cores.
    """
    a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))

    def work() -> None:
        for _ in range(20):
            torch.mm(a, a)

    with cpu_threads(threads):
        return time_cpu(work, warmup_s=0.05, round_runs=runs, max_runs=runs, max_time_s=math.inf)


def probe_note(before_ms: float, after_ms: float, threads: int) -> str:
    """One sentence for a benchmark's output: the :func:`host_probe` medians before and after a run,
    and how to read them."""
    return (f"host probe ({_PROBE_WORK}, {threads} threads, median): {before_ms:.2f} ms before the run, "
            f"{after_ms:.2f} ms after; a rise, or a value above this machine's quiet one, means that other work "
            "(a neighbour on the host included) shared the cores")


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
