"""Parameter and MAC counts with fvcore, the selective scan included.

One multiply-add is one MAC (what fvcore and the paper call a FLOP; torch's FlopCounterMode
would count two). Two totals come out of one trace:

- ``macs``: complete: fvcore's default handles, a handle for the selective scan, and one for
  ``aten::_convolution_mode`` (convs with ``padding='same'``, i.e. the wavelet sub-band convs).
- ``macs_paper``: the paper's convention: the same minus the wavelet sub-band convs, which the
  authors' counter (fvcore 0.1.5, no handle for ``_convolution_mode``) never saw.

Both are of the model as trained (BatchNorm not folded, eval mode, batch 1).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch

from mmlab.spec.arch import ArchSpec

SCAN_OP = "prim::PythonOp.SelectiveScan"

# Ops that do multiply-adds: if fvcore skips one of these, the count is wrong.
MAC_OP_PATTERN = re.compile(r"conv|matmul|\bmm\b|::mm|bmm|einsum|linear|addmm|baddbmm|SelectiveScan|scan", re.I)

# Ops the paper's counter deliberately gives 0 (activations, sign flips, reversals): silenced.
IGNORED_OPS = ("aten::silu", "aten::gelu", "aten::neg", "aten::exp", "aten::flip")

_WAVELET_CONV = re.compile(r"\.wavelet_convs\.\d+$")


def _shape(value: Any) -> list[int]:
    return value.type().sizes()


def scan_macs_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of one selective scan: ``9·B·L·D·N + B·D·L`` (D-skip counted, z gate not).

    ``inputs[0]`` is u (B, D, L) with D = directions·d_inner, ``inputs[2]`` is A (D, N).
    """
    batch, channels, length = _shape(inputs[0])
    n_state = _shape(inputs[2])[1]
    return 9 * batch * length * channels * n_state + batch * channels * length


def conv_mode_macs_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::_convolution_mode`` (a conv with string padding): B · |W| · H_out · W_out."""
    weight, out = _shape(inputs[1]), _shape(outputs[0])
    return out[0] * prod(weight) * prod(out[2:])


@dataclass(frozen=True)
class Counts:
    """Parameters and MACs of one architecture at batch 1.

    Attributes:
        params: all parameters, frozen wavelet filters included (the paper's count).
        params_trainable: parameters with ``requires_grad``.
        macs: complete MAC count.
        macs_paper: the paper's convention (no wavelet sub-band convs).
        macs_by_operator: MACs per fvcore operator group, complete count.
        uncounted_ops: ops fvcore saw and gave 0, with their number of calls.
    """

    params: int
    params_trainable: int
    macs: int
    macs_paper: int
    macs_by_operator: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)

    @property
    def uncounted_mac_ops(self) -> dict[str, int]:
        """The uncounted ops that do multiply-adds: must be empty for the counts to be complete."""
        return {op: n for op, n in self.uncounted_ops.items() if MAC_OP_PATTERN.search(op)}


def count_model(model: torch.nn.Module, resolution: int, in_chans: int = 3) -> Counts:
    """Count a built model (any module taking a (1, in_chans, R, R) image)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore's import touches torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, torch.zeros(1, in_chans, resolution, resolution))
        analysis.set_op_handle(SCAN_OP, scan_macs_handle, "aten::_convolution_mode", conv_mode_macs_handle)
        analysis.set_op_handle(**{op: None for op in IGNORED_OPS})
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python values
            total = int(analysis.total())
            by_module = analysis.by_module()
            by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
            uncounted = dict(Counter(analysis.unsupported_ops()))
    finally:
        model.train(was_training)
    wavelet = sum(int(v) for name, v in by_module.items() if _WAVELET_CONV.search(name))
    return Counts(params, trainable, total, total - wavelet, by_operator, uncounted)


def count(spec: ArchSpec) -> Counts:
    """Parameters and MACs of ``spec`` (built on CPU, unfused, eval, batch 1)."""
    from mmlab.model import build

    return count_model(build(spec), spec.resolution, spec.in_chans)
