"""``measure(spec)``: parameters, MACs (fvcore, scan included) and latency / throughput of a candidate.

Everything comes back as one flat row (spec fields, metrics with units in their names, and the
environment), cached on disk so that a candidate is never timed twice on the same machine.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable

import torch

from mmlab.meter.cache import MeasurementCache, cache_key, code_digest
from mmlab.meter.devices import DEVICES, check_device
from mmlab.meter.env import environment
from mmlab.meter.latency import cuda_graph, time_cpu, time_cuda
from mmlab.meter.macs import Counts, count, count_model
from mmlab.meter.runtimes import RUNTIMES, check_runtime
from mmlab.model import build, fuse
from mmlab.spec.arch import ArchSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Bump when the timing protocol changes, so old cached timings are not reused.
TIMING_PROTOCOL = "1"


def _check(device: str, batch: int | None, threads: int | None, dtype: str, runtime: str) -> None:
    check_device(device)
    check_runtime(runtime, device)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch: {batch!r} is not allowed; must be an integer >= 1")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: {threads!r} is not allowed; must be an integer >= 1")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    if device == "cpu" and dtype != "float32":
        raise ValueError(f"dtype: {dtype!r} is not allowed on cpu; CPU timings are float32")


def counts_row(counts: Counts) -> dict[str, Any]:
    return {
        "params": counts.params,
        "params_trainable": counts.params_trainable,
        "macs": counts.macs,
        "macs_paper": counts.macs_paper,
    }


def cached_counts(spec: ArchSpec, cache: MeasurementCache | None, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Parameters and MACs of ``spec`` as a row, from the cache when present."""
    key = cache_key({"kind": "counts", "spec": spec.key, "code": code_digest()})
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    counts = count_model(model, spec.resolution, spec.in_chans) if model is not None else count(spec)
    row = counts_row(counts)
    if cache is not None:
        cache.put(key, row)
    return row


def _prepare(runtime: str, model: torch.nn.Module, x: torch.Tensor, row: dict[str, Any]) -> Callable[[], Any]:
    """``RUNTIMES[runtime].prepare(model, x)``, its duration added to ``row`` under the runtime's
    ``prepare_metric`` (``compile_s``, ``export_s``), summed over calls (CUDA prepares two batch sizes)."""
    started = time.perf_counter()
    fn = RUNTIMES[runtime].prepare(model, x)
    metric = RUNTIMES[runtime].prepare_metric
    if metric is not None:
        row[metric] = row.get(metric, 0.0) + time.perf_counter() - started
    return fn


def _time_cpu(model: torch.nn.Module, spec: ArchSpec, batch: int, threads: int, max_time_s: float,
              runtime: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, spec.in_chans, spec.resolution, spec.resolution)
        with torch.inference_mode():
            fn = _prepare(runtime, model, x, row)  # compile / export, outside the timed region
            t = time_cpu(fn, max_time_s=max_time_s)
            del fn
    finally:
        torch.set_num_threads(previous)
        RUNTIMES[runtime].free()
    return {
        "latency_ms": t.median_ms, "latency_p10_ms": t.p10_ms, "latency_p90_ms": t.p90_ms,
        "latency_runs": t.runs, "throughput_ips": 1e3 * batch / t.median_ms, **row,
    }


def _time_cuda(model: torch.nn.Module, spec: ArchSpec, batch: int, dtype: torch.dtype,
               runtime: str = "eager") -> dict[str, Any]:
    """Batch-1 latency and batch-``batch`` throughput, each eager and as a CUDA graph.

    The graph's output is checked against eager mode before its timing is used; the faster
    correct mode gives ``latency_ms`` / ``throughput_ips``, and both modes are reported. Another
    runtime (``compile``) is prepared for each batch size (its own output check included) and
    timed as it is.
    """
    model = model.to("cuda", dtype)
    # cuDNN times its algorithms per shape and keeps the fastest, as a deployed network would run
    # (t2 at batch 256 on an H100, `mmlab measure --device cuda`: 25,300 img/s without it, 32,800 with).
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        if runtime != "eager":
            return _time_cuda_runtime(model, spec, batch, dtype, runtime)
        return _time_cuda_eager(model, spec, batch, dtype)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _time_cuda_eager(model: torch.nn.Module, spec: ArchSpec, batch: int, dtype: torch.dtype) -> dict[str, Any]:
    row: dict[str, Any] = {"cuda_graph_ok": True}
    with torch.no_grad():
        for label, n in (("latency", 1), ("throughput", batch)):
            x = torch.randn(n, spec.in_chans, spec.resolution, spec.resolution, device="cuda", dtype=dtype)
            eager = time_cuda(lambda: model(x))
            replay = cuda_graph(model, x)
            correct = torch.allclose(replay().float(), model(x).float(), rtol=1e-3, atol=1e-3)
            graph = time_cuda(replay) if correct else None
            row["cuda_graph_ok"] = row["cuda_graph_ok"] and correct
            best = graph if graph is not None and graph.median_ms < eager.median_ms else eager
            if label == "latency":
                row.update(latency_ms=best.median_ms, latency_p10_ms=best.p10_ms, latency_p90_ms=best.p90_ms,
                           latency_runs=best.runs, latency_eager_ms=eager.median_ms,
                           latency_graph_ms=graph.median_ms if graph else None)
            else:
                row.update(throughput_ips=1e3 * n / best.median_ms, throughput_eager_ips=1e3 * n / eager.median_ms,
                           throughput_graph_ips=1e3 * n / graph.median_ms if graph else None, throughput_batch=n)
    return row


def _time_cuda_runtime(model: torch.nn.Module, spec: ArchSpec, batch: int, dtype: torch.dtype,
                       runtime: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    with torch.no_grad():
        for label, n in (("latency", 1), ("throughput", batch)):
            x = torch.randn(n, spec.in_chans, spec.resolution, spec.resolution, device="cuda", dtype=dtype)
            try:
                t = time_cuda(_prepare(runtime, model, x, row))
            finally:
                RUNTIMES[runtime].free()
            if label == "latency":
                row.update(latency_ms=t.median_ms, latency_p10_ms=t.p10_ms, latency_p90_ms=t.p90_ms, latency_runs=t.runs)
            else:
                row.update(throughput_ips=1e3 * n / t.median_ms, throughput_batch=n)
    return row


def _timing_key(spec: ArchSpec, device: str, batch: int, threads: int, dtype: str, runtime: str,
                max_time_s: float) -> tuple[dict[str, Any], str]:
    mode = "best_of_eager_and_cuda_graph" if device == "cuda" and runtime == "eager" else runtime
    env = environment(device, threads if device == "cpu" else 0, dtype, batch, spec.resolution, mode, runtime=runtime)
    key = cache_key({"kind": "timing", "spec": spec.key, "protocol": TIMING_PROTOCOL, "code": code_digest(),
                     "max_time_s": max_time_s if device == "cpu" else None, **env})
    return env, key


def cached_timing(spec: ArchSpec, cache: MeasurementCache, *, device: str = "cpu", batch: int | None = None,
                  threads: int | None = None, dtype: str = "float32", runtime: str = "eager",
                  max_time_s: float = 5.0) -> dict[str, Any] | None:
    """A timing already in the cache for these settings, or None; never measures."""
    batch = batch or DEVICES[device].default_batch
    threads = threads or (os.cpu_count() or 1)
    return cache.get(_timing_key(spec, device, batch, threads, dtype, runtime, max_time_s)[1])


def measure(
    spec: ArchSpec,
    *,
    device: str = "cpu",
    batch: int | None = None,
    threads: int | None = None,
    dtype: str = "float32",
    timing: bool = True,
    cache: MeasurementCache | None = None,
    use_cache: bool = True,
    max_time_s: float = 5.0,
    model: torch.nn.Module | None = None,
    runtime: str = "eager",
) -> dict[str, Any]:
    """Parameters, MACs and (optionally) speed of one architecture, as a flat row.

    Speed is always of the deploy form (BatchNorm fused), eval mode, under ``inference_mode``.
    Counts and timings are cached (``cache``, default the user cache directory) under a key of the
    spec, every setting that changes the figure and a digest of the code that produces it; a hit
    returns at once with ``measure_s`` 0, ``use_cache=False`` measures again and overwrites it.
    CPU: batch-``batch`` (default 1) latency with ``threads`` intra-op threads (default: all
    cores), repeated until the median settles or ``max_time_s`` passes. CUDA: batch-1 latency and
    batch-``batch`` (default 256) throughput, each eager and as a CUDA graph, the faster reported.

    Args:
        spec: the architecture.
        device: ``cpu`` or ``cuda``.
        batch: images per pass (CPU latency batch, or CUDA throughput batch).
        threads: CPU threads for the timing.
        dtype: ``float32`` (CPU), or ``float16`` / ``bfloat16`` on CUDA.
        timing: measure speed; if False only params and MACs are returned.
        cache: the measurement cache (default: the user cache directory).
        use_cache: False forces a fresh measurement (the result still refreshes the cache).
        max_time_s: CPU timing cap, warm-up excluded.
        model: ``build(spec)`` if the caller already has it (unfused; it is not modified).
        runtime: a name in :data:`mmlab.meter.runtimes.RUNTIMES`: ``eager``, ``compile`` (CPU and
            CUDA) or ``onnxruntime`` (CPU). Compiling / exporting happens before the timing, and
            the runtime's output is checked against eager PyTorch first (``OutputMismatch``, a
            ``ValueError``, beyond its tolerance).

    Returns:
        Spec fields, ``params``, ``macs``, ``macs_paper`` and, with timing, ``latency_ms`` (median),
        ``latency_p10_ms``, ``latency_p90_ms``, ``latency_runs``, ``throughput_ips``, plus
        ``env_*`` fields (``env_runtime`` and ``env_runtime_version`` among them) and ``measure_s``
        (seconds this call spent measuring; 0 on a cache hit). ``compile_s`` (``compile``) or
        ``export_s`` (``onnxruntime``): seconds the runtime took to prepare, never in the latency.
    """
    _check(device, batch, threads, dtype, runtime)
    if max_time_s is None or not max_time_s > 0:
        raise ValueError(f"max_time_s: {max_time_s!r} is not allowed; the timing cap must be > 0 seconds")
    batch = batch or DEVICES[device].default_batch
    threads = threads or (os.cpu_count() or 1)
    cache = cache if cache is not None else MeasurementCache()
    row: dict[str, Any] = spec.to_row()
    started = time.perf_counter()
    if not timing:
        row.update(cached_counts(spec, cache if use_cache else None))
        return row

    env, key = _timing_key(spec, device, batch, threads, dtype, runtime, max_time_s)
    if use_cache and (hit := cache.get(key)) is not None:
        row.update(hit)
        row["measure_s"] = 0.0
        return row

    model = model if model is not None else build(spec)
    deploy = fuse(model, device=device)
    gc.collect()  # timing first, on a quiet heap: the MAC trace below leaves much garbage
    if device == "cpu":
        record = _time_cpu(deploy, spec, batch, threads, max_time_s, runtime)
    else:
        record = _time_cuda(deploy, spec, batch, DTYPES[dtype], runtime)
    del deploy
    record.update(cached_counts(spec, cache if use_cache else None, model))
    record.update(env)
    record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    cache.put(key, record)
    row.update(record)
    row["measure_s"] = time.perf_counter() - started
    return row
