"""The environment record that travels with every timing."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

from mmlab.meter.runtimes import runtime_version


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, threads: int, dtype: str, batch: int, resolution: int, mode: str, *,
                runtime: str = "eager") -> dict[str, str | int]:
    """Flat environment record (every key prefixed ``env_``) for one measurement setting.

    Args:
        device: ``cpu`` or ``cuda``.
        threads: intra-op CPU threads used for the timing.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        batch: images per forward pass.
        resolution: input side in pixels.
        mode: how the model ran, e.g. ``eager`` or ``cuda_graph``.
        runtime: the timing runtime's name (:data:`mmlab.meter.runtimes.RUNTIMES`); recorded with
            its package's version (``env_runtime_version``, e.g. onnxruntime's), so that both are
            part of every cache key built from this record.
    """
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else ""
    return {
        "env_device": device,
        "env_hardware": gpu or cpu_model(),
        "env_cpu_count": os.cpu_count() or 0,
        "env_threads": threads,
        "env_torch": torch.__version__,
        "env_cuda": (torch.version.cuda or "") if device == "cuda" else "",
        "env_dtype": dtype,
        "env_batch": batch,
        "env_resolution": resolution,
        "env_mode": mode,
        "env_runtime": runtime,
        "env_runtime_version": runtime_version(runtime),
    }
