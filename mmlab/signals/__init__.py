"""Accuracy signals: data sources, zero-cost proxies, short training, and ``score`` over one registry."""

from mmlab._lazy import lazy_exports

__all__ = ["DEFAULT_SIGNAL", "SIGNALS", "ScoreSettings", "check_signal", "dataset_names", "load_dataset", "score", "train"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "DEFAULT_SIGNAL": "mmlab.signals.registry",
    "SIGNALS": "mmlab.signals.registry",
    "check_signal": "mmlab.signals.registry",
    "dataset_names": "mmlab.signals.data",
    "load_dataset": "mmlab.signals.data",
    "ScoreSettings": "mmlab.signals.score",
    "score": "mmlab.signals.score",
    "train": "mmlab.signals.train",
})
