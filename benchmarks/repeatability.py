"""Repeatability of CPU latency: N back-to-back `mmlab measure SPEC --no-cache --json` runs.

    python benchmarks/repeatability.py [--spec t2] [--runs 5]

Run it on an otherwise idle machine. Prints each run's median latency and, last, the
max/min ratio of those medians (the target is <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="t2")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians = []
    with tempfile.TemporaryDirectory() as cache_dir:  # keep the user's cache out of it
        for i in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-m", "mmlab", "measure", args.spec, "--no-cache", "--json", "--cache-dir", cache_dir],
                check=True, capture_output=True, text=True,
            ).stdout
            row = json.loads(out)[0]
            medians.append(row["latency_ms"])
            print(f"run {i + 1}: median {row['latency_ms']:.2f} ms (p10 {row['latency_p10_ms']:.2f}, "
                  f"p90 {row['latency_p90_ms']:.2f}, {row['latency_runs']} runs, {row['env_threads']} threads)", flush=True)
    print(f"max/min of {args.runs} medians for {args.spec}: {max(medians) / min(medians):.3f}")


if __name__ == "__main__":
    main()
