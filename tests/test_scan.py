"""The fast selective scan against the sequential reference, and the reference against hand arithmetic.

"Relative" everywhere is norm-wise: max|fast - ref| / max|ref|, on outputs and on gradients.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mmlab.model.scan import selective_scan_fast, selective_scan_ref
from mmlab.model.ssm import SS2D, SelectiveScan

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
