import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import mmlab
from mmlab.signals import proxies
from mmlab.spec.arch import ArchSpec, StageSpec
from mmlab.meter.macs import count
from mmlab.signals.data import load_dataset
from mmlab.signals.proxies import grad_norm, naswot, snip, synflow, zico
from mmlab.signals.registry import SIGNALS, check_signal
from mmlab.signals.score import ScoreSettings, adapt, score
from mmlab.signals.train import train

TINY = mmlab.get_preset("tiny")
T2_64 = mmlab.get_preset("t2").replace(resolution=64, num_classes=10)
PROXIES = ("synflow", "naswot", "grad_norm", "snip", "zico")


def stages(spec: ArchSpec, **changes) -> ArchSpec:
    """The spec with the same change made to every stage."""
    return spec.replace(stages=tuple(StageSpec(**{**vars(s), **changes}) for s in spec.stages))


EXTREMES = {
    "deep": stages(TINY, depth=6),  # SynFlow's residual stream is rescaled here
    "wide": stages(TINY, width=256),
    "d_state16_cross": TINY.replace(d_state=16, scan="cross"),
    "wavelet3_k7": stages(TINY, wavelet_levels=3, kernel=7),
}


def batch(n: int, classes: int = 10, res: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, res, res, generator=g), torch.randint(0, classes, (n,), generator=g)


def run_proxy(name: str, model: nn.Module, n: int = 8) -> float:
    images, labels = batch(n)
    if name == "synflow":
        return synflow(model, images.shape[1:])
    if name == "naswot":
        return naswot(model, images)
    if name == "zico":
        return zico(model, [batch(n // 2, seed=1), batch(n // 2, seed=2)])
    return {"grad_norm": grad_norm, "snip": snip}[name](model, images, labels)


def easy(n: int, classes: int = 3, res: int = 32, seed: int = 0) -> TensorDataset:
    """Noise images whose class is the channel with a +1 offset: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = 0.5 * torch.randn(n, 3, res, res, generator=g)
    images[torch.arange(n), labels] += 1.0
    return TensorDataset(images, labels)


def test_signal_registry():
    assert list(SIGNALS) == ["synflow", "naswot", "grad_norm", "snip", "zico", "meco", "ensemble", "params", "macs", "train"]
    assert all(callable(info.load()) for info in SIGNALS.values())  # every entry resolves to a function
    assert {n for n, i in SIGNALS.items() if i.kind == "baseline"} == {"params", "macs"}
    with pytest.raises(ValueError, match="signal: 'nope'.*synflow"):
        check_signal("nope")
    with pytest.raises(ValueError, match="signal"):
        score(TINY, "accuracy")


@pytest.mark.parametrize("spec", [TINY, T2_64], ids=["tiny", "t2@64"])
def test_every_proxy_is_finite_and_leaves_the_model_alone(spec):
    model = mmlab.build(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in PROXIES:
        assert math.isfinite(run_proxy(name, model)), name
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in model.parameters())


def test_score_is_seeded_and_tells_architectures_apart():
    data = dict(data="synthetic:n=40,classes=4", batch_size=8)
    wider = TINY.replace_stage(0, width=48)
    for name in PROXIES:
        first = score(TINY, name, **data)
        assert math.isfinite(first)
        assert score(TINY, name, **data) == first, name
        assert score(wider, name, **data) != first, name
    assert score(TINY, "naswot", seed=1, **data) != score(TINY, "naswot", **data)


@pytest.mark.parametrize("name", list(EXTREMES))
def test_extreme_members_stay_finite(name):
    model = mmlab.build(EXTREMES[name])
    for proxy in PROXIES:
        assert math.isfinite(run_proxy(proxy, model, n=4)), proxy


def test_synflow_rescaling_is_exact_where_float64_suffices(monkeypatch):
    model = mmlab.build(TINY)  # its plain float64 SynFlow peaks near 1e23: no overflow
    default = synflow(model, (3, 64, 64))  # rescales once the trunk passes 2^64
    monkeypatch.setattr(proxies, "_SYNFLOW_LIMIT", math.inf)  # never rescale
    plain = synflow(model, (3, 64, 64))
    monkeypatch.setattr(proxies, "_SYNFLOW_LIMIT", 2.0**24)  # rescale nearly the whole trunk
    monkeypatch.setattr(proxies, "_SYNFLOW_TARGET_EXP", 16)
    rescaled = synflow(model, (3, 64, 64))
    assert default == pytest.approx(plain, rel=1e-12)
    assert rescaled == pytest.approx(plain, rel=1e-9)


def test_synflow_deep_member_needs_the_rescaling(monkeypatch):
    model = mmlab.build(EXTREMES["deep"])
    assert math.isfinite(synflow(model, (3, 64, 64)))
    monkeypatch.setattr(proxies, "_SYNFLOW_LIMIT", math.inf)
    with pytest.raises(ValueError, match="synflow"):
        synflow(model, (3, 64, 64))


def test_naswot_guards():
    model = mmlab.build(TINY)
    images, _ = batch(1)
    duplicates = images.expand(6, -1, -1, -1)  # identical codes: K is singular
    assert math.isfinite(naswot(model, duplicates))
    assert naswot(model, duplicates) < naswot(model, batch(6)[0])
    with pytest.raises(ValueError, match="no nn.ReLU"):
        naswot(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10)), batch(4)[0])
    with pytest.raises(ValueError, match="B >= 2"):
        naswot(model, images)


def test_zico_needs_two_batches():
    with pytest.raises(ValueError, match="two batches"):
        zico(mmlab.build(TINY), [batch(4)])


def test_params_and_macs_baselines():
    assert score(TINY, "params") == sum(p.numel() for p in mmlab.build(TINY).parameters())
    assert score(TINY, "macs", resolution=32) == count(TINY.replace(resolution=32)).macs


def test_short_training_beats_chance_and_reports_each_epoch():
    calls = []
    result = train(
        TINY, easy(96), easy(48, seed=1), epochs=2, batch_size=16, on_epoch=lambda e, top1: calls.append((e, top1))
    )
    assert result.top1 > 80  # chance is 33%
    assert calls == list(enumerate(result.top1_per_epoch)) and len(calls) == 2
    assert result.top1 == result.top1_per_epoch[-1]
    assert result.train_images == 2 * 96 and result.seconds > 0
    again = train(TINY, easy(96), easy(48, seed=1), epochs=2, batch_size=16)
    assert again.top1_per_epoch == result.top1_per_epoch


def test_on_epoch_can_prune():
    class Pruned(Exception):
        pass

    calls = []

    def prune(epoch: int, top1: float) -> None:
        calls.append(epoch)
        raise Pruned

    with pytest.raises(Pruned):
        train(TINY, easy(32), easy(12, seed=1), epochs=3, batch_size=16, on_epoch=prune)
    assert calls == [0]


def test_train_arguments():
    with pytest.raises(ValueError, match="epochs"):
        train(TINY, easy(32), easy(12), epochs=0)
    with pytest.raises(ValueError, match="device"):
        train(TINY, easy(32), easy(12), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            train(TINY, easy(32), easy(12), device="cuda")


def test_score_train_uses_the_data_source():
    top1 = score(TINY, "train", data="synthetic:n=60,classes=3", epochs=1, batch_size=16)
    adapted, ds = adapt(TINY, ScoreSettings(data="synthetic:n=60,classes=3"))
    assert (adapted.resolution, adapted.stem_stride, adapted.num_classes) == (32, 4, 3)  # stages at 8, 4, 2
    direct = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, num_classes=ds.num_classes)
    assert top1 == direct.top1  # the same data, geometry, split and seed: the same run


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_missing_data_is_one_error_for_every_signal(signal):
    with pytest.raises(ValueError, match="imagefolder: '/nonexistent' is not a folder"):
        score(TINY, signal, data="imagefolder:/nonexistent")


@pytest.mark.gpu
def test_train_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = train(TINY, easy(96), easy(48, seed=1), epochs=2, batch_size=16, device="cuda")
    assert result.top1 > 80


@pytest.mark.parametrize("proxy", ["grad_norm", "snip", "zico", "meco"])
def test_unit_gamma_reaches_the_scored_copy_only(proxy, monkeypatch):
    model = mmlab.build(TINY)
    zero = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and (m.weight == 0).all()]
    assert zero  # MobileMamba zero-initialises the γ that ends each branch
    seen = []
    real = proxies.unit_gamma
    monkeypatch.setattr(proxies, "unit_gamma", lambda net: seen.append(real(net)) or seen[-1])
    x, y = batch(4)
    args = {"grad_norm": (x, y), "snip": (x, y), "zico": ([batch(4), batch(4, seed=1)],), "meco": (x,)}[proxy]
    getattr(proxies, proxy)(model, *args)
    scored = seen[-1]
    assert scored is not model
    assert not any((m.weight == 0).any() for m in scored.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all((w == 0).all() for w in zero)  # the caller's model keeps its zero γ


def test_unit_gamma_changes_what_gradient_proxies_see():
    model, (x, y) = mmlab.build(TINY), batch(4)
    assert grad_norm(model, x, y) > grad_norm(model, x, y, gamma_one=False)  # block weights now get gradients


def test_ensemble_is_order_invariant_and_monotone():
    from mmlab.signals.ensemble import aggregate, quantile

    reference = {"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 20.0, 30.0], "c": [0.5, 0.7]}
    values = {"a": 2.5, "b": 25.0, "c": 0.6}
    forward = aggregate(values, reference)
    backward = aggregate(dict(reversed(list(values.items()))), {k: list(reversed(v)) for k, v in reference.items()})
    assert forward == backward
    for name in values:
        for step in (0.1, 1.0, 100.0):
            assert aggregate({**values, name: values[name] + step}, reference) >= forward
    assert aggregate({**values, "a": 5.0}, reference) > forward  # strictly, once it passes a reference value
    assert 0 < quantile(-1e9, [1.0, 2.0]) < quantile(1.5, [1.0, 2.0]) < quantile(1e9, [1.0, 2.0]) < 1
