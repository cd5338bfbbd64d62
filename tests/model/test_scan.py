"""The fast selective scan against the sequential reference, and the reference against hand arithmetic.

"Relative" everywhere is norm-wise: max|fast - ref| / max|ref|, on outputs and on gradients.
The Triton kernel (CUDA path) is checked on CPU under TRITON_INTERPRET=1, and on CUDA by the
``gpu``-marked tests (``pytest -m gpu``).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmlab.model import scan as scan_module
from mmlab.model.scan import (
    selective_scan_chunked, selective_scan_chunked_plain, selective_scan_fast, selective_scan_infer, selective_scan_ref,
    selective_scan_triton, softplus, softplus_, triton_scan_applies,
)
from mmlab.model.ssm import SS2D, FusedSS2D, SelectiveScan

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative difference: max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_inputs(batch, k, di, length, n, seed=0, with_d=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    kd = k * di
    return dict(
        u=torch.randn(batch, kd, length, generator=g),
        delta=torch.randn(batch, kd, length, generator=g),
        A=-(torch.rand(kd, n, generator=g) + 0.2),
        B=torch.randn(batch, k, n, length, generator=g),
        C=torch.randn(batch, k, n, length, generator=g),
        D=torch.randn(kd, generator=g) if with_d else None,
        delta_bias=torch.rand(kd, generator=g) if with_bias else None,
    )


def assert_fast_matches_reference(inputs, tol=1e-5, chunk=None, **kwargs):
    """Outputs and the gradient w.r.t. every given input agree within ``tol`` relative."""
    ref_in = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    fast_in = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y_ref = selective_scan_ref(**ref_in, **kwargs)
    y_fast = selective_scan_fast(**fast_in, chunk=chunk, **kwargs)
    assert y_fast.dtype == y_ref.dtype and y_fast.shape == inputs["u"].shape
    assert rel(y_fast, y_ref) < tol
    grad_y = torch.randn_like(y_ref)
    (y_ref * grad_y).sum().backward()
    (y_fast * grad_y).sum().backward()
    for name in ref_in:
        assert rel(fast_in[name].grad, ref_in[name].grad) < tol, name


SHAPES = [  # (batch, K, Di, L, N)
    (1, 2, 16, 64, 1),  # L = 8 x 8: chunks divide L
    (2, 2, 8, 37, 1),  # odd length: padded last chunk
    (1, 1, 8, 1, 1),  # a single position
    (2, 4, 4, 49, 4),
    (1, 2, 8, 20, 16),
    (3, 1, 5, 7, 2),
]


@pytest.mark.parametrize("fn", [softplus, lambda x: softplus_(x.clone())], ids=["softplus", "softplus_"])
def test_vectorised_softplus_equals_atens(fn):
    """The inference softplus against float64 ``F.softplus``: as close as ATen's own on the step
    sizes' range, and the same at the extremes (where ``u = 1 + e^-|x|`` rounds to 1)."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    exact = F.softplus(x.double())
    assert ((fn(x).double() - exact).abs() / exact).max() < 2.5e-7
    assert ((F.softplus(x).double() - exact).abs() / exact).max() < 2.5e-7  # ATen, for scale
    wide = torch.linspace(-60, 60, 2001)
    torch.testing.assert_close(fn(wide), F.softplus(wide), rtol=2e-6, atol=0)
    edges = torch.tensor([float("-inf"), -104.0, -30.0, 0.0, 30.0, 104.0, float("inf"), float("nan")])
    torch.testing.assert_close(fn(edges), F.softplus(edges), rtol=1e-6, atol=0, equal_nan=True)


def test_softplus_in_place_writes_its_input():
    x = torch.randn(64)
    out = softplus_(x)
    assert out.data_ptr() == x.data_ptr() and bool((x > 0).all())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("softplus", [True, False])
def test_fast_matches_reference_outputs_and_gradients(shape, softplus):
    inputs = make_inputs(*shape)
    if not softplus:  # keep Δ positive without the softplus
        inputs["delta"] = inputs["delta"].abs()
    assert_fast_matches_reference(inputs, delta_softplus=softplus)


@pytest.mark.parametrize(("with_d", "with_bias"), [(False, False), (True, False), (False, True)])
def test_optional_skip_and_bias(with_d, with_bias):
    assert_fast_matches_reference(make_inputs(2, 2, 4, 30, 1, with_d=with_d, with_bias=with_bias))


@pytest.mark.parametrize("chunk", [1, 3, 8, 50, 200])
def test_any_chunk_length(chunk):
    assert_fast_matches_reference(make_inputs(2, 2, 4, 50, 2), chunk=chunk)


def test_hand_computed_case():
    # One channel, N = 1, L = 3, no softplus: h_t = exp(δ_t·A)·h_{t-1} + δ_t·B_t·u_t, y_t = C_t·h_t + D·u_t
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 2.0]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[[1.0, 0.5, 2.0]]]])
    C = torch.tensor([[[[2.0, 1.0, -1.0]]]])
    D = torch.tensor([0.5])
    h1 = 0.5 * 1.0 * 1.0
    h2 = math.exp(-1.0) * h1 + 1.0 * 0.5 * 2.0
    h3 = math.exp(-2.0) * h2 + 2.0 * 2.0 * -1.0
    expected = torch.tensor([[[2 * h1 + 0.5, 1 * h2 + 1.0, -1 * h3 - 0.5]]])
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C, D=D, delta_softplus=False), expected)
    for chunk in (None, 2, 3, 4):  # ⌊√3⌋ = 1: three chunks / one full, one padded / one / one padded
        torch.testing.assert_close(selective_scan_fast(u, delta, A, B, C, D=D, delta_softplus=False, chunk=chunk), expected)
    # softplus and bias: δ_1 = softplus(0.5 + 0.3), y_1 = C_1·δ_1·B_1·u_1 without D
    out = selective_scan_ref(u, delta, A, B, C, delta_bias=torch.tensor([0.3]))
    d1 = math.log1p(math.exp(0.8))
    assert out[0, 0, 0].item() == pytest.approx(2 * d1 * 1.0 * 1.0, rel=1e-6)


def test_float64_inputs_return_float32_unless_asked():
    inputs = {k: v.double() for k, v in make_inputs(1, 2, 4, 9, 1).items()}
    assert selective_scan_ref(**inputs).dtype == torch.float32
    assert selective_scan_fast(**inputs).dtype == torch.float32
    y = selective_scan_fast(**inputs, dtype=torch.float64)
    assert y.dtype == torch.float64
    assert rel(y, selective_scan_ref(**inputs, dtype=torch.float64)) < 1e-12


def test_strong_decay_does_not_overflow():
    # Large steps: exp(δ·A) underflows to exactly 0 in places; products of decays must stay finite.
    inputs = make_inputs(1, 2, 4, 1024, 1)
    inputs["delta"] = inputs["delta"] * 60
    assert (torch.exp(F.softplus(inputs["delta"]) * inputs["A"][:, :1]) == 0).any()
    assert_fast_matches_reference(inputs)


def test_long_sequence_without_decay_underflow():
    inputs = make_inputs(1, 2, 4, 4096, 1)
    y = selective_scan_fast(**inputs)
    assert torch.isfinite(y).all()
    assert rel(y, selective_scan_ref(**inputs)) < 1e-5


def test_rejects_inconsistent_shapes():
    inputs = make_inputs(1, 2, 4, 9, 1)
    inputs["B"] = inputs["B"][..., :-1]
    with pytest.raises(ValueError, match="selective scan shapes"):
        selective_scan_fast(**inputs)


# --- the forward-only in-place path (fused networks, inference) ---------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk", [None, 1, 3, 8, 50])
def test_infer_matches_reference(shape, chunk):
    inputs = make_inputs(*shape)
    y = selective_scan_infer(**inputs, chunk=chunk)
    assert y.dtype == torch.float32 and y.shape == inputs["u"].shape
    assert rel(y, selective_scan_ref(**inputs)) < 1e-5


@pytest.mark.parametrize(("with_d", "with_bias", "softplus"), [(False, False, False), (True, False, True), (False, True, True)])
def test_infer_options(with_d, with_bias, softplus):
    inputs = make_inputs(2, 2, 4, 30, 1, with_d=with_d, with_bias=with_bias)
    inputs["delta"] = inputs["delta"].abs()
    ref = selective_scan_ref(**inputs, delta_softplus=softplus)
    assert rel(selective_scan_infer(**inputs, delta_softplus=softplus), ref) < 1e-5


def test_infer_hand_case_strong_decay_long_sequence_and_float64():
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 2.0]]])
    A, D = torch.tensor([[-1.0]]), torch.tensor([0.5])
    B, C = torch.tensor([[[[1.0, 0.5, 2.0]]]]), torch.tensor([[[[2.0, 1.0, -1.0]]]])
    h1 = 0.5
    h2 = math.exp(-1.0) * h1 + 1.0
    h3 = math.exp(-2.0) * h2 - 4.0
    expected = torch.tensor([[[2 * h1 + 0.5, h2 + 1.0, -h3 - 0.5]]])
    for chunk in (None, 2, 3, 4):
        torch.testing.assert_close(selective_scan_infer(u, delta, A, B, C, D=D, delta_softplus=False, chunk=chunk), expected)
    strong = make_inputs(1, 2, 4, 1024, 1)
    strong["delta"] = strong["delta"] * 60  # decays underflow to exactly 0
    assert rel(selective_scan_infer(**strong), selective_scan_ref(**strong)) < 1e-5
    long = make_inputs(1, 2, 4, 4096, 1)
    y = selective_scan_infer(**long)
    assert torch.isfinite(y).all() and rel(y, selective_scan_ref(**long)) < 1e-5
    inputs = {k: v.double() for k, v in make_inputs(1, 2, 4, 9, 2).items()}
    y = selective_scan_infer(**inputs, dtype=torch.float64)
    assert y.dtype == torch.float64 and rel(y, selective_scan_ref(**inputs, dtype=torch.float64)) < 1e-12


@pytest.mark.parametrize("mode", ["forward", "bidi", "cross"])
@pytest.mark.parametrize("side", [(6, 6), (5, 7)])
def test_fused_ss2d_inference_paths_equal_the_reference(mode, side, monkeypatch):
    """Grad mode off: sequences laid out in chunks (square maps, or any map without cross), else
    the in-place scan on the usual layout; grad mode on: the autograd path. All equal the reference."""
    layer = SS2D(16, 32, 3, d_state=2, mode=mode).eval()
    with torch.no_grad():
        for name in ("A_logs", "Ds", "dt_projs_bias"):
            getattr(layer, name).uniform_(-0.5, 0.5)
    scale = torch.rand(16) + 0.5
    fused = layer.fuse(out_scale=scale)
    assert isinstance(fused, FusedSS2D) and isinstance(fused, SS2D)
    x = torch.randn(2, 16, *side)
    calls = []
    for name in ("selective_scan_infer", "selective_scan_chunked"):
        real = getattr(scan_module, name)
        monkeypatch.setattr(f"mmlab.model.ssm.{name}", lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    layer.scan_impl = "ref"
    ref = layer(x) * scale[:, None, None]
    with torch.inference_mode():
        assert rel(fused(x), ref) < 1e-5
    chunk_layout = mode != "cross" or side[0] == side[1]
    assert calls == ["selective_scan_chunked" if chunk_layout else "selective_scan_infer"]
    y = fused(x)  # grad mode, parameters requiring grad: the autograd path
    assert len(calls) == 1 and y.requires_grad and rel(y.detach(), ref.detach()) < 1e-5
    fused.scan_impl = "ref"
    with torch.inference_mode():
        assert rel(fused(x), ref) < 1e-5
    assert len(calls) == 1


@pytest.mark.parametrize(("t_len", "n_chunks", "n"), [(4, 3, 1), (5, 1, 4), (1, 6, 2), (3, 3, 16)])
def test_chunked_plain_equals_the_in_place_scan_and_the_reference(t_len, n_chunks, n):
    """The out-of-place chunk-layout scan (what compilers trace) against the in-place one and the
    readable reference, on sequences laid out (batch, K, T, chunks, Di): position c·T + t at [t, c]."""
    batch, k, di = 2, 2, 8
    inputs = make_inputs(batch, k, di, t_len * n_chunks, n)

    def to_chunks(x):  # (batch, K, width, L) -> (batch, K, T, chunks, width)
        return x.unflatten(-1, (n_chunks, t_len)).permute(0, 1, 4, 3, 2).contiguous()

    delta = F.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    args = (to_chunks(inputs["u"].reshape(batch, k, di, -1)), to_chunks(delta.reshape(batch, k, di, -1)),
            inputs["A"], to_chunks(inputs["B"]), to_chunks(inputs["C"]), inputs["D"])
    before = [a.clone() for a in args]
    y = selective_scan_chunked_plain(*args)
    assert all(torch.equal(a, b) for a, b in zip(args, before))  # out of place: inputs untouched
    assert rel(y, selective_scan_chunked(*[a.clone() for a in args])) < 1e-6
    ref = selective_scan_ref(**inputs)  # (batch, K*Di, L)
    assert rel(y.permute(0, 1, 4, 3, 2).reshape(batch, k * di, -1), ref) < 1e-5


@pytest.mark.parametrize("mode", ["forward", "bidi", "cross"])
@pytest.mark.parametrize("side", [(1, 1), (2, 2), (6, 6), (5, 7)])
def test_fused_ss2d_plain_path_equals_the_reference(mode, side, monkeypatch):
    """``plain`` (compile, onnxruntime): the chunk layout with the out-of-place scan wherever the
    layout applies, in grad mode too (it has no in-place update), else the plain chunked scan."""
    layer = SS2D(16, 32, 3, d_state=2, mode=mode).eval()
    with torch.no_grad():
        for name in ("A_logs", "Ds", "dt_projs_bias"):
            getattr(layer, name).uniform_(-0.5, 0.5)
    fused = layer.fuse()
    fused.scan_impl = "plain"
    calls = []
    real = scan_module.selective_scan_chunked_plain
    monkeypatch.setattr("mmlab.model.ssm.selective_scan_chunked_plain", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 16, *side)
    layer.scan_impl = "ref"
    with torch.no_grad():
        ref = layer(x)
        assert rel(fused(x), ref) < 1e-5
    y = fused(x)
    assert y.requires_grad and rel(y.detach(), ref) < 1e-5
    chunk_layout = mode != "cross" or side[0] == side[1]
    assert len(calls) == (2 if chunk_layout else 0)


def test_autograd_function_matches_fast_path():
    inputs = make_inputs(2, 2, 8, 25, 1)
    a = [inputs[k].clone().requires_grad_() for k in INPUT_NAMES]
    b = [inputs[k].clone().requires_grad_() for k in INPUT_NAMES]
    y_fn = SelectiveScan.apply(*a)
    y_fast = selective_scan_fast(*b[:5], D=b[5], delta_bias=b[6])
    torch.testing.assert_close(y_fn, y_fast)
    g = torch.randn_like(y_fn)
    (y_fn * g).sum().backward()
    (y_fast * g).sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("mode", ["forward", "bidi", "cross"])
def test_ss2d_fast_equals_reference(mode):
    layer = SS2D(16, 32, 1, d_state=2, mode=mode).eval()
    x = torch.randn(2, 16, 5, 7)
    fast = layer(x)
    layer.scan_impl = "ref"
    assert rel(fast, layer(x)) < 1e-5


# --- the forward-only Triton kernel (CUDA path) ------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_triton = pytest.mark.skipif(scan_module.triton is None, reason="triton not installed")

INTERPRETER_SHAPES = [  # (batch, K, Di, L, N), small: the interpreter runs a tile in ~0.1 s
    (1, 2, 16, 64, 1),
    (2, 2, 8, 37, 1),  # odd length: masked tail of the tile
    (1, 1, 8, 1, 1),  # a single position
    (1, 2, 4, 20, 3),  # N = 3: padded state dimension
    (1, 1, 20, 200, 1),  # 2 L tiles (state carried across tiles), 2 channel blocks
]
CUDA_SHAPES = SHAPES + INTERPRETER_SHAPES + [
    (2, 2, 70, 300, 1),
    (1, 2, 224, 144, 1),  # MobileMamba-T2 stage 1 (12 x 12), one image
    (1, 2, 320, 1024, 1),  # B4 stage 1 (32 x 32)
    (4, 2, 544, 49, 1),  # S6 stage 3 (7 x 7), a small batch
]


def triton_cases(device):
    """(label, inputs, kwargs) cases for the kernel: every option, odd strides, half inputs, strong decay."""
    for shape in CUDA_SHAPES if device == "cuda" else INTERPRETER_SHAPES:
        yield f"{shape}", {k: v.to(device) for k, v in make_inputs(*shape).items()}, {}
    plain = make_inputs(2, 2, 8, 37, 2, with_d=False, with_bias=False)
    plain["delta"] = plain["delta"].abs()
    yield "no D, no bias, no softplus", {k: (v.to(device) if v is not None else None) for k, v in plain.items()}, {"delta_softplus": False}
    x = make_inputs(2, 2, 8, 50, 1)
    bc = torch.randn(2, 2, 5, 50)  # B, C as views of a wider projection, as SS2D passes them
    x["B"], x["C"] = bc[:, :, 1:2], bc[:, :, 3:4]
    yield "strided B, C", {k: v.to(device) for k, v in x.items()}, {}
    x = {k: v.to(device) for k, v in make_inputs(1, 2, 16, 64, 1).items()}
    x["u"], x["delta"] = x["u"].half(), x["delta"].half()
    yield "float16 u, delta", x, {}
    x = make_inputs(1, 2, 4, 150, 1)
    x["delta"] = x["delta"] * 60  # decays underflow to exactly 0
    yield "strong decay", {k: v.to(device) for k, v in x.items()}, {}


def assert_triton_matches_reference(device):
    for label, inputs, kwargs in triton_cases(device):
        y = selective_scan_triton(**inputs, **kwargs)
        ref = selective_scan_ref(**{k: (v.cpu() if v is not None else None) for k, v in inputs.items()}, **kwargs)
        assert y.dtype == torch.float32 and y.shape == inputs["u"].shape, label
        assert rel(y.cpu(), ref) < 1e-5, label


def test_triton_path_is_off_on_cpu():
    inputs = make_inputs(1, 2, 4, 9, 1)
    assert not triton_scan_applies(*inputs.values())  # CPU tensors: the chunked path, as before
    with torch.no_grad():
        assert not triton_scan_applies(*inputs.values())
    with pytest.raises(ValueError, match="float32 only"):
        selective_scan_triton(**inputs, dtype=torch.float64)


def test_ss2d_chunked_impl_equals_fast_on_cpu():
    layer = SS2D(16, 32, 1, d_state=1, mode="bidi").eval()
    x = torch.randn(2, 16, 5, 7)
    fast = layer(x)
    layer.scan_impl = "chunked"
    torch.testing.assert_close(layer(x), fast)


@needs_triton
def test_triton_kernel_matches_reference_in_interpreter():
    """The kernel's arithmetic on CPU, under TRITON_INTERPRET=1 (set before triton defines it: a subprocess)."""
    here = Path(__file__).resolve()
    root = next(p for p in here.parents if (p / "pyproject.toml").is_file())
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('scan_tests', {str(here)!r})\n"
        "t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)\n"
        "assert t.scan_module.triton is not None\n"
        "t.assert_triton_matches_reference('cpu')\n"
        "print('ok')\n"
    )
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


@pytest.mark.gpu
@requires_cuda
def test_triton_kernel_matches_reference_on_cuda():
    assert_triton_matches_reference("cuda")
    inputs = [v.cuda() for v in make_inputs(1, 2, 4, 9, 1).values()]
    assert triton_scan_applies(*inputs)
    assert not triton_scan_applies(*inputs, dtype=torch.float64)
    inputs[0].requires_grad_()
    assert not triton_scan_applies(*inputs)  # a gradient is wanted: the autograd path
    with torch.no_grad():
        assert triton_scan_applies(*inputs)


@pytest.mark.gpu
@requires_cuda
def test_ss2d_on_cuda_uses_triton_without_grad_and_trains_with_grad(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convs, comparable with CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    calls = []
    real = selective_scan_triton
    monkeypatch.setattr("mmlab.model.ssm.selective_scan_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    layer = SS2D(16, 32, 2, d_state=1, mode="bidi").eval()
    x = torch.randn(2, 16, 6, 7)
    layer_cuda = SS2D(16, 32, 2, d_state=1, mode="bidi").eval()
    layer_cuda.load_state_dict(layer.state_dict())
    layer_cuda = layer_cuda.cuda()
    with torch.inference_mode():
        y = layer_cuda(x.cuda())
    assert calls, "inference on CUDA did not take the Triton path"
    layer.scan_impl = "ref"
    with torch.no_grad():
        assert rel(y.cpu(), layer(x)) < 1e-4
    # With gradients wanted, the chunked autograd path runs on CUDA and matches CPU's gradients.
    calls.clear()
    layer.scan_impl = "fast"
    x_cpu, x_gpu = x.clone().requires_grad_(), x.cuda().requires_grad_()
    layer(x_cpu).square().sum().backward()
    layer_cuda(x_gpu).square().sum().backward()
    assert not calls
    assert rel(x_gpu.grad.cpu(), x_cpu.grad) < 1e-4
    assert rel(layer_cuda.A_logs.grad.cpu(), layer.A_logs.grad) < 1e-4
