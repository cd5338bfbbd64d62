"""Run a proxy check on one GPU with several processes at once, within a deadline, then write its report.

The check is prepared once (sample.json / check.json: `mmlab proxy-check` or
``mmlab.study.proxy_check.prepare``) and every process takes every K-th run (``shard``); rows are
appended as runs finish, so a deadline or a kill loses only the runs in flight, and the same
command (or `mmlab proxy-check` with the same settings on any device) resumes.

    python benchmarks/proxy_check_gpu.py --shards 8 --deadline-s 300 \
        --n 48 --epochs 3 --max-per-class 2000 --batch-size 128 --retest 12

Launch-bound small networks leave a GPU mostly idle, so several processes train at once.
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
proxy_check(s, results_dir={results!r}, shard=({i}, {k}), write=False,
            progress=lambda i, n, what: print(f"shard {i}: {{i}}/{{n}} {{what}}", flush=True))
"""


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
    ap.add_argument("--deadline-s", type=float, default=300.0)
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args()
    settings = {"data": args.data, "n": args.n, "epochs": args.epochs, "max_per_class": args.max_per_class,
                "batch_size": args.batch_size, "retest": args.retest, "device": args.device, "space": args.space,
                "budget_mflops": args.budget_mflops or None}
    threads = max(1, (os.cpu_count() or 2) // args.shards)
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", SHARD.format(threads=threads, settings=settings,
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
