"""``score(spec, signal)``: the one entry point that computes any registered accuracy signal."""

from __future__ import annotations

import functools
from itertools import islice

import torch

from mmlab.meter.devices import check_device
from mmlab.meter.macs import count
from mmlab.model import build
from mmlab.signals import proxies
from mmlab.signals.data import DEFAULT_DATASET, Dataset, check_source, load_dataset, make_loader
from mmlab.signals.ensemble import ENSEMBLE_PROXIES, aggregate, reference_values
from mmlab.signals.registry import SIGNALS, ScoreSettings, check_signal
from mmlab.signals.train import TRAIN_BATCH, train
from mmlab.spec.arch import ArchSpec
from mmlab.spec.params import param_count

__all__ = ["ScoreSettings", "adapt", "data_geometry", "score"]

STAGE1_SIDE = 8
"""Side of the first stage's feature map in the geometry the data-driven signals use (3 stages or fewer)."""
STEM_STRIDE = 4


def data_geometry(spec: ArchSpec) -> tuple[int, int]:
    """(input side, stem stride) at which training and the data-driven proxies see ``spec``.

    At its own resolution a preset's stages run at e.g. 12×12, 6×6, 3×3 (T2: 192 px, stem /16).
    A CPU cannot train at that size, and shrinking the input alone (64 px, stem /16) leaves
    4×4, 2×2, 1×1: kernels, wavelets and scans see almost nothing. So the stem's stride is set to
    4 and the input to 4 × 8 = 32 px: stages at 8×8, 4×4, 2×2, each stage half the side of the
    one before, the proportions the network has at its own resolution. A 4-stage spec gets 64 px
    (16×16, 8×8, 4×4, 2×2). Everything after the stem is the spec's own.
    """
    side = STAGE1_SIDE if spec.num_stages <= 3 else 2 * STAGE1_SIDE
    return side * STEM_STRIDE, STEM_STRIDE

_PROXY_BATCH = {"naswot": 32, "grad_norm": 64, "snip": 64, "zico": 64, "meco": 1}


@functools.lru_cache(maxsize=4)
def _dataset(source: str, resolution: int, seed: int, max_per_class: int | None) -> Dataset:
    """Datasets are deterministic in their arguments: load each once per process."""
    return load_dataset(source, resolution, seed=seed, max_per_class=max_per_class)


def adapt(spec: ArchSpec, s: ScoreSettings) -> tuple[ArchSpec, Dataset]:
    """The spec at the data geometry (or ``s.resolution``) with the data's classes and channels, and the data."""
    resolution, stem = (s.resolution, spec.stem_stride) if s.resolution else data_geometry(spec)
    ds = _dataset(s.data, resolution, s.seed, s.max_per_class)
    return spec.replace(num_classes=ds.num_classes, in_chans=ds.in_chans, resolution=resolution, stem_stride=stem), ds


def _data_model(spec: ArchSpec, s: ScoreSettings, signal: str) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The adapted spec, built under the seed, and its batches from the train split."""
    adapted, ds = adapt(spec, s)
    dev = torch.device(s.device)
    torch.manual_seed(s.seed)
    model = build(adapted).to(dev)
    loader = make_loader(ds.train, s.batch_size or _PROXY_BATCH[signal], shuffle=True, seed=s.seed)
    batches = [(images.to(dev), labels.to(dev)) for images, labels in islice(loader, 2 if signal == "zico" else 1)]
    return model, batches


def score_params(spec: ArchSpec, s: ScoreSettings) -> float:
    return float(param_count(spec))  # by formula, equal to the built network's count (tests/spec/test_params.py)


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


def score_meco(spec: ArchSpec, s: ScoreSettings) -> float:
    model, batches = _data_model(spec, s, "meco")
    return proxies.meco(model, batches[0][0])


def score_ensemble(spec: ArchSpec, s: ScoreSettings) -> float:
    """Σ log quantile of each of :data:`ENSEMBLE_PROXIES` against the space's reference sample."""
    compute = {name: SIGNALS[name].load() for name in ENSEMBLE_PROXIES}
    parts = {"data": s.data, "seed": s.seed, "resolution": s.resolution, "max_per_class": s.max_per_class}
    reference = reference_values(s.space, parts, lambda sp, name: compute[name](sp, s))
    return aggregate({name: compute[name](spec, s) for name in ENSEMBLE_PROXIES}, reference)


def score_train(spec: ArchSpec, s: ScoreSettings) -> float:
    adapted, ds = adapt(spec, s)
    return train(adapted, ds.train, ds.val, epochs=s.epochs, batch_size=s.batch_size or TRAIN_BATCH,
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
    max_per_class: int | None = None,
    space: str = "default",
) -> float:
    """The accuracy signal ``signal`` of ``spec`` (any name in :data:`mmlab.signals.SIGNALS`).

    ``params``, ``macs`` and ``synflow`` need no data and see the network as specified, at
    ``resolution`` (None: the spec's own). Every other signal sees the spec at
    :func:`data_geometry` (or ``resolution``) with the data's classes and channels;
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
                             seed=seed, epochs=epochs, device=device, max_per_class=max_per_class,
                             space=space)
    check_source(settings.data)
    return info.load()(spec, settings)
