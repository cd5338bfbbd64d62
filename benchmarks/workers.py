"""Workers on PostgreSQL: the same study with 1, 2 and 4 worker processes on one storage.

    python benchmarks/workers.py [--trials 40] [--workers 1,2,4] [--storage postgresql://...]
    python benchmarks/workers.py --trials 3 --workers 1,2 --space tiny --presets tiny --timing-s 0.05   # smoke run

Without --storage it starts a throwaway PostgreSQL server on 127.0.0.1 from the machine's
binaries (Debian: apt-get install postgresql; as root the server runs as the postgres user), one
database per run. Each run is a fresh study (fresh measurement cache too, so every run does the
same work) with the default space under 300 M MACs. While it runs, this process times the presets
again and again under the study's own machine lock, as any worker would: their latency spread
((p90 - p10) / median) and median against a quiet run (no study) show whether timing isolation
holds. Prints one Markdown table: wall time, trials/min, lost trials (asked - finished),
duplicated architectures among the finished ones, extra trials past the count (all three must be
0), and the presets' spread busy vs quiet. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server on a free port; yields a ``host=... port=...`` connection prefix."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    bindir = found[-1].parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    if bindir is None:
        sys.exit("PostgreSQL binaries not found (apt-get install postgresql), or give --storage")
    root = Path(tempfile.mkdtemp(prefix="mmlab-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


class PresetTimer(threading.Thread):
    """Times the presets in a loop, each under the machine lock's exclusive side, until stopped."""

    def __init__(self, presets: list[str], timing_s: float, threads: int, cache_dir: Path, pause_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.presets, self.timing_s, self.threads, self.cache_dir = presets, timing_s, threads, cache_dir
        self.pause_s = pause_s  # between timings, so the study's own work is not starved of the lock
        self.rows: list[dict] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from mmlab.meter.cache import MeasurementCache
        from mmlab.meter.measure import measure
        from mmlab.spec import get_preset
        from mmlab.study.candidate import MachineLock

        cache = MeasurementCache(self.cache_dir)
        lock = MachineLock("cpu", self.cache_dir)
        while not self.halt.is_set():
            for name in self.presets:
                with lock.exclusive():
                    row = measure(get_preset(name), threads=self.threads, cache=cache, use_cache=False,
                                  max_time_s=self.timing_s)
                self.rows.append({"preset": name, "median": row["latency_ms"],
                                  "spread": (row["latency_p90_ms"] - row["latency_p10_ms"]) / row["latency_ms"]})
                if self.halt.wait(self.pause_s):
                    break

    def summary(self) -> str:
        if not self.rows:
            return "-"
        parts = []
        for name in self.presets:
            rows = [r for r in self.rows if r["preset"] == name]
            if rows:
                parts.append(f"{name} {statistics.median(r['median'] for r in rows):.1f} ms ±"
                             f"{100 * statistics.median(r['spread'] for r in rows):.0f}% (n={len(rows)})")
        return "; ".join(parts)


def quiet_run(presets: list[str], timing_s: float, threads: int, rounds: int) -> PresetTimer:
    """The presets timed ``rounds`` times each with no study running."""
    timer = PresetTimer(presets, timing_s, threads, Path(tempfile.mkdtemp(prefix="mmlab-bench-quiet-")))
    timer.start()
    while len(timer.rows) < rounds * len(presets) and timer.is_alive():
        time.sleep(0.05)
    timer.halt.set()
    timer.join()
    return timer


def one_run(args: argparse.Namespace, workers: int, url: str, results: Path) -> dict:
    from optuna.trial import TrialState

    from mmlab.api import search
    from mmlab.study.search import SearchConfig
    from mmlab.study.storage import load_study

    cache_dir = Path(tempfile.mkdtemp(prefix=f"mmlab-bench-cache-{workers}-"))
    os.environ["MMLAB_CACHE_DIR"] = str(cache_dir)  # every run starts cold and the workers share it
    config = SearchConfig(study=f"workers{workers}", trials=args.trials, budget_mflops=args.budget_mflops,
                          space=args.space, storage=url, threads=args.threads, timing_s=args.timing_s,
                          data=args.data, results_dir=str(results))
    timer = PresetTimer(args.presets.split(","), args.timing_s, args.threads or (os.cpu_count() or 1), cache_dir,
                        pause_s=args.timer_pause_s)
    started = time.perf_counter()
    timer.start()
    result = search(config, workers=workers)
    seconds = time.perf_counter() - started
    timer.halt.set()
    timer.join()
    study, _ = load_study(results / config.study)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs.get("spec_key") for t in done]
    flagged = sum(bool(t.user_attrs.get("timing_disturbed")) for t in done)
    return {"workers": workers, "wall_s": seconds, "per_min": 60 * len(done) / seconds,
            "lost": max(0, args.trials - len(done)), "duplicated": len(keys) - len(set(keys)),
            "extra": max(0, len(done) - args.trials), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "flagged": flagged,
            "presets": timer.summary(), "problems": "; ".join(result.problems)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts, one run each")
    parser.add_argument("--storage", help="a PostgreSQL server URL without database (default: a throwaway one)")
    parser.add_argument("--space", default="default")
    parser.add_argument("--budget-mflops", type=float, default=300.0)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timing-s", type=float, default=1.0)
    parser.add_argument("--presets", default="t2,s6", help="presets timed during the run and quietly")
    parser.add_argument("--quiet-rounds", type=int, default=5)
    parser.add_argument("--timer-pause-s", type=float, default=2.0, help="pause between preset timings during a run")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    threads = args.threads or (os.cpu_count() or 1)
    quiet = quiet_run(args.presets.split(","), args.timing_s, threads, args.quiet_rounds)
    results = Path(tempfile.mkdtemp(prefix="mmlab-bench-results-"))
    rows = []
    with (throwaway_postgres() if args.storage is None else _given(args.storage)) as server:
        for k in counts:
            rows.append(one_run(args, k, create_database(server, f"workers{k}"), results))
            print(f"workers={k}: {rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"{args.trials} trials, space {args.space}, budget {args.budget_mflops:g} M MACs, "
          f"{os.cpu_count()} CPUs, timing cap {args.timing_s:g} s; presets quiet: {quiet.summary()}\n")
    print("| workers | wall s | trials/min | lost | duplicated | extra | pruned repeats | failed | flagged timings | presets during the run (median ±spread) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall_s']:.0f} | {r['per_min']:.1f} | {r['lost']} | {r['duplicated']} | {r['extra']} "
              f"| {r['pruned']} | {r['failed']} | {r['flagged']} | {r['presets']} |")
    for r in rows:
        if r["problems"]:
            print(f"\nworkers={r['workers']}: {r['problems']}")


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    main()
