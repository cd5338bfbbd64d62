"""Parameter counts from the spec alone, by formula (pure Python: no torch, no network built).

Each function below counts one module type of :mod:`mmlab.model` and mirrors its constructor, so
``param_count(spec)`` equals ``sum(p.numel() for p in build(spec).parameters())``: every
parameter, the frozen wavelet filters included, BatchNorm unfused (weight and bias; its running
statistics are buffers, not parameters). ``tests/spec/test_params.py`` checks the equality part
by part against the built network. Commands that only print counts (``mmlab presets``, ``mmlab
show``) use this instead of importing torch.
"""

from __future__ import annotations

import functools

from mmlab.spec.arch import ArchSpec

# ---- plain layers (mmlab.model.layers) ----------------------------------------------------------


def _batch_norm(channels: int) -> int:
    """``BatchNorm1d/2d``: affine weight and bias."""
    return 2 * channels


def _conv(in_ch: int, out_ch: int, kernel: int = 1, groups: int = 1, bias: bool = False) -> int:
    """``Conv2d``: ``out · in/groups · k²`` weights, plus ``out`` biases if any."""
    return out_ch * (in_ch // groups) * kernel * kernel + (out_ch if bias else 0)


def _conv_bn(in_ch: int, out_ch: int, kernel: int = 1, groups: int = 1) -> int:
    """``ConvBN``: bias-free conv then BatchNorm2d."""
    return _conv(in_ch, out_ch, kernel, groups) + _batch_norm(out_ch)


def _ffn(dim: int, hidden: int) -> int:
    """``FFN``: 1x1 Conv-BN dim → hidden, 1x1 Conv-BN hidden → dim."""
    return _conv_bn(dim, hidden) + _conv_bn(hidden, dim)


def _depthwise_conv_bn(dim: int) -> int:
    """Depthwise 3x3 ``ConvBN`` (the ``dw0``/``dw1`` of a block and the first half of a conv-FFN)."""
    return _conv_bn(dim, dim, 3, groups=dim)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never bumped up afterwards: the
    squeeze-excite width. Here, below the model, so that the formula and the built network share it."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def _squeeze_excite(channels: int, ratio: float = 0.25) -> int:
    """``SqueezeExcite``: 1x1 conv (bias) down to the reduced width, 1x1 conv (bias) back up."""
    reduced = make_divisible(channels * ratio, 8)
    return _conv(channels, reduced, bias=True) + _conv(reduced, channels, bias=True)


def _patch_merging(in_ch: int, out_ch: int) -> int:
    """``PatchMerging``: 1x1 up to 4·in, DW 3x3/s2, SE on 4·in, 1x1 down to out (all Conv-BN but SE)."""
    hidden = 4 * in_ch
    return (_conv_bn(in_ch, hidden) + _conv_bn(hidden, hidden, 3, groups=hidden)
            + _squeeze_excite(hidden, 0.25) + _conv_bn(hidden, out_ch))


def _layer_norm(channels: int) -> int:
    """``LayerNorm2d``: affine weight and bias."""
    return 2 * channels


def _linear(in_features: int, out_features: int) -> int:
    """``Linear`` with bias."""
    return in_features * out_features + out_features


# ---- the global branch (mmlab.model.ssm, mmlab.model.wavelet, mmlab.model.blocks) ---------------


def _ss2d(dim: int, d_inner: int, dt_rank: int, d_state: int, directions: int) -> int:
    """``SS2D``: the per-direction scan parameters, in_proj, the depthwise conv (bias), norm, out_proj."""
    k = directions
    per_direction = (
        (dt_rank + 2 * d_state) * d_inner  # x_proj_weight (K, R + 2N, Di)
        + d_inner  # Ds (K·Di)
        + d_inner * d_state  # A_logs (K·Di, N)
        + d_inner * dt_rank  # dt_projs_weight (K, Di, R)
        + d_inner  # dt_projs_bias (K, Di)
    )
    return (k * per_direction + _layer_norm(d_inner) + _conv_bn(dim, 2 * d_inner)
            + _conv(d_inner, d_inner, 3, groups=d_inner, bias=True) + _conv_bn(d_inner, dim))


@functools.lru_cache(maxsize=None)
def _wavelet_filter_lengths(wavelet: str) -> tuple[int, int]:
    """Lengths of the analysis and synthesis filters (``db1`` 2, ``db2`` 4, ...), as PyWavelets gives them."""
    import pywt  # inline, like arch.py: the spec's validation has already loaded it

    w = pywt.Wavelet(wavelet)
    return len(w.dec_lo), len(w.rec_lo)


def _wavelet_filters(dim: int, wavelet: str) -> int:
    """The frozen ``wt_filter`` and ``iwt_filter`` of a global branch: (4·dim, 1, k, k) each."""
    dec, rec = _wavelet_filter_lengths(wavelet)
    return 4 * dim * dec * dec + 4 * dim * rec * rec


def _global_branch(spec: ArchSpec, i: int) -> int:
    """``GlobalBranch`` of stage ``i`` (0 without global channels: the builder puts an Identity there).

    SS2D, a per-channel base scale, and per wavelet level a depthwise k×k conv and a per-channel
    scale on the 4·g sub-band channels; with any level, the frozen wavelet filters (once).
    """
    stage = spec.stages[i]
    g = stage.global_channels
    if not g:
        return 0
    levels = stage.wavelet_levels
    count = _ss2d(g, spec.d_inner(i), stage.dt_rank, spec.d_state, spec.directions) + g  # + base_scale
    count += levels * (_conv(4 * g, 4 * g, stage.kernel, groups=4 * g) + 4 * g)  # wavelet_convs, wavelet_scale
    if levels:
        count += _wavelet_filters(g, spec.wavelet)
    return count


def _local_branch(channels: int, kernel: int) -> int:
    """``LocalBranch``: DW k×k conv, BN, per-channel 1x1 conv, BN (0 without local channels)."""
    if not channels:
        return 0
    return (_conv(channels, channels, kernel, groups=channels) + _batch_norm(channels)
            + _conv(channels, channels, 1, groups=channels) + _batch_norm(channels))


def _mixer(spec: ArchSpec, i: int) -> int:
    """``Mixer``: global and local branches (identity channels cost nothing), then a 1x1 Conv-BN."""
    stage = spec.stages[i]
    return (_global_branch(spec, i) + _local_branch(stage.local_channels, stage.kernel)
            + _conv_bn(stage.width, stage.width))


def _block(spec: ArchSpec, i: int) -> int:
    """``Block``: DW Conv-BN, FFN, mixer, DW Conv-BN, FFN (drop path has no parameters)."""
    width = spec.stages[i].width
    hidden = spec.ffn_hidden(width)
    return 2 * _depthwise_conv_bn(width) + 2 * _ffn(width, hidden) + _mixer(spec, i)


# ---- the network (mmlab.model.net) -----------------------------------------------------------------


def _stem(spec: ArchSpec) -> int:
    """Stride-2 3x3 Conv-BNs from the image channels to the first stage's width."""
    count, in_ch = 0, spec.in_chans
    for ch in spec.stem_channels:
        count += _conv_bn(in_ch, ch, 3)
        in_ch = ch
    return count


def _conv_ffn(spec: ArchSpec, dim: int) -> int:
    """One half around a patch merging: depthwise 3x3 Conv-BN, then FFN."""
    return _depthwise_conv_bn(dim) + _ffn(dim, spec.ffn_hidden(dim))


def _downsample(spec: ArchSpec, i: int) -> int:
    """Entry of stage ``i`` > 0: conv-FFN on the previous width, patch merging, conv-FFN on the new one."""
    prev, width = spec.stages[i - 1].width, spec.stages[i].width
    return _conv_ffn(spec, prev) + _patch_merging(prev, width) + _conv_ffn(spec, width)


def _head(spec: ArchSpec) -> int:
    """``BNLinear`` classifier: BatchNorm1d then Linear (none when ``num_classes`` is 0)."""
    if spec.num_classes == 0:
        return 0
    width = spec.widths[-1]
    return _batch_norm(width) + _linear(width, spec.num_classes)


def _frozen(spec: ArchSpec) -> int:
    """The frozen wavelet filters of every block (``requires_grad=False`` in the built network)."""
    return sum(stage.depth * _wavelet_filters(stage.global_channels, spec.wavelet)
               for stage in spec.stages if stage.global_channels and stage.wavelet_levels)


def param_breakdown(spec: ArchSpec) -> dict[str, int]:
    """Parameters per part of the network, in build order; the values sum to :func:`param_count`.

    Keys: ``stem``, then per stage ``stage{n}.downsample`` (stages after the first) and
    ``stage{n}.blocks`` (n from 1), then ``head``. Frozen wavelet filters are included.
    """
    parts = {"stem": _stem(spec)}
    for i, stage in enumerate(spec.stages):
        if i:
            parts[f"stage{i + 1}.downsample"] = _downsample(spec, i)
        parts[f"stage{i + 1}.blocks"] = stage.depth * _block(spec, i)
    parts["head"] = _head(spec)
    return parts


def param_count(spec: ArchSpec, trainable_only: bool = False) -> int:
    """Number of parameters of ``build(spec)``, without building it.

    Args:
        spec: any valid spec.
        trainable_only: leave out the frozen wavelet filters (count only ``requires_grad``
            parameters), as the authors' "trainable" figure does.

    Returns:
        The exact count: all parameters (frozen filters included unless ``trainable_only``),
        BatchNorm unfused.
    """
    total = sum(param_breakdown(spec).values())
    return total - _frozen(spec) if trainable_only else total
