"""Plain building blocks: conv-BN, residual, FFN, squeeze-excite, patch merging, BN fusion.

Modules that can be folded for deployment implement ``fuse() -> nn.Module``; :func:`fuse` walks a
model and swaps each for its folded form.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.spec.params import make_divisible


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BN that *follows* a conv/linear into that layer's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    fused_w = weight * scale.reshape(shape)
    fused_b = bn.bias - bn.running_mean * scale
    if bias is not None:
        fused_b = fused_b + bias * scale
    return fused_w, fused_b


def conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    out.weight.data.copy_(weight)
    out.bias.data.copy_(bias)
    return out


class ConvBN(nn.Sequential):
    """Bias-free ``Conv2d`` followed by ``BatchNorm2d`` (children ``c`` and ``bn``)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
        groups: int = 1, bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return conv_like(self.c, *fold_bn(self.c.weight, None, self.bn))


class BNLinear(nn.Sequential):
    """``BatchNorm1d`` then ``Linear`` (children ``bn`` and ``fc``), the classifier head."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(in_features))
        self.add_module("fc", nn.Linear(in_features, out_features))
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        # BN precedes the linear here: fc(bn(x)) = W·(s·x + t) + b = (W·diag(s))·x + (W·t + b).
        bn, fc = self.bn, self.fc
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        t = bn.bias - bn.running_mean * s
        out = nn.Linear(fc.in_features, fc.out_features, device=fc.weight.device, dtype=fc.weight.dtype)
        out.weight.data.copy_(fc.weight * s[None, :])
        out.bias.data.copy_(fc.bias + fc.weight @ t)
        return out


def add_identity(conv: nn.Conv2d) -> nn.Conv2d | None:
    """``x + conv(x)`` as one conv, or None when ``conv`` has no such form.

    For a depthwise, stride-1, odd-kernel conv with zero "same" padding and as many outputs as
    inputs, output channel c reads only input channel c and its kernel centre sits on the output
    pixel, so adding 1 to the centre tap adds x exactly: one conv instead of a conv and an add.
    """
    k = conv.kernel_size
    if not (
        conv.groups == conv.in_channels == conv.out_channels
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        and k[0] % 2 == 1 and k[1] % 2 == 1 and conv.padding == (k[0] // 2, k[1] // 2)
    ):
        return None
    weight = conv.weight.detach().clone()
    weight[:, 0, k[0] // 2, k[1] // 2] += 1.0
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
    return conv_like(conv, weight, bias)


def _has_onednn_linear() -> bool:
    """Whether this torch build has oneDNN's fused linear op (x86 / Arm builds with MKL-DNN)."""
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


ONEDNN_LINEAR = _has_onednn_linear()


def _register_reorder_shape() -> None:
    """Give ``mkldnn::_reorder_linear_weight`` the shape function (a "fake" kernel) that torch
    2.14 lacks, so that ``torch.compile`` can trace :meth:`Pointwise.onednn_weight`: the reordered
    weight has the weight's shape. Inductor inserts the same op itself after tracing, where it
    needs none. Left alone where torch has one of its own."""
    try:
        torch.library.register_fake("mkldnn::_reorder_linear_weight")(
            lambda weight, batch_size=None: torch.empty_like(weight))
    except RuntimeError:  # already registered (a newer torch, or mmlab imported twice)
        pass


if ONEDNN_LINEAR:
    _register_reorder_shape()


class Pointwise(nn.Module):
    """Deploy form of a dense 1x1 conv (stride 1, no padding): a matrix product over channels.

    On a channels-last map the (B, H, W, C) view is free, so the layer is one GEMM with no copy,
    and its output is channels-last again. At batch 1 on CPU, PyTorch sends a 1x1 conv on a small
    map (at most 20,480 input values) to its unblocked ``_slow_conv2d`` path and a larger one to
    oneDNN with a per-call set-up cost; the GEMM beats both (whole fused network, interleaved A/B
    at 2 threads: t2 3 %, b1 11 % faster).

    The GEMM is oneDNN's (``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once into
    oneDNN's blocked layout, what inductor does for low-precision linears) wherever it applies:
    float32 CPU inference, more than one row, not traced by an exporter. ``F.linear`` sends
    float32 to MKL's sgemm, which on this project's machines (AMD EPYC, Zen 5, 2 threads) runs
    these products at 50-90 GMAC/s against oneDNN's 105-200 (``benchmarks/gemm.py``; whole fused
    networks 0.75-0.89x the time). A single row (the squeeze-excite layers) stays ``F.linear``:
    MKL's matrix-vector product is the faster one there. Everywhere else (autograd, CUDA, other
    dtypes, ``torch.jit`` tracing for ONNX) it is ``F.linear`` too: the readable oracle, as is
    the conv it replaces (:meth:`from_conv`).

    The reordered weight is a cache, not state: rebuilt when :attr:`weight` changes (in place
    or replaced; an inference tensor, which counts no in-place changes, only when replaced), dropped
    from copies and pickles (oneDNN's opaque tensors have no storage to
    copy). Under ``torch.compile`` the reorder is an op in the graph, which ``freezing`` folds
    into a constant.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().contiguous())  # (O, I)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())  # (O,)
        self.relu = False  # a ReLU after the product, as oneDNN's post-op: set by fold_relus
        self._onednn_weight: tuple[tuple[int, int], torch.Tensor] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Pointwise | None":
        """The same map as ``conv``, or None when ``conv`` is not a dense stride-1 1x1 conv."""
        if not (conv.kernel_size == (1, 1) and conv.groups == 1 and conv.stride == (1, 1)
                and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)):
            return None
        return cls(conv.weight.reshape(conv.out_channels, conv.in_channels), conv.bias)

    def onednn_applies(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes oneDNN's GEMM for ``x`` (B, H, W, C) (else ``F.linear``)."""
        return (ONEDNN_LINEAR and not torch.jit.is_tracing() and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32 and x.numel() > x.shape[-1]
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))

    def onednn_weight(self) -> torch.Tensor:
        """:attr:`weight` in oneDNN's layout (cached while the weight is unchanged)."""
        if torch.compiler.is_compiling():  # an op of the graph, which frozen weights fold into a constant
            return torch.ops.mkldnn._reorder_linear_weight(self.weight)
        weight = self.weight
        key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version)  # inference tensors have no version
        if self._onednn_weight is None or self._onednn_weight[0] != key:
            self._onednn_weight = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
        return self._onednn_weight[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C): a free view of a channels-last map
        if self.onednn_applies(x):
            post_op, scalars = ("relu", [None]) if self.relu else ("none", [])
            y = torch.ops.mkldnn._linear_pointwise(x, self.onednn_weight(), self.bias, post_op, scalars, "")
        else:
            y = F.linear(x, self.weight, self.bias)  # (B, H, W, O)
            y = torch.relu(y) if self.relu else y
        return y.permute(0, 3, 1, 2)  # (B, O, H, W), channels-last

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_onednn_weight"] = None  # an opaque oneDNN tensor: no storage to copy or pickle
        return state

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, bias={self.bias is not None}, relu={self.relu}"


def depthwise_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, groups=C)`` for a depthwise ``weight``
    (O, 1, kh, kw), O a multiple of C, as the sum over its taps ``Σ_ij w[:, i, j] · shifted x``
    (:class:`TapConv`: what compilers fuse with their neighbours)."""
    b, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if out_ch != c:  # channel multiplier m: output channel o reads input channel o // m
        x = x.repeat_interleave(out_ch // c, dim=1)
    x = F.pad(x, (pw, pw, ph, ph))  # (B, O, H + 2ph, W + 2pw)
    taps = weight.reshape(out_ch, kh * kw)
    y = None
    for i in range(kh):
        for j in range(kw):
            shifted = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]  # (B, O, Ho, Wo)
            term = shifted * taps[:, i * kw + j].reshape(1, out_ch, 1, 1)
            y = term if y is None else y + term
    return y if bias is None else y + bias.reshape(1, out_ch, 1, 1)


class TapConv(nn.Module):
    """A depthwise conv written as a sum over its kernel taps: ``Σ_ij w[:, i, j] · shifted x``.

    For compilers, not for eager mode. ``torch.compile`` sends a conv to oneDNN as an opaque
    call (at batch 1 on these maps a ~100-200 us set-up floor per call, far above the
    arithmetic); the k·k shifted multiply-adds are element-wise, so inductor fuses them with
    the neighbouring bias, ReLU and residual into one vectorised loop (t2 compiled at 2 threads:
    about 18 % faster). In eager mode the same sum is k·k separate ops, slower than the conv.
    The readable oracle is the conv it replaces (:meth:`from_conv`).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().contiguous())  # (O, 1, kh, kw), O = multiplier·C
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())  # (O,)
        self.stride, self.padding = stride, padding

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "TapConv | None":
        """The same map as ``conv``, or None unless it is depthwise (one input channel per
        group) with zero padding given as numbers and no dilation."""
        if not (conv.groups == conv.in_channels and conv.groups > 1 and conv.dilation == (1, 1)
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
            return None
        return cls(conv.weight, conv.bias, conv.stride, conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_taps(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, stride={self.stride}, padding={self.padding}"


def swap_convs(module: nn.Module, replacement: Callable[[nn.Conv2d], nn.Module | None]) -> int:
    """Replace, in place, every ``Conv2d`` submodule of ``module`` for which ``replacement(child)``
    gives a module (e.g. :meth:`Pointwise.from_conv`, :meth:`TapConv.from_conv`); how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and (new := replacement(child)) is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += swap_convs(child, replacement)
    return count


class Residual(nn.Module):
    """``x + m(x)`` (child ``m``)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Deploy form: the fused child, with the identity folded in when it is a depthwise conv
        (:func:`add_identity`)."""
        m = fuse_module(copy.deepcopy(self.m))  # self stays as it is, like every fuse()
        if isinstance(m, nn.Conv2d) and (folded := add_identity(m)) is not None:
            return folded
        return Residual(m)


class FFN(nn.Module):
    """1x1 Conv-BN → ReLU → 1x1 Conv-BN with a zero-initialised last BN (zero at init)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class SqueezeExcite(nn.Module):
    """Global mean → 1x1 conv (bias) → ReLU → 1x1 conv (bias) → sigmoid gate."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * ratio, 8)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class PatchMerging(nn.Module):
    """Stride-2 inverted bottleneck with SE: 1x1 up to 4·in, DW 3x3/s2, SE, 1x1 down to out."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        hidden = 4 * in_ch
        self.conv1 = ConvBN(in_ch, hidden)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvBN(hidden, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act2(self.conv2(self.act1(self.conv1(x))))))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor, at every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # -> (B, C, H, W)


RELU_AFTER_POINTWISE = {FFN: (("pw1", "act"),), PatchMerging: (("conv1", "act1"),)}
"""Per module type, the (1x1 conv, ReLU) child pairs where the ReLU directly follows the conv."""


def fold_relus(model: nn.Module) -> int:
    """Make each ReLU that directly follows a :class:`Pointwise` (FFN ``pw1`` → ``act``,
    PatchMerging ``conv1`` → ``act1``) that product's post-op, in place; the ReLU module becomes
    ``nn.Identity``. Returns how many were folded. (oneDNN applies it while writing the product:
    one pass over the map less.)"""
    folded = 0
    for module in model.modules():
        for first, act in RELU_AFTER_POINTWISE.get(type(module), ()):
            layer = getattr(module, first)
            if isinstance(layer, Pointwise) and isinstance(getattr(module, act), nn.ReLU):
                layer.relu = True
                setattr(module, act, nn.Identity())
                folded += 1
    return folded


def fuse(model: nn.Module, inplace: bool = False, device: str = "cpu") -> nn.Module:
    """Deploy form: fold every BatchNorm into its neighbouring conv / linear, laid out for ``device``.

    ``cpu``: every dense 1x1 conv becomes a :class:`Pointwise` matrix product (with the ReLU that
    follows it as a post-op, :func:`fold_relus`) and every other conv gets channels-last weights,
    so activations stay channels-last from the stem on (oneDNN's fast kernels). ``cuda``: the
    convs stay NCHW ``Conv2d`` for cuDNN. There a 1x1 conv runs in TF32 under PyTorch's default
    settings, as it does in the authors' network, while a ``Pointwise``
    GEMM (cuBLAS, matmul TF32 off by default) runs in full fp32: on an H100 at batch 256 the CPU
    layout gave 0.74-0.86x the throughput (results/gpu_h100_layouts.md). Modules with a
    ``deploy_for(device)`` method pick their path too (the wavelet level, :class:`FusedGlobalBranch`).

    Args:
        model: any module; sub-modules with a ``fuse()`` method are replaced by its result.
        inplace: modify ``model`` itself instead of a deep copy.
        device: ``cpu`` or ``cuda``, the device type the layout is for (the model is not moved).

    Returns:
        The fused model, in eval mode. Outputs match the unfused model in eval mode.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: {device!r} is not allowed; allowed: cpu, cuda")
    model = model if inplace else copy.deepcopy(model)
    for name, child in model.named_children():
        setattr(model, name, fuse_module(child))
    for m in model.modules():
        if hasattr(m, "deploy_for"):  # a fused module with a per-device choice of path
            m.deploy_for(device)
    if device == "cpu":
        with torch.no_grad():
            swap_convs(model, Pointwise.from_conv)
            fold_relus(model)
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    # Channels-last weights make CPU convs take oneDNN's channels-last kernels (and
                    # give channels-last outputs, so the next layer needs no reorder): depthwise
                    # convs ~40% faster at these map sizes.
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model.eval()


def fuse_module(module: nn.Module) -> nn.Module:
    """``module.fuse()`` if it has one, else ``module`` with each child so replaced (in place)."""
    if hasattr(module, "fuse") and callable(module.fuse):
        return module.fuse()
    for name, child in module.named_children():
        setattr(module, name, fuse_module(child))
    return module
