"""2-D discrete wavelet transform as fixed depthwise convolutions (analysis and synthesis).

Sub-band order per channel: LL, then the three detail bands. For ``db1`` (Haar) the analysis
filters are ½[[1,1],[1,1]], ½[[1,1],[-1,-1]], ½[[1,-1],[1,-1]], ½[[1,-1],[-1,1]] and the synthesis
filters hold the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmlab.model.layers import depthwise_taps


def wavelet_filters(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 2-D analysis and synthesis filters of a discrete PyWavelets wavelet.

    Returns:
        ``(dec, rec)``, each of shape (4, k, k) with k the wavelet's filter length.
    """
    import pywt

    w = pywt.Wavelet(name)
    # conv2d is a cross-correlation, so the analysis filters are reversed to make it a convolution.
    dec_lo = torch.tensor(w.dec_lo[::-1], dtype=torch.float32)
    dec_hi = torch.tensor(w.dec_hi[::-1], dtype=torch.float32)
    rec_lo = torch.tensor(w.rec_lo, dtype=torch.float32)
    rec_hi = torch.tensor(w.rec_hi, dtype=torch.float32)

    def bands(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        # band[i, j] = row_filter[i] * col_filter[j]: LL, (hi rows, lo cols), (lo rows, hi cols), HH.
        return torch.stack([lo[:, None] * lo[None, :], hi[:, None] * lo[None, :],
                            lo[:, None] * hi[None, :], hi[:, None] * hi[None, :]])

    return bands(dec_lo, dec_hi), bands(rec_lo, rec_hi)


def dwt(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One analysis level.

    Args:
        x: (B, C, H, W) with H, W even.
        filters: (4C, 1, k, k) analysis filters repeated per channel.

    Returns:
        (B, C, 4, H/2, W/2): the four sub-bands of each channel.
    """
    b, c, h, w = x.shape
    pad = filters.shape[-1] // 2 - 1
    y = F.conv2d(x, filters.to(x.dtype), stride=2, padding=pad, groups=c)  # (B, 4C, H/2, W/2)
    return y.reshape(b, c, 4, h // 2, w // 2)


def idwt(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One synthesis level, the inverse of :func:`dwt`.

    Args:
        x: (B, C, 4, h, w) sub-bands.
        filters: (4C, 1, k, k) synthesis filters repeated per channel.

    Returns:
        (B, C, 2h, 2w).
    """
    b, c, _, h, w = x.shape
    pad = filters.shape[-1] // 2 - 1
    x = x.reshape(b, 4 * c, h, w)  # (B, C, 4, h, w) -> (B, 4C, h, w)
    return F.conv_transpose2d(x, filters.to(x.dtype), stride=2, padding=pad, groups=c)


def wavelet_path(
    x: torch.Tensor, dec: torch.Tensor, rec: torch.Tensor, convs: list, scales: list | None = None
) -> torch.Tensor:
    """MobileMamba's wavelet path: ``len(convs)`` levels down, each level's four sub-bands filtered,
    then reconstructed from the coarsest level up (the readable form; see :func:`fold_haar_level`).

    Args:
        x: (B, C, H, W), any H, W: odd sizes are zero-padded at the bottom / right, then cropped.
        dec, rec: (4C, 1, k, k) analysis and synthesis filters repeated per channel.
        convs: one module per level mapping the (B, 4C, h, w) sub-bands to filtered sub-bands.
        scales: one module per level applied after its conv, or None (scales folded into the convs).

    Returns:
        (B, C, H, W).
    """
    lows, highs, sizes = [], [], []
    ll = x
    for i, conv in enumerate(convs):
        h, w = ll.shape[-2:]
        sizes.append((h, w))
        if h % 2 or w % 2:
            ll = F.pad(ll, (0, w % 2, 0, h % 2))
        bands = dwt(ll, dec)  # (B, C, 4, h/2, w/2)
        ll = bands[:, :, 0]  # the unfiltered LL is decomposed again at the next level
        b, c, _, bh, bw = bands.shape
        filtered = conv(bands.reshape(b, 4 * c, bh, bw))
        if scales is not None:
            filtered = scales[i](filtered)
        filtered = filtered.reshape(b, c, 4, bh, bw)
        lows.append(filtered[:, :, 0])
        highs.append(filtered[:, :, 1:])
    out = 0
    for low, high, (h, w) in zip(reversed(lows), reversed(highs), reversed(sizes)):
        bands = torch.cat([(low + out).unsqueeze(2), high], dim=2)  # (B, C, 4, h', w')
        out = idwt(bands, rec)[:, :, :h, :w]
    return out


def fold_haar_level(dec: torch.Tensor, conv_weight: torch.Tensor, scale: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """A one-level wavelet path with 2×2 filters (Haar) as the weights of one grouped conv.

    ``idwt(scale · conv(dwt(x)))``, with ``conv`` depthwise k×k (k odd, zero "same" padding), is
    per channel: sub-band j = the stride-2 2×2 filter f_j, then K_j on the half-size grid, which is
    one stride-2 conv with the 2k×2k kernel kron(K_j, f_j) and padding k-1 (zeros around x are zeros
    around the sub-bands); the synthesis puts Σ_j g_j[p, q]·(sub-band j) at sub-pixel (p, q) of each
    2×2 output block. A stride-2 conv is a stride-1 conv on the pixel-unshuffled input (the four
    sub-pixels of a 2×2 block as four channels), so the whole path is ``pixel_unshuffle``, a k×k
    conv with C groups of 4 → 4 channels, and ``pixel_shuffle`` (:func:`haar_level`): three ops
    instead of about twelve, and no strided or transposed depthwise conv (slow paths on CPU).

    Args:
        dec, rec: (4C, 1, 2, 2) analysis and synthesis filters repeated per channel.
        conv_weight: (4C, 1, k, k) the sub-band conv (groups 4C).
        scale: (4C,) the per-sub-band scale after it.

    Returns:
        (4C, 4, k, k) weights: output channel 4c + 2p + q is sub-pixel (p, q) of channel c, input
        channel 4c + 2p' + q' sub-pixel (p', q') of channel c.
    """
    c4, _, k, _ = conv_weight.shape
    if dec.shape != (c4, 1, 2, 2) or rec.shape != dec.shape or k % 2 == 0:
        raise ValueError(f"fold_haar_level: filters {tuple(dec.shape)} and conv {tuple(conv_weight.shape)} are not "
                         f"allowed; needs (4C, 1, 2, 2) filters and an odd kernel")
    banded = conv_weight[:, 0] * scale.reshape(c4, 1, 1)  # (4C, k, k)
    per_band = torch.einsum("nab,npq->napbq", banded, dec[:, 0]).reshape(c4 // 4, 4, k, 2, k, 2)  # kron(K_j, f_j)
    synth = rec[:, 0].reshape(c4 // 4, 4, 2, 2)  # (C, band j, p, q)
    stride2 = torch.einsum("cjpq,cjaubv->cpqaubv", synth, per_band)  # (C, p, q, a, p', b, q'): the stride-2 kernel
    return stride2.permute(0, 1, 2, 4, 6, 3, 5).reshape(c4, 4, k, k).contiguous()


def haar_level(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The folded one-level path of :func:`fold_haar_level` on x (B, C, H, W), any H, W → (B, C, H, W)."""
    h, w = x.shape[-2:]
    odd = h % 2 or w % 2
    if odd:  # as the reference: zero-pad to even at the bottom / right, crop afterwards
        x = F.pad(x, (0, w % 2, 0, h % 2))
    y = F.conv2d(F.pixel_unshuffle(x, 2), weight, padding=weight.shape[-1] // 2, groups=x.shape[1])
    y = F.pixel_shuffle(y, 2)
    return y[:, :, :h, :w] if odd else y


def haar_level_taps(x: torch.Tensor, dec: torch.Tensor, band_weight: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """The one-level path of :func:`wavelet_path` with 2×2 filters, in element-wise ops only: for
    compilers (as :class:`~mmlab.model.layers.TapConv`), which fuse them, where each conv would be
    an opaque oneDNN call with a set-up floor.

    The analysis is a 4×4 mix of each channel's 2×2 sub-pixels (``pixel_unshuffle``), the sub-band
    conv a depthwise tap sum, the synthesis the inverse mix and ``pixel_shuffle``: k² + 32
    multiply-adds per 2×2 block and channel against the folded conv's 16·k² (:func:`haar_level`).

    Args:
        x: (B, C, H, W), any H, W (odd sizes zero-padded at the bottom / right, then cropped).
        dec, rec: (4C, 1, 2, 2) analysis and synthesis filters repeated per channel.
        band_weight: (4C, 1, k, k) the sub-band conv, its scale folded in, k odd.

    Returns:
        (B, C, H, W).
    """
    h, w = x.shape[-2:]
    odd = h % 2 or w % 2
    if odd:
        x = F.pad(x, (0, w % 2, 0, h % 2))
    b, c = x.shape[:2]
    hh, hw = x.shape[2] // 2, x.shape[3] // 2
    sub = F.pixel_unshuffle(x, 2).reshape(b, c, 1, 4, hh, hw)  # sub-pixel (p, q) at 2p + q
    bands = (dec.reshape(1, c, 4, 4, 1, 1) * sub).sum(3)  # (B, C, 4 bands, h/2, w/2)
    k = band_weight.shape[-1]
    filtered = depthwise_taps(bands.reshape(b, 4 * c, hh, hw), band_weight, padding=(k // 2, k // 2))
    mixed = (rec.reshape(1, c, 4, 4, 1, 1) * filtered.reshape(b, c, 4, 1, hh, hw)).sum(2)  # (B, C, 4 sub-pixels, ...)
    y = F.pixel_shuffle(mixed.reshape(b, 4 * c, hh, hw), 2)
    return y[:, :, :h, :w] if odd else y
