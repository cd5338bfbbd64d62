"""Selective scan (Mamba's diagonal SSM over a sequence): a readable reference and a fast CPU path.

Both compute, per channel d and state n, with h_0 = 0::

    δ_t = softplus(delta_t + delta_bias_d)            (or delta_t + delta_bias_d without softplus)
    h_t = exp(δ_t · A_dn) · h_{t-1} + δ_t · B_nt · u_t
    y_t = Σ_n C_nt · h_t[n] + D_d · u_t

B and C are shared by the Di channels of one scan direction ("group" k). All arithmetic is in
``dtype``: fp32 by default whatever the inputs, fp64 on request (float64 analyses such as SynFlow).

The two agree to 1e-5 relative, norm-wise (``max|fast - ref| / max|ref|``), on the output and on
the gradient with respect to every input; ``tests/test_scan.py`` checks it.

For inference on the CPU (fused networks, no gradient) :func:`selective_scan_infer` computes the
same chunked scan in place in about 2·√L steps; its core, :func:`selective_scan_chunked`, takes
sequences already laid out in chunks (FusedSS2D builds that layout straight from the feature
map), and :func:`selective_scan_chunked_plain` is the same out of place, for compilers and
exporters. All are checked against the reference on outputs.

On CUDA there is a third, forward-only path, :func:`selective_scan_triton`: one Triton kernel
that reads u, Δ, B, C once and writes y once (the chunked scan's ~10 full-size intermediates and
~3·√L launches are what make it slow on a GPU). :func:`triton_scan_applies` says when a caller
may use it (CUDA inputs, float32 compute, no gradient wanted); everything else, CPU and GPU
training included, keeps :func:`selective_scan_fast`.
"""

from __future__ import annotations

import contextlib
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


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus(x)`` (β = 1) from vectorised ops, out of place: for the inference graphs that
    compilers and exporters trace.

    ATen's CPU softplus, and inductor's C++ code for it, call a scalar ``log1p`` per element
    (s6's step sizes at 2 threads: 1.3 ms a call in eager, 10 % of the forward; b2's first
    stage compiled: 2.1 ms of its 2.6 ms SS2D kernel). This is the same function from ``exp``,
    ``log`` and arithmetic, which vectorise, with no comparison or ``where`` (a bool mask is a
    slow pass of its own): ``softplus(x) = max(x, 0) + log1p(e^-|x|)``, and for ``u = 1 + t``,
    ``log1p(t) = log(u) - ((u - 1) - t) / u``, the rounding of ``u`` corrected to first order
    (``t`` itself where u rounds to 1). Within 2e-7 relative of the float64 softplus on N(0, 3²)
    inputs, as ATen's is; ±inf and NaN map as in ``F.softplus`` (``tests/model/test_scan.py``).
    """
    t = torch.exp(-x.abs())  # e^-|x|, in (0, 1]
    u = t + 1
    return torch.relu(x) + (torch.log(u) - ((u - 1) - t) / u)


def softplus_(x: torch.Tensor) -> torch.Tensor:
    """:func:`softplus` computed in place in ``x`` (returned), for eager inference: on b4's first
    stage (2 x 1024 x 320 step sizes, 2 threads) 0.74 ms against ``F.softplus``'s 3.7 ms."""
    t = x.abs().neg_().exp_()  # e^-|x|, in (0, 1]
    u = t + 1
    correction = (u - 1).sub_(t).div_(u)
    return x.clamp_(min=0).add_(u.log_().sub_(correction))


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


def _chunk_geometry(length: int, chunk: int | None) -> tuple[int, int, int]:
    """(T, chunks, padding) of a length-L sequence cut into chunks of T (default ⌊√L⌋) positions."""
    t_len = chunk or max(1, math.isqrt(length))
    n_chunks = -(-length // t_len)
    return t_len, n_chunks, n_chunks * t_len - length


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
    t_len, n_chunks, pad = _chunk_geometry(length, chunk)

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


def selective_scan_infer(
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
    """Forward-only chunked scan: the result of :func:`selective_scan_ref` in about 2·√L steps.

    The chunk layout of :func:`selective_scan_fast`, but the state tensor is updated in place
    (so no autograd: for inference, when no gradient is wanted), and the third pass is one op:

    1. T - 1 steps run the recurrence inside all chunks at once from a zero state, in place, so
       that every position holds its in-chunk state, and turn the decays into running products
       (factors in (0, 1]): each position's decay since its chunk's start;
    2. L/T - 1 steps carry the state across chunks, as in :func:`selective_scan_fast`;
    3. the state at each position is its in-chunk state plus its decay since the chunk's start
       times the chunk's entering state: one ``addcmul`` over everything, then y = Σ_n C·h + D·u.

    Arguments, shapes and result as :func:`selective_scan_fast`.
    """
    _check_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups = B.shape[1]
    per_group = channels // groups
    t_len, n_chunks, pad = _chunk_geometry(length, chunk)

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        """(batch, K, width, L) -> contiguous (batch, K, T, chunks, width), zero-padded to T·chunks positions."""
        x = F.pad(x.to(dtype), (0, pad)) if pad else x.to(dtype)
        return x.unflatten(-1, (n_chunks, t_len)).permute(0, 1, 4, 3, 2).contiguous()

    y = selective_scan_chunked(  # padded δ = 0: decay 1, input 0, the state is kept
        to_chunks(u.reshape(batch, groups, per_group, length)),
        to_chunks(_step_sizes(delta, delta_bias, delta_softplus, dtype).reshape(batch, groups, per_group, length)),
        A, to_chunks(B), to_chunks(C), D,
    )  # (batch, K, T, chunks, Di)
    y = y.permute(0, 1, 4, 3, 2).reshape(batch, channels, n_chunks * t_len)  # (batch, K*Di, chunks·T)
    return y[..., :length]


def selective_scan_chunked(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
) -> torch.Tensor:
    """The in-place scan of :func:`selective_scan_infer` on sequences already cut into chunks.

    Layout (..., T, chunks, channels): one step of every chunk is one contiguous slice, and a
    caller can often produce its sequences in it directly (FusedSS2D: a row-major sequence of
    a channels-last H x W map in chunks of T = W is the map with H and W swapped), saving the
    transposing copies in and out. Computes in the inputs' dtype; no autograd (in-place updates).

    Args:
        u: (batch, K, T, chunks, Di): position c·T + t of each sequence at ``[:, :, t, c]``.
        delta: (batch, K, T, chunks, Di): the step sizes δ, bias and softplus already applied
            (padding positions: δ = 0, which keeps the state).
        A: (K*Di, N).
        B, C: (batch, K, T, chunks, N).
        D: (K*Di,) or None.

    Returns:
        y: (batch, K, T, chunks, Di).
    """
    _, groups, t_len, n_chunks, per_group = u.shape
    n_state = A.shape[1]
    A = A.to(u.dtype).reshape(groups, 1, 1, per_group, n_state)
    decay = torch.mul(delta.unsqueeze(-1), A).exp_()  # (batch, K, T, chunks, Di, N)
    h = (delta * u).unsqueeze(-1) * B.unsqueeze(-2)  # the drive δ·u·B, same shape; becomes the state

    # 1) every chunk from a zero state, in place; decay since the chunk's start, in place
    #    (a running product: cumprod along a non-innermost dim is a slow strided kernel)
    for t in range(1, t_len):
        h[:, :, t].addcmul_(decay[:, :, t], h[:, :, t - 1])
        decay[:, :, t].mul_(decay[:, :, t - 1])

    # 2) the state entering each chunk, 3) added to every position, decayed since the chunk's start
    if n_chunks > 1:
        end, through = h[:, :, -1], decay[:, :, -1]  # (batch, K, chunks, Di, N) each
        entering = torch.zeros_like(end)
        for c in range(1, n_chunks):
            torch.addcmul(end[:, :, c - 1], through[:, :, c - 1], entering[:, :, c - 1], out=entering[:, :, c])
        h.addcmul_(decay, entering.unsqueeze(2))

    y = h[..., 0].mul_(C) if n_state == 1 else (h * C.unsqueeze(-2)).sum(-1)  # (batch, K, T, chunks, Di)
    if D is not None:
        y.addcmul_(u, D.to(u.dtype).reshape(groups, 1, 1, per_group))
    return y


def selective_scan_chunked_plain(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`selective_scan_chunked` as out-of-place tensor ops, for compilers.

    Same layout, passes and result, but every step makes a new tensor (a list of per-step
    slices, stacked once), so ``torch.compile`` and exporters can trace it. Each step is
    element-wise over (chunks, Di, N) with channels innermost, so inductor fuses a whole pass
    into one loop vectorised over channels, where the (..., T, chunks) layout of
    :func:`selective_scan_fast` (chunks innermost) compiles to strided scalar code.

    Arguments, layout and result as :func:`selective_scan_chunked`.
    """
    _, groups, t_len, n_chunks, per_group = u.shape
    n_state = A.shape[1]
    A = A.to(u.dtype).reshape(groups, 1, per_group, n_state)
    drive = ((delta * u).unsqueeze(-1) * B.unsqueeze(-2)).unbind(2)  # T x (batch, K, chunks, Di, N)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1)).unbind(2)  # T x (batch, K, chunks, Di, N)

    # 1) every chunk from a zero state, and its decay since the chunk's start
    hs, since = [drive[0]], [decay[0]]
    for t in range(1, t_len):
        hs.append(drive[t] + decay[t] * hs[-1])
        since.append(decay[t] * since[-1])
    h = torch.stack(hs, dim=2)  # (batch, K, T, chunks, Di, N)

    # 2) the state entering each chunk, 3) added to every position, decayed since the chunk's start
    if n_chunks > 1:
        end, through = hs[-1].unbind(2), since[-1].unbind(2)  # chunks x (batch, K, Di, N)
        entering = [torch.zeros_like(end[0])]
        for c in range(1, n_chunks):
            entering.append(end[c - 1] + through[c - 1] * entering[-1])
        h = h + torch.stack(since, dim=2) * torch.stack(entering, dim=2).unsqueeze(2)

    y = h[..., 0] * C if n_state == 1 else (h * C.unsqueeze(-2)).sum(-1)  # (batch, K, T, chunks, Di)
    if D is not None:
        y = y + u * D.to(u.dtype).reshape(groups, 1, 1, per_group)
    return y


# ---------------------------------------------------------------------------------------------
# CUDA: a forward-only Triton kernel
# ---------------------------------------------------------------------------------------------

try:  # CPU-only torch builds come without triton: the CUDA path is then off
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - any import failure just disables the kernel
    triton = None


def triton_scan_applies(*tensors: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> bool:
    """Whether :func:`selective_scan_triton` may stand in for the autograd path on these inputs.

    True when triton is installed, the first tensor (``u``) is on CUDA, the compute dtype is
    float32, and no gradient is wanted (grad mode off, or no input requires grad): the kernel
    has no backward, so training goes through :func:`selective_scan_fast` as before.
    """
    u = tensors[0]
    if not (triton is not None and u is not None and u.is_cuda and dtype == torch.float32):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


if triton is not None:  # pragma: no branch - kernel bodies run under Triton (GPU, or TRITON_INTERPRET=1)

    @triton.jit
    def _combine(a_left, b_left, a_right, b_right):
        # Composition of h -> a·h + b maps, left one first: h -> a_r·(a_l·h + b_l) + b_r.
        return a_left * a_right, b_left * a_right + b_right

    @triton.jit
    def _scan_fwd_kernel(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr,
        length, per_group, groups,
        su_b, su_d, su_l, sd_b, sd_d, sd_l, sa_d, sa_n,
        sb_b, sb_k, sb_n, sb_l, sc_b, sc_k, sc_n, sc_l, sy_b, sy_d, sy_l,
        N_STATE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ):
        # Program (batch·K + k, channel block): BLOCK_D channels of one group k, so that B and C
        # (shared by the group) are loaded once per tile. It walks L in tiles of BLOCK_L, scans
        # each tile with an associative scan over (decay, drive) pairs and carries the state.
        pid_bk, pid_d = tl.program_id(0), tl.program_id(1)
        b, k = (pid_bk // groups).to(tl.int64), pid_bk % groups  # int64: batch offsets may pass 2^31
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < per_group
        chan = k * per_group + offs_d  # (BLOCK_D,) channel indices in K*Di
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N_STATE
        a = tl.load(a_ptr + chan[:, None] * sa_d + offs_n[None, :] * sa_n,
                    mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_D:
            skip = tl.load(d_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
        last = (tl.arange(0, BLOCK_L) == BLOCK_L - 1)[None, None, :]
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # state entering the tile
        for l0 in range(0, length, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            mask_l = offs_l < length
            mask_dl = mask_d[:, None] & mask_l[None, :]
            u = tl.load(u_ptr + b * su_b + chan[:, None] * su_d + offs_l[None, :] * su_l,
                        mask=mask_dl, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_L)
            dt = tl.load(delta_ptr + b * sd_b + chan[:, None] * sd_d + offs_l[None, :] * sd_l,
                         mask=mask_dl, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[:, None]
            if SOFTPLUS:
                # softplus with torch's threshold 20; log1p(z) = log(w)·z/(w-1), w = 1+z (accurate for small z)
                z = tl.exp(tl.minimum(dt, 20.0))
                w = 1.0 + z
                log1p = tl.where(w == 1.0, z, tl.log(w) * (z / tl.where(w == 1.0, 1.0, w - 1.0)))
                dt = tl.where(dt > 20.0, dt, log1p)
            dt = tl.where(mask_dl, dt, 0.0)  # padding: decay 1, drive 0, so the state is kept
            mask_nl = mask_n[:, None] & mask_l[None, :]
            bt = tl.load(b_ptr + b * sb_b + k * sb_k + offs_n[:, None] * sb_n + offs_l[None, :] * sb_l,
                         mask=mask_nl, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_L)
            ct = tl.load(c_ptr + b * sc_b + k * sc_k + offs_n[:, None] * sc_n + offs_l[None, :] * sc_l,
                         mask=mask_nl, other=0.0).to(tl.float32)
            decay = tl.exp(dt[:, None, :] * a[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_L)
            drive = (dt * u)[:, None, :] * bt[None, :, :]  # (BLOCK_D, BLOCK_N, BLOCK_L)
            decay_cum, h_zero = tl.associative_scan((decay, drive), 2, _combine)  # from a zero state
            hs = h_zero + decay_cum * h[:, :, None]  # (BLOCK_D, BLOCK_N, BLOCK_L), from the carried state
            y = tl.sum(hs * ct[None, :, :], axis=1)  # (BLOCK_D, BLOCK_L)
            if HAS_D:
                y = y + skip[:, None] * u
            tl.store(y_ptr + b * sy_b + chan[:, None] * sy_d + offs_l[None, :] * sy_l, y, mask=mask_dl)
            h = tl.sum(tl.where(last, hs, 0.0), axis=2)  # state after the tile's last (maybe padded) position


def _launch_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
) -> torch.Tensor:
    """Run the kernel; any strides are fine (B, C arrive as views of the x projection)."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = channels // groups
    y = torch.empty(batch, channels, length, device=u.device, dtype=torch.float32)  # (batch, K*Di, L)
    if y.numel() == 0:
        return y
    # Tiles of <= 512 (channel, state, position) elements on 4 warps: <= 4 per thread keeps the
    # kernel near 60-80 registers (8 per thread needs 140+, sm_90 ptxas), i.e. high occupancy.
    block_n = _next_pow2(n_state)
    block_l = min(128, _next_pow2(length), max(16, 512 // block_n))
    block_d = max(1, min(_next_pow2(per_group), 512 // (block_l * block_n)))
    grid = (batch * groups, -(-per_group // block_d))
    dummy = u  # never read when HAS_D / HAS_BIAS is off
    # Triton launches on the current device: switch only if u lives on another one.
    other_device = u.is_cuda and u.device.index is not None and u.device.index != torch.cuda.current_device()
    with torch.cuda.device(u.device) if other_device else contextlib.nullcontext():
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, y,
            length, per_group, groups,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *y.stride(),
            N_STATE=n_state, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            num_warps=max(1, min(4, block_d * block_n * block_l // 128)),
        )
    return y


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(0, n - 1).bit_length()


@torch.library.custom_op("mmlab::selective_scan_fwd", mutates_args=())
def _selective_scan_fwd_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
) -> torch.Tensor:
    """The kernel as an opaque op, so that ``torch.compile`` keeps it whole (no graph break)."""
    return _launch_triton(u, delta, A, B, C, D, delta_bias, delta_softplus)


@_selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):  # noqa: ANN001, ANN202
    return u.new_empty(u.shape, dtype=torch.float32)


def selective_scan_triton(
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
    """Forward-only selective scan in one Triton kernel: :func:`selective_scan_ref`'s result.

    Same arguments and shapes as :func:`selective_scan_ref`; inputs may be float16 / bfloat16 /
    float32 with any strides, arithmetic and output are float32. One program per
    (batch, group, block of channels) walks L in tiles of up to 128 positions: a parallel
    (associative) scan inside each tile, the state carried from tile to tile. No autograd
    (outputs carry no graph): use it through :func:`triton_scan_applies`. Needs CUDA tensors,
    or CPU tensors with ``TRITON_INTERPRET=1`` set before this module is imported (tests).
    """
    _check_shapes(u, delta, A, B, C)
    if dtype != torch.float32:
        raise ValueError(f"selective_scan_triton computes in float32 only, got dtype={dtype}")
    if triton is None:
        raise RuntimeError("selective_scan_triton needs triton, which is not importable here")
    if torch.compiler.is_compiling():
        return _selective_scan_fwd_op(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return _launch_triton(u, delta, A, B, C, D, delta_bias, delta_softplus)
