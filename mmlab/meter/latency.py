"""Wall-clock timing of a model's forward pass: CPU latency, CUDA latency and throughput."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

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
