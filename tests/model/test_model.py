import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import mmlab
from mmlab.spec.arch import ArchSpec, StageSpec
from mmlab.model.blocks import ChannelScale, FusedGlobalBranch, FusedLocalBranch, GlobalBranch, LocalBranch
from mmlab.model.layers import (
    FFN, ONEDNN_LINEAR, ConvBN, PatchMerging, Pointwise, Residual, TapConv, fold_relus, swap_convs,
)
from mmlab.model.wavelet import dwt, fold_haar_level, haar_level, haar_level_taps, idwt, wavelet_filters
from mmlab.spec.presets import PAPER_PRESETS, PRESETS, get_preset
from tests.conftest import randomise_bn, read_tsv

TINY = get_preset("tiny")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_param_counts_match_reference_exactly(name):
    row = {r["preset"]: r for r in read_tsv("presets.tsv")}[name]
    with torch.device("meta"):
        model = mmlab.build(PRESETS[name])
    assert n_params(model) == int(row["params_all"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == int(row["params_trainable"])


def test_ss2d_param_formula():
    # P_SS2D = 3·g·Di + 16·Di + K·Di·(2R + 3N + 2) + 2g, for g=112, Di=224, R=7, K=2, N=1: 87,584.
    branch = GlobalBranch(112, 7, 1, "db1", 224, 7, 1, "bidi")
    assert n_params(branch.ssm) == 87_584
    assert sum(p.numel() for p in branch.parameters() if p.requires_grad) == 110_096
    assert n_params(branch) == 113_680


def test_block_is_double_identity_at_init():
    model = mmlab.build(get_preset("t2")).eval()
    x = torch.randn(1, 144, 12, 12)
    for block in model.stages[0].blocks:
        torch.testing.assert_close(block(x), 2 * x)


def test_drop_path_drops_the_whole_chain():
    model = mmlab.build(get_preset("tiny").replace(drop_path=0.99))
    block = model.stages[2].blocks[0].train()
    x = torch.randn(64, 64, 2, 2)
    out = block(x)
    # A fresh block's chain is x, so a kept sample is x + x/(1-p) and a dropped one is x.
    dropped = torch.isclose(out, x).flatten(1).all(1)
    assert 0 < dropped.sum() <= 64
    torch.testing.assert_close(out[~dropped], x[~dropped] * (1 + 1 / (1 - 0.99 * 1.0)), rtol=1e-4, atol=1e-4)


def test_zero_initialised_gammas():
    model = mmlab.build(TINY)
    block = model.stages[0].blocks[0]
    for conv_bn in (block.dw0.m, block.dw1.m, block.ffn0.m.pw2, block.ffn1.m.pw2, block.mixer.m.proj):
        assert torch.count_nonzero(conv_bn.bn.weight) == 0
    assert torch.all(model.stages[1].downsample[0][0].m.bn.weight == 1)
    ssm = block.mixer.m.global_op.ssm
    assert torch.all(ssm.A_logs == 0) and torch.all(ssm.Ds == 1)
    assert 0 <= ssm.dt_projs_bias.min() and ssm.dt_projs_bias.max() < 0.1


def test_haar_filters_and_perfect_reconstruction():
    dec, rec = wavelet_filters("db1")
    expected = 0.5 * torch.tensor([[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]], dtype=torch.float32)
    torch.testing.assert_close(dec, expected)
    torch.testing.assert_close(rec, expected)
    x = torch.randn(2, 3, 8, 6)
    dec_f, rec_f = dec[:, None].repeat(3, 1, 1, 1), rec[:, None].repeat(3, 1, 1, 1)
    torch.testing.assert_close(idwt(dwt(x, dec_f), rec_f), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels", [0, 1, 2, 3])
@pytest.mark.parametrize("side", [7, 8])
def test_wavelet_path_levels_and_odd_maps(levels, side):
    branch = GlobalBranch(16, 3, levels, "db1", 32, 1, 1, "bidi")
    x = torch.randn(1, 16, side, side, requires_grad=True)
    y = branch(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_single_level_identity_reconstruction():
    branch = GlobalBranch(16, 3, 1, "db1", 32, 1, 1, "bidi")
    torch.nn.init.dirac_(branch.wavelet_convs[0].weight, groups=64)  # identity sub-band filters
    branch.wavelet_scale[0].weight.data.fill_(1.0)
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(branch.wavelet_path(x), x, rtol=1e-5, atol=1e-5)


def _variant(**changes) -> ArchSpec:
    return TINY.replace(**changes)


VARIANTS = {
    **{f"scan_{m}": _variant(scan=m) for m in ("forward", "bidi", "cross")},
    **{f"d_state_{n}": _variant(d_state=n) for n in (1, 2, 4, 16)},
    **{f"levels_{n}": TINY.replace(stages=tuple(s.__class__(**{**s.__dict__, "wavelet_levels": n}) for s in TINY.stages)) for n in (0, 1, 2, 3)},
    "two_stages": _variant(stages=TINY.stages[:2]),
    "four_stages": _variant(stages=TINY.stages + (StageSpec(width=80, depth=1, kernel=3),), resolution=96),
    "stride_8": _variant(stem_stride=8),
    "stride_4": _variant(stem_stride=4, resolution=32),
    "no_global": _variant(stages=tuple(StageSpec(width=s.width, depth=1, global_ratio=0.0, local_ratio=0.5) for s in TINY.stages)),
    "no_local": _variant(stages=tuple(StageSpec(width=s.width, depth=1, global_ratio=0.5, local_ratio=0.0) for s in TINY.stages)),
    "all_global": _variant(stages=tuple(StageSpec(width=s.width, depth=1, global_ratio=1.0, local_ratio=1.0) for s in TINY.stages)),
    "odd_resolution": _variant(resolution=72),
    "db2_wavelet": _variant(wavelet="db2"),
    "sym4_wavelet": _variant(wavelet="sym4"),
    "ffn_ratio_3": _variant(ffn_ratio=3.0, ssm_ratio=1.0),
    "in_chans_1": _variant(in_chans=1, num_classes=0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_and_trains(name):
    spec = VARIANTS[name]
    model = mmlab.build(spec)
    x = torch.randn(2, spec.in_chans, spec.resolution, spec.resolution)
    y = model(x)
    assert y.shape == (2, spec.num_classes or spec.widths[-1])
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert model.forward_features(x).shape[-1] == spec.stage_resolutions[-1]


def _randomise_all(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affines, and every per-channel scale, away from their init values
    (zero-initialised gammas would hide half of each block from a comparison)."""
    randomise_bn(model)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, ChannelScale):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5


def _with_levels(spec: ArchSpec, levels: int) -> ArchSpec:
    return spec.replace(stages=tuple(s.__class__(**{**s.__dict__, "wavelet_levels": levels}) for s in spec.stages))


# A non-preset spec: four scan directions, four states, two wavelet levels (odd 3x3 last stage).
NON_PRESET = _with_levels(get_preset("t2").replace(scan="cross", d_state=4), 2)
FUSE_SPECS = {"tiny": TINY, **{name: PRESETS[name] for name in PAPER_PRESETS}, "cross_n4_levels2": NON_PRESET,
              "db2_wavelet": _variant(wavelet="db2"), "odd_resolution": _variant(resolution=72)}


@pytest.mark.parametrize("name", list(FUSE_SPECS))
def test_fuse_matches_unfused(name):
    spec = FUSE_SPECS[name]
    model = mmlab.build(spec)
    _randomise_all(model)
    model.eval()
    fused = mmlab.fuse(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, ConvBN, ChannelScale)) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not [m for m in convs if Pointwise.from_conv(m)]  # every dense 1x1 conv is a matrix product
    x = torch.randn(1, 3, spec.resolution, spec.resolution)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    # The deploy form's contract: within 1e-5 of the unfused network, relative to the output scale.
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
    # The original is untouched unless asked.
    assert any(isinstance(m, ConvBN) for m in model.modules())


@pytest.mark.parametrize("name", ["tiny", "t2", "cross_n4_levels2"])
def test_fuse_for_cuda_keeps_nchw_convs(name):
    """The CUDA deploy form (run here on CPU, the layout is what is checked): 1x1 convs stay
    ``Conv2d`` with NCHW weights, no ``Pointwise``, and the same outputs as the CPU form."""
    spec = FUSE_SPECS[name]
    model = mmlab.build(spec)
    _randomise_all(model)
    model.eval()
    fused = mmlab.fuse(model, device="cuda")
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, ConvBN, Pointwise)) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m for m in convs if m.kernel_size == (1, 1) and m.groups == 1]
    assert all(m.weight.is_contiguous() for m in convs)
    x = torch.randn(2, 3, spec.resolution, spec.resolution)
    with torch.inference_mode():
        ref, out, cpu_form = model(x), fused(x), mmlab.fuse(model)(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert ((out - cpu_form).abs().max() / ref.abs().max()).item() < 1e-5
    # The one-level Haar path runs level by level on CUDA, folded on CPU.
    impls = {m.wavelet_impl for m in fused.modules() if isinstance(m, FusedGlobalBranch) and m.folded_level}
    assert impls == ({"levels"} if spec.stages[0].wavelet_levels == 1 and spec.wavelet == "db1" else set())
    assert {m.wavelet_impl for m in mmlab.fuse(model).modules() if isinstance(m, FusedGlobalBranch) and m.folded_level} <= {"folded"}


def test_fuse_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device: 'mps' is not allowed; allowed: cpu, cuda"):
        mmlab.fuse(mmlab.build(TINY), device="mps")


def test_pointwise_equals_the_1x1_conv_it_replaces():
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(12, 20, 1)
    layer = Pointwise.from_conv(conv)
    for x in (torch.randn(2, 12, 5, 7), torch.randn(2, 12, 5, 7).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            out = layer(x)
            torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-6)
        assert out.shape == (2, 20, 5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last)  # channels-last in, channels-last out
    assert Pointwise.from_conv(torch.nn.Conv2d(12, 20, 1, bias=False)).bias is None
    # Anything but a dense stride-1 1x1 conv keeps its conv.
    for other in (torch.nn.Conv2d(12, 20, 3, padding=1), torch.nn.Conv2d(12, 20, 1, stride=2),
                  torch.nn.Conv2d(12, 12, 1, groups=12), torch.nn.Conv2d(12, 20, 1, padding=1)):
        assert Pointwise.from_conv(other) is None


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")
def test_pointwise_takes_onednn_in_inference_and_f_linear_otherwise(monkeypatch):
    """oneDNN's GEMM (in inference, more than one row) against ``F.linear``, the oracle; autograd,
    single rows and exporters' tracing take ``F.linear`` itself."""
    torch.manual_seed(6)
    layer = Pointwise.from_conv(torch.nn.Conv2d(48, 96, 1))
    x = torch.randn(1, 48, 6, 6).contiguous(memory_format=torch.channels_last)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.inference_mode():
        out = layer(x)
        oracle = F.linear(x.permute(0, 2, 3, 1), layer.weight, layer.bias).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, oracle, rtol=1e-5, atol=1e-5)
        assert calls == [(1, 6, 6, 48)]
        layer(torch.randn(1, 48, 1, 1))  # one row: MKL's matrix-vector product
        assert len(calls) == 1
    out = layer(x)  # grad mode, a weight that wants a gradient: autograd through F.linear
    out.sum().backward()
    assert len(calls) == 1 and layer.weight.grad is not None
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)  # what the ONNX exporter does
    assert len(calls) == 1 and "mkldnn" not in str(traced.graph) and "linear" in str(traced.graph)


def test_fold_relus_makes_the_relu_after_a_pointwise_its_post_op():
    torch.manual_seed(9)
    conv = torch.nn.Conv2d(12, 20, 1)
    relu_layer = Pointwise.from_conv(conv)
    relu_layer.relu = True
    x = torch.randn(2, 12, 5, 7)
    with torch.inference_mode():  # oneDNN's post-op
        torch.testing.assert_close(relu_layer(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-6)
    out = relu_layer(x.requires_grad_())  # autograd: F.linear, then the ReLU
    torch.testing.assert_close(out, torch.relu(conv(x)), rtol=1e-5, atol=1e-6)
    assert out.grad_fn is not None and bool((out == 0).any())
    fused = mmlab.fuse(mmlab.build(TINY).eval())
    ffns = [m for m in fused.modules() if isinstance(m, FFN)]
    merges = [m for m in fused.modules() if isinstance(m, PatchMerging)]
    assert ffns and merges
    assert all(m.pw1.relu and isinstance(m.act, torch.nn.Identity) for m in ffns)
    assert all(m.conv1.relu and isinstance(m.act1, torch.nn.Identity) and isinstance(m.act2, torch.nn.ReLU) for m in merges)
    assert not any(m.relu for m in fused.modules() if isinstance(m, Pointwise) and m not in
                   {*(f.pw1 for f in ffns), *(p.conv1 for p in merges)})
    assert fold_relus(fused) == 0  # nothing left to fold


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")
def test_pointwise_reorders_its_weight_again_when_it_changes():
    """The oneDNN-layout weight is a cache: an in-place change or a new weight is seen, and copies
    and pickles (which cannot hold oneDNN's opaque tensors) start without it."""
    torch.manual_seed(8)
    layer = Pointwise.from_conv(torch.nn.Conv2d(16, 24, 1))
    x = torch.randn(2, 16, 5, 5)
    with torch.inference_mode():
        before = layer(x)
    assert layer._onednn_weight is not None
    with torch.no_grad():
        layer.weight.mul_(2)
    with torch.inference_mode():
        bias = layer.bias.reshape(1, -1, 1, 1)
        torch.testing.assert_close(layer(x) - bias, 2 * (before - bias), rtol=1e-5, atol=1e-5)
        layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
        torch.testing.assert_close(layer(x), bias.expand_as(before))
        copied = copy.deepcopy(layer)
        restored = pickle.loads(pickle.dumps(layer))
    assert copied._onednn_weight is None and restored._onednn_weight is None
    with torch.inference_mode():
        torch.testing.assert_close(restored(x), layer(x))


def test_swap_convs_replaces_nested_convs():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(12, 20, 1), torch.nn.Sequential(torch.nn.Conv2d(20, 8, 1)),
                                torch.nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 12, 5, 7)
    with torch.no_grad():
        ref = model(x)
        assert swap_convs(model, Pointwise.from_conv) == 2  # the 3x3 conv has no Pointwise form
        kinds = [type(m) for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
        assert kinds == [Pointwise, Pointwise, torch.nn.Conv2d]
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
    torch.nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False),
    torch.nn.Conv2d(8, 16, 5, stride=2, padding=2, groups=8),  # channel multiplier 2, stride 2
    torch.nn.Conv2d(6, 6, (3, 5), stride=(2, 1), padding=(0, 2), groups=6),
], ids=["3x3", "7x7-no-bias", "multiplier-stride2", "3x5-asymmetric"])
def test_tap_conv_equals_the_depthwise_conv_it_replaces(conv):
    torch.manual_seed(7)
    layer = TapConv.from_conv(conv)
    for side in ((7, 7), (6, 9), (4, 5)):
        x = torch.randn(2, conv.in_channels, *side)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)


def test_tap_convs_replace_every_depthwise_conv_and_nothing_else():
    for other in (torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
                  torch.nn.Conv2d(8, 8, 3, padding="same", groups=8), torch.nn.Conv2d(8, 8, 3, dilation=2, groups=8),
                  torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")):
        assert TapConv.from_conv(other) is None
    torch.manual_seed(8)
    spec = get_preset("t2").replace(resolution=64)
    model = mmlab.fuse(randomise_bn(mmlab.build(spec)).eval())
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and TapConv.from_conv(m)]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert swap_convs(model, TapConv.from_conv) == len(depthwise) > 0
        assert not [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and TapConv.from_conv(m)]
        assert ((model(x) - before).abs().max() / before.abs().max()).item() < 1e-5


def test_fused_local_branch_is_one_conv_and_one_multiply_add():
    torch.manual_seed(6)
    branch = LocalBranch(12, 5)
    randomise_bn(branch)
    branch.dwconv1x1.weight.data.normal_()
    branch.eval()
    fused = branch.fuse()
    assert isinstance(fused, FusedLocalBranch) and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert [type(m) for m in fused.modules()] == [FusedLocalBranch, torch.nn.Conv2d]  # no per-channel 1x1 conv left
    x = torch.randn(2, 12, 7, 6)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), branch(x), rtol=1e-5, atol=1e-5)


def test_residual_depthwise_conv_folds_into_one_conv():
    torch.manual_seed(3)
    res = Residual(ConvBN(8, 8, 3, 1, 1, groups=8))
    randomise_bn(res)
    res.eval()
    fused = res.fuse()
    assert isinstance(fused, torch.nn.Conv2d)  # x + conv(x): the identity is in the centre tap
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), res(x), rtol=1e-5, atol=1e-5)
    # A dense or a 1x1 conv has no such form: it stays a residual around the fused conv.
    for inner in (ConvBN(8, 8, 3, 1, 1), ConvBN(8, 8, 1)):
        res = Residual(inner).eval()
        fused = res.fuse()
        assert isinstance(fused, Residual) and isinstance(fused.m, torch.nn.Conv2d)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), res(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("side", [(6, 6), (7, 7), (5, 8)])
def test_folded_haar_level_equals_the_wavelet_path(kernel, side):
    torch.manual_seed(4)
    branch = GlobalBranch(8, kernel, 1, "db1", 16, 1, 1, "bidi")
    branch.wavelet_convs[0].weight.data.normal_()
    branch.wavelet_scale[0].weight.data.uniform_(0.5, 1.5)
    weight = fold_haar_level(branch.wt_filter, branch.wavelet_convs[0].weight, branch.wavelet_scale[0].weight.reshape(-1),
                             branch.iwt_filter)
    assert weight.shape == (32, 4, kernel, kernel)
    x = torch.randn(2, 8, *side)
    band_weight = branch.wavelet_convs[0].weight * branch.wavelet_scale[0].weight.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        ref = branch.wavelet_path(x)
        assert ((haar_level(x, weight) - ref).abs().max() / ref.abs().max()).item() < 1e-5
        taps = haar_level_taps(x, branch.wt_filter, band_weight, branch.iwt_filter)  # the compilers' form
        assert ((taps - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_fold_haar_level_rejects_longer_filters():
    branch = GlobalBranch(8, 3, 1, "db2", 16, 1, 1, "bidi")
    with pytest.raises(ValueError, match="fold_haar_level"):
        fold_haar_level(branch.wt_filter, branch.wavelet_convs[0].weight, torch.ones(32), branch.iwt_filter)


@pytest.mark.parametrize(("levels", "wavelet", "folded"), [(0, "db1", False), (1, "db1", True), (2, "db1", False), (1, "db2", False)])
def test_fused_global_branch(levels, wavelet, folded):
    torch.manual_seed(5)
    branch = GlobalBranch(8, 3, levels, wavelet, 16, 2, 1, "bidi")
    _randomise_all(branch)
    for conv in branch.wavelet_convs:
        conv.weight.data.normal_()
    branch.eval()
    fused = branch.fuse()
    assert isinstance(fused, FusedGlobalBranch) and fused.folded_level == folded
    x = torch.randn(1, 8, 7, 7)
    with torch.inference_mode():
        ref = branch(x)
        assert ((fused(x) - ref).abs().max() / ref.abs().max()).item() < 1e-5
        if folded:  # the level path, kept for devices where the grouped conv is slow, agrees
            for impl in ("levels", "taps"):
                fused.wavelet_impl = impl
                assert ((fused(x) - ref).abs().max() / ref.abs().max()).item() < 1e-5, impl
            # and its tensors are not in the state dict: the folded conv stands for them
            assert not {"wt_filter", "iwt_filter", "band_weight"} & set(fused.state_dict())


def _read_layout() -> list[tuple[str, tuple[int, ...]]]:
    from tests.conftest import REFERENCE

    rows = []
    for line in (REFERENCE / "official_t2_state_dict.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        rows.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return rows


def test_reference_layout_loads_strictly_and_runs(tmp_path):
    read_tsv("presets.tsv")  # skips when the reference folder is absent
    layout = _read_layout()
    assert len(layout) == 547
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.02
    path = tmp_path / "mobilemamba_t2.pth"
    torch.save({"net": state, "net_E": {k: v + 1 for k, v in state.items()}}, path)
    spec = get_preset("t2")
    model = mmlab.load_checkpoint(path, spec).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 192, 192))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    torch.testing.assert_close(model.stem[0].c.weight, state["patch_embed.0.c.weight"])
    ema = mmlab.load_checkpoint(path, spec, ema=True)
    torch.testing.assert_close(ema.head.fc.weight, state["head.l.weight"] + 1)
    # Exported back, the layout is the authors' exactly.
    exported = mmlab.to_official_state_dict(model, spec)
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == layout
    for k in layout[:5]:
        torch.testing.assert_close(exported[k[0]], state[k[0]])


def test_checkpoint_errors():
    spec = get_preset("t2")
    state = mmlab.to_official_state_dict(mmlab.build(spec), spec)
    del state["head.l.bias"]
    with pytest.raises(ValueError, match="1 missing keys"):
        mmlab.load_checkpoint(state, spec)
    with pytest.raises(ValueError, match="no official layout"):
        mmlab.to_official_state_dict(mmlab.build(TINY.replace(stages=TINY.stages[:2])), TINY.replace(stages=TINY.stages[:2]))


def test_native_state_dict_round_trip(tmp_path):
    model = mmlab.build(TINY)
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    loaded = mmlab.load_checkpoint(tmp_path / "tiny.pth", TINY)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
