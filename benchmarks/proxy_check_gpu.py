"""Run a proxy check on one GPU with several processes at once, within a deadline, then write its report.

Before any shard starts, this process prepares the check once (sample.json / check.json, with
the MAC counts of every sampled architecture) and computes the ensemble's reference sample once,
all into one measurement cache that the shards share (MMLAB_CACHE_DIR, default ~/.cache/mmlab):
otherwise every shard would count hundreds of architectures with fvcore and score the reference
sample again, and a short deadline would end before the first row. Then every process takes
every K-th run (``shard``); rows are appended as runs finish, so a deadline or a kill loses only
the runs in flight, and the same command (or `mmlab proxy-check` with the same settings on any
device) resumes. ``--prepare-only`` stops after the preparation (e.g. on CPU, to ship the folder).

On a lent device: results/proxy_check_fashion_mnist/ is committed (a partial check, resumable),
so it travels with the working tree; copy its rows.jsonl to $OUT to bring the new rows back.

    python benchmarks/proxy_check_gpu.py --shards 12 --deadline-s 540 \
        --n 48 --epochs 3 --max-per-class 2000 --batch-size 128 --retest 12

Small networks train as many small kernel launches, so several processes train at once (the
first H200 run: 12 processes, nvidia-smi utilisation 95-97 %, about 2,900 training images/s in all). A shard
starts no run that the finished runs of its kind say would end after the deadline, so the last
minutes are not spent on runs the deadline would cut off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARD = """
import sys, torch
torch.set_num_threads({threads})
from mmlab.api import proxy_check
from mmlab.study.proxy_check import CheckSettings
s = CheckSettings(**{settings!r})
proxy_check(s, results_dir={results!r}, shard=({i}, {k}), write=False, deadline={deadline!r},
            progress=lambda i, n, what: print(f"shard {i}: {{i}}/{{n}} {{what}}", flush=True))
"""


def warm(settings: dict, results_dir: str) -> None:
    """Prepare the check and fill the shared cache with what every shard would otherwise redo."""
    from mmlab.meter.cache import MeasurementCache
    from mmlab.study.candidate import cached_score
    from mmlab.study.proxy_check import CheckSettings, prepare

    s = CheckSettings(**settings)
    _, sample = prepare(s, results_dir)  # draws the sample and caches every candidate's counts
    if "ensemble" in s.signals:  # its first call computes and caches the space's reference sample
        cached_score(sample[0], "ensemble", s.score(s.seed), MeasurementCache())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-per-class", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--retest", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--space", default="default")
    ap.add_argument("--budget-mflops", type=float, default=300.0, help="0: no budget")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--deadline-s", type=float, default=300.0, help="wall-clock budget of the whole run, preparation included")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--prepare-only", action="store_true", help="prepare the sample and warm the cache, then stop")
    args = ap.parse_args()
    settings = {"data": args.data, "n": args.n, "epochs": args.epochs, "max_per_class": args.max_per_class,
                "batch_size": args.batch_size, "retest": args.retest, "device": args.device, "space": args.space,
                "budget_mflops": args.budget_mflops or None}
    threads = max(1, (os.cpu_count() or 2) // args.shards)
    started = time.perf_counter()
    warm(settings, args.results_dir)
    print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
    if args.prepare_only:
        return 0
    # Shards start no run that their finished runs say would end after the deadline (lost work);
    # what is still running at the deadline is stopped, and its row is left for the resume.
    end_time = time.time() + args.deadline_s - (time.perf_counter() - started)
    procs = [subprocess.Popen([sys.executable, "-c", SHARD.format(threads=threads, settings=settings, deadline=end_time,
                                                                 results=args.results_dir, i=i, k=args.shards)])
             for i in range(args.shards)]
    deadline = started + args.deadline_s
    while any(p.poll() is None for p in procs) and time.perf_counter() < deadline:
        time.sleep(2)
    for p in procs:
        if p.poll() is None:
            p.terminate()  # rows already written are kept; the run in flight is lost
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    from mmlab.reports.proxy_check import write_proxy_report
    from mmlab.study.proxy_check import folder_name, read_check

    folder = Path(args.results_dir) / folder_name(args.data)
    main_rows, retest_rows, _ = read_check(folder)
    print(json.dumps({"wall_s": round(wall, 1), "exit_codes": codes, "main_rows": len(main_rows),
                      "retest_rows": len(retest_rows), "shards": args.shards}), flush=True)
    if len(main_rows) >= 3:
        write_proxy_report(folder)
        print((folder / "correlations.md").read_text())
        print((folder / "recommendation.json").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
