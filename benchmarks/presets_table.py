"""Write results/presets.md: the six paper presets measured on this machine, in every CPU runtime.

    python benchmarks/presets_table.py [--threads N] [--runtimes eager,compile,onnxruntime] [--rounds 30]
        [--out results/presets.md] [--side-by-side results/side_by_side.json [results/side_by_side_compile.json ...]]

Per preset: counts from `mmlab.meter.measure.cached_counts` (fresh, not from the cache); then the BatchNorm-fused
network is prepared once in each runtime (compile, or ONNX export and output check, timed apart
and never inside the latency), and the runtimes are timed interleaved in one run
(`mmlab.meter.latency.time_interleaved`: one batch-1 forward of each per round, in a fresh random
order every round). A runtime's ratio to eager is taken within each round, so a burst of load on
a shared machine slows every runtime of that round alike instead of one cell of the table.

The authors' implementation is compared only where it was timed in the same process
(`benchmarks/side_by_side.py --json`): a reference timed on another machine with another torch
build is not a measurement of either, so this table does not divide by one. Run it alone.

Compile times are cold: the run compiles into an empty inductor cache of its own (a temporary
``TORCHINDUCTOR_CACHE_DIR``), so a graph compiled earlier on this machine does not shorten them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmlab.meter.latency import Interleaved, Timing, host_probe, probe_note, time_interleaved
from mmlab.meter.env import environment
from mmlab.meter.measure import cached_counts
from mmlab.meter.runtimes import RUNTIMES
from mmlab.model import build, fuse
from mmlab.spec.presets import PAPER_PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]


def _latency(t: Timing) -> str:
    return f"{t.median_ms:.1f} ({t.p10_ms:.1f}-{t.p90_ms:.1f})"


def time_runtimes(name: str, runtimes: list[str], threads: int, rounds: int, seed: int) -> tuple[dict[str, Any], dict[str, float], Interleaved]:
    """Counts and environment of preset ``name``, each runtime's preparation time in seconds, and
    the runtimes (eager first) timed interleaved."""
    spec = get_preset(name)
    built = build(spec)
    row = {"resolution": spec.resolution, **cached_counts(spec, None, built),  # fresh counts, not from the cache
           **environment("cpu", threads, "float32", 1, spec.resolution, "eager")}
    model = fuse(built)
    x = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(seed))
    torch.set_num_threads(threads)
    ready: dict[str, float] = {}
    fns = []
    with torch.inference_mode():
        for runtime in runtimes:
            start = time.perf_counter()
            fns.append(RUNTIMES[runtime].prepare(model, x))
            ready[runtime] = time.perf_counter() - start
        result = time_interleaved(fns, rounds=rounds, min_rounds=rounds, max_time_s=math.inf, seed=seed)
    for runtime in runtimes:
        RUNTIMES[runtime].free()
    return row, ready, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default, all cores)")
    parser.add_argument("--runtimes", default="eager,compile,onnxruntime",
                        help="comma-separated, from the registry; eager is always timed, as the base")
    parser.add_argument("--presets", default=",".join(PAPER_PRESETS))
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per preset")
    parser.add_argument("--seed", type=int, default=0, help="seeds the input and the order within rounds")
    parser.add_argument("--side-by-side", type=Path, nargs="+", default=[],
                        help="rows written by benchmarks/side_by_side.py --json (same machine, same process), "
                             "one file per runtime of mmlab's side")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "presets.md")
    args = parser.parse_args()
    runtimes = ["eager"] + [r for r in args.runtimes.split(",") if r and r != "eager"]
    for r in runtimes:
        if r not in RUNTIMES or "cpu" not in RUNTIMES[r].devices:
            parser.error(f"--runtimes: {r!r} is not allowed; allowed: {', '.join(n for n, rt in RUNTIMES.items() if 'cpu' in rt.devices)}")
    if len(runtimes) < 2:
        parser.error(f"--runtimes: {args.runtimes!r} names no runtime besides eager, the base; "
                     f"allowed: {', '.join(n for n, rt in RUNTIMES.items() if 'cpu' in rt.devices and n != 'eager')}")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not allowed; must be >= 1")
    presets = [p for p in args.presets.split(",") if p]
    threads = args.threads or torch.get_num_threads()
    # Read when inductor is first imported (the first compile), so setting it here is in time.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmlab-presets-inductor-")

    probe_before = host_probe(threads).median_ms
    measured = {}
    for name in presets:
        row, ready, result = time_runtimes(name, runtimes, threads, args.rounds, args.seed)
        measured[name] = (row, ready, result)
        cells = [f"{r} {result.timing(i).median_ms:.1f} ms" + (f" (ready in {ready[r]:.1f} s)" if r != "eager" else "")
                 for i, r in enumerate(runtimes)]
        print(f"{name}: " + ", ".join(cells) + f"; {result.rounds} rounds in {result.seconds:.0f} s", flush=True)

    probe_after = host_probe(threads).median_ms
    probe = probe_note(probe_before, probe_after, threads)
    print(probe, flush=True)
    env = measured[presets[0]][0]
    variants = runtimes[1:]
    lines = [
        "# Paper presets measured on this machine",
        "",
        f"Generated by `python benchmarks/presets_table.py` on {time.strftime('%Y-%m-%d')}: "
        f"{env['env_hardware']}, {env['env_cpu_count']} cores, {threads} threads, torch {env['env_torch']}, "
        f"float32, batch 1; run alone on the machine; {probe}.",
        "",
        "MACs: one multiply-add = 1 (the paper's \"FLOPs\"). `macs_paper` is the authors' convention "
        "(no wavelet sub-band convs), `macs` counts everything. Latency: BatchNorm fused, eval, batch 1, "
        f"the runtimes timed interleaved, {args.rounds} rounds per preset, one forward of each per round; "
        "median ms with p10-p90 in brackets; runtime ÷ eager is the median over rounds of the per-round "
        "ratio with its 95 % bootstrap interval. Runtimes: "
        + "; ".join(f"`{r}`: {RUNTIMES[r].description}" for r in runtimes) + ". "
        "The time a runtime needs before its first timed pass (compile, or ONNX export and output check) "
        "is in its own column, never in the latency; compile times are cold (an empty inductor cache).",
        "",
        "| preset | resolution | params | macs_paper | macs | "
        + " | ".join(f"{r} ms" for r in runtimes)
        + "".join(f" | {r} ÷ eager" for r in variants)
        + "".join(f" | {r} ready s" for r in variants) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * (len(runtimes) + 2 * len(variants)),
    ]
    logs: dict[str, list[float]] = {r: [] for r in variants}
    for name, (row, ready, result) in measured.items():
        cells = [name, str(row["resolution"]), f"{row['params']:,}", f"{row['macs_paper']:,}", f"{row['macs']:,}"]
        cells += [_latency(result.timing(i)) for i in range(len(runtimes))]
        for r, ratio in zip(variants, result.ratios):
            logs[r].append(math.log(ratio.ratio))
            cells.append(f"{ratio.ratio:.2f} [{ratio.low:.2f}, {ratio.high:.2f}]")
        cells += [f"{ready[r]:.1f}" for r in variants]
        lines.append("| " + " | ".join(cells) + " |")
    if variants:
        lines += ["", "Geometric mean over these presets of runtime ÷ eager: "
                  + ", ".join(f"{r} {math.exp(sum(v) / len(v)):.2f}" for r, v in logs.items()) + "."]
    for path in args.side_by_side:
        side = json.loads(path.read_text())
        runtime = side[0].get("runtime", "eager")
        lines += ["", f"## Against the authors' implementation, same process: mmlab {runtime} ({path.name})", "",
                  "Timed interleaved in one process by `benchmarks/side_by_side.py` (same weights, both fused, "
                  f"batch 1, {side[0]['env_threads']} threads; mmlab's side in `{runtime}`, the authors' network in "
                  "eager PyTorch); ratio = median over rounds of mmlab ÷ authors with its 95 % bootstrap interval."
                  + (f" Its {probe_note(side[0]['env_probe_before_ms'], side[0]['env_probe_after_ms'], side[0]['env_threads'])}."
                     if "env_probe_before_ms" in side[0] else ""), "",
                  f"| preset | mmlab {runtime} ms | authors ms | ratio [interval] |", "|---|---:|---:|---:|"]
        for r in side:
            lines.append(f"| {r['preset']} | {r['mmlab_ms']:.1f} | {r['authors_ms']:.1f} | "
                         f"{r['ratio_mmlab_over_authors']:.2f} [{r['ratio_low']:.2f}, {r['ratio_high']:.2f}] |")
        logs = [math.log(r["ratio_mmlab_over_authors"]) for r in side]
        lines += ["", f"Geometric mean of mmlab {runtime} ÷ authors eager: {math.exp(sum(logs) / len(logs)):.3f}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
