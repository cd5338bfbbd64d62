"""The interleaved timer: rounds, ratios, bootstrap intervals, and what it can tell apart; the host probe."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mmlab.meter.latency import Ratio, cpu_threads, host_probe, ratio_interval, time_interleaved
from mmlab.model import build, fuse
from mmlab.spec.presets import get_preset


def test_ratio_interval_by_hand():
    base = [10.0, 11.0, 9.0, 10.0, 12.0]
    same = ratio_interval(base, base)
    assert (same.ratio, same.low, same.high, same.rounds) == (1.0, 1.0, 1.0, 5)
    assert not same.measurable and same.pct == (0.0, 0.0, 0.0)
    double = ratio_interval(base, [2 * b for b in base])
    assert (double.ratio, double.low, double.high) == (2.0, 2.0, 2.0) and double.measurable
    # per-round ratios 0.9, 1.0, 1.1, 1.2, 1.3: the median is 1.1; the interval is a set of medians of resamples
    noisy = ratio_interval(base, [b * r for b, r in zip(base, (0.9, 1.0, 1.1, 1.2, 1.3))])
    assert noisy.ratio == pytest.approx(1.1)
    assert 0.9 <= noisy.low <= noisy.ratio <= noisy.high <= 1.3
    assert noisy.low <= 1.0 and not noisy.measurable  # 1.0 is one of the rounds: resamples reach it
    assert ratio_interval(base, [b * 1.1 for b in base], seed=3) == ratio_interval(base, [b * 1.1 for b in base], seed=3)


def test_ratio_interval_pairs_rounds():
    # a load that changes between rounds divides out: every round the variant is 5% slower
    rng = np.random.default_rng(0)
    load = rng.uniform(1.0, 3.0, 40)
    r = ratio_interval(list(10 * load), list(10.5 * load))
    assert r.ratio == pytest.approx(1.05) and r.low == pytest.approx(1.05) and r.measurable


@pytest.mark.parametrize("base, variant, message", [
    ([1.0, 2.0], [1.0], "equally long"),
    ([], [], "non-empty"),
])
def test_ratio_interval_rejects(base, variant, message):
    with pytest.raises(ValueError, match=message):
        ratio_interval(base, variant)


def test_rounds_run_each_function_once_in_random_order():
    calls: list[int] = []
    syncs = []

    def sleeper(i):
        def fn():
            calls.append(i)
            time.sleep(0.002)  # over block_ms: one call per block
        return fn

    result = time_interleaved([sleeper(0), sleeper(1), sleeper(2)], rounds=12, min_rounds=12, warmup_s=0.0,
                              sync=lambda: syncs.append(1))
    warmup = [0, 1, 2] * 3
    assert calls[:9] == warmup and result.block_runs == (1, 1, 1)
    rounds = [calls[9 + 3 * k: 12 + 3 * k] for k in range(12)]
    assert len(calls) == 9 + 36 and all(sorted(r) == [0, 1, 2] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes from round to round
    assert len(syncs) == len(calls)
    assert result.rounds == 12 and len(result.ratios) == 2 and all(len(s) == 12 for s in result.samples_ms)


def test_short_functions_run_in_blocks_and_time_cap_keeps_min_rounds():
    result = time_interleaved([lambda: None, lambda: None], rounds=1000, min_rounds=15, max_time_s=0.0,
                              warmup_s=0.0, block_ms=1.0)
    assert result.rounds == 15  # capped at once, yet never under min_rounds
    assert all(runs > 1 for runs in result.block_runs)
    with pytest.raises(ValueError, match="need the base and at least one variant"):
        time_interleaved([lambda: None])


def _forward(spec):
    torch.manual_seed(0)
    model = fuse(build(spec))
    x = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution)
    return lambda: model(x)


def test_identical_networks_and_a_doubled_depth():
    """Two builds of ``tiny`` time alike (the interval contains 1) and doubling every stage's depth
    is detected, in one interleaved run of about 1.5 s on one thread.

    A 95% interval misses the truth in about 1 run of 20 by design (on a busy 2-core machine, 1 of
    40 runs did), so the identical pair gets a second, independent run before the test fails; a
    timer biased towards either network fails both.
    """
    tiny = get_preset("tiny")
    deep = tiny
    for i, stage in enumerate(tiny.stages):
        deep = deep.replace_stage(i, depth=2 * stage.depth)
    with cpu_threads(1), torch.inference_mode():
        fns = [_forward(tiny), _forward(tiny), _forward(deep)]
        for attempt in range(2):
            result = time_interleaved(fns, max_time_s=1.5, seed=attempt)
            same, doubled = result.ratios
            if not same.measurable:
                break
    assert result.rounds >= 10
    assert same.low <= 1.0 <= same.high and not same.measurable, same
    assert doubled.measurable and doubled.low > 1.2, doubled
    assert isinstance(doubled, Ratio) and doubled.pct[0] == pytest.approx(100 * (doubled.ratio - 1))


def test_host_probe_sees_other_work_on_the_cores():
    before = torch.get_num_threads()
    quiet = host_probe(1, runs=40)
    assert quiet.runs == 40 and 0 < quiet.p10_ms <= quiet.median_ms <= quiet.p90_ms
    assert torch.get_num_threads() == before
    # one busy process more than there are cores: the probe's thread gets less than a core
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        time.sleep(0.5)
        loaded = host_probe(1, runs=40)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert loaded.median_ms > 1.2 * quiet.median_ms, (quiet, loaded)
