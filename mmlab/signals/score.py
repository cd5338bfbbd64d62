"""``score(spec, signal)``: the one entry point that computes any registered accuracy signal."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import islice

import torch

from mmlab.meter.devices import check_device
from mmlab.meter.macs import count
from mmlab.model import build
from mmlab.signals import proxies
from mmlab.signals.data import DEFAULT_DATASET, Dataset, check_source, load_dataset, make_loader
from mmlab.signals.registry import check_signal
from mmlab.signals.train import TRAIN_BATCH, train
from mmlab.spec.arch import ArchSpec

__all__ = ["DEFAULT_RESOLUTION", "ScoreSettings", "score"]

DEFAULT_RESOLUTION = 64
"""Image side the data-driven signals adapt a network to: a CPU budget."""

_PROXY_BATCH = {"naswot": 32, "grad_norm": 64, "snip": 64, "zico": 64}


@dataclass(frozen=True)
class ScoreSettings:
    """Everything besides the spec that a signal's value depends on (its provenance).

    Attributes:
        data: data source (see :func:`mmlab.signals.data.dataset_names`).
        resolution: image side; None: the spec's own for data-free signals, else DEFAULT_RESOLUTION.
        batch_size: None: 32 for naswot, 64 for the other proxies and for training.
        seed: seeds the data split, the network, the batches and training.
        epochs: training epochs (``train`` only).
        device: ``cpu`` or ``cuda``.
    """

    data: str = DEFAULT_DATASET
    resolution: int | None = None
    batch_size: int | None = None
    seed: int = 0
    epochs: int = 3
    device: str = "cpu"


@functools.lru_cache(maxsize=4)
def _dataset(source: str, resolution: int, seed: int) -> Dataset:
    """Datasets are deterministic in (source, resolution, seed): load each once per process."""
    return load_dataset(source, resolution, seed=seed)


def _data_model(spec: ArchSpec, s: ScoreSettings, signal: str) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The spec adapted to the data (classes, channels, resolution), built under the seed, and its batches."""
    ds = _dataset(s.data, s.resolution or DEFAULT_RESOLUTION, s.seed)
    dev = torch.device(s.device)
    torch.manual_seed(s.seed)
    model = build(spec.replace(num_classes=ds.num_classes, in_chans=ds.in_chans, resolution=ds.resolution)).to(dev)
    loader = make_loader(ds.train, s.batch_size or _PROXY_BATCH[signal], shuffle=True, seed=s.seed)
    batches = [(images.to(dev), labels.to(dev)) for images, labels in islice(loader, 2 if signal == "zico" else 1)]
    return model, batches


def score_params(spec: ArchSpec, s: ScoreSettings) -> float:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return float(sum(p.numel() for p in build(spec).parameters()))


def score_macs(spec: ArchSpec, s: ScoreSettings) -> float:
    return float(count(spec if s.resolution is None else spec.replace(resolution=s.resolution)).macs)


def score_synflow(spec: ArchSpec, s: ScoreSettings) -> float:
    torch.manual_seed(s.seed)  # data-free: the network as specified, at its own resolution
    net = spec if s.resolution is None else spec.replace(resolution=s.resolution)
    return proxies.synflow(build(net).to(s.device), (net.in_chans, net.resolution, net.resolution))


def score_naswot(spec: ArchSpec, s: ScoreSettings) -> float:
    model, batches = _data_model(spec, s, "naswot")
    return proxies.naswot(model, batches[0][0])


def score_grad_norm(spec: ArchSpec, s: ScoreSettings) -> float:
    model, batches = _data_model(spec, s, "grad_norm")
    return proxies.grad_norm(model, *batches[0])


def score_snip(spec: ArchSpec, s: ScoreSettings) -> float:
    model, batches = _data_model(spec, s, "snip")
    return proxies.snip(model, *batches[0])


def score_zico(spec: ArchSpec, s: ScoreSettings) -> float:
    model, batches = _data_model(spec, s, "zico")
    return proxies.zico(model, batches)


def score_train(spec: ArchSpec, s: ScoreSettings) -> float:
    ds = _dataset(s.data, s.resolution or DEFAULT_RESOLUTION, s.seed)
    return train(spec, ds.train, ds.val, epochs=s.epochs, batch_size=s.batch_size or TRAIN_BATCH,
                 seed=s.seed, device=s.device, num_classes=ds.num_classes).top1


def score(
    spec: ArchSpec,
    signal: str,
    *,
    data: str | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    epochs: int = 3,
    device: str = "cpu",
) -> float:
    """The accuracy signal ``signal`` of ``spec`` (any name in :data:`mmlab.signals.SIGNALS`).

    ``params``, ``macs`` and ``synflow`` need no data and see the network as specified, at
    ``resolution`` (None: the spec's own). Every other signal loads ``data`` at ``resolution``
    (None: :data:`DEFAULT_RESOLUTION`) and adapts the spec to it (classes, channels, resolution);
    ``train`` runs :func:`mmlab.signals.train.train` and returns the final held-out top-1 (%).
    The data source is checked for every signal, so a typo never passes silently.

    Returns:
        The signal as a float; higher predicts higher accuracy.

    Raises:
        ValueError: an unknown signal, data source or device, or a proxy undefined for the network.
    """
    info = check_signal(str(signal))
    check_device(device)
    settings = ScoreSettings(data=data or DEFAULT_DATASET, resolution=resolution, batch_size=batch_size,
                             seed=seed, epochs=epochs, device=device)
    check_source(settings.data)
    return info.load()(spec, settings)
