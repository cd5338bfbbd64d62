"""Short training: held-out top-1 after a few epochs from scratch, the signal every proxy is checked against."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from mmlab.meter.devices import check_device
from mmlab.model import build
from mmlab.signals.data import Batches
from mmlab.signals.proxies import batch_statistics_mode, is_weight
from mmlab.spec.arch import ArchSpec

__all__ = ["TRAIN_BATCH", "TrainResult", "train"]

TRAIN_BATCH = 64


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        top1: held-out top-1 accuracy (%) after the last epoch.
        top1_per_epoch: held-out top-1 (%) after each epoch, first epoch first.
        seconds: wall time of the whole run (build, training and evaluations).
        train_images: training images processed, all epochs together.
        state: the trained network's ``state_dict`` (on the CPU, BatchNorm statistics as evaluated),
            to continue training from with ``train(..., init_state=state)``; None when built by hand.
    """

    top1: float
    top1_per_epoch: tuple[float, ...]
    seconds: float
    train_images: int
    state: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weights, none on 1-D parameters and biases (the authors' split)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if is_weight(name, p) else no_decay).append(p)
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
def _recalibrate_batchnorm(model: nn.Module, loader: Batches, device: torch.device) -> None:
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
    batch_statistics_mode(model)
    seen = 0
    for images, _ in loader:
        model(images.to(device))
        seen += len(images)
        if seen >= _PRECISE_BN_IMAGES:
            break
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


@torch.inference_mode()
def _top1(model: nn.Module, loader: Batches, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        logits = model(images.to(device))  # (B, classes)
        correct += int((logits.argmax(dim=1) == labels.to(device)).sum())
        seen += len(labels)
    return 100.0 * correct / seen


def train(
    spec: ArchSpec,
    train_set: Dataset,
    val_set: Dataset,
    *,
    epochs: int = 3,
    batch_size: int = TRAIN_BATCH,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
    num_classes: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``spec`` for a few epochs (from scratch, or from ``init_state``) and report held-out top-1 after each.

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
        init_state: start from these weights (a :attr:`TrainResult.state` of the same adapted
            spec) instead of the seeded initialisation: ``epochs`` more epochs, with a fresh
            optimizer and a fresh warm-up + cosine schedule over them (a warm restart, as in
            SGDR); ``seed`` still seeds the shuffling and stochastic depth.

    Returns:
        A :class:`TrainResult`, the trained weights in ``state``.

    Raises:
        ValueError: a bad argument, non-square images, fewer than two training images, an
            unavailable device or an ``init_state`` that does not fit the network.
    """
    start = time.perf_counter()
    dev = torch.device(check_device(device).name)
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
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except RuntimeError as err:  # missing / unexpected keys or shapes: another architecture
            first = (str(err).strip().splitlines() or [""])[-1].strip()
            raise ValueError(f"init_state: does not fit {adapted.key} ({first[:200]})") from None
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    loader = Batches(train_set, min(batch_size, len(train_set)), shuffle=True, drop_last=True, seed=seed, device=dev)
    calibration = Batches(train_set, batch_size, shuffle=True, seed=seed, device=dev)
    val_loader = Batches(val_set, 4 * batch_size, shuffle=False, device=dev)  # eval mode: batch size is free
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(round(warmup_epochs * len(loader)), steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    per_epoch: list[float] = []
    seen = 0
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(labels)
        _recalibrate_batchnorm(model, calibration, dev)
        per_epoch.append(_top1(model, val_loader, dev))
        if on_epoch is not None:
            on_epoch(epoch, per_epoch[-1])
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return TrainResult(per_epoch[-1], tuple(per_epoch), time.perf_counter() - start, seen, state)
