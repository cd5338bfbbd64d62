"""The runtimes a network is timed in, one registry: how a fused model becomes the callable that is timed.

Each runtime prepares a callable from the fused model and an example input, once, outside the
timed region: ``eager`` is plain PyTorch; ``compile`` is ``torch.compile`` (compiled and warmed up
in ``prepare``); ``onnxruntime`` exports the network to ONNX and runs it in an onnxruntime CPU
session. Every runtime but eager checks its outputs against eager PyTorch in ``prepare`` and
raises :class:`OutputMismatch` beyond its ``tolerance``, so a figure is never of a wrong network.

This module is read by the CLI's help: torch, onnx and onnxruntime are imported inside the
functions that need them, never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is loaded by the measuring code, not by the CLI's help that reads this registry
    import torch


class OutputMismatch(ValueError):
    """A runtime's output differs from eager PyTorch's by more than the runtime's tolerance."""


def relative_error(out: "torch.Tensor", ref: "torch.Tensor") -> float:
    """``max|out - ref| / max|ref|``: the largest deviation relative to the output's scale."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if out.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().item()
    return (out - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def check_outputs(name: str, out: "torch.Tensor", ref: "torch.Tensor", tolerance: float) -> float:
    """The relative error of ``out`` against eager ``ref``; ``OutputMismatch`` above ``tolerance``."""
    error = relative_error(out, ref)
    if not error <= tolerance:  # also catches NaN
        raise OutputMismatch(f"runtime: {name!r} output differs from eager PyTorch by {error:.3g} of the output "
                             f"scale (max abs error / max abs output; allowed {tolerance:g})")
    return error


def traceable(model: "torch.nn.Module") -> "torch.nn.Module":
    """A copy of ``model`` whose selective scans take the ``plain`` path: out-of-place tensor ops,
    no ``autograd.Function``; the same outputs to 1e-5 as the reference. A fused SS2D then lays
    its sequences out in scan chunks (:func:`~mmlab.model.scan.selective_scan_chunked_plain`), an
    unfused one uses :func:`~mmlab.model.scan.selective_scan_fast`.

    Eager CPU inference updates the scan state in place (``out=`` into views), and the default
    CPU path is an ``autograd.Function``: ``torch.compile(fullgraph=True)`` cannot trace ``out=``
    into a view, and the TorchScript ONNX exporter fails to inline the Function on short
    sequences (1x1 and 2x2 maps). So the compile (CPU) and onnxruntime runtimes start from this
    copy. (t2, onnxruntime at 2 threads: the chunk layout 0.66x the time of the earlier
    (..., T, chunks) plain scan.)
    """
    import copy

    from mmlab.model.ssm import SS2D

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, SS2D):
            module.scan_impl = "plain"
    return model


def _eager(model: "torch.nn.Module", example: "torch.Tensor") -> Callable[[], Any]:
    return lambda: model(example)


COMPILE_TOLERANCE = 1e-4
"""``compile``: max abs error relative to the output scale against eager (inductor reorders float sums)."""
HALF_TOLERANCE = 1e-2
"""``compile`` in float16 / bfloat16 (CUDA): inductor keeps some intermediates in float32, eager rounds them."""
ONNX_TOLERANCE = 1e-4
"""``onnxruntime``: max abs error relative to the output scale against eager PyTorch."""


def compile_model(model: "torch.nn.Module", example: "torch.Tensor") -> "torch.nn.Module":
    """``torch.compile`` for inference: one graph (``fullgraph``), static shapes, compiled here
    (the first calls, on ``example``). Returns the compiled module.

    CPU: the default mode (inductor's C++/OpenMP code) with ``freezing``: the weights become
    constants, so inductor folds them and packs the conv and GEMM weights for oneDNN / MKL once
    instead of on every call. The compiled network is :func:`traceable`'s copy (the chunk-layout
    scan as out-of-place ops, which inductor turns into one loop per pass, vectorised over
    channels) with every depthwise conv as a :class:`~mmlab.model.layers.TapConv` (a sum of shifted
    maps that inductor fuses with its neighbours instead of a oneDNN call per conv). t2 at 2
    threads, interleaved, measured while the weights were not yet truly frozen (below): the
    chunk-layout scan 0.80x the earlier plain scan, the tap sums 0.82x the convs. The one-level
    Haar wavelet path likewise becomes element-wise ops (``wavelet_impl = "taps"``,
    :func:`~mmlab.model.wavelet.haar_level_taps`) instead of one grouped oneDNN conv: the global
    branches of t2 and b2, compiled and interleaved, 0.93-0.98x the time.
    ``cpp_wrapper``: the generated code calls its kernels from C++ instead of Python (t2 0.93x,
    b1 0.94x, for a longer compile; same caveat).

    Inductor's settings are set around the first calls, not passed as ``torch.compile(options=...)``:
    dynamo reads ``freezing`` while it traces (the first call), outside the options' scope, and
    with ``options={"freezing": True}`` the weights stayed graph inputs (torch 2.14: no constant
    folding, no packed weights). Truly frozen, t2 is 0.90x and b4 0.93x the time of that
    (interleaved, 2 threads).

    Tried on the frozen graph and left out (t2, 2 threads, interleaved with this form):
    ``max_autotune`` with the C++ GEMM templates picks them for the small-M products but is no
    faster (0.449 vs 0.445 of eager) and compiles 3x longer (261 s vs 87 s); ``memory_planning``
    0.457 vs 0.453; a channels-last :class:`~mmlab.model.layers.TapConv` 1.00x (b2 1.02x).

    CUDA: ``reduce-overhead``, inductor's kernels replayed as a CUDA graph, the inference mode
    for small batches where launches dominate, with the Triton scan (an opaque op to the
    compiler); the first calls also record the graph.
    """
    import torch

    from mmlab.model.blocks import FusedGlobalBranch
    from mmlab.model.layers import TapConv, swap_convs

    if example.is_cuda:
        compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True, dynamic=False)
        settings: dict[str, Any] = {}
    else:
        cpu_model = traceable(model)
        swap_convs(cpu_model, TapConv.from_conv)
        for module in cpu_model.modules():
            if isinstance(module, FusedGlobalBranch) and module.folded_level:
                module.wavelet_impl = "taps"  # the wavelet level in element-wise ops, like TapConv
        compiled = torch.compile(cpu_model, fullgraph=True, dynamic=False)
        settings = {"freezing": True, "cpp_wrapper": True}
    with torch._inductor.config.patch(settings):
        for _ in range(3):  # compile, then the calls a CUDA graph needs before it is recorded
            compiled(example)
    return compiled


def _compile(model: "torch.nn.Module", example: "torch.Tensor") -> Callable[[], Any]:
    """:func:`compile_model`, its output checked against eager. On CPU each call skips dynamo's
    guard checks (``skip_guard_eval_unsafe``): the timed call always passes the same input to the
    one graph compiled for it, and checking some hundred guards on the weights costs t2 about
    5 % of its time (0.95x, interleaved, 2 threads)."""
    import torch

    compiled = compile_model(model, example)
    tolerance = COMPILE_TOLERANCE if example.dtype == torch.float32 else HALF_TOLERANCE
    check_outputs("compile", compiled(example), model(example), tolerance)
    if example.is_cuda:
        return lambda: compiled(example)

    def run() -> Any:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return compiled(example)

    return run


def _onnxruntime(model: "torch.nn.Module", example: "torch.Tensor") -> Callable[[], Any]:
    """Export to ONNX, check against PyTorch, and run in an onnxruntime CPU session.

    The session uses torch's current intra-op thread count (the one the timing set), one
    inter-op thread and sequential execution, so it is compared with eager on equal terms.
    """
    import torch

    from mmlab.meter.onnx import check_session, export_bytes, session

    ort_session = session(export_bytes(model, example, dynamic_batch=False), threads=torch.get_num_threads())
    check_session(ort_session, model, example, ONNX_TOLERANCE)
    feed = {ort_session.get_inputs()[0].name: example.detach().cpu().numpy()}
    run = ort_session.run
    return lambda: run(None, feed)


def _release_compiled() -> None:
    """Forget every compiled graph: each architecture adds entries to dynamo's cache for the same
    ``forward`` code, so a process that times many would hit the recompile limit (and check ever
    more guards per call) unless they are dropped after each timing."""
    import torch

    torch._dynamo.reset()


@dataclass(frozen=True)
class Runtime:
    """How a fused model is run for timing.

    Attributes:
        name: registry name, part of every cache key and row (``env_runtime``).
        description: one line for ``--help``.
        devices: where it runs.
        prepare: ``prepare(model, example) -> fn``; ``fn()`` runs one forward pass. Everything
            done once (compiling, exporting, checking outputs, warming up) happens here, outside
            the timed region.
        tolerance: most relative error (``max|out - eager| / max|eager|``) of its float32 outputs
            against eager PyTorch on the same fused model; ``prepare`` raises :class:`OutputMismatch`
            above it (``compile`` allows :data:`HALF_TOLERANCE` for half-precision inputs).
        prepare_metric: the row field that records how long ``prepare`` took, in seconds, when
            that time is part of the runtime's cost (``compile_s``: compiling and the first calls;
            ``export_s``: ONNX export, output check and session creation); None: not recorded.
        package: the distribution whose version is recorded with the timing (``env_runtime_version``)
            and so is part of the cache key; None when torch (``env_torch``) is the runtime.
        release: called once the callables ``prepare`` returned are no longer used, to free what
            they cached process-wide (``compile``: dynamo's compiled graphs); None: nothing to free.
    """

    name: str
    description: str
    devices: tuple[str, ...]
    prepare: Callable[["torch.nn.Module", "torch.Tensor"], Callable[[], Any]]
    tolerance: float = 0.0
    prepare_metric: str | None = None
    package: str | None = None
    release: Callable[[], None] | None = None

    def free(self) -> None:
        """Call :attr:`release` if the runtime has one: after the prepared callables are dropped."""
        if self.release is not None:
            self.release()


RUNTIMES: dict[str, Runtime] = {
    "eager": Runtime("eager", "PyTorch eager mode, inference_mode", ("cpu", "cuda"), _eager),
    "compile": Runtime("compile", "torch.compile, fullgraph (CPU: frozen weights; CUDA: reduce-overhead); compile time in compile_s",
                       ("cpu", "cuda"), _compile, tolerance=COMPILE_TOLERANCE, prepare_metric="compile_s",
                       release=_release_compiled),
    "onnxruntime": Runtime("onnxruntime", "ONNX export run in an onnxruntime CPU session (pip install "
                           "'mmlab[deploy]'); export time in export_s", ("cpu",), _onnxruntime,
                           tolerance=ONNX_TOLERANCE, prepare_metric="export_s", package="onnxruntime"),
}


@lru_cache(maxsize=None)
def runtime_version(name: str) -> str:
    """Version of the runtime's own package (``""`` for the torch runtimes, or when it is not installed)."""
    import importlib.metadata

    package = RUNTIMES[name].package
    if package is None:
        return ""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def check_runtime(name: str, device: str) -> Runtime:
    """The runtime ``name`` for ``device``, or ``ValueError`` naming what is allowed."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime: {name!r} is not allowed; allowed: {', '.join(RUNTIMES)}")
    runtime = RUNTIMES[name]
    if device not in runtime.devices:
        raise ValueError(f"runtime: {name!r} does not run on {device}; it runs on {', '.join(runtime.devices)}")
    if runtime.package is not None and not runtime_version(name):
        raise ValueError(f"runtime: {name!r} needs the {runtime.package} package; pip install 'mmlab[deploy]'")
    return runtime
