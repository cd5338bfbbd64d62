"""The devices mmlab times on, one registry, and the one check that a device can be used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _cpu_available() -> bool:
    return True


def _cuda_available() -> bool:
    import torch  # inline: the registry is read by the CLI's help, which must not load torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Device:
    """A place to build, time and train networks.

    Attributes:
        name: ``cpu`` or ``cuda``.
        description: one line for ``--help``.
        available: whether this machine has it.
        default_batch: the timing batch when none is given (CPU latency at 1, GPU throughput at 256).
    """

    name: str
    description: str
    available: Callable[[], bool]
    default_batch: int


DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", "batch-1 latency with --threads intra-op threads", _cpu_available, 1),
    "cuda": Device("cuda", "batch-1 latency and batch-256 throughput, eager and CUDA graph", _cuda_available, 256),
}


def check_device(name: str) -> Device:
    """The device ``name``, or ``ValueError`` naming what is allowed / why it cannot be used."""
    if name not in DEVICES:
        raise ValueError(f"device: {name!r} is not allowed; allowed: {', '.join(DEVICES)}")
    device = DEVICES[name]
    if not device.available():
        raise ValueError(f"device: {name!r} is not available on this machine (torch sees no CUDA device); use --device cpu")
    return device
