"""Search, then refine on Fashion-MNIST: does the trained front beat t2 at equal measured latency?

Two steps, each a plain `mmlab` command run here and timed:

1. a default-space search under 300 M MACs (complete count; t2 is 256 M, so it is queued first),
   signal and latency objectives, 50 trials;
2. `mmlab refine` of its front on Fashion-MNIST: K = 8 candidates, rungs of 1 and 2 epochs
   (η = 3: 8 candidates, then the best 3 trained 1 more epoch from their weights), 100 training
   images per class (``--max-per-class``) and the whole 10k test split held out, the presets that fit carried through
   both rungs so t2 is compared at equal epochs.

Writes everything under results/refine_fashion/ (the search's report, refined.csv,
refined_pareto.png, report.md / report.html with the refined section) and benchmark.md /
benchmark.json there: the commands, the wall time of each step and of each rung, the refined
front, the signal-vs-trained rank correlation and the comparison with t2.

    python benchmarks/refine_fashion.py                             # the benchmark (2 cores: see benchmark.md for the wall time)
    python benchmarks/refine_fashion.py --tiny --results-dir /tmp/rf  # a smoke run of the same script (minutes)

Run it again to resume: the search and the refine both continue where they stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

STUDY = "refine_fashion"


def commands(results: Path, tiny: bool, max_per_class: int = 100) -> list[list[str]]:
    folder = results / STUDY
    if tiny:  # the tiny space, synthetic data, a handful of short runs: checks the script, not the science
        search = ["search", "--study", STUDY, "--space", "tiny", "--budget-mflops", "0.9", "--trials", "8",
                  "--signal", "params", "--timing-s", "0.05", "--threads", "1", "--results-dir", str(results)]
        refine = ["refine", str(folder), "--top-k", "4", "--rungs", "1,2", "--eta", "2", "--data",
                  "synthetic:n=80,classes=4", "--batch-size", "16", "--max-per-class", "0", "--keep-presets"]
    else:
        search = ["search", "--study", STUDY, "--budget-mflops", "300", "--trials", "50", "--data", "fashion-mnist",
                  "--results-dir", str(results)]
        refine = ["refine", str(folder), "--top-k", "8", "--rungs", "1,2", "--eta", "3", "--data", "fashion-mnist",
                  "--max-per-class", str(max_per_class), "--keep-presets"]
    return [search, refine]


def run(argv: list[str]) -> float:
    """Run one mmlab command, its output passed through; its wall seconds (exit on failure)."""
    line = shlex.join(["mmlab", *argv])
    print(f"$ {line}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmlab", *argv])
    if proc.returncode != 0:
        sys.exit(f"{line} exited with {proc.returncode}; run this script again to resume")
    return time.perf_counter() - started


def against_t2(csv: pd.DataFrame) -> dict[str, object] | None:
    """t2 against the refined candidates trained as long as it was: the best of those at most as slow
    as t2 (measured latency), the difference in top-1 and its standard error (the two independent)."""
    t2 = csv[(csv["preset"] == "t2") & csv["final"] & (csv["status"] == "trained")]
    if t2.empty:
        return None
    ref = t2.iloc[0]
    peers = csv[(csv["rung"] == ref["rung"]) & (csv["status"] == "trained") & (csv["preset"] != "t2")
                & (csv["latency_ms"] <= ref["latency_ms"])]
    out: dict[str, object] = {"t2_trial": int(ref["trial"]), "t2_top1": float(ref["top1_mean"]),
                              "t2_se": float(ref["top1_se"]), "t2_latency_ms": float(ref["latency_ms"]),
                              "epochs": int(ref["epochs"]), "peers": int(len(peers))}
    if not peers.empty:
        best = peers.sort_values("top1_mean", ascending=False).iloc[0]
        out.update(best_trial=int(best["trial"]), best_top1=float(best["top1_mean"]), best_se=float(best["top1_se"]),
                   best_latency_ms=float(best["latency_ms"]), difference=float(best["top1_mean"] - ref["top1_mean"]),
                   difference_se=math.hypot(float(best["top1_se"]), float(ref["top1_se"])))
    return out


def retime(folder: Path, csv: pd.DataFrame, threads: int | None) -> dict[int, dict[str, float]]:
    """Every refined candidate timed again, fresh (not from the cache), on a machine that should be
    quiet: the search may have timed some of them under load (flagged ``timing_disturbed``)."""
    from mmlab.meter.measure import measure
    from mmlab.study.search import record_of
    from mmlab.study.storage import load_study

    study, _ = load_study(folder)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out: dict[int, dict[str, float]] = {}
    for number in sorted(set(int(t) for t in csv["trial"])):
        trial = trials[number]
        row = measure(record_of(trial).spec, threads=threads, use_cache=False)
        out[number] = {"latency_ms": row["latency_ms"], "latency_p10_ms": row["latency_p10_ms"],
                       "latency_p90_ms": row["latency_p90_ms"], "search_latency_ms": trial.user_attrs.get("latency_ms"),
                       "search_disturbed": bool(trial.user_attrs.get("timing_disturbed"))}
        print(f"trial {number}: {row['latency_ms']:.1f} ms quiet (search: {out[number]['search_latency_ms']:.1f} ms"
              f"{', flagged disturbed' if out[number]['search_disturbed'] else ''})", flush=True)
    return out


def summary(folder: Path, steps: dict[str, dict[str, object]], quiet: dict[int, dict[str, float]] | None = None
            ) -> dict[str, object]:
    from mmlab.reports.refine import signal_correlation
    from mmlab.study.refine import load_refine, rung_summaries
    from mmlab.study.storage import load_study

    study, _ = load_study(folder)
    state = load_refine(study)
    csv = pd.read_csv(folder / "refined.csv", dtype={"preset": str})
    csv["preset"] = csv["preset"].fillna("")
    if quiet:  # the comparison with t2 at equal latency uses the quiet timings
        csv["search_latency_ms"] = csv["latency_ms"]
        csv["latency_ms"] = [quiet[int(t)]["latency_ms"] for t in csv["trial"]]
    front = csv[csv["front"]].sort_values("latency_ms")
    rho, n = signal_correlation(csv)
    return {
        "steps": steps,
        "rungs": [{k: r[k] for k in ("rung", "epochs", "candidates", "trained", "failed", "survivors", "train_s",
                                     "wall_s")} for r in rung_summaries(state)],
        "front": front[["trial", "preset", "epochs", "seeds", "top1_mean", "top1_se", "latency_ms", "macs"]]
        .to_dict("records"),
        "quiet_timings": {str(k): v for k, v in (quiet or {}).items()},
        "signal": study.user_attrs.get("config", {}).get("signal"),
        "spearman_rung0": {"rho": rho.value, "low": rho.low, "high": rho.high, "n": n},
        "t2": against_t2(csv),
    }


def write_markdown(path: Path, s: dict[str, object]) -> None:
    lines = ["# Refine on Fashion-MNIST: benchmark", "", "Written by `python benchmarks/refine_fashion.py`.", "",
             "| step | command | wall s |", "|---|---|---|"]
    lines += [f"| {name} | `{step['command']}` | {step['seconds']:.0f} |" for name, step in s["steps"].items()]
    lines += ["", "## Rungs", "", "| rung | epochs | candidates | trained jobs | failed | kept | train s | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in s["rungs"]:
        kept = "-" if r["survivors"] is None else ", ".join(f"#{t}" for t in r["survivors"])
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
        lines.append(f"| {r['rung']} | {r['epochs']} | {len(r['candidates'])} | {r['trained']} | "
                     f"{', '.join(f'#{t}' for t in r['failed']) or '-'} | {kept} | {r['train_s']:.0f} | {wall} |")
    quiet = s.get("quiet_timings") or {}
    lines += ["", "## Refined front", ""]
    if quiet:
        lines += ["Latency: every refined candidate timed again on a quiet machine (`--retime`), fresh; the "
                  "search's own timing beside it (⚠: flagged disturbed by the search, taken under load). "
                  "refined.csv and refined_pareto.png keep the search's timings.", ""]
    lines += ["| trial | preset | epochs | top-1 % ± SE | latency ms | search's latency ms | M MACs |",
              "|---|---|---|---|---|---|---|"]
    for f in s["front"]:
        q = quiet.get(str(int(f["trial"])))
        search_ms = f"{q['search_latency_ms']:.1f}{' ⚠' if q['search_disturbed'] else ''}" if q else "-"
        lines.append(f"| {int(f['trial'])} | {f['preset'] or ''} | {int(f['epochs'])} | {f['top1_mean']:.2f} ± "
                     f"{f['top1_se']:.2f} | {f['latency_ms']:.1f} | {search_ms} | {f['macs'] / 1e6:.0f} |")
    rho = s["spearman_rung0"]
    lines += ["", f"Spearman ρ, search signal `{s['signal']}` vs top-1 after rung 0, n = {rho['n']}: "
              + (f"{rho['rho']:.2f} [{rho['low']:.2f}, {rho['high']:.2f}]" if rho["n"] >= 3 else "too few")]
    t2 = s["t2"]
    lines += ["", "## Against t2", ""]
    if t2 is None:
        lines.append("t2 was not trained to the end (not in the space, over the budget, or failed).")
    elif "difference" not in t2:
        lines.append(f"t2: {t2['t2_top1']:.2f} ± {t2['t2_se']:.2f} % at {t2['t2_latency_ms']:.1f} ms after "
                     f"{t2['epochs']} epochs; no other candidate trained as long is as fast.")
    else:
        lines.append(f"t2: {t2['t2_top1']:.2f} ± {t2['t2_se']:.2f} % at {t2['t2_latency_ms']:.1f} ms after {t2['epochs']} "
                     f"epochs. Best candidate trained as long and at most as slow: trial {t2['best_trial']}, "
                     f"{t2['best_top1']:.2f} ± {t2['best_se']:.2f} % at {t2['best_latency_ms']:.1f} ms; difference "
                     f"{t2['difference']:+.2f} ± {t2['difference_se']:.2f} points of top-1.")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--tiny", action="store_true", help="tiny space and synthetic data: check the script in minutes")
    parser.add_argument("--max-per-class", type=int, default=100,
                        help="training images per class for the refine (default 100: 1,000 images)")
    parser.add_argument("--retime", action="store_true",
                        help="time every refined candidate again, fresh, and compare with t2 at those latencies "
                             "(run on a quiet machine; the steps before resume at once when already done)")
    parser.add_argument("--threads", type=int, default=None, help="threads for --retime (default: the search's)")
    args = parser.parse_args()
    folder = args.results_dir / STUDY
    steps = {}
    stored = folder / "benchmark.json"
    if args.retime and stored.is_file():  # the steps ran before: keep their wall times, only retime
        steps = {k: v for k, v in json.loads(stored.read_text())["steps"].items() if k != "retime"}
    else:
        for name, argv in zip(("search", "refine"), commands(args.results_dir, args.tiny, args.max_per_class)):
            steps[name] = {"command": shlex.join(["mmlab", *argv]), "seconds": run(argv)}
    quiet = None
    if args.retime:
        started = time.perf_counter()
        quiet = retime(folder, pd.read_csv(folder / "refined.csv"), args.threads)
        steps["retime"] = {"command": "measure() of every refined candidate, fresh", "seconds": time.perf_counter() - started}
    s = summary(folder, steps, quiet)
    (folder / "benchmark.json").write_text(json.dumps(s, indent=2, default=float) + "\n")
    write_markdown(folder / "benchmark.md", s)
    print((folder / "benchmark.md").read_text())


if __name__ == "__main__":
    main()
