"""The deploy runtimes (``compile``, ``onnxruntime``) and ONNX export: outputs equal to eager PyTorch
(and to the readable reference scan), a wrong output caught, the runtime in every row and cache
key, and the CLI (``measure --runtime``, ``ablate --runtime``, ``export --onnx``)."""

import copy
import importlib.metadata
import json

import pytest
import torch
from typer.testing import CliRunner

import mmlab.meter.onnx as mmlab_onnx
from mmlab.api import ablate
from mmlab.cli import app
from mmlab.meter.cache import MeasurementCache
from mmlab.meter.measure import _timing_key, measure
from mmlab.meter.onnx import export_spec, run_session, session
from mmlab.meter.runtimes import RUNTIMES, OutputMismatch, check_outputs, check_runtime, compile_model, relative_error
from mmlab.model import build, fuse
from mmlab.model.layers import ONEDNN_LINEAR, Pointwise
from mmlab.model.ssm import SS2D
from mmlab.spec.presets import get_preset
from mmlab.study.grid import GridSettings
from tests.conftest import randomise_bn

runner = CliRunner()
TINY = get_preset("tiny")
# Small resolutions keep compiling and exporting quick; both keep three stages with real maps.
T2_SMALL = get_preset("t2").replace(resolution=128)  # stages at 8x8, 4x4, 2x2
CROSS = (get_preset("t2").replace(resolution=128, scan="cross", d_state=4)
         .replace_stage(0, wavelet_levels=2).replace_stage(1, wavelet_levels=2))  # not a preset


def deploy_model(spec):
    """The fused network of :func:`trained_like`."""
    return fuse(trained_like(spec))


def trained_like(spec):
    """The network (eval) with non-trivial BatchNorms (:func:`tests.conftest.randomise_bn`)."""
    return randomise_bn(build(spec)).eval()


def with_reference_scan(model):
    """A copy whose selective scans run the readable one-step-per-position reference."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, SS2D):
            m.scan_impl = "ref"
    return model


def as_tensor(out):
    """A runtime's output (a tensor, or onnxruntime's list of arrays) as a tensor."""
    return torch.from_numpy(out[0]) if isinstance(out, list) else out


# Compiling is slow here: inductor's C++ kernels take gcc 1-4 min per network on a busy 2-core
# machine, so the compile runtime's checks are in the slow run (`pytest -m slow`).
COMPILE = pytest.param("compile", marks=pytest.mark.slow)


@pytest.mark.parametrize("spec", [T2_SMALL, CROSS], ids=["t2", "cross-dstate4-wavelet2"])
@pytest.mark.parametrize("name", [COMPILE, "onnxruntime"])
def test_runtime_matches_eager_and_the_reference_scan(name, spec):
    model = deploy_model(spec)
    reference = with_reference_scan(model)
    x = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution)
    with torch.inference_mode():  # as measure() runs it
        eager, oracle = model(x), reference(x)
        fn = RUNTIMES[name].prepare(model, x)
        out = as_tensor(fn())
        again = as_tensor(fn())  # the prepared callable again (compile: the compiled graph, no recompile)
    assert torch.isfinite(out).all() and out.shape == eager.shape
    assert relative_error(eager, oracle) < 1e-5
    assert relative_error(out, eager) <= RUNTIMES[name].tolerance
    assert relative_error(out, oracle) <= RUNTIMES[name].tolerance
    torch.testing.assert_close(again, out)


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="Pointwise reorders weights for oneDNN only where torch has it")
def test_compile_on_cpu_freezes_and_packs_the_weights():
    """The CPU compile runtime freezes the weights (constants in its graph), so inductor folds every
    1x1 conv's reorder into oneDNN's layout once: zeroing the compiled module's ``Pointwise`` weights
    afterwards leaves its output unchanged. (Fails where ``freezing`` is passed as ``torch.compile(options=...)``:
    torch 2.14 then keeps the weights as graph inputs, and the zeroed network answers differently.)"""
    model = deploy_model(TINY)
    x = torch.randn(1, TINY.in_chans, TINY.resolution, TINY.resolution)
    try:
        with torch.inference_mode():
            compiled = compile_model(model, x)
            before = compiled(x)
            pointwise = [m for m in compiled.modules() if isinstance(m, Pointwise)]
            for layer in pointwise:
                layer.weight.zero_()
            after = compiled(x)
    finally:
        RUNTIMES["compile"].free()  # drop the compiled graph, as measure() does after each timing
    assert pointwise and before.abs().max() > 0
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_the_traceable_scan_equals_the_reference(side):
    """The scan the compile and onnxruntime runtimes trace (``plain``) against the readable one,
    on the short sequences where tracers trip (1x1 and 2x2 maps) and longer, odd ones."""
    ssm = SS2D(16, 32, 2, d_state=4, mode="cross").eval()
    x = torch.randn(2, 16, side, side)
    with torch.no_grad():
        ssm.scan_impl = "ref"
        ref = ssm(x)
        ssm.scan_impl = "plain"
        plain = ssm(x)
    assert relative_error(plain, ref) < 1e-5


def test_a_wrong_export_is_caught(monkeypatch):
    real = mmlab_onnx.export_bytes

    def export_another_network(model, example, **kwargs):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.head.weight.mul_(1.01)  # the classifier 1 % off
        return real(other, example, **kwargs)

    monkeypatch.setattr(mmlab_onnx, "export_bytes", export_another_network)
    model = deploy_model(TINY)
    x = torch.randn(1, 3, TINY.resolution, TINY.resolution)
    with pytest.raises(OutputMismatch) as err:
        RUNTIMES["onnxruntime"].prepare(model, x)
    message = str(err.value)
    assert "runtime: 'onnxruntime' output differs" in message and "allowed 0.0001" in message
    assert len(message.splitlines()) == 1 and isinstance(err.value, ValueError)


def test_check_outputs_bound():
    ref = torch.tensor([[1.0, -2.0, 4.0]])
    assert check_outputs("x", ref + 2**-12, ref, 1e-4) == 2**-14  # exact in float32: 6.1e-5 of the scale 4
    with pytest.raises(OutputMismatch, match=r"by 0.000488 of the output scale"):
        check_outputs("x", ref + 2**-9, ref, 1e-4)
    with pytest.raises(OutputMismatch):
        check_outputs("x", ref * float("nan"), ref, 1e-4)


@pytest.mark.parametrize("name, device, message", [
    ("tensorrt", "cpu", "runtime: 'tensorrt' is not allowed; allowed: eager, compile, onnxruntime"),
    ("onnxruntime", "cuda", "runtime: 'onnxruntime' does not run on cuda; it runs on cpu"),
])
def test_bad_runtime_is_a_one_line_value_error(name, device, message):
    with pytest.raises(ValueError) as err:
        check_runtime(name, device)
    assert str(err.value) == message
    if device == "cpu":
        with pytest.raises(ValueError, match="runtime: 'tensorrt' is not allowed"):
            measure(TINY, runtime=name)


def test_cache_key_and_row_differ_by_runtime(tmp_path):
    envs = {name: _timing_key(TINY, "cpu", 1, 1, "float32", name, 1.0) for name in RUNTIMES}
    assert len({key for _, key in envs.values()}) == len(RUNTIMES)
    assert all(env["env_runtime"] == name for name, (env, _) in envs.items())
    assert envs["onnxruntime"][0]["env_runtime_version"] == importlib.metadata.version("onnxruntime")
    cache = MeasurementCache(tmp_path)
    eager = measure(TINY, threads=1, max_time_s=0.1, cache=cache)
    onnx = measure(TINY, threads=1, max_time_s=0.1, cache=cache, runtime="onnxruntime")
    assert onnx["measure_s"] > 0  # measured, not served eager's entry
    assert (eager["env_runtime"], onnx["env_runtime"]) == ("eager", "onnxruntime")
    assert onnx["export_s"] > 0 and "export_s" not in eager and "compile_s" not in eager
    again = measure(TINY, threads=1, max_time_s=0.1, cache=cache, runtime="onnxruntime")
    assert again["measure_s"] == 0 and again["latency_ms"] == onnx["latency_ms"] and again["export_s"] == onnx["export_s"]


def test_cli_measure_t2_in_onnxruntime(tmp_path):
    args = ["measure", "t2", "--runtime", "onnxruntime", "--threads", "1", "--max-time", "0.2",
            "--cache-dir", str(tmp_path), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["spec"] == "t2" and row["env_runtime"] == "onnxruntime" and row["env_mode"] == "onnxruntime"
    assert row["latency_ms"] > 0 and row["export_s"] > 0 and row["params"] == 8_836_890
    bad = runner.invoke(app, ["measure", "tiny", "--runtime", "tensorrt", "--cache-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "tensorrt" in bad.output


def test_cli_export_onnx_from_a_spec(tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.manual_seed(5)
    result = runner.invoke(app, ["export", "tiny", "--onnx", str(path)])
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output and "onnxruntime vs PyTorch" in result.output
    # The file runs at another batch size (dynamic batch) with the output of the fused network
    # it was exported from (the same seed builds the same weights).
    torch.manual_seed(5)
    model = fuse(build(TINY))
    x = torch.randn(3, 3, TINY.resolution, TINY.resolution)
    with torch.no_grad():
        assert relative_error(run_session(session(path), x), model(x)) <= 1e-4
    result = runner.invoke(app, ["export", "tiny"])
    assert result.exit_code == 2 and "give --onnx PATH only" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_export_spec_checks_and_reports(tmp_path):
    done = export_spec(TINY, tmp_path / "tiny.onnx", model=trained_like(TINY))  # checked on live branches
    assert done.path.stat().st_size == done.size_bytes > 0 and done.error <= 1e-4 and done.export_s > 0
    assert done.spec_key == TINY.key
    with pytest.raises(ValueError, match="onnx: .* its folder .* does not exist"):
        export_spec(TINY, tmp_path / "missing" / "t.onnx")


def test_ablate_in_onnxruntime(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('base = "tiny"\nmeasure = ["params", "latency"]\n'
                    '[[factor]]\nname = "d_state"\nablation = "d_state"\nvalues = [2]\n')
    settings = GridSettings(threads=1, timing_s=0.1, interleave_s=0.1, runtime="onnxruntime")
    folder = ablate(grid, settings=settings, results_dir=tmp_path / "out")
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["env_runtime"] for r in rows} == {"onnxruntime"}
    ratios = json.loads((folder / "latency_ratios.json").read_text())
    assert ratios["setup"]["runtime"] == "onnxruntime" and ratios["env"]["env_runtime"] == "onnxruntime"
    with pytest.raises(ValueError, match="runtime: 'tensorrt' is not allowed"):
        ablate(grid, settings=GridSettings(runtime="tensorrt"), results_dir=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # checked before any work
    assert "--runtime" in runner.invoke(app, ["ablate", "--help"]).output
