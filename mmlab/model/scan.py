"""Selective scan (Mamba's diagonal SSM over a sequence): a readable reference and a fast CPU path.

Both compute, per channel d and state n, with h_0 = 0::

    δ_t = softplus(delta_t + delta_bias_d)            (or delta_t + delta_bias_d without softplus)
    h_t = exp(δ_t · A_dn) · h_{t-1} + δ_t · B_nt · u_t
    y_t = Σ_n C_nt · h_t[n] + D_d · u_t

B and C are shared by the Di channels of one scan direction ("group" k). All arithmetic is in
``dtype``: fp32 by default whatever the inputs, fp64 on request (float64 analyses such as SynFlow).

The two agree to 1e-5 relative, norm-wise (``max|fast - ref| / max|ref|``), on the output and on
the gradient with respect to every input; ``tests/test_scan.py`` checks it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    """Raise ``ValueError`` unless the inputs have the documented, mutually consistent shapes."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    if (
        delta.shape != u.shape
        or A.shape != (channels, n_state)
        or B.shape != (batch, groups, n_state, length)
        or C.shape != B.shape
        or channels % groups
    ):
        raise ValueError(
            f"selective scan shapes: u, delta (batch, K*Di, L), A (K*Di, N), B, C (batch, K, N, L); got "
            f"u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )


def _step_sizes(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """δ = softplus(Δ + bias) (or Δ + bias) in ``dtype``; ``delta`` is (batch, K*Di, L), the bias (K*Di,)."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reference selective scan: one step per position, as the equations read.

    Args:
        u: (batch, K*Di, L) input sequences: K direction groups of Di channels each.
        delta: (batch, K*Di, L) raw step sizes Δ.
        A: (K*Di, N) diagonal state matrix per channel (negative for a stable scan).
        B: (batch, K, N, L) input projections, one per group, shared by its Di channels.
        C: (batch, K, N, L) output projections, one per group, shared by its Di channels.
        D: (K*Di,) skip weights, or None for no skip term.
        delta_bias: (K*Di,) added to Δ before the softplus, or None.
        delta_softplus: apply softplus to Δ + bias.
        dtype: compute and output dtype: float32 whatever the inputs unless asked otherwise.

    Returns:
        y: (batch, K*Di, L), in ``dtype``.
    """
    _check_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    per_group = channels // B.shape[1]
    u, A = u.to(dtype), A.to(dtype)
    delta = _step_sizes(delta, delta_bias, delta_softplus, dtype)
    B = B.to(dtype).repeat_interleave(per_group, dim=1)  # (batch, K, N, L) -> (batch, K*Di, N, L)
    C = C.to(dtype).repeat_interleave(per_group, dim=1)

    h = u.new_zeros(batch, channels, A.shape[1])  # (batch, K*Di, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (batch, K*Di, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))  # (batch, K*Di)
    y = torch.stack(ys, dim=-1)  # (batch, K*Di, L)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
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
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Chunked selective scan: the result of :func:`selective_scan_ref` in about 3·√L Python steps.

    The sequence is cut into chunks of T positions (L padded with steps that keep the state:
    decay 1, input 0) and laid out as (..., T, chunks), so that one position of every chunk is a
    single slice. Then

    1. T steps run the recurrence inside all chunks at once from a zero state, giving each
       chunk's end state, and ``prod`` gives each chunk's total decay (factors in (0, 1]: no
       overflow, unlike exp(±cumsum) factorisations);
    2. L/T steps carry the state across chunks: the state entering chunk c+1 is
       ``end[c] + decay[c] · entering[c]``;
    3. T steps rerun the recurrence inside all chunks, now from the carried states, and read y.

    Only plain tensor ops, so autograd differentiates it; sequences are split with ``unbind``,
    whose backward is one ``stack`` rather than a full-size zero tensor per step. Peak memory is
    about ten (batch, K*Di, N, L) fp32 tensors, twice that under autograd; nothing quadratic in T.

    Args:
        u: (batch, K*Di, L), as in :func:`selective_scan_ref`.
        delta: (batch, K*Di, L).
        A: (K*Di, N).
        B: (batch, K, N, L).
        C: (batch, K, N, L).
        D: (K*Di,) or None.
        delta_bias: (K*Di,) or None.
        delta_softplus: apply softplus to Δ + bias.
        chunk: positions per chunk T; default ⌊√L⌋, which divides L for square feature maps.
        dtype: compute and output dtype: float32 whatever the inputs unless asked otherwise.

    Returns:
        y: (batch, K*Di, L), in ``dtype``.
    """
    _check_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = channels // groups
    t_len = chunk or max(1, math.isqrt(length))
    n_chunks = -(-length // t_len)
    pad = n_chunks * t_len - length

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        """(..., L) -> contiguous (..., T, chunks), zero-padded to T·chunks positions."""
        x = F.pad(x.to(dtype), (0, pad)) if pad else x.to(dtype)
        return x.unflatten(-1, (n_chunks, t_len)).transpose(-1, -2).contiguous()

    u_c = to_chunks(u.reshape(batch, groups, per_group, 1, length))  # (batch, K, Di, 1, T, chunks)
    delta_c = to_chunks(  # (batch, K, Di, 1, T, chunks); padded δ = 0: decay 1, input 0
        _step_sizes(delta, delta_bias, delta_softplus, dtype).reshape(batch, groups, per_group, 1, length)
    )
    B_c = to_chunks(B[:, :, None])  # (batch, K, 1, N, T, chunks), broadcast over Di
    C_c = to_chunks(C[:, :, None])
    decay = torch.exp(delta_c * A.to(dtype).reshape(groups, per_group, n_state, 1, 1))  # (batch, K, Di, N, T, chunks)
    drive = delta_c * u_c * B_c  # (batch, K, Di, N, T, chunks)
    decay_t, drive_t, C_t = decay.unbind(-2), drive.unbind(-2), C_c.unbind(-2)  # T x (batch, K, Di, N, chunks)

    # 1) every chunk from a zero state: its end state, and its total decay
    h = drive_t[0]
    for t in range(1, t_len):
        h = torch.addcmul(drive_t[t], decay_t[t], h)
    chunk_end, chunk_decay = h.unbind(-1), decay.prod(dim=-2).unbind(-1)  # chunks x (batch, K, Di, N)

    # 2) the state entering each chunk
    entering = [torch.zeros_like(chunk_end[0])]
    for c in range(n_chunks - 1):
        entering.append(torch.addcmul(chunk_end[c], chunk_decay[c], entering[-1]))
    h = torch.stack(entering, dim=-1)  # (batch, K, Di, N, chunks)

    # 3) every chunk again from its entering state, reading C·h at each position
    ys = []
    for t in range(t_len):
        h = torch.addcmul(drive_t[t], decay_t[t], h)
        ys.append(h * C_t[t])
    y = torch.stack(ys, dim=-2)  # (batch, K, Di, N, T, chunks)
    y = y[:, :, :, 0] if n_state == 1 else y.sum(3)  # Σ_n; a size-1 sum would still cost a full pass
    if D is not None:
        y = torch.addcmul(y, u_c[:, :, :, 0], D.to(dtype).reshape(groups, per_group, 1, 1))
    y = y.transpose(-1, -2).reshape(batch, channels, n_chunks * t_len)  # (batch, K*Di, T·chunks)
    return y[..., :length]
