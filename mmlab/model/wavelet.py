"""2-D discrete wavelet transform as fixed depthwise convolutions (analysis and synthesis).

Sub-band order per channel: LL, then the three detail bands. For ``db1`` (Haar) the analysis
filters are ½[[1,1],[1,1]], ½[[1,1],[-1,-1]], ½[[1,-1],[1,-1]], ½[[1,-1],[-1,1]] and the synthesis
filters hold the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
