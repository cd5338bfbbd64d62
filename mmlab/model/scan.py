"""Selective scan (Mamba's diagonal SSM over a sequence): a readable reference and a fast CPU path.

Both compute, per channel d and state n, with h_0 = 0::

    δ_t = softplus(delta_t + delta_bias_d)            (or without softplus)
    h_t = exp(δ_t · A_dn) · h_{t-1} + δ_t · B_nt · u_t
    y_t = Σ_n C_nt · h_t[n] + D_d · u_t

B and C are shared by the d_inner channels of one scan direction ("group").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Upcast to fp32, apply the Δ bias / softplus and expand B, C to every channel."""
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    groups = B.shape[1]
    per_group = u.shape[1] // groups
    B = B.float().repeat_interleave(per_group, dim=1)  # (batch, K, N, L) -> (batch, K*Di, N, L)
    C = C.float().repeat_interleave(per_group, dim=1)
    return u, delta, A, B, C


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Reference selective scan: one step per position, as the equations read.

    Args:
        u: (batch, K*Di, L) input sequences, K direction groups of Di channels.
        delta: (batch, K*Di, L) raw step sizes Δ.
        A: (K*Di, N) state matrix (diagonal per channel; negative for a stable scan).
        B: (batch, K, N, L) input projections, one per group.
        C: (batch, K, N, L) output projections, one per group.
        D: (K*Di,) skip weights, or None.
        delta_bias: (K*Di,) added to Δ before the softplus, or None.
        delta_softplus: apply softplus to Δ.

    Returns:
        y: (batch, K*Di, L), float32.
    """
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])  # (batch, K*Di, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (batch, K*Di, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))  # (batch, K*Di)
    y = torch.stack(ys, dim=-1)  # (batch, K*Di, L)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    return y


def selective_scan_fast(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """Chunked selective scan: same result as :func:`selective_scan_ref`, far fewer Python steps.

    The sequence is cut into chunks of T ≈ √L positions. One loop of T steps runs the recurrence
    inside every chunk at once (states starting from zero); a second loop of L/T steps carries
    each chunk's final state into the next; the carried state then enters every position through
    the within-chunk cumulative decay (a ``cumprod`` of factors in (0, 1], which cannot overflow).
    About 2·√L Python steps instead of L, all of them differentiable by autograd.

    Args: as :func:`selective_scan_ref`, plus ``chunk`` to force the chunk length T.

    Returns:
        y: (batch, K*Di, L), float32.
    """
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = channels // groups
    t_len = chunk or max(1, math.isqrt(length) // 2)  # short strided steps, ~2√L chunks: fastest on CPU
    n_chunks = -(-length // t_len)
    pad = n_chunks * t_len - length

    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[:, :, None, :] * A.float()[:, :, None])  # (batch, KD, N, L)
    # B and C broadcast over the Di channels of their group instead of being copied to each.
    drive = (delta * u).reshape(batch, groups, per_group, 1, length) * B.float()[:, :, None]  # (batch, K, Di, N, L)
    drive = drive.reshape(batch, channels, n_state, length)
    if pad:  # padded steps keep the state: decay 1, drive 0
        decay = F.pad(decay, (0, pad), value=1.0)
        drive = F.pad(drive, (0, pad))
    decay = decay.reshape(batch, channels, n_state, n_chunks, t_len)  # (..., L) -> (..., chunks, T), free
    drive = drive.reshape(batch, channels, n_state, n_chunks, t_len)

    # 1) recurrence inside every chunk at once, each from a zero state
    h = drive[..., 0]  # (batch, KD, N, chunks)
    local = [h]
    for t in range(1, t_len):
        h = torch.addcmul(drive[..., t], decay[..., t], h)
        local.append(h)
    local_h = torch.stack(local, dim=-1)  # (batch, KD, N, chunks, T)

    # 2) carry the state across chunks: carry[c] is the state entering chunk c
    chunk_decay, chunk_end = decay.prod(dim=-1), h  # (batch, KD, N, chunks)
    carry = [torch.zeros_like(chunk_end[..., 0])]
    for c in range(n_chunks - 1):
        carry.append(torch.addcmul(chunk_end[..., c], chunk_decay[..., c], carry[-1]))
    carry_in = torch.stack(carry, dim=-1)[..., None]  # (batch, KD, N, chunks, 1)

    # 3) full state = local state + the carried state decayed to each position
    h_all = torch.addcmul(local_h, torch.cumprod(decay, dim=-1), carry_in)
    h_all = h_all.reshape(batch, groups, per_group, n_state, n_chunks * t_len)[..., :length]  # (batch, K, Di, N, L)
    if n_state == 1:
        y = h_all[:, :, :, 0] * C.float()  # C (batch, K, 1, L) broadcasts over Di
    else:
        y = (h_all * C.float()[:, :, None]).sum(3)
    y = y.reshape(batch, channels, length)  # (batch, KD, L)
    if D is not None:
        y = torch.addcmul(y, u, D.float()[:, None])
    return y
