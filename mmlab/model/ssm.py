"""The 2-D selective-state-space mixer (SS2D) of MobileMamba's global branch, channel-first."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.model.layers import ConvBN, LayerNorm2d, conv_like
from mmlab.model.scan import (
    selective_scan_chunked, selective_scan_chunked_plain, selective_scan_fast, selective_scan_infer, selective_scan_ref,
    selective_scan_triton, softplus, softplus_, triton_scan_applies,
)

DIRECTIONS = {"forward": 1, "bidi": 2, "cross": 4}


class SelectiveScan(torch.autograd.Function):
    """The fast scan as one autograd node.

    Tracers (fvcore) see a single ``prim::PythonOp.SelectiveScan`` whose MACs a handle can
    count, instead of hundreds of element-wise ops. The backward recomputes the forward with
    autograd, so gradients are exactly those of :func:`selective_scan_fast`, and no
    per-step intermediate is kept between forward and backward. It computes in
    ``promote_types(u.dtype, float32)``: float32 for half / bfloat16 / float32 inputs, float64
    for float64 inputs (float64 analyses such as SynFlow).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias):  # type: ignore[override]
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        dtype = torch.promote_types(u.dtype, torch.float32)
        return selective_scan_fast(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
        with torch.enable_grad():
            dtype = torch.promote_types(inputs[0].dtype, torch.float32)
            y = selective_scan_fast(*inputs[:5], D=inputs[5], delta_bias=inputs[6], delta_softplus=True, dtype=dtype)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y, allow_unused=True)) if wanted else iter(())
        return tuple(next(grads) if t.requires_grad else None for t in inputs)


def scan_sequences(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Unfold a feature map into the scan's sequences.

    Args:
        x: (B, D, H, W).
        mode: ``forward`` (row-major), ``bidi`` (row-major, then reversed) or ``cross``
            (row-major, reversed, column-major, reversed).

    Returns:
        (B, K, D, L) with L = H·W.
    """
    rows = x.flatten(2)  # (B, D, H*W), row-major
    if mode == "forward":
        return rows[:, None]
    if mode == "bidi":
        return torch.stack([rows, rows.flip(-1)], dim=1)
    cols = x.transpose(2, 3).flatten(2)  # (B, D, W*H), column-major
    return torch.stack([rows, rows.flip(-1), cols, cols.flip(-1)], dim=1)


def merge_sequences(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sum the K direction outputs back onto the (H, W) grid; inverse layout of :func:`scan_sequences`.

    Args:
        y: (B, K, D, L).

    Returns:
        (B, D, H, W).
    """
    b, k, d, _ = y.shape
    out = y[:, 0]
    if k >= 2:
        out = out + y[:, 1].flip(-1)
    if k == 4:
        cols = y[:, 2] + y[:, 3].flip(-1)  # (B, D, W*H) column-major
        out = out + cols.reshape(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)
    return out.reshape(b, d, h, w)


def chunk_layout_applies(mode: str, h: int, w: int) -> bool:
    """Whether :func:`chunked_sequences` can lay out ``mode``'s sequences of an h x w map: row-major
    sequences in chunks of W, column-major ones in chunks of H, all of one shape (H = W for cross)."""
    return mode != "cross" or h == w


def chunked_sequences(x: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`scan_sequences` already cut into chunks for :func:`~mmlab.model.scan.selective_scan_chunked`.

    A row-major sequence of an H x W map in chunks of T = W has position (h, w) at chunk h, step w:
    laid out (T, chunks, channels) that is the map with H and W swapped; a column-major one in
    chunks of H is the map itself; a reversed sequence is the same with both axes flipped.

    Args:
        x: (B, D, H, W), best channels-last (then the (B, H, W, D) view is free).
        mode: as :func:`scan_sequences`; ``cross`` needs H = W.

    Returns:
        (B, K, T, chunks, D) = (B, K, W, H, D), contiguous.
    """
    x = x.permute(0, 2, 3, 1)  # (B, H, W, D)
    rows = x.transpose(1, 2)  # (B, W, H, D): row-major sequences in chunks of W
    if mode == "forward":
        return rows.unsqueeze(1).contiguous()
    parts = [rows, rows.flip((1, 2))]
    if mode == "cross":
        parts += [x, x.flip((1, 2))]
    return torch.stack(parts, dim=1)


def merge_chunked(y: torch.Tensor, mode: str, in_place: bool = True) -> torch.Tensor:
    """Inverse layout of :func:`chunked_sequences`, summing the directions: (B, K, W, H, D) -> (B, H, W, D),
    contiguous. ``in_place=False``: out-of-place sums only (what tracers and autograd follow)."""
    b, k, w, h, d = y.shape
    if k == 1:
        return y[:, 0].transpose(1, 2).contiguous()
    if not in_place:
        out = y[:, 0].transpose(1, 2) + y[:, 1].flip((1, 2)).transpose(1, 2)
        return out + y[:, 2] + y[:, 3].flip((1, 2)) if mode == "cross" else out
    out = torch.add(y[:, 0].transpose(1, 2), y[:, 1].flip((1, 2)).transpose(1, 2), out=y.new_empty(b, h, w, d))
    if mode == "cross":
        out.add_(y[:, 2]).add_(y[:, 3].flip((1, 2)))
    return out


class SS2D(nn.Module):
    """Selective-scan mixer over a 2-D map (MobileMamba's ``v052d`` forward type).

    ``in_proj`` (1x1 Conv-BN, dim → 2·d_inner) splits into x and a gate z; x goes through a
    depthwise 3x3 conv (bias) and SiLU, is scanned along ``mode``'s directions with per-direction
    Δ/B/C projections, merged, layer-normed, gated by SiLU(z) and projected back by ``out_proj``.
    """

    def __init__(self, dim: int, d_inner: int, dt_rank: int, d_state: int = 1, mode: str = "bidi") -> None:
        super().__init__()
        k = DIRECTIONS[mode]
        self.mode, self.d_inner, self.dt_rank, self.d_state = mode, d_inner, dt_rank, d_state
        # Registration order follows the authors' state dict.
        # Per direction: one Linear d_inner -> (dt_rank + 2N), default Linear init, stacked.
        x_proj = torch.empty(k, dt_rank + 2 * d_state, d_inner)
        for i in range(k):
            nn.init.kaiming_uniform_(x_proj[i], a=math.sqrt(5))
        self.x_proj_weight = nn.Parameter(x_proj)
        # "v2" initialisation: D = 1, A = -1 (A_logs = 0), small uniform Δ projections.
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.A_logs = nn.Parameter(torch.zeros(k * d_inner, d_state))
        self.dt_projs_weight = nn.Parameter(0.1 * torch.rand(k, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(0.1 * torch.rand(k, d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.in_proj = ConvBN(dim, 2 * d_inner)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, 1, 1, groups=d_inner, bias=True)
        self.out_proj = ConvBN(d_inner, dim)
        # "fast": the Triton kernel on CUDA without autograd, else the chunked autograd path;
        # "chunked": always the chunked path; "plain": the chunked scan as plain out-of-place
        # tensor ops, no autograd.Function (what ONNX export and torch.compile trace: tracers
        # trip on the Function and on in-place scans); "ref": the readable reference (tests, debugging).
        self.scan_impl = "fast"

    def constants(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scan's input-independent tensors in its compute ``dtype``: A (K·Di, N), D (K·Di,), Δ bias (K·Di,)."""
        return -torch.exp(self.A_logs.to(dtype)), self.Ds.to(dtype), self.dt_projs_bias.reshape(-1).to(dtype)

    def project(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-direction projections of the sequences xs (B, K·Di, L): Δ (B, K·Di, L), B and C (B, K, N, L)."""
        b, _, seq = xs.shape
        k, di, r, n = self.directions, self.d_inner, self.dt_rank, self.d_state
        # Grouped 1x1 conv1d = one projection per direction.
        x_dbl = F.conv1d(xs, self.x_proj_weight.reshape(-1, di, 1), groups=k)  # (B, K*(R+2N), L)
        dts, bs, cs = x_dbl.reshape(b, k, r + 2 * n, seq).split([r, n, n], dim=2)
        dts = F.conv1d(dts.reshape(b, k * r, seq), self.dt_projs_weight.reshape(k * di, r, 1), groups=k)
        return dts, bs, cs

    def scan(self, *args: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The selective scan on ``(u, Δ, A, B, C, D, Δ bias)`` along ``scan_impl``'s path, in ``dtype``."""
        if self.scan_impl == "fast" and triton_scan_applies(*args, dtype=dtype):
            return selective_scan_triton(*args[:5], D=args[5], delta_bias=args[6], delta_softplus=True)  # fp32
        if self.scan_impl in ("fast", "chunked"):
            return SelectiveScan.apply(*args)
        if self.scan_impl == "plain":
            return selective_scan_fast(*args[:5], D=args[5], delta_bias=args[6], delta_softplus=True, dtype=dtype)
        return selective_scan_ref(*args[:5], D=args[5], delta_bias=args[6], delta_softplus=True, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k, di, seq = self.directions, self.d_inner, h * w
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 for fp16 / bf16 / fp32, fp64 kept
        A, D, dt_bias = self.constants(dtype)
        x, z = self.in_proj(x).chunk(2, dim=1)  # (B, Di, H, W) each
        z = F.silu(z)
        x = F.silu(self.conv2d(x))
        xs = scan_sequences(x, self.mode).reshape(b, k * di, seq)  # (B, K*Di, L)
        dts, bs, cs = self.project(xs)
        y = self.scan(xs, dts, A, bs, cs, D, dt_bias, dtype=dtype).to(x.dtype)  # (B, K*Di, L)
        y = merge_sequences(y.reshape(b, k, di, seq), h, w)  # (B, Di, H, W)
        y = self.out_norm(y) * z
        return self.out_proj(y)

    @property
    def directions(self) -> int:
        """K, the number of scan directions."""
        return DIRECTIONS[self.mode]

    @torch.no_grad()
    def fuse(self, out_scale: torch.Tensor | None = None) -> "FusedSS2D":
        """Deploy form (:class:`FusedSS2D`); ``out_scale`` (Dim,) multiplies the output, folded into out_proj."""
        return FusedSS2D(self, out_scale)


class FusedSS2D(SS2D):
    """Deploy form of :class:`SS2D`, same outputs: in_proj / out_proj BatchNorms folded, an optional
    per-channel output scale folded into out_proj, the input-independent tensors of
    :meth:`SS2D.constants` computed once (buffers), the projections as batched matrix products,
    and on CPU without autograd the in-place scan. Still an ``SS2D`` (``scan_impl`` applies).
    """

    def __init__(self, trained: SS2D, out_scale: torch.Tensor | None = None) -> None:
        nn.Module.__init__(self)
        self.mode, self.d_inner, self.dt_rank, self.d_state = trained.mode, trained.d_inner, trained.dt_rank, trained.d_state
        self.scan_impl = trained.scan_impl
        self.in_proj = trained.in_proj.fuse()
        out_proj = trained.out_proj.fuse()
        if out_scale is not None:
            scale = out_scale.reshape(-1)
            out_proj = conv_like(out_proj, out_proj.weight * scale[:, None, None, None], out_proj.bias * scale)
        self.out_proj = out_proj
        self.conv2d = copy.deepcopy(trained.conv2d)
        self.out_norm = copy.deepcopy(trained.out_norm)
        dtype = torch.promote_types(trained.A_logs.dtype, torch.float32)
        for name, value in zip(("A", "D", "dt_bias"), trained.constants(dtype)):
            self.register_buffer(name, value.detach().clone())
        self.register_buffer("x_proj", trained.x_proj_weight.detach().clone())  # (K, R+2N, Di)
        self.register_buffer("dt_proj", trained.dt_projs_weight.detach().clone())  # (K, Di, R)

    def constants(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.A.to(dtype), self.D.to(dtype), self.dt_bias.to(dtype)

    def project(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`SS2D.project`, as two batched matrix products over the K directions (a grouped
        1-D conv takes a slow per-group path on CPU)."""
        b, _, seq = xs.shape
        k, di, r, n = self.directions, self.d_inner, self.dt_rank, self.d_state
        x_dbl = torch.matmul(self.x_proj, xs.reshape(b, k, di, seq))  # (B, K, R+2N, L)
        dts, bs, cs = x_dbl.split([r, n, n], dim=2)
        dts = torch.matmul(self.dt_proj, dts)  # (B, K, Di, L)
        return dts.reshape(b, k * di, seq), bs, cs

    def scan(self, *args: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """As :meth:`SS2D.scan`, but ``fast`` without a gradient wanted (inference) on CPU is the
        in-place :func:`~mmlab.model.scan.selective_scan_infer`."""
        if self.scan_impl == "fast" and not triton_scan_applies(*args, dtype=dtype) and not (
            torch.is_grad_enabled() and any(t.requires_grad for t in args)
        ):
            return selective_scan_infer(*args[:5], D=args[5], delta_bias=args[6], delta_softplus=True, dtype=dtype)
        return super().scan(*args, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`SS2D.forward`; on CPU in inference (``fast``, grad mode off) and on the
        ``plain`` path the sequences are laid out in scan chunks from the start
        (:func:`chunked_sequences`), so the projections, the scan and the merge need no
        transposing copies. ``fast`` scans in place (:func:`~mmlab.model.scan.selective_scan_chunked`)
        with the Δ bias riding on the Δ projection (``baddbmm``); ``plain`` (what compilers and
        exporters trace) scans out of place (:func:`~mmlab.model.scan.selective_scan_chunked_plain`)
        and broadcasts over the batch, so an exported graph takes any batch size."""
        b, _, h, w = x.shape
        in_place = self.scan_impl == "fast" and not torch.is_grad_enabled()
        if not (in_place or self.scan_impl == "plain") or x.is_cuda or not chunk_layout_applies(self.mode, h, w):
            return super().forward(x)
        k, di, r, n = self.directions, self.d_inner, self.dt_rank, self.d_state
        dtype = torch.promote_types(x.dtype, torch.float32)
        x, z = self.in_proj(x).chunk(2, dim=1)  # (B, Di, H, W) each
        z = F.silu(z)
        xs = chunked_sequences(F.silu(self.conv2d(x)), self.mode).to(dtype)  # (B, K, T, chunks, Di)
        chunks = xs.shape[:-1]
        x_dbl = torch.matmul(xs.reshape(b, k, h * w, di), self.x_proj.to(dtype).transpose(1, 2))  # (B, K, L, R+2N)
        dts, bs, cs = x_dbl.split([r, n, n], dim=-1)
        dt_proj, dt_bias = self.dt_proj.to(dtype).transpose(1, 2), self.dt_bias.to(dtype).reshape(k, 1, di)
        if not in_place:  # broadcast over any batch (an exported graph may get another batch size)
            delta = softplus(torch.matmul(dts, dt_proj) + dt_bias)  # (B, K, L, Di)
        else:
            if b > 1:
                dt_proj, dt_bias = dt_proj.repeat(b, 1, 1), dt_bias.repeat(b, 1, 1)
            delta = softplus_(torch.baddbmm(dt_bias, dts.reshape(b * k, h * w, r), dt_proj))  # (B*K, L, Di)
        A, D, _ = self.constants(dtype)
        scan = selective_scan_chunked if in_place else selective_scan_chunked_plain
        y = scan(xs, delta.reshape(xs.shape), A, bs.reshape(*chunks, n), cs.reshape(*chunks, n), D)
        y = merge_chunked(y.to(x.dtype), self.mode, in_place)  # (B, H, W, Di)
        norm = self.out_norm
        y = F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps) * z.permute(0, 2, 3, 1)
        return self.out_proj(y.permute(0, 3, 1, 2))  # channels-last (B, Di, H, W)
