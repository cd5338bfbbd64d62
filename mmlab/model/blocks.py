"""The multi-receptive-field mixer (global | local | identity) and the MobileMamba block."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from mmlab.model.layers import FFN, ConvBN, Residual, conv_like, fold_bn
from mmlab.model.ssm import SS2D
from mmlab.model.wavelet import fold_haar_level, haar_level, haar_level_taps, wavelet_filters, wavelet_path


class ChannelScale(nn.Module):
    """Learnable per-channel scale, weight of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class GlobalBranch(nn.Module):
    """WTE-Mamba: ``base_scale ⊙ SS2D(x) + wavelet path(x)``.

    The wavelet path decomposes x ``levels`` times (zero-padding odd sizes), filters the four
    sub-bands of each level with a depthwise k×k conv and a per-channel scale (init 0.1), and
    reconstructs from the coarsest level up. The fixed filters are frozen ``nn.Parameter``s
    (``wt_filter``, ``iwt_filter``), as in the reference, so they are in the state dict and in
    parameter counts.
    """

    def __init__(
        self, dim: int, kernel: int, levels: int, wavelet: str,
        d_inner: int, dt_rank: int, d_state: int, scan: str,
    ) -> None:
        super().__init__()
        self.levels = levels
        if levels > 0:
            dec, rec = wavelet_filters(wavelet)  # (4, k, k) each
            self.wt_filter = nn.Parameter(dec[:, None].repeat(dim, 1, 1, 1), requires_grad=False)  # (4C, 1, k, k)
            self.iwt_filter = nn.Parameter(rec[:, None].repeat(dim, 1, 1, 1), requires_grad=False)
        self.ssm = SS2D(dim, d_inner, dt_rank, d_state, scan)
        self.base_scale = ChannelScale(dim, 1.0)
        self.wavelet_convs = nn.ModuleList(
            nn.Conv2d(4 * dim, 4 * dim, kernel, padding="same", groups=4 * dim, bias=False) for _ in range(levels)
        )
        self.wavelet_scale = nn.ModuleList(ChannelScale(4 * dim, 0.1) for _ in range(levels))

    def wavelet_path(self, x: torch.Tensor) -> torch.Tensor:
        return wavelet_path(x, self.wt_filter, self.iwt_filter, self.wavelet_convs, self.wavelet_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_scale(self.ssm(x))
        return y + self.wavelet_path(x) if self.levels else y

    @torch.no_grad()
    def fuse(self) -> "FusedGlobalBranch":
        return FusedGlobalBranch(self)


class FusedGlobalBranch(nn.Module):
    """Deploy form of :class:`GlobalBranch`, same outputs.

    ``base_scale`` is folded into the SS2D's out_proj and each level's sub-band scale into its
    conv; a one-level transform with 2×2 filters (Haar: every released model) becomes one
    stride-2 conv and a pixel shuffle (:func:`~mmlab.model.wavelet.fold_haar_level`); other
    transforms keep the level-by-level path.

    ``wavelet_impl``: ``folded`` (the one grouped conv, where it applies), ``levels`` (the
    level-by-level path: analysis conv, depthwise sub-band conv, synthesis conv) or, for the
    folded level, ``taps`` (the level path in element-wise ops, which compilers fuse:
    :func:`~mmlab.model.wavelet.haar_level_taps`, what the CPU ``compile`` runtime traces). The
    folded conv does 4·k² multiply-adds per output against the sub-band conv's k²: fewer ops on
    CPU, but on CUDA cuDNN runs it as a slow grouped kernel (b2 at batch 256 on an H100: 16 % of
    the forward).
    """

    def __init__(self, trained: GlobalBranch) -> None:
        super().__init__()
        self.ssm = trained.ssm.fuse(out_scale=trained.base_scale.weight)
        self.levels = trained.levels
        self.folded_level = False
        if not self.levels:
            return
        self.folded_level = self.levels == 1 and trained.wt_filter.shape[-1] == 2
        self.wavelet_impl = "folded" if self.folded_level else "levels"
        # The level path's tensors; kept out of the state dict when the folded conv stands for them.
        persistent = not self.folded_level
        self.register_buffer("wt_filter", trained.wt_filter.detach().clone(), persistent=persistent)
        self.register_buffer("iwt_filter", trained.iwt_filter.detach().clone(), persistent=persistent)
        if self.folded_level:
            scale = trained.wavelet_scale[0].weight.reshape(-1)
            self.register_buffer("band_weight", trained.wavelet_convs[0].weight * scale.reshape(-1, 1, 1, 1),
                                 persistent=False)  # (4C, 1, k, k), the level path's sub-band conv
            weight = fold_haar_level(trained.wt_filter, trained.wavelet_convs[0].weight, scale, trained.iwt_filter)
            c4, _, k, _ = weight.shape
            # A Conv2d, so that fuse() gives it channels-last weights like every other conv (a
            # plain tensor weight would be reordered on every call).
            self.wavelet_conv = nn.Conv2d(c4, c4, k, padding=k // 2, groups=c4 // 4, bias=False, device=weight.device)
            self.wavelet_conv.weight.data.copy_(weight)
            return
        self.wavelet_convs = copy.deepcopy(trained.wavelet_convs)
        for conv, scale in zip(self.wavelet_convs, trained.wavelet_scale):
            conv.weight.mul_(scale.weight.reshape(-1, 1, 1, 1))

    def deploy_for(self, device: str) -> None:
        """The faster wavelet path on ``device``: ``folded`` on CPU, ``levels`` on CUDA (batch 256
        on an H100, interleaved: b1 1.02x, b2 1.05x, b4 1.07x the folded throughput; t2, s6 1.00x)."""
        if self.folded_level:
            self.wavelet_impl = "levels" if device == "cuda" else "folded"

    def _band_conv(self, bands: torch.Tensor) -> torch.Tensor:
        """The folded level's sub-band conv, depthwise k×k (B, 4C, h, w) -> (B, 4C, h, w)."""
        return F.conv2d(bands, self.band_weight, padding=self.band_weight.shape[-1] // 2, groups=bands.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ssm(x)
        if not self.levels:
            return y
        if self.folded_level and self.wavelet_impl == "folded":
            return y + haar_level(x, self.wavelet_conv.weight)
        if self.folded_level and self.wavelet_impl == "taps":
            return y + haar_level_taps(x, self.wt_filter, self.band_weight, self.iwt_filter)
        convs = [self._band_conv] if self.folded_level else self.wavelet_convs
        return y + wavelet_path(x, self.wt_filter, self.iwt_filter, convs)


class LocalBranch(nn.Module):
    """MK-DeConv: DW k×k conv → BN → ReLU → per-channel 1x1 (groups = C) → BN."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        # Named dwconv3x3 whatever the kernel: the authors' name, so their checkpoints load key for key.
        self.dwconv3x3 = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU()
        self.dwconv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.dwconv1x1(self.relu(self.bn1(self.dwconv3x3(x)))))

    @torch.no_grad()
    def fuse(self) -> "FusedLocalBranch":
        first = conv_like(self.dwconv3x3, *fold_bn(self.dwconv3x3.weight, None, self.bn1))
        scale, shift = fold_bn(self.dwconv1x1.weight, None, self.bn2)  # (C, 1, 1, 1), (C,)
        return FusedLocalBranch(first, scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1))


class FusedLocalBranch(nn.Module):
    """Deploy form of :class:`LocalBranch`: ``relu(conv(x)) · scale + shift``, BatchNorms folded.

    The per-channel 1x1 conv and its BN are a per-channel affine map: one ``addcmul`` instead of
    a convolution call.
    """

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("scale", scale.detach().clone())  # (1, C, 1, 1)
        self.register_buffer("shift", shift.detach().clone())  # (1, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, torch.relu(self.conv(x)), self.scale)


class Mixer(nn.Module):
    """MRFFI: split channels [global | local | identity], mix each, concat, ReLU, 1x1 Conv-BN (γ=0)."""

    def __init__(self, dim: int, split: tuple[int, int, int], global_op: nn.Module, local_op: nn.Module) -> None:
        super().__init__()
        self.split = split
        self.local_op = local_op  # registered before global_op: the authors' state-dict order
        self.global_op = global_op
        self.act = nn.ReLU()
        self.proj = ConvBN(dim, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg, xl, xi = torch.split(x, self.split, dim=1)
        x = torch.cat([self.global_op(xg), self.local_op(xl), xi], dim=1)
        return self.proj(self.act(x))


class Block(nn.Module):
    """``x + DropPath(ffn1(dw1(mixer(ffn0(dw0(x))))))``, each of the five a residual.

    Every inner branch is zero at initialisation, so a fresh block returns 2·x (the reference's
    double identity), and a dropped sample returns x.
    """

    def __init__(self, dim: int, ffn_hidden: int, mixer: nn.Module, drop_path: float) -> None:
        super().__init__()
        self.dw0 = Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0))
        self.ffn0 = Residual(FFN(dim, ffn_hidden))
        self.mixer = Residual(mixer)
        self.dw1 = Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0))
        self.ffn1 = Residual(FFN(dim, ffn_hidden))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x))))))
