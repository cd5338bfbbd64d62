"""Fast vs reference selective scan at MobileMamba-B4's stage-1 shape (forward, CPU).

B4 at 512 px: stage 1 is 32x32 (L = 1024), d_inner = 320, two scan directions, N = 1.
Prints a table of medians and, on its last line, the speed ratio fast/reference.

    python benchmarks/scan.py [--repeats 15] [--threads 2] [--backward]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmlab.model.scan import selective_scan_fast, selective_scan_ref


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batch, k, d_inner, length, n = 1, 2, 320, 32 * 32, 1
    kd = k * d_inner
    inputs = [
        torch.randn(batch, kd, length), torch.randn(batch, kd, length), -(torch.rand(kd, n) + 0.5),
        torch.randn(batch, k, n, length), torch.randn(batch, k, n, length), torch.randn(kd), torch.rand(kd),
    ]

    def run(scan):
        if args.backward:
            xs = [t.clone().requires_grad_() for t in inputs]
            return lambda: scan(*xs[:5], D=xs[5], delta_bias=xs[6]).sum().backward()
        return lambda: scan(*inputs[:5], D=inputs[5], delta_bias=inputs[6])

    with torch.inference_mode(not args.backward):
        results = {name: timed(run(fn), args.repeats) for name, fn in (("reference", selective_scan_ref), ("fast", selective_scan_fast))}
    what = "forward+backward" if args.backward else "forward"
    print(f"selective scan, {what}, B=1 L={length} K*Di={kd} N={n}, {args.threads} threads, {args.repeats} repeats")
    print(f"{'impl':<10} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}")
    for name, samples in results.items():
        q = statistics.quantiles(samples, n=10)
        print(f"{name:<10} {statistics.median(samples):>10.2f} {q[0]:>8.2f} {q[-1]:>8.2f}")
    ratio = statistics.median(results["reference"]) / statistics.median(results["fast"])
    print(f"speedup fast/ref at b4 stage-1 (B=1, L={length}, K*Di={kd}, N={n}, {what}): {ratio:.1f}")


if __name__ == "__main__":
    main()
