"""Which accuracy signal tracks training on real data? proxy-check on scikit-learn's digits.

    python benchmarks/proxy_check_digits.py [--n 20] [--epochs 3] [--retest 5]

Samples N architectures from the default space, computes every signal, trains each for --epochs
on digits (at the data geometry, see the README) and --retest of them with a second seed, and
prints the correlation table with intervals. The committed results/proxy_check_digits/ was made
by an earlier version (64 px, stride-16 stem, γ = 0 gradient proxies, no intervals); a run of
this script replaces it.
"""

from __future__ import annotations

import argparse
import time

from mmlab.api import proxy_check
from mmlab.study.proxy_check import CheckSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--retest", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = CheckSettings(data="digits", n=args.n, epochs=args.epochs, max_per_class=None, retest=args.retest)
    folder = proxy_check(settings, progress=lambda i, total, key: print(f"[{i}/{total}] {key}", flush=True))
    print((folder / "correlations.md").read_text())
    print(f"{args.n} architectures, {args.epochs} epochs each, {time.perf_counter() - started:.0f} s; report: {folder / 'report.md'}")


if __name__ == "__main__":
    main()
