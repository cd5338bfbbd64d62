"""ONNX export of a network's deploy form (BatchNorm fused), checked against PyTorch in onnxruntime.

:func:`export_spec` is what ``mmlab export SPEC --onnx model.onnx`` calls; :func:`export_bytes`,
:func:`session` and :func:`check_session` are the ``onnxruntime`` timing runtime's steps
(:mod:`mmlab.meter.runtimes`). onnx / onnxruntime come with ``pip install 'mmlab[deploy]'``.

The network is exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``)
from :func:`~mmlab.meter.runtimes.traceable`'s copy (the scan as plain out-of-place ops). It
traces one forward pass: the scan's Python loops become a fixed sequence of ONNX ops for the
spec's resolution (the graph is specific to it, as the network's geometry is); the batch stays
dynamic. Why this exporter, on torch 2.14: t2 exports in 7-10 s against 25-33 s for the dynamo
exporter (busy 2-core machine) with the same onnxruntime latency, needs no onnxscript, and the
dynamo exporter failed on the eager in-place scan with a dynamic batch (no ONNX function for
``prims.prod``).
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmlab.meter.runtimes import ONNX_TOLERANCE, check_outputs, traceable
from mmlab.model import build, fuse
from mmlab.spec.arch import ArchSpec

if TYPE_CHECKING:
    import onnxruntime

ONNX_OPSET = 17
"""The ONNX opset written (17: LayerNormalization is one op)."""
INPUT_NAME, OUTPUT_NAME = "image", "output"


def require_deploy() -> None:
    """``ValueError`` unless onnx and onnxruntime are installed (the ``deploy`` extra)."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"onnx: needs the {' and '.join(missing)} package(s); pip install 'mmlab[deploy]'")


def export_bytes(model: torch.nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True) -> bytes:
    """The ONNX model (serialised protobuf) of ``model`` traced on ``example``.

    Args:
        model: the network, in eval mode (fused for deployment); it is not modified.
        example: an input of the shape to export, e.g. (1, 3, R, R).
        dynamic_batch: export the batch dimension as dynamic (``batch``), else fixed to the example's.
    """
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    model = traceable(model)  # the scan as plain out-of-place ops
    buffer = io.BytesIO()
    # Tracing records autograd-free ops on ordinary tensors: leave any inference_mode of the caller.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on the shape arithmetic the trace fixes
        torch.onnx.export(model, (example.detach().clone(),), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    return buffer.getvalue()


def session(model: bytes | str | Path, *, threads: int = 1) -> "onnxruntime.InferenceSession":
    """An onnxruntime CPU session for an ONNX model (bytes or a file), with ``threads`` intra-op
    threads, one inter-op thread and sequential execution: the same parallelism as a torch timing
    with ``torch.set_num_threads(threads)``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    # Idle intra-op threads sleep instead of spinning: a spinning pool keeps a core busy after each
    # run and slows whatever the process runs next (eager t2 timed interleaved with onnxruntime on
    # 2 cores: 81 ms instead of about 17).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(ort_session: "onnxruntime.InferenceSession", x: torch.Tensor) -> torch.Tensor:
    """The session's first output for input ``x``, as a tensor."""
    out = ort_session.run(None, {ort_session.get_inputs()[0].name: x.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)


def check_session(ort_session: "onnxruntime.InferenceSession", model: torch.nn.Module, example: torch.Tensor,
                  tolerance: float = ONNX_TOLERANCE) -> float:
    """Relative error (max abs error / max abs output) of the session against ``model`` on ``example``;
    raises :class:`mmlab.meter.runtimes.OutputMismatch` above ``tolerance``."""
    with torch.no_grad():
        ref = model(example)
    return check_outputs("onnxruntime", run_session(ort_session, example), ref, tolerance)


@dataclass(frozen=True)
class OnnxExport:
    """One ONNX file written by :func:`export_spec`.

    Attributes:
        path: the file.
        spec_key: the exported spec's key.
        size_bytes: the file's size.
        export_s: seconds spent exporting (tracing and serialising), check excluded.
        error: relative error of onnxruntime's output against PyTorch's (max abs / max abs output).
        opset: the ONNX opset.
    """

    path: Path
    spec_key: str
    size_bytes: int
    export_s: float
    error: float
    opset: int = ONNX_OPSET


def export_spec(spec: ArchSpec, path: str | Path, *, model: torch.nn.Module | None = None,
                tolerance: float = ONNX_TOLERANCE) -> OnnxExport:
    """Write the deploy form of ``spec`` (BatchNorm fused, eval) to ``path`` as ONNX, checked.

    The file takes images (batch, in_chans, resolution, resolution) named ``image`` (dynamic
    batch) and returns ``output`` (logits, or pooled features without a head). Before the file is
    written, onnxruntime runs it on a random batch of 2 and its output must match PyTorch's within
    ``tolerance`` (relative to the output scale), else :class:`~mmlab.meter.runtimes.OutputMismatch`.

    Args:
        spec: the architecture.
        path: the .onnx file to write (its folder must exist).
        model: the network with trained weights (unfused; not modified); default ``build(spec)``.
        tolerance: the check's bound.
    """
    require_deploy()
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"onnx: {str(path)!r} is not allowed; its folder {str(path.parent)!r} does not exist")
    deploy = fuse(model if model is not None else build(spec))
    example = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution)
    started = time.perf_counter()
    data = export_bytes(deploy, example)
    export_s = time.perf_counter() - started
    check = torch.randn(2, spec.in_chans, spec.resolution, spec.resolution)  # another batch size: the axis is dynamic
    error = check_session(session(data), deploy, check, tolerance)
    path.write_bytes(data)
    return OnnxExport(path, spec.key, len(data), export_s, error)
