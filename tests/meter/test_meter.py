import json

import pytest
import torch
from typer.testing import CliRunner

from mmlab.cli import app
from mmlab.meter.cache import MeasurementCache
from mmlab.meter.macs import count, count_model
from mmlab.meter.measure import measure
from mmlab.meter.latency import Timing, time_cpu
from mmlab.model.ssm import SelectiveScan
from mmlab.spec.presets import PAPER_PRESETS, PRESETS, get_preset
from tests.conftest import read_tsv

TINY = get_preset("tiny")
runner = CliRunner()


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_macs_match_the_paper_and_the_complete_count(name):
    row = {r["preset"]: r for r in read_tsv("presets.tsv")}[name]
    counts = count(PRESETS[name])
    assert counts.macs_paper == pytest.approx(int(row["macs_paper"]), rel=1e-3)
    complete = int(row["macs_paper"]) + int(row["macs_wavelet_convs"])
    assert counts.macs == pytest.approx(complete, rel=1e-3)
    assert counts.macs_by_operator["PythonOp.SelectiveScan"] == int(row["macs_scan"])
    assert counts.params == int(row["params_all"])
    assert counts.uncounted_mac_ops == {}, counts.uncounted_ops


class ScanOnly(torch.nn.Module):
    """Runs one selective scan on fixed shapes derived from the input."""

    def __init__(self, k: int, di: int, n: int) -> None:
        super().__init__()
        self.k, self.di, self.n = k, di, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        length, kd = h * w, self.k * self.di
        u = x.reshape(b, -1)[:, :1].expand(b, kd * length).reshape(b, kd, length)
        bc = torch.ones(b, self.k, self.n, length)
        return SelectiveScan.apply(u, u, -torch.ones(kd, self.n), bc, bc, torch.ones(kd), torch.zeros(kd))


@pytest.mark.parametrize("k, di, n", [(2, 32, 1), (4, 8, 3)])
def test_scan_handle_counts_by_hand(k, di, n):
    counts = count_model(ScanOnly(k, di, n), resolution=4, in_chans=1)
    batch, length, channels = 1, 16, k * di
    assert counts.macs_by_operator == {"PythonOp.SelectiveScan": 9 * batch * length * channels * n + batch * channels * length}


class HiddenMatmul(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, HW)
        return torch.baddbmm(flat, flat, flat.transpose(1, 2) @ flat)  # baddbmm has no fvcore handle


def test_audit_catches_an_uncounted_mac_op():
    counts = count_model(HiddenMatmul(), resolution=4, in_chans=4)
    assert "aten::baddbmm" in counts.uncounted_mac_ops
    assert count(TINY).uncounted_mac_ops == {}


def test_wavelet_convs_are_the_difference_between_the_totals():
    # t2: 5 blocks; each wavelet conv is depthwise k×k on 4g channels at half the stage side.
    spec = get_preset("t2")
    expected = 0
    for i, stage in enumerate(spec.stages):
        half = -(-spec.stage_resolutions[i] // 2)
        expected += stage.depth * 4 * stage.global_channels * stage.kernel**2 * half * half
    counts = count(spec)
    assert counts.macs - counts.macs_paper == expected == 1_200_384


def test_timing_statistics():
    t = Timing.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_ms, t.runs) == (3.0, 5)
    # Linear-interpolation percentiles (numpy's default): 1 + 0.4 * (2 - 1) and 4 + 0.6 * (5 - 4).
    assert (t.p10_ms, t.p90_ms) == pytest.approx((1.4, 4.6))
    assert (Timing.of([float(i) for i in range(10, 0, -1)]).p10_ms, Timing.of([float(i) for i in range(1, 11)]).p90_ms) \
        == pytest.approx((1.9, 9.1))
    calls = []
    timing = time_cpu(lambda: calls.append(1), warmup_s=0.0, max_time_s=0.05, round_runs=5)
    assert timing.runs >= 10 and len(calls) >= timing.runs + 3


def test_measure_row_and_cache(tmp_path):
    cache = MeasurementCache(tmp_path)
    first = measure(TINY, cache=cache, threads=1, max_time_s=0.2)
    assert cache.hits == 0
    for key in ("params", "macs", "macs_paper", "latency_ms", "latency_p10_ms", "latency_p90_ms",
                "latency_runs", "throughput_ips", "env_hardware", "env_threads", "env_torch", "spec_json", "spec_key"):
        assert key in first, key
    assert first["env_threads"] == 1 and first["env_batch"] == 1 and first["env_dtype"] == "float32"
    assert first["measure_s"] > 0
    second = measure(TINY, cache=cache, threads=1, max_time_s=0.2)
    assert cache.hits == 1 and second["measure_s"] == 0
    assert second["latency_ms"] == first["latency_ms"]
    # Another thread count is another environment: timed again (the MAC count is reused).
    third = measure(TINY, cache=cache, threads=2, max_time_s=0.2)
    assert third["measure_s"] > 0 and third["env_threads"] == 2
    forced = measure(TINY, cache=cache, threads=1, max_time_s=0.2, use_cache=False)
    assert forced["measure_s"] > 0


def test_counts_only_is_cheap_and_cached(tmp_path):
    cache = MeasurementCache(tmp_path)
    row = measure(TINY, timing=False, cache=cache)
    assert "latency_ms" not in row and row["macs"] > row["macs_paper"] > 0
    measure(TINY, timing=False, cache=cache)
    assert cache.hits == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=0), "batch: 0 is not allowed"),
        (dict(device="tpu"), "device: 'tpu' is not allowed"),
        (dict(threads=0), "threads: 0 is not allowed"),
        (dict(dtype="float16"), "not allowed on cpu"),
    ],
)
def test_measure_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure(TINY, **kwargs)


def test_cli_table_and_json(tmp_path):
    args = ["measure", "tiny", "--threads", "1", "--max-time", "0.2", "--cache-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("spec"))
    assert header.split()[:5] == ["spec", "params", "macs_paper", "macs", "latency_ms"]
    assert any(line.startswith("tiny ") for line in result.output.splitlines())
    result = runner.invoke(app, [*args, "--json"])
    rows = json.loads(result.stdout)
    assert rows[0]["spec"] == "tiny" and rows[0]["measure_s"] == 0  # cached by the first call


@pytest.mark.parametrize(
    "args, message",
    [
        (["measure", "t3"], "unknown preset 't3'"),
        (["measure", "tiny", "--batch", "0"], "batch: 0 is not allowed"),
    ],
)
def test_cli_errors(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cli_cuda_without_cuda(tmp_path):
    result = runner.invoke(app, ["measure", "tiny", "--device", "cuda", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "cuda" in result.output and "not available" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_cuda(tmp_path):
    row = measure(TINY, device="cuda", batch=8, cache=MeasurementCache(tmp_path))
    assert row["throughput_ips"] > 0 and row["latency_ms"] > 0 and row["env_device"] == "cuda"
