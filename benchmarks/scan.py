"""Fast vs reference selective scan at MobileMamba-B4's stage-1 shape, on CPU.

B4 at 512 px: stage 1 is a 32x32 map (L = 1024), d_inner = 320, two scan directions (K = 2, so
u is (1, 640, 1024)), N = 1. Times the forward under ``torch.inference_mode`` (or, with
``--backward``, forward + backward of ``y.sum()``) at a fixed thread count: per implementation a
warm-up, then back-to-back timed calls (steady state: the allocator has the fast path's buffers
at hand). Prints a table of medians and p10 / p90 and, on its last line, the median ratio
reference / fast.

    python benchmarks/scan.py [--repeats 21] [--threads 2] [--backward]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mmlab.model.scan import selective_scan_fast, selective_scan_ref

BATCH, GROUPS, D_INNER, LENGTH, N_STATE = 1, 2, 320, 32 * 32, 1
WARMUP = 3


def make_inputs(requires_grad: bool) -> dict[str, torch.Tensor]:
    """Random scan inputs at the stage-1 shape, MobileMamba's parameter ranges (A < 0, D ~ 1)."""
    g = torch.Generator().manual_seed(0)
    channels = GROUPS * D_INNER
    inputs = {
        "u": torch.randn(BATCH, channels, LENGTH, generator=g),
        "delta": torch.randn(BATCH, channels, LENGTH, generator=g),
        "A": -(torch.rand(channels, N_STATE, generator=g) + 0.5),
        "B": torch.randn(BATCH, GROUPS, N_STATE, LENGTH, generator=g),
        "C": torch.randn(BATCH, GROUPS, N_STATE, LENGTH, generator=g),
        "D": torch.ones(channels),
        "delta_bias": 0.1 * torch.rand(channels, generator=g),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds per call of ``fn``: ``WARMUP`` untimed calls, then ``repeats`` timed ones."""
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (default 21, 7 with --backward)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of the forward")
    args = parser.parse_args()
    repeats = args.repeats or (7 if args.backward else 21)
    torch.set_num_threads(args.threads)
    inputs = make_inputs(requires_grad=args.backward)

    def call(scan: Callable[..., torch.Tensor]) -> Callable[[], object]:
        if args.backward:
            return lambda: scan(**inputs).sum().backward()
        return lambda: scan(**inputs)

    with torch.inference_mode(not args.backward):
        samples = {name: time_calls(call(scan), repeats) for name, scan in (("reference", selective_scan_ref), ("fast", selective_scan_fast))}

    what = "forward+backward" if args.backward else "forward (inference_mode)"
    print(f"selective scan, {what}: B={BATCH} L={LENGTH} K*Di={GROUPS * D_INNER} N={N_STATE}, torch {torch.__version__}")
    print(f"{'impl':<10} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'repeats':>8} {'threads':>8}")
    for name, times in samples.items():
        deciles = statistics.quantiles(times, n=10)
        print(f"{name:<10} {statistics.median(times):>10.2f} {deciles[0]:>8.2f} {deciles[-1]:>8.2f} {repeats:>8} {args.threads:>8}")
    ratio = statistics.median(samples["reference"]) / statistics.median(samples["fast"])
    mode = " forward+backward" if args.backward else ""
    print(f"speedup fast/ref{mode} at b4 stage-1 (B={BATCH}, L={LENGTH}, K*Di={GROUPS * D_INNER}, N={N_STATE}): {ratio:.1f}")


if __name__ == "__main__":
    main()
