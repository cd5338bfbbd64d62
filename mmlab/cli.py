"""The ``mmlab`` command line: each command parses, calls one library function, prints.

Only typer and the pure-Python registries load at start, so ``mmlab --help`` answers at once;
each command imports the library layer it calls (torch among it) inside its body.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmlab.meter.devices import DEVICES
from mmlab.meter.runtimes import RUNTIMES
from mmlab.signals.registry import DEFAULT_SIGNAL, SIGNALS
from mmlab.spec import PRESETS, ArchSpec, load_spec, param_count
from mmlab.spec.space import DEFAULT_SPACE, space_names

app = typer.Typer(
    name="mmlab",
    help="Build, measure, search and ablate MobileMamba-style vision backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[str, typer.Argument(help="A preset name (see `mmlab presets`) or a .toml / .json spec file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def resolve_spec(source: str) -> ArchSpec:
    try:
        return load_spec(source)
    except ValueError as err:
        fail(str(err))
        raise  # unreachable: fail() exits


def format_table(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    """Plain fixed-width table; numbers right-aligned."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


@app.command()
def presets(as_json: JsonOpt = False) -> None:
    """List the registered presets: resolution, parameters (all, incl. frozen wavelet filters), widths, depths."""
    rows = [
        {"name": name, "resolution": s.resolution, "params": param_count(s), "widths": s.widths,
         "depths": s.depths, "key": s.key}
        for name, s in PRESETS.items()
    ]
    if as_json:
        typer.echo(json.dumps([{**r, "widths": list(r["widths"]), "depths": list(r["depths"])} for r in rows], indent=2))
    else:
        typer.echo(format_table(rows))


@app.command()
def show(spec: SpecArg, as_json: JsonOpt = False) -> None:
    """Print a spec, its per-stage channel splits and its parameter count.

    Examples: `mmlab show t2`, `mmlab show arch.toml --json`.
    """
    arch = resolve_spec(spec)
    params = param_count(arch)
    if as_json:
        typer.echo(json.dumps({"key": arch.key, "spec": arch.to_dict(), "splits": arch.splits(), "params": params}, indent=2))
        return
    net = {k: v for k, v in arch.to_dict().items() if k != "stages"}
    typer.echo(f"spec {spec} (key {arch.key})")
    typer.echo("  " + "  ".join(f"{k}={v}" for k, v in net.items()))
    typer.echo(f"  stem: stride {arch.stem_stride}, channels {','.join(map(str, arch.stem_channels))}")
    typer.echo("")
    typer.echo(format_table(arch.splits()))
    typer.echo("")
    typer.echo(f"params: {params:,} (all parameters, frozen wavelet filters included)")


Device = Enum("Device", {name: name for name in DEVICES}, type=str)  # choices from the one device registry
Runtime = Enum("Runtime", {name: name for name in RUNTIMES}, type=str)
DEVICE_HELP = "; ".join(f"{d.name}: {d.description}" for d in DEVICES.values())
# "[" escaped: typer's rich help would read "mmlab[deploy]" as a style tag and drop it.
RUNTIME_HELP = "Timing runtime: " + "; ".join(f"{r.name}: {r.description}" for r in RUNTIMES.values()).replace("[", "\\[")
SIGNAL_HELP = ", ".join(f"{s.name} ({s.kind})" for s in SIGNALS.values())
SPACE_HELP = f"Search space: a shipped one ({', '.join(space_names())}) or a .toml file."


MEASURE_COLUMNS_CPU = ["spec", "params", "macs_paper", "macs", "latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_runs", "env_threads"]
MEASURE_COLUMNS_CUDA = ["spec", "params", "macs", "latency_ms", "latency_eager_ms", "latency_graph_ms",
                        "throughput_ips", "throughput_eager_ips", "throughput_graph_ips", "throughput_batch"]


@app.command()
def measure(
    specs: Annotated[list[str], typer.Argument(help="Preset names and/or .toml / .json spec files.")],
    device: Annotated[Device, typer.Option(help=DEVICE_HELP)] = "cpu",
    runtime: Annotated[Runtime, typer.Option(help=RUNTIME_HELP)] = "eager",
    batch: Annotated[Optional[int], typer.Option(help="CPU: latency batch (default 1). CUDA: throughput batch (default 256).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for timing (default: all cores); recorded with the result.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure again even if this machine has a cached result.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Measurement cache directory (default $MMLAB_CACHE_DIR or ~/.cache/mmlab/measurements).")] = None,
    max_time: Annotated[float, typer.Option(help="CPU timing cap in seconds (warm-up excluded).")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Count parameters and MACs and time each spec (deploy form: BatchNorm fused, eval, fp32).

    MACs: one multiply-add = 1 (the paper's "FLOPs"). `macs` counts everything; `macs_paper`
    leaves out the wavelet sub-band convs, as the authors' counter does.

    Examples: `mmlab measure t2 s6`, `mmlab measure arch.toml --threads 1 --json`,
    `mmlab measure t2 t4 s6 b1 b2 b4 --device cuda`.
    """
    from mmlab.meter.cache import MeasurementCache
    from mmlab.meter.measure import measure as measure_spec

    arches = [(name, resolve_spec(name)) for name in specs]  # all resolved before any timing
    cache = MeasurementCache(cache_dir)
    rows = []
    for name, arch in arches:
        try:
            row = measure_spec(arch, device=device.value, batch=batch, threads=threads, cache=cache,
                               use_cache=not no_cache, max_time_s=max_time, runtime=runtime.value)
        except ValueError as err:
            fail(str(err))
        rows.append({"spec": name, **row})
        if not as_json:
            typer.echo(f"measured {name} in {row['measure_s']:.1f} s" + (" (cached)" if row["measure_s"] == 0 else ""), err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = MEASURE_COLUMNS_CUDA if device.value == "cuda" else MEASURE_COLUMNS_CPU
    typer.echo(format_table([{c: r.get(c) for c in columns} for r in rows], columns))
    env = rows[0]
    typer.echo(f"\n{env['env_hardware']}, torch {env['env_torch']}, {env['env_dtype']}, batch {env['env_batch']}; "
               "MACs: 1 multiply-add = 1; latency: median ms (p10, p90) of the fused model")


@app.command()
def score(
    spec: SpecArg,
    signal: Annotated[str, typer.Option(help=SIGNAL_HELP)] = DEFAULT_SIGNAL,
    data: Annotated[str, typer.Option(help="digits (embedded, default), synthetic, or imagefolder:PATH.")] = "digits",
    seed: Annotated[int, typer.Option(help="Seeds the data split, the network and the batches.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs for --signal train.")] = 3,
    device: Annotated[Device, typer.Option(help="Where data-driven signals run.")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Compute one accuracy signal of an architecture (adapted to the data: classes, channels, 64 px).

    Examples: `mmlab score t2 --signal naswot`, `mmlab score arch.toml --signal train --data digits --json`.
    """
    import time

    from mmlab.signals.score import score as compute

    arch = resolve_spec(spec)
    if signal not in SIGNALS:
        fail(f"signal: {signal!r} is not allowed; choose among {', '.join(SIGNALS)}")
    started = time.perf_counter()
    try:
        value = compute(arch, signal, data=data, seed=seed, epochs=epochs, device=device.value)
    except ValueError as err:
        fail(str(err))
    seconds = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({"spec": spec, "key": arch.key, "signal": signal, "data": data, "seed": seed,
                               "value": value, "seconds": seconds}))
    else:
        typer.echo(f"{spec} {signal} = {value:.6g}   (data {data}, seed {seed}, {seconds:.1f} s)")


@app.command("proxy-check")
def proxy_check_cmd(
    data: Annotated[str, typer.Option(help="fashion-mnist[:PATH], digits (embedded), synthetic, or imagefolder:PATH.")] = "fashion-mnist",
    n: Annotated[int, typer.Option(help="Architectures to sample from the space.")] = 40,
    epochs: Annotated[int, typer.Option(help="Training epochs per architecture (the ground truth).")] = 3,
    max_per_class: Annotated[Optional[int], typer.Option(help="Training images per class (0: all).")] = 500,
    retest: Annotated[int, typer.Option(help="Architectures trained again with seed + 1: the noise ceiling.")] = 10,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default: the trainer's, 64).")] = None,
    budget_mflops: Annotated[float, typer.Option(help="Sample only architectures within this many M MACs (0: no budget).")] = 300.0,
    space: Annotated[str, typer.Option(help=SPACE_HELP)] = DEFAULT_SPACE,
    seed: Annotated[int, typer.Option(help="Seed of the sample, the proxies and the first training run.")] = 0,
    device: Annotated[Device, typer.Option(help="Where signals and training run.")] = "cpu",
    shard: Annotated[str, typer.Option(help="I/K: this process takes every K-th architecture from the I-th (share the work between processes).")] = "0/1",
    results_dir: Annotated[Path, typer.Option(help="Parent folder of the outputs.")] = Path("results"),
) -> None:
    """Which signal to trust on your data: every signal vs trained accuracy, with intervals.

    Samples N architectures (default: the default space under 300 M MACs), computes every signal,
    trains each (the ground truth) and trains --retest of them again with another seed (the noise
    ceiling), then reports Spearman's ρ and Kendall's τ with paired-bootstrap 95% intervals,
    partial ρ given params, top-quarter precision and regret, and recommends a default signal.
    Writes results/proxy_check_<data>/; re-running (or Ctrl-C and re-running) resumes.

    Example: `mmlab proxy-check --data fashion-mnist --n 40 --retest 10`.
    """
    import sys

    from tqdm import tqdm

    from mmlab.api import proxy_check
    from mmlab.study.proxy_check import CheckSettings

    try:
        index, count = (int(v) for v in shard.split("/"))
    except ValueError:
        fail(f"shard: {shard!r} is not allowed; give I/K, e.g. 0/2")
    settings = CheckSettings(data=data, n=n, epochs=epochs, max_per_class=max_per_class or None, retest=retest,
                             batch_size=batch_size, space=space, budget_mflops=budget_mflops or None, seed=seed, device=device.value)
    bar = tqdm(total=None, desc="proxy-check", unit="run", file=sys.stderr, dynamic_ncols=True)

    def progress(i: int, total: int, key: str) -> None:
        bar.total, bar.n = total, i
        bar.set_postfix_str(key, refresh=True)

    try:
        folder = proxy_check(settings, results_dir=results_dir, shard=(index, count), progress=progress)
    except ValueError as err:
        bar.close()
        fail(str(err))
    except KeyboardInterrupt:
        bar.close()
        typer.echo("interrupted: finished architectures are kept in rows.jsonl; run the same command to resume")
        raise typer.Exit(130)
    bar.close()
    typer.echo((folder / "correlations.md").read_text())
    typer.echo(f"report: {folder / 'report.md'}")


def _sampler_names() -> list[str]:
    from mmlab.study.samplers import SAMPLERS  # optuna, but not torch

    return list(SAMPLERS)


Sampler = Enum("Sampler", {name: name for name in _sampler_names()}, type=str)


@app.command(epilog=(
    "Examples:\n\n"
    "  mmlab search --budget-mflops 300\n\n"
    "  mmlab search --study fast --budget-mflops 300 --budget-ms 25 --trials 100 --workers 2\n\n"
    "  mmlab search --objectives signal,macs --signal naswot --data digits --sampler nsga2\n\n"
    "  mmlab search --space tiny --storage sqlite:////tmp/s.db --study tiny\n\n"
    "Run the same command again to resume; Ctrl-C keeps every finished trial."
))
def search(
    budget_mflops: Annotated[Optional[float], typer.Option(help="MAC budget in millions of MACs (1 multiply-add = 1, the paper's 'FLOPs'; complete count): feasible when macs <= budget.")] = None,
    budget_ms: Annotated[Optional[float], typer.Option(help="Latency budget in ms on --device: feasible when latency <= budget.")] = None,
    study: Annotated[str, typer.Option(help="Study name; outputs go to results/<study>/.")] = "default",
    trials: Annotated[int, typer.Option(help="Total finished trials wanted (a resumed study continues up to it).")] = 50,
    objectives: Annotated[str, typer.Option(help="Comma-separated, among signal (max), latency, macs, params (min).")] = "signal,latency",
    signal: Annotated[str, typer.Option(help="Accuracy signal: " + SIGNAL_HELP)] = DEFAULT_SIGNAL,
    data: Annotated[str, typer.Option(help="Data for the signal: synthetic, digits or imagefolder:PATH.")] = "synthetic",
    sampler: Annotated[Sampler, typer.Option(help="auto = TPE up to 300 trials, NSGA-II beyond.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of the signal.")] = 0,
    space: Annotated[str, typer.Option(help=SPACE_HELP)] = DEFAULT_SPACE,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (sqlite:///..., postgresql://..., journal:PATH); default SQLite in results/<study>/.")] = None,
    workers: Annotated[int, typer.Option(help="Processes working on the study together (timings never overlap).")] = 1,
    device: Annotated[Device, typer.Option(help="Where latency is measured.")] = "cpu",
    runtime: Annotated[Runtime, typer.Option(help=RUNTIME_HELP)] = "eager",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for timing (default: all cores).")] = None,
    timing_s: Annotated[float, typer.Option(help="CPU timing cap per candidate, seconds.")] = 2.0,
    results_dir: Annotated[Path, typer.Option(help="Parent folder of study outputs.")] = Path("results"),
) -> None:
    """Multi-objective architecture search under MAC and latency budgets (Optuna), with a Pareto report.

    Each trial: suggest an architecture from the space, count its MACs (over the MAC budget:
    infeasible, never timed or scored), time it (deploy form), score its accuracy signal. The
    paper presets that fit are tried first. Outputs, regenerated by `mmlab report`:
    results/<study>/trials.csv, pareto.csv, pareto.png, report.md, report.html.
    """
    from mmlab.study.search import SearchConfig

    config = SearchConfig(
        study=study, trials=trials, budget_mflops=budget_mflops, budget_ms=budget_ms,
        objectives=tuple(o.strip() for o in objectives.split(",") if o.strip()), signal=signal, data=data,
        sampler=sampler.value, seed=seed, space=space, storage=storage, device=device.value, threads=threads,
        timing_s=timing_s, runtime=runtime.value, results_dir=str(results_dir),
    )
    run_search(config, workers)


def run_search(config, workers: int) -> None:
    """Call :func:`mmlab.search` with a progress bar; print the summary line (and how to resume)."""
    import sys

    from tqdm import tqdm

    from mmlab.api import search as run
    from mmlab.study.search import SearchFailed, finished, front_size

    bar = tqdm(total=config.trials, desc=f"search {config.study}", unit="trial", file=sys.stderr, dynamic_ncols=True)

    def progress(s) -> None:
        trials = finished(s)
        feasible, front = front_size(trials, [d.name.lower() for d in s.directions])
        bar.n = min(len(trials), config.trials)
        bar.set_postfix(feasible=feasible, front=front, refresh=False)
        bar.refresh()

    try:
        result = run(config, workers=workers, progress=progress, notify=lambda line: tqdm.write(line, file=sys.stderr))
    except (ValueError, SearchFailed) as err:  # the report of what finished is written before
        bar.close()
        fail(str(err))
    bar.close()
    typer.echo(f"{result.finished} finished trials ({result.new} new, {result.seconds:.0f} s), "
               f"{result.feasible} feasible, Pareto front of {result.front}: {result.report}")
    if result.interrupted:
        typer.echo(f"interrupted: the running trial is marked failed, finished ones are kept; resume with:\n  "
                   f"{result.resume_command}")
        raise typer.Exit(130)


@app.command()
def ablations() -> None:
    """List the named ablations (pure spec edits usable in grid files), one line each."""
    from mmlab.spec import ABLATIONS

    width = max(map(len, ABLATIONS))
    for name, ab in ABLATIONS.items():
        typer.echo(f"{name:<{width}}  {'(value)' if ab.takes_value else '       '}  {ab.description}")


@app.command()
def ablate(
    grid: Annotated[Path, typer.Argument(help="A grid file, e.g. studies/paper_ablations.toml.")],
    device: Annotated[Device, typer.Option(help="Where latency is measured.")] = "cpu",
    runtime: Annotated[Runtime, typer.Option(help=RUNTIME_HELP)] = "eager",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for timing (default: all cores).")] = None,
    timing_s: Annotated[float, typer.Option(help="CPU timing cap per variant, seconds.")] = 3.0,
    interleave_s: Annotated[float, typer.Option(
        help="Cap of each interleaved timing of the base against a group of variants, seconds.")] = 40.0,
    results_dir: Annotated[Path, typer.Option(help="Parent folder of grid outputs.")] = Path("results"),
) -> None:
    """Measure every variant of an ablation grid and write paper-style tables and plots.

    Duplicated variants are measured once; finished variants are kept in results/<grid>/rows.jsonl,
    so re-running after an interruption continues where it stopped. With latency, the variants are
    then timed against the base interleaved, in one run (latency_ratios.json), for effects with a
    95% interval. Outputs: table.csv, table.md, bar_<metric>.png (change against the base),
    scatter.png, report.md, report.html (rebuilt by `mmlab report results/<grid>`).

    Example: `mmlab ablate studies/paper_ablations.toml`; `mmlab ablations` lists the edits.
    """
    import sys
    import time

    from tqdm import tqdm

    from mmlab.api import ablate as run
    from mmlab.study.grid import GridSettings

    bar = tqdm(total=None, desc="ablate", unit="variant", file=sys.stderr, dynamic_ncols=True)

    def progress(i: int, total: int, label: str) -> None:
        bar.total = total
        bar.n = i
        bar.set_postfix_str(label, refresh=True)

    started = time.perf_counter()
    try:
        folder = run(grid, results_dir=results_dir, progress=progress,
                     settings=GridSettings(device=device.value, threads=threads, timing_s=timing_s,
                                           interleave_s=interleave_s, runtime=runtime.value))
    except ValueError as err:
        bar.close()
        fail(str(err))
    except KeyboardInterrupt:
        bar.close()
        typer.echo(f"interrupted: finished variants are kept; resume with: mmlab ablate {grid}")
        raise typer.Exit(130)
    bar.close()
    typer.echo(f"{time.perf_counter() - started:.0f} s; tables and plots in {folder}/ (report: {folder / 'report.md'})")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A results folder: results/<study> (search) or results/<grid> (ablation).")],
) -> None:
    """Regenerate the tables, plots and reports of a search, ablation grid or proxy check from what is stored."""
    from mmlab.api import report as run

    try:
        paths = run(folder)
    except ValueError as err:
        fail(str(err))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command(epilog=(
    "Examples:\n\n"
    "  mmlab refine results/default --data fashion-mnist --top-k 9 --rungs 1,3,9\n\n"
    "  mmlab refine results/default --data imagefolder:/data/mine --seeds 2 --device cuda\n\n"
    "  mmlab refine results/default      # resume (the stored settings are kept)\n\n"
    "Run the same command in several terminals or machines (one storage) to share the work."
))
def refine(
    folder: Annotated[Path, typer.Argument(help="A search's results folder, results/<study>.")],
    top_k: Annotated[Optional[int], typer.Option(help="Candidates: the front, then the next non-dominated layers, presets that fit included. \\[default: 9]")] = None,
    rungs: Annotated[Optional[str], typer.Option(help="Training epochs at each rung, cumulative and increasing. \\[default: 1,3,9]")] = None,
    eta: Annotated[Optional[int], typer.Option(help="Each rung keeps the best 1/eta (rounded up). \\[default: 3]")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Training seeds per candidate and rung (error bars). \\[default: 1]")] = None,
    data: Annotated[Optional[str], typer.Option(help="fashion-mnist[:PATH], digits, synthetic, or imagefolder:PATH. \\[default: fashion-mnist]")] = None,
    max_per_class: Annotated[Optional[int], typer.Option(help="Training images per class (0: all). \\[default: 1000]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size. \\[default: 64]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the data split and the first training run. \\[default: 0]")] = None,
    keep_presets: Annotated[Optional[bool], typer.Option("--keep-presets/--no-keep-presets", help="Carry the presets that fit through every rung, as references at equal epochs. \\[default: no]")] = None,
    device: Annotated[Device, typer.Option(help="Where training runs.")] = "cpu",
) -> None:
    """Train the searched front: successive halving with real training, resumable and shared.

    Takes the K best feasible trials of a search, trains each for the first rung's epochs, keeps the
    best 1/eta by held-out top-1, continues those from their weights to the next rung, and so on.
    Results live in the study's storage (a linked study `<study>:refine`), weights under
    results/<study>/refine/. Writes refined.csv, refined_pareto.png and a section of report.md /
    report.html. Settings left out are the stored refine's (when resuming) or the defaults.
    """
    import sys

    from tqdm import tqdm

    from mmlab.api import refine as run
    from mmlab.study.refine import parse_rungs

    given: dict[str, object] = {"device": device.value}
    for name, value in (("top_k", top_k), ("eta", eta), ("seeds", seeds), ("data", data), ("batch_size", batch_size),
                        ("seed", seed), ("keep_presets", keep_presets)):
        if value is not None:
            given[name] = value
    if max_per_class is not None:
        given["max_per_class"] = max_per_class or None
    try:
        if rungs is not None:
            given["rungs"] = parse_rungs(rungs)
    except ValueError as err:
        fail(str(err))
    bars: dict[int, tqdm] = {}

    def progress(p) -> None:
        bar = bars.get(p.rung)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[p.rung] = tqdm(total=p.total, desc=f"rung {p.rung} ({p.epochs} ep)", unit="job",
                                      file=sys.stderr, dynamic_ncols=True)
        bar.total, bar.n = p.total, p.done
        bar.set_postfix(running=p.running, failed=p.failed, refresh=True)
        if p.line:
            tqdm.write(p.line, file=sys.stderr)

    try:
        result = run(folder, progress=progress, **given)
    except ValueError as err:
        for bar in bars.values():
            bar.close()
        fail(str(err))
    for bar in bars.values():
        bar.close()
    for r in result.rungs:
        wall = f"{r['wall_s']:.0f} s wall" if r["wall_s"] is not None else "in progress"
        kept = "" if r["survivors"] is None else f", kept {len(r['survivors'])}"
        typer.echo(f"rung {r['rung']}: {len(r['candidates'])} candidates at {r['epochs']} epoch{'s' * (r['epochs'] != 1)}, "
                   f"{r['trained']} jobs trained, {len(r['failed'])} failed{kept}; "
                   f"{r['train_s']:.0f} s training, {wall}")
    if result.best is not None:
        b = result.best
        typer.echo(f"best: trial {b['trial']}, top-1 {b['top1_mean']:.2f} ± {b['top1_se']:.2f} % after {b['epochs']} "
                   f"epochs; {result.trained} jobs trained here in {result.seconds:.0f} s: {result.report}")
    if result.interrupted:
        typer.echo(f"interrupted: the running job is queued again, finished ones are kept; resume with:\n  "
                   f"{result.resume_command}")
        raise typer.Exit(130)


def _is_spec(source: str) -> bool:
    """A preset name or an existing .toml / .json file (anything else is taken for a study folder)."""
    path = Path(source)
    return source in PRESETS or (path.suffix.lower() in (".toml", ".json") and path.is_file())


@app.command(epilog=(
    "Examples:\n\n"
    "  mmlab export results/default --trial 12 -o arch.toml\n\n"
    "  mmlab export results/default --refined best --onnx model.onnx\n\n"
    "  mmlab export t2 --onnx t2.onnx"
))
def export(
    source: Annotated[str, typer.Argument(help="A search's results folder (results/<study>), or a preset name / spec file (with --onnx).")],
    trial: Annotated[Optional[int], typer.Option(help="Trial number (see trials.csv / report.md).")] = None,
    refined: Annotated[Optional[str], typer.Option(help="'best': the winner of `mmlab refine` (instead of --trial).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the trial's spec (.toml or .json). \\[default: arch.toml]")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Also write the deploy network (BatchNorm fused, reference initialisation) as ONNX here, checked against PyTorch in onnxruntime.")] = None,
) -> None:
    """Write one trial's architecture as a spec file, and / or a network as ONNX.

    From a study folder: the trial's spec for `mmlab show`, `mmlab measure` and `mmlab.build` (a
    TOML export records the trial's measurements and, for a refined trial, its trained top-1 and
    data). With --onnx, from a study or from a preset / spec file: the fused network as ONNX
    (input `image`, dynamic batch; output `output`), exported only if onnxruntime's output matches
    PyTorch's within 1e-4 of the output scale.
    """
    if _is_spec(source):
        if onnx is None or trial is not None or refined is not None or output is not None:
            fail(f"export: {source!r} is a spec: give --onnx PATH only (--trial, --refined and --output are for a study folder)")
        spec = resolve_spec(source)
    else:
        from mmlab.api import export as run

        try:
            path, spec = run(source, trial, output or Path("arch.toml"), refined=refined)
        except ValueError as err:
            fail(str(err))
        typer.echo(f"wrote {path} (spec {spec.key}); try: mmlab show {path}")
    if onnx is not None:
        from mmlab.meter.onnx import export_spec

        try:
            done = export_spec(spec, onnx)
        except ValueError as err:
            fail(str(err))
        typer.echo(f"wrote {done.path} (spec {done.spec_key}, {done.size_bytes / 1e6:.1f} MB, opset {done.opset}, "
                   f"exported in {done.export_s:.1f} s; onnxruntime vs PyTorch: {done.error:.1e} of the output scale)")


def main() -> None:  # pragma: no cover - console-script shim
    app()
