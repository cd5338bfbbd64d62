"""Which accuracy signal tracks training on real data? proxy-check on scikit-learn's digits.

    python benchmarks/proxy_check_digits.py [--n 20] [--epochs 3]

Samples N architectures from the default space, computes every zero-cost proxy and the
params / MACs baselines, trains each for --epochs on digits (64 px), and prints the rank
correlation table; outputs go to results/proxy_check_digits/ (committed as a reference).
"""

from __future__ import annotations

import argparse
import time

from mmlab.api import proxy_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    folder = proxy_check("digits", args.n, epochs=args.epochs,
                         progress=lambda i, total, key: print(f"[{i}/{total}] {key}", flush=True))
    print((folder / "correlations.md").read_text())
    print(f"{args.n} architectures, {args.epochs} epochs each, {time.perf_counter() - started:.0f} s; report: {folder / 'report.md'}")


if __name__ == "__main__":
    main()
