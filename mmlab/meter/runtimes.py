"""The runtimes a network is timed in, one registry: how a fused model becomes the callable that is timed.

Each runtime prepares a callable from the fused model and an example input, once, outside the
timed region. ``eager`` is plain PyTorch under ``inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is loaded by the measuring code, not by the CLI's help that reads this registry
    import torch


def _eager(model: "torch.nn.Module", example: "torch.Tensor") -> Callable[[], Any]:
    return lambda: model(example)


@dataclass(frozen=True)
class Runtime:
    """How a fused model is run for timing.

    Attributes:
        name: registry name, part of every cache key and row (``env_runtime``).
        description: one line for ``--help``.
        devices: where it runs.
        prepare: ``prepare(model, example) -> fn``; ``fn()`` runs one forward pass.
    """

    name: str
    description: str
    devices: tuple[str, ...]
    prepare: Callable[["torch.nn.Module", "torch.Tensor"], Callable[[], Any]]


RUNTIMES: dict[str, Runtime] = {
    "eager": Runtime("eager", "PyTorch eager mode, inference_mode", ("cpu", "cuda"), _eager),
}


def check_runtime(name: str, device: str) -> Runtime:
    """The runtime ``name`` for ``device``, or ``ValueError`` naming what is allowed."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime: {name!r} is not allowed; allowed: {', '.join(RUNTIMES)}")
    runtime = RUNTIMES[name]
    if device not in runtime.devices:
        raise ValueError(f"runtime: {name!r} does not run on {device}; it runs on {', '.join(runtime.devices)}")
    return runtime
