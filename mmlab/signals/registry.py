"""The accuracy signals, one registry: name → what it is and the function that computes it.

Pure Python, so that the CLI's help and validation read it without loading torch; each entry
names its function as ``module:attribute``, imported the first time the signal is computed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from mmlab.spec.arch import ArchSpec

KINDS = ("proxy", "baseline", "training")
DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class ScoreSettings:
    """Everything besides the spec that a signal's value depends on (its provenance).

    Attributes:
        data: data source (see :func:`mmlab.signals.data.dataset_names`).
        resolution: image side; None: the spec's own for data-free signals and
            :func:`data_geometry` (input side and stem stride) for the data-driven ones.
        max_per_class: training images per class taken from the source (None: all).
        batch_size: None: 32 for naswot, 64 for the other proxies and for training.
        seed: seeds the data split, the network, the batches and training.
        epochs: training epochs (``train`` only).
        device: ``cpu`` or ``cuda``.
        space: the search space whose fixed reference sample ``ensemble`` ranks against.
    """

    data: str = DEFAULT_DATASET
    resolution: int | None = None
    max_per_class: int | None = None
    batch_size: int | None = None
    seed: int = 0
    epochs: int = 3
    device: str = "cpu"
    space: str = "default"




@dataclass(frozen=True)
class SignalInfo:
    """One accuracy signal.

    Attributes:
        name: the registry name used by the CLI, the search, grids and tables.
        kind: ``proxy`` (zero-cost, untrained network), ``baseline`` (a count that every proxy
            must beat) or ``training`` (held-out top-1 after short training).
        description: one line for help and reports.
        uses_data: whether it reads images (the others see the network as specified).
        entry: ``module:function`` computing it as ``fn(spec, settings) -> float``.
    """

    name: str
    kind: str
    description: str
    uses_data: bool
    entry: str

    def load(self) -> Callable[["ArchSpec", ScoreSettings], float]:
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)


_SCORE = "mmlab.signals.score"

SIGNALS: dict[str, SignalInfo] = {s.name: s for s in (
    SignalInfo("synflow", "proxy", "log Σ|θ·∂R/∂θ| of the BN-free |θ| network on an all-ones image", False, f"{_SCORE}:score_synflow"),
    SignalInfo("naswot", "proxy", "log|K| of the ReLU activation-code kernel over a batch", True, f"{_SCORE}:score_naswot"),
    SignalInfo("grad_norm", "proxy", "Σ ‖∂CE/∂θ‖₂ over weight tensors, one batch", True, f"{_SCORE}:score_grad_norm"),
    SignalInfo("snip", "proxy", "Σ |θ·∂CE/∂θ| over weights, one batch", True, f"{_SCORE}:score_snip"),
    SignalInfo("zico", "proxy", "Σ log Σ mean|g|/std(g) over weight tensors, two batches", True, f"{_SCORE}:score_zico"),
    SignalInfo("meco", "proxy", "Σ min eigenvalue of each conv layer's channel correlation, one image", True, f"{_SCORE}:score_meco"),
    SignalInfo("ensemble", "proxy", "Σ log quantile of naswot, snip, zico, meco against a fixed sample of the space", True, f"{_SCORE}:score_ensemble"),
    SignalInfo("params", "baseline", "all parameters", False, f"{_SCORE}:score_params"),
    SignalInfo("macs", "baseline", "complete MAC count", False, f"{_SCORE}:score_macs"),
    SignalInfo("train", "training", "held-out top-1 (%) after a short training run", True, f"{_SCORE}:score_train"),
)}

DEFAULT_SIGNAL = "params"
"""The signal searches and grids use when none is given, chosen by evidence (README, "Accuracy axis:
the evidence"): a proxy becomes the default only when a complete, committed proxy-check on
fashion-mnist shows it beating params with paired-bootstrap probability >= 0.9. The committed
check (results/proxy_check_fashion_mnist) is partial, 9 of 48 architectures, so params stays."""


_PARTIAL = "partial fashion-mnist check, N = 9 of 48"
EVIDENCE: dict[str, str] = {
    "params": f"the default; {_PARTIAL}: ρ 0.18 [−0.68, 0.89]",
    "macs": f"{_PARTIAL}: ρ 0.80 [0.30, 1.00]",
    "naswot": f"{_PARTIAL}: ρ 0.62 [−0.18, 1.00]",
    "ensemble": f"{_PARTIAL}: ρ 0.47 [−0.43, 1.00]",
    "zico": f"{_PARTIAL}: ρ 0.33 [−0.72, 0.94]",
    "synflow": f"{_PARTIAL}: ρ 0.25 [−0.82, 0.90]",
    "snip": f"{_PARTIAL}: ρ 0.10 [−0.72, 0.83]",
    "meco": f"{_PARTIAL}: ρ −0.02 [−0.82, 0.82]",
    "grad_norm": f"{_PARTIAL}: ρ −0.25 [−0.86, 0.74]",
}
"""What a committed proxy-check says of a signal (ρ with its interval, and the data); shown in plots and reports."""


def evidence(name: str) -> str:
    """One line on how far ``name`` is validated as an accuracy signal."""
    return EVIDENCE.get(name, "not validated by a committed proxy-check (run mmlab proxy-check)")


def check_signal(name: str) -> SignalInfo:
    """The signal ``name``, or ``ValueError`` naming the allowed ones."""
    if name not in SIGNALS:
        raise ValueError(f"signal: {name!r} is not allowed; choose among {', '.join(SIGNALS)}")
    return SIGNALS[name]
