"""Zero-cost proxies: a number from an untrained network where higher should mean more accurate.

:func:`mmlab.signals.score` is the one entry point (the registry in :mod:`mmlab.signals.registry`
names every signal); each proxy is also public on its own:

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

At MobileMamba's reference initialisation every block branch ends in a BatchNorm with γ = 0, so
every weight inside a block (FFNs, mixer, SSM, wavelet convs) has an exactly zero gradient. The
gradient proxies (grad_norm, snip, zico) and MeCo therefore score a copy whose zero γ are set to 1
(:func:`unit_gamma`, as AZ-NAS and Zen-NAS do; ``gamma_one=False`` gives the plain score); the
caller's model is never changed. SynFlow removes BatchNorm altogether and NASWOT reads activation
patterns, so both see the blocks as they are.

meco          Σ over conv layers of the minimum eigenvalue of the channel-correlation matrix of
              its feature map on one image (Jiang et al. 2023, "MeCo: Zero-Shot NAS with One
              Data and Single Forward Pass"), γ = 1 copy, eval-mode BatchNorm
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from mmlab.model import MobileMamba

__all__ = ["grad_norm", "is_weight", "meco", "naswot", "snip", "synflow", "unit_gamma", "zico"]


# ---- helpers shared by the proxies ---------------------------------------------------------


def is_weight(name: str, p: nn.Parameter) -> bool:
    """Trainable, two or more dimensions and not a bias (``dt_projs_bias`` is 2-D)."""
    return p.requires_grad and p.dim() >= 2 and not name.endswith("bias")


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights (see the module docstring), in registration order."""
    return [p for name, p in model.named_parameters() if is_weight(name, p)]


def batch_statistics_mode(model: nn.Module) -> nn.Module:
    """Train mode (BatchNorm on batch statistics) with stochastic depth and dropout off; in place."""
    model.train()
    for module in model.modules():
        if isinstance(module, (DropPath, nn.Dropout)):
            module.eval()
    return model


def unit_gamma(model: nn.Module) -> nn.Module:
    """Set every BatchNorm γ that is exactly zero to 1, in place (what AZ-NAS and Zen-NAS do before
    scoring): MobileMamba zero-initialises the γ that ends each block branch, which would hide
    every weight inside the blocks from a gradient."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                module.weight[module.weight == 0] = 1.0
    return model


def _train_copy(model: nn.Module, gamma_one: bool = False) -> nn.Module:
    """A copy in :func:`batch_statistics_mode` (γ = 1 where zero if ``gamma_one``); the caller's
    model keeps its statistics and its γ."""
    net = copy.deepcopy(model)
    if gamma_one:
        unit_gamma(net)
    return batch_statistics_mode(net)


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


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, gamma_one: bool = True) -> float:
    """Gradient norm (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS").

    Σ over weight tensors of ‖∂CE/∂θ‖₂ on one batch, train mode (BatchNorm on batch statistics).

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W), B >= 2.
        labels: (B,) class indices.
    """
    _check_batch(images, labels)
    net = _train_copy(model, gamma_one)
    grads = _gradients(net, _weights(net), images, labels)
    return float(sum(g.double().norm() for g in grads))


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, gamma_one: bool = True) -> float:
    """SNIP saliency (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity"), summed as a zero-cost proxy (Abdelfattah et al. 2021).

    Σ over weights of |θ ⊙ ∂CE/∂θ| on one batch, train mode (BatchNorm on batch statistics).

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W), B >= 2.
        labels: (B,) class indices.
    """
    _check_batch(images, labels)
    net = _train_copy(model, gamma_one)
    weights = _weights(net)
    grads = _gradients(net, weights, images, labels)
    return float(sum((p.detach().double() * g.double()).abs().sum() for p, g in zip(weights, grads)))


def zico(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, gamma_one: bool = True) -> float:
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
    net = _train_copy(model, gamma_one)
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


def meco(model: nn.Module, images: torch.Tensor) -> float:
    """MeCo (Jiang et al. 2023): how decorrelated each layer's channels are, from one image.

    For every ``Conv2d`` whose output has at least two channels and two positions: the Pearson
    correlation matrix of its channels over positions (C×C, float64, undefined entries of constant
    channels set to 0), its smallest eigenvalue; the score is the sum over layers. Scored on a
    γ = 1 copy in eval mode (untrained running statistics: BatchNorm is the identity), on
    ``images[:1]``.

    Args:
        model: an untrained network; it is not modified.
        images: (B, C, H, W); only the first image is used.
    """
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images: shape {tuple(images.shape)} is not allowed; need (B, C, H, W)")
    net = unit_gamma(copy.deepcopy(model)).eval()
    values: list[float] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        c = output.shape[1]
        features = output[0].detach().double().reshape(c, -1)  # (C, H*W)
        if c < 2 or features.shape[1] < 2:
            return
        corr = torch.nan_to_num(torch.corrcoef(features), nan=0.0)
        values.append(float(torch.linalg.eigvalsh(corr)[0]))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(images[:1])
    finally:
        for h in handles:
            h.remove()
    if not values:
        raise ValueError("meco: no conv layer has two channels and two positions")
    return math.fsum(values)
