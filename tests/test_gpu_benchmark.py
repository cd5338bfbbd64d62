"""benchmarks/gpu.py on a machine without CUDA: it skips cleanly, and its CPU-checkable parts work."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmlab
from mmlab.spec.presets import get_preset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _load_gpu_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_benchmark_skips_without_cuda():
    done = subprocess.run([sys.executable, str(SCRIPT), "--presets", "t2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA: skipped"


def test_fuse_conv_relu_wires_every_conv_that_a_relu_follows(monkeypatch):
    """The fusion A/B's rewrite, with the cuDNN op emulated by the conv and ReLU it stands for."""
    gpu = _load_gpu_module(monkeypatch)
    monkeypatch.setattr(torch, "cudnn_convolution_relu",
                        lambda x, w, b, s, p, d, g: F.relu(F.conv2d(x, w, b, s, p, d, g)), raising=False)
    spec = get_preset("tiny")
    model = mmlab.fuse(mmlab.build(spec), device="cuda")
    relus = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    fused = copy.deepcopy(model)
    pairs = gpu.fuse_conv_relu(fused)
    assert pairs > 0 and sum(isinstance(m, gpu.ConvReLU) for m in fused.modules()) == pairs
    assert sum(isinstance(m, torch.nn.ReLU) for m in fused.modules()) == relus - pairs
    x = torch.randn(2, 3, spec.resolution, spec.resolution)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
