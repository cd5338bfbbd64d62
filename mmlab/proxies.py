"""Accuracy signals: zero-cost proxies on an untrained network, and short training on a dataset.

Every signal is a number where higher should mean a more accurate architecture; :func:`score` is
the one entry point (the CLI and the search call it), and each proxy is public on its own:

============  =================================================================================
signal        what it is
============  =================================================================================
synflow       log Σ|θ·∂R/∂θ|, R = sum of the outputs of the BN-free, |θ|, float64 network on an
              all-ones image (Tanaka et al. 2020, as in Abdelfattah et al. 2021)
naswot        log|K| of the ReLU activation-code kernel over a batch (Mellor et al. 2021)
grad_norm     Σ ‖∂CE/∂θ‖₂ over weight tensors, one batch (Abdelfattah et al. 2021)
snip          Σ |θ·∂CE/∂θ| over weights, one batch (Lee et al. 2019)
zico          Σ over weight tensors of log Σ mean|g|/std(g) across batches (Li et al. 2023)
params        all parameters (baseline)
macs          complete MAC count, ``mmlab.meter.count(spec).macs`` (baseline)
train         held-out top-1 (%) after a short training run
============  =================================================================================

"Weights" are the trainable parameters with two or more dimensions that are not biases (conv and
linear kernels, the SSM's projections and ``A_logs``, the per-channel scales): the ones that
:func:`train` decays; 1-D parameters (norm affines, the SSM's ``D``) and biases are not weights.
The proxies run on a copy of the model, so its BatchNorm statistics and gradients are left
untouched, and with stochastic depth off, so that the number describes the architecture and not
the draw of dropped blocks.

Caveat for the gradient proxies (grad_norm, snip, zico): at MobileMamba's reference
initialisation every block branch ends in a BatchNorm with γ = 0, so every weight inside a block
(FFNs, mixer, SSM, wavelet convs) has an exactly zero gradient; these proxies then see the stem,
the downsampling and the head only. SynFlow (BatchNorm removed) and NASWOT (activations, which
are computed whatever γ is) see the blocks.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import islice

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmlab.arch import ArchSpec
from mmlab.model import MobileMamba, build

__all__ = [
    "DEFAULT_RESOLUTION",
    "Signal",
    "TrainResult",
    "grad_norm",
    "higher_is_better",
    "naswot",
    "score",
    "snip",
    "synflow",
    "train",
    "zico",
]

DEFAULT_RESOLUTION = 64
"""Image side :func:`score` adapts a network to for the data-driven signals: a CPU budget."""


class Signal(str, Enum):
    """The accuracy signals; the values are what the CLI, the search and the tables use."""

    synflow = "synflow"
    naswot = "naswot"
    grad_norm = "grad_norm"
    snip = "snip"
    zico = "zico"
    params = "params"
    macs = "macs"
    train = "train"


_PROXY_BATCH = {Signal.naswot: 32, Signal.grad_norm: 64, Signal.snip: 64, Signal.zico: 64}
_TRAIN_BATCH = 64


def _as_signal(signal: Signal | str) -> Signal:
    try:
        return Signal(signal)
    except ValueError:
        allowed = ", ".join(s.value for s in Signal)
        raise ValueError(f"signal: {signal!r} is not allowed; choose among {allowed}") from None


def higher_is_better(signal: Signal | str) -> bool:
    """Whether a larger value of ``signal`` predicts a more accurate network.

    True for every signal: the proxies are defined that way round (SynFlow and NASWOT as logs)
    and ``train`` is an accuracy. ``params`` and ``macs`` are baselines reported as they are
    (a bigger network tends to be more accurate); in a correlation table their sign matters, so
    a proxy that merely tracks size shows up next to them.

    Raises:
        ValueError: ``signal`` is not a :class:`Signal` value.
    """
    _as_signal(signal)
    return True


# ---- helpers shared by the proxies ---------------------------------------------------------


def _is_weight(name: str, p: nn.Parameter) -> bool:
    """Trainable, two or more dimensions and not a bias (``dt_projs_bias`` is 2-D)."""
    return p.requires_grad and p.dim() >= 2 and not name.endswith("bias")


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights (see the module docstring), in registration order."""
    return [p for name, p in model.named_parameters() if _is_weight(name, p)]


def _batch_statistics_mode(model: nn.Module) -> nn.Module:
    """Train mode (BatchNorm on batch statistics) with stochastic depth and dropout off; in place."""
    model.train()
    for module in model.modules():
        if isinstance(module, (DropPath, nn.Dropout)):
            module.eval()
    return model


def _train_copy(model: nn.Module) -> nn.Module:
    """A copy in :func:`_batch_statistics_mode`, so the caller's model keeps its statistics."""
    return _batch_statistics_mode(copy.deepcopy(model))


def _check_batch(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"images: shape {tuple(images.shape)} is not allowed; need (B, C, H, W) with B >= 2")
    if labels is not None and labels.shape != images.shape[:1]:
        raise ValueError(f"labels: shape {tuple(labels.shape)} does not match {images.shape[0]} images")


def _gradients(
    net: nn.Module, params: list[nn.Parameter], images: torch.Tensor, labels: torch.Tensor
) -> list[torch.Tensor]:
    """∂CE/∂θ for each of ``params`` on one batch (zeros where a weight is off the graph)."""
    loss = F.cross_entropy(net(images), labels)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# ---- SynFlow ----------------------------------------------------------------------------------

# Activations on MobileMamba's residual stream grow by about 10^4 per block once BatchNorm is gone,
# and the SSM's output is a degree-4 product of them before its LayerNorm, so plain float64
# overflows from T2 at 64 px on. Where a trunk tensor (the input of a module of ``_trunk``) peaks
# above _SYNFLOW_LIMIT = 2^64, it is divided by the power of two 2^k that brings its peak into
# [2^48, 2^49), and k·log 2 is added back to the log score. Downstream of such a tensor the network
# is positively 1-homogeneous to float64 precision (ReLU, convs, residual sums, scale-free
# LayerNorm, saturated SiLU / softplus / sigmoid, biases and epsilons below 2^-48 relative), so
# R' = R / 2^k and every θ·∂R'/∂θ = θ·∂R/∂θ / 2^k: the log score is unchanged. It matches the
# plain computation to ~1e-14 wherever that one does not overflow (tests/test_proxies.py).
_SYNFLOW_LIMIT = 2.0**64
_SYNFLOW_TARGET_EXP = 48


def _chain(module: nn.Module) -> list[nn.Module]:
    """The modules a (nested) ``nn.Sequential`` calls one after another; any other module alone."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _chain(child)]
    return [module]


def _trunk(model: MobileMamba) -> list[nn.Module]:
    """Modules whose input is a cut of the network: everything downstream depends on it alone.

    Stem layers, downsampling steps, blocks and head layers, in call order; never a module inside a
    residual branch, whose input the skip connection also reads.
    """
    modules = _chain(model.stem)
    for stage in model.stages:
        modules += _chain(stage.downsample) + _chain(stage.blocks)
    return modules + _chain(model.head)


def _remove_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _remove_batchnorm(child)


def synflow(model: nn.Module, shape: Sequence[int]) -> float:
    """SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
    conserving synaptic flow"), as a zero-cost proxy (Abdelfattah et al. 2021).

    On a copy: every BatchNorm replaced by the identity, every parameter (the frozen wavelet
    filters too) replaced by its absolute value, float64, eval mode; R = sum of the outputs for
    one all-ones image; score = Σ over weights of Σ|θ ⊙ ∂R/∂θ| (the absolute value as in
    Abdelfattah et al.'s code: LayerNorm and the SSM make a few products negative).

    Returns the natural log of the score (monotone, so rankings are unchanged): the raw value
    overflows float32 for every preset and float64 for the larger ones. For a :class:`MobileMamba`
    the residual stream is rescaled by exact powers of two where it would overflow, and the
    scale added back to the log (see the comment above ``_SYNFLOW_LIMIT``); other modules are
    evaluated as they are.

    Args:
        model: an untrained network, e.g. ``mmlab.build(spec)``; it is not modified.
        shape: one input's shape ``(C, H, W)``.

    Returns:
        log(score).

    Raises:
        ValueError: a bad shape, or a score that is zero or not finite (float64 overflow in a
            module that is not a MobileMamba).
    """
    if len(shape) != 3:
        raise ValueError(f"shape: {tuple(shape)!r} is not allowed; give one input's (C, H, W)")
    net = copy.deepcopy(model)
    _remove_batchnorm(net)
    net = net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    log_scale = 0.0

    def rescale(module: nn.Module, args: tuple) -> tuple | None:
        nonlocal log_scale
        x = args[0]
        peak = x.detach().abs().max().item()
        if not peak > _SYNFLOW_LIMIT:  # also leaves inf / nan alone: reported below
            return None
        k = math.floor(math.log2(peak)) - _SYNFLOW_TARGET_EXP
        log_scale += k * math.log(2.0)
        return (x * 2.0**-k, *args[1:])

    if isinstance(net, MobileMamba):
        for module in _trunk(net):
            module.register_forward_pre_hook(rescale)
    device = next(net.parameters()).device
    out = net(torch.ones(1, *shape, dtype=torch.float64, device=device))  # (1, classes)
    weights = _weights(net)
    grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    total = sum(float((p.detach() * g).abs().sum()) for p, g in zip(weights, grads) if g is not None)
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"synflow: the score is {total} (float64 overflow or no weight on the path to the output)")
    return math.log(total) + log_scale


# ---- NASWOT -----------------------------------------------------------------------------------


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021, "Neural Architecture Search without Training").

    Each image's binary code is whether each unit after every ``nn.ReLU`` is active (forward
    hooks); K = Σ over ReLU modules of C·Cᵀ + (1 − C)(1 − C)ᵀ, i.e. the number of units minus the
    Hamming distance between codes; score = log|det K| (float64 ``slogdet``). The network runs in
    train mode, BatchNorm on batch statistics, as in the authors' code. K is singular when two
    images share a code (duplicate images, dead networks): then a ridge of 1e-9 × the number of
    units is added to the diagonal, above float64 rounding of K, so the score stays finite and
    ranks such a network very low.

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W) with B >= 2 (the search uses 32).

    Returns:
        log|det K|.

    Raises:
        ValueError: a batch of fewer than two images, or a network without ``nn.ReLU`` modules.
    """
    _check_batch(images)
    net = _train_copy(model)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("naswot: the network has no nn.ReLU module, so there are no activation codes to compare")
    b = images.shape[0]
    kernel = torch.zeros(b, b, dtype=torch.float64, device=images.device)

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        codes = (out.detach().reshape(b, -1) > 0).double()  # (B, units)
        kernel.add_(codes @ codes.T).add_((1 - codes) @ (1 - codes).T)

    for relu in relus:
        relu.register_forward_hook(record)
    with torch.no_grad():
        net(images)
    sign, logdet = torch.linalg.slogdet(kernel)
    if sign <= 0:
        units = kernel[0, 0]  # every diagonal entry is the number of units
        ridge = 1e-9 * units * torch.eye(b, dtype=torch.float64, device=images.device)
        sign, logdet = torch.linalg.slogdet(kernel + ridge)
    return float(logdet)


# ---- gradient proxies -------------------------------------------------------------------------


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Gradient norm (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS").

    Σ over weight tensors of ‖∂CE/∂θ‖₂ on one batch, train mode (BatchNorm on batch statistics).

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W), B >= 2.
        labels: (B,) class indices.
    """
    _check_batch(images, labels)
    net = _train_copy(model)
    grads = _gradients(net, _weights(net), images, labels)
    return float(sum(g.double().norm() for g in grads))


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SNIP saliency (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity"), summed as a zero-cost proxy (Abdelfattah et al. 2021).

    Σ over weights of |θ ⊙ ∂CE/∂θ| on one batch, train mode (BatchNorm on batch statistics).

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W), B >= 2.
        labels: (B,) class indices.
    """
    _check_batch(images, labels)
    net = _train_copy(model)
    weights = _weights(net)
    grads = _gradients(net, weights, images, labels)
    return float(sum((p.detach().double() * g.double()).abs().sum() for p, g in zip(weights, grads)))


def zico(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """ZiCo (Li et al. 2023, "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients").

    For each weight tensor ("layer"), with g its per-batch gradients of the CE loss: the sum over
    its entries of mean|g| / std(g) across batches (population std; entries with std = 0 skipped),
    then the log; the score sums these logs over the layers whose sum is nonzero. Train mode
    (BatchNorm on batch statistics); each batch's gradient is taken from zero (the authors' code
    lets the second accumulate onto the first).

    Args:
        model: an untrained network; it is not modified.
        batches: at least two ``(images (B, C, H, W), labels (B,))`` pairs.

    Raises:
        ValueError: fewer than two batches, or no weight whose gradient varies across them.
    """
    net = _train_copy(model)
    weights = _weights(net)
    per_batch: list[list[torch.Tensor]] = []  # [batch][weight] flattened float64 gradients
    for images, labels in batches:
        _check_batch(images, labels)
        per_batch.append([g.double().flatten() for g in _gradients(net, weights, images, labels)])
    if len(per_batch) < 2:
        raise ValueError(f"zico: needs at least two batches, got {len(per_batch)}")
    total, layers = 0.0, 0
    for grads in zip(*per_batch):
        g = torch.stack(grads)  # (batches, numel)
        std = g.std(dim=0, correction=0)
        varies = std > 0
        ratio = float((g.abs().mean(dim=0)[varies] / std[varies]).sum())
        if ratio != 0:
            total += math.log(ratio)
            layers += 1
    if not layers:
        raise ValueError("zico: no weight's gradient varies across the batches, so the score is undefined")
    return total


# ---- short training -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        top1: held-out top-1 accuracy (%) after the last epoch.
        top1_per_epoch: held-out top-1 (%) after each epoch, first epoch first.
        seconds: wall time of the whole run (build, training and evaluations).
        train_images: training images processed, all epochs together.
    """

    top1: float
    top1_per_epoch: tuple[float, ...]
    seconds: float
    train_images: int


def _check_device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: {device!r} is not allowed; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' is not available on this machine (torch sees no CUDA device); use cpu")
    return torch.device(device)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weights, none on 1-D parameters and biases (the authors' split)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if _is_weight(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor for step s: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


_PRECISE_BN_IMAGES = 512


@torch.no_grad()
def _recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Re-estimate every BatchNorm's running statistics on up to 512 training images.

    PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): the running averages are
    reset and rebuilt as the plain mean over batches (``momentum=None``), with the weights fixed
    and stochastic depth off. After a short run the exponential averages still mostly hold their
    initial values, and the held-out accuracy would read chance although the network has learnt.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    _batch_statistics_mode(model)
    seen = 0
    for images, _ in loader:
        model(images.to(device))
        seen += len(images)
        if seen >= _PRECISE_BN_IMAGES:
            break
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


@torch.inference_mode()
def _top1(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        logits = model(images.to(device))  # (B, classes)
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        seen += len(labels)
    return 100.0 * correct / seen


def train(
    spec: ArchSpec,
    train_set: Dataset,
    val_set: Dataset,
    *,
    epochs: int = 3,
    batch_size: int = _TRAIN_BATCH,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
    num_classes: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``spec`` from scratch for a few epochs and report held-out top-1 after each.

    The spec is adapted to the data (``num_classes``, ``in_chans`` and ``resolution`` from the
    images), built under ``seed`` and trained with AdamW (weight decay on weights only, none on
    1-D parameters and biases, like the authors), a per-step schedule of linear warm-up then
    cosine decay to zero, and label-smoothed cross-entropy. BatchNorm trains on batch statistics
    and evaluates on running ones; stochastic depth is on as the spec says. Batches are
    reshuffled every epoch under ``seed``; the last incomplete batch is dropped (a batch of one
    would break BatchNorm). Before each evaluation the BatchNorm statistics are re-estimated on
    up to 512 training images (PreciseBN): after a few hundred steps the running averages still
    lag so far behind that held-out accuracy would read chance for a network that has learnt.
    On CPU the run is deterministic; on CUDA it is seeded but cuDNN may vary in the last digits.

    Defaults: 3 epochs, batch 64, lr 2e-3, weight decay 0.05, label smoothing 0.1, half an epoch
    of warm-up, seed 0, CPU.

    Args:
        spec: the architecture; its classifier, input channels and resolution are replaced.
        train_set: items ``(image (C, R, R) float tensor, int label)``.
        val_set: held-out items, same layout.
        epochs: training epochs.
        batch_size: training batch size (also used for evaluation).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay on weights.
        label_smoothing: cross-entropy label smoothing.
        warmup_epochs: linear warm-up length in epochs (may be a fraction, or 0).
        seed: seeds the initialisation, the shuffling and stochastic depth.
        device: ``cpu`` or ``cuda``.
        num_classes: classifier outputs; None takes one more than the largest training label
            (one pass over ``train_set``).
        on_epoch: called as ``on_epoch(epoch, top1)`` after each epoch (``epoch`` from 0); an
            exception it raises (e.g. Optuna's ``TrialPruned``) stops training and propagates.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: a bad argument, non-square images, fewer than two training images or an
            unavailable device.
    """
    start = time.perf_counter()
    dev = _check_device(device)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: {epochs!r} is not allowed; must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size: {batch_size!r} is not allowed; must be an integer >= 2")
    if not warmup_epochs >= 0:
        raise ValueError(f"warmup_epochs: {warmup_epochs!r} is not allowed; must be >= 0")
    if len(train_set) < 2 or len(val_set) < 1:
        raise ValueError(
            f"need at least two training images and one held-out image, got {len(train_set)} and {len(val_set)}"
        )
    in_chans, height, width = train_set[0][0].shape
    if height != width:
        raise ValueError(f"images: {height}x{width} is not allowed; training needs square images")
    if num_classes is None:
        num_classes = 1 + max(int(label) for _, label in train_set)
    adapted = spec.replace(num_classes=num_classes, in_chans=in_chans, resolution=height)

    torch.manual_seed(seed)
    model = build(adapted).to(dev)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    loader = DataLoader(
        train_set, batch_size=min(batch_size, len(train_set)), shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    calibration = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val_loader = DataLoader(val_set, batch_size=batch_size)
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(round(warmup_epochs * len(loader)), steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    per_epoch: list[float] = []
    seen = 0
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            loss = criterion(model(images.to(dev)), labels.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(labels)
        _recalibrate_batchnorm(model, calibration, dev)
        per_epoch.append(_top1(model, val_loader, dev))
        if on_epoch is not None:
            on_epoch(epoch, per_epoch[-1])
    return TrainResult(per_epoch[-1], tuple(per_epoch), time.perf_counter() - start, seen)


# ---- one entry point ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _dataset(source: str, resolution: int, seed: int):
    """Datasets are deterministic in (source, resolution, seed): load each once per process."""
    from mmlab.data import load_dataset

    return load_dataset(source, resolution, seed=seed)


def score(
    spec: ArchSpec,
    signal: Signal | str,
    *,
    data: str | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    epochs: int = 3,
    device: str = "cpu",
) -> float:
    """The accuracy signal ``signal`` of ``spec``: the one entry point of the CLI and the search.

    ``params``, ``macs`` and ``synflow`` need no data and see the network as specified, at
    ``resolution`` (None: the spec's own), so a higher input resolution counts for them: all
    parameters (frozen wavelet filters included), the complete MAC count of
    ``mmlab.meter.count``, and SynFlow on an all-ones image. Every other signal loads ``data`` with :func:`mmlab.data.load_dataset` at
    ``resolution`` (None: :data:`DEFAULT_RESOLUTION`) and adapts the spec to it (classes,
    channels, resolution). ``train`` runs :func:`train` with its defaults and returns the final
    held-out top-1 (%). The proxies build the network after ``torch.manual_seed(seed)``, draw
    their batches from the train split in an order fixed by ``seed`` (one batch; two for zico)
    and call the public proxy function.

    Args:
        spec: the architecture.
        signal: a :class:`Signal` or its value.
        data: a data source (see :func:`mmlab.data.dataset_names`); None: ``digits``.
        resolution: image side; see above for the defaults.
        batch_size: None: 32 for naswot, 64 for grad_norm, snip, zico (per batch) and train.
        seed: seeds the data split, the network, the batches and training.
        epochs: training epochs (``train`` only).
        device: ``cpu`` or ``cuda``, for every data-driven signal.

    Returns:
        The signal as a float; higher predicts higher accuracy (see :func:`higher_is_better`).

    Raises:
        ValueError: an unknown signal, data source or device, or a proxy undefined for the network.
    """
    signal = _as_signal(signal)
    if signal is Signal.params:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            return float(sum(p.numel() for p in build(spec).parameters()))
    if signal is Signal.macs:
        from mmlab.meter import count

        return float(count(spec if resolution is None else spec.replace(resolution=resolution)).macs)

    from mmlab.data import DEFAULT_DATASET, make_loader

    dev = _check_device(device)
    if signal is Signal.synflow:  # data-free: the network as specified, at its own resolution
        torch.manual_seed(seed)
        net_spec = spec if resolution is None else spec.replace(resolution=resolution)
        return synflow(build(net_spec).to(dev), (net_spec.in_chans, net_spec.resolution, net_spec.resolution))
    ds = _dataset(data or DEFAULT_DATASET, resolution or DEFAULT_RESOLUTION, seed)
    if signal is Signal.train:
        result = train(spec, ds.train, ds.val, epochs=epochs, batch_size=batch_size or _TRAIN_BATCH,
                       seed=seed, device=device, num_classes=ds.num_classes)
        return result.top1
    torch.manual_seed(seed)
    model = build(spec.replace(num_classes=ds.num_classes, in_chans=ds.in_chans, resolution=ds.resolution)).to(dev)
    loader = make_loader(ds.train, batch_size or _PROXY_BATCH[signal], shuffle=True, seed=seed)
    batches = [(images.to(dev), labels.to(dev)) for images, labels in islice(loader, 2 if signal is Signal.zico else 1)]
    images, labels = batches[0]
    if signal is Signal.naswot:
        return naswot(model, images)
    if signal is Signal.grad_norm:
        return grad_norm(model, images, labels)
    if signal is Signal.snip:
        return snip(model, images, labels)
    return zico(model, batches)
