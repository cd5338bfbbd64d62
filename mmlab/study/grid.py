"""Run an ablation grid: measure every distinct variant once, then time them against the base.

Every distinct variant is measured once (the measurement cache makes a repeat free), each result
is appended to ``results/<grid>/rows.jsonl`` as soon as it exists, and a re-run skips what is
there, so an interrupted run resumes where it stopped.

When the grid measures latency (or throughput), the variants are then timed against the base
*interleaved* (:func:`mmlab.meter.latency.time_interleaved`): in groups of a few variants plus
the base, every round runs each network once in a random order, and each variant's effect is the
median ratio of its time to the base's within a round, with a bootstrap 95% interval. Each
group's samples and ratios go to ``results/<grid>/latency_ratios.json`` as soon as the group is
done. The absolute latency column stays the per-variant cached timing. ``mmlab report
results/<grid>`` rebuilds every table and figure from these two files alone; it never measures.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from mmlab.meter.cache import MeasurementCache, code_digest
from mmlab.meter.devices import check_device
from mmlab.meter.env import environment
from mmlab.meter.latency import cpu_threads, time_interleaved
from mmlab.meter.runtimes import RUNTIMES, check_runtime
from mmlab.model import build, fuse
from mmlab.signals.data import check_source
from mmlab.signals.registry import DEFAULT_SIGNAL, SIGNALS, ScoreSettings, check_signal
from mmlab.spec.grid import BASE, Grid, Variant, expand, load_grid
from mmlab.study.candidate import EvalPlan, evaluate, timing_lock

GRID_FILE = "grid.json"
ROWS_FILE = "rows.jsonl"
RATIOS_FILE = "latency_ratios.json"
INTERLEAVED_PROTOCOL = "1"
"""Bump when the interleaved protocol changes, so that older ratios are measured again."""
TRAINING_SEEDS = (0, 1)
"""Default seeds when the grid's signal is a training run; one seed otherwise."""


@dataclass(frozen=True)
class GridSettings:
    """How a grid is measured on this machine (stored in grid.json).

    Attributes:
        device: where latency is measured.
        threads: CPU threads for every timing, absolute and interleaved (default: all cores).
        timing_s: cap of each variant's own (absolute) timing, seconds.
        rounds: most interleaved rounds per group.
        interleave_s: cap of each group's interleaved rounds, seconds (warm-up excluded; at least
            10 rounds are run whatever the cap).
        group: variants timed together with the base in one interleaved run (a round of a group
            is its networks once each: fewer per group keeps each pair close in time).
        runtime: the timing runtime, absolute and interleaved (:data:`mmlab.meter.runtimes.RUNTIMES`).
    """

    device: str = "cpu"
    threads: int | None = None
    timing_s: float = 3.0
    rounds: int = 200
    interleave_s: float = 40.0
    group: int = 5
    runtime: str = "eager"


def resolve_grid(grid: Grid) -> Grid:
    """The grid with the defaults that depend on the signal registry filled in: the project's
    default signal when ``measure`` lists ``signal`` without naming one, and its seeds
    (:data:`TRAINING_SEEDS` for a training signal, ``(0,)`` otherwise) when the file gives none."""
    if "signal" not in grid.measure:
        return grid
    signal = grid.signal or DEFAULT_SIGNAL
    seeds = grid.seeds
    if seeds is None:
        seeds = TRAINING_SEEDS if signal in SIGNALS and SIGNALS[signal].kind == "training" else (0,)
    return replace(grid, signal=signal, seeds=seeds)


def load_resolved(path: str | Path) -> Grid:
    """:func:`load_grid` then :func:`resolve_grid`."""
    return resolve_grid(load_grid(path))


def grid_variants(grid: Grid) -> tuple[Variant, ...]:
    """The distinct variants in expansion order, the base always first: every effect is against
    it, so a factorial grid whose levels never give the untouched spec measures it too."""
    variants = expand(grid).variants  # raises on impossible combinations, before anything runs
    base = [v for v in variants if v.spec.key == grid.base.key]
    if not base:
        base = [Variant(BASE, {f.name: BASE for f in grid.factors}, grid.base)]
    return tuple(base) + tuple(v for v in variants if v.spec.key != grid.base.key)


def variant_rows(grid: Grid) -> list[dict[str, Any]]:
    """The work list: one entry per (distinct variant, seed), the base first."""
    return [{"variant": v, "seed": seed} for v in grid_variants(grid) for seed in grid.seeds or (0,)]


def _measure_one(grid: Grid, variant: Variant, seed: int, settings: GridSettings, cache: MeasurementCache) -> dict[str, Any]:
    plan = EvalPlan(
        timing="latency" in grid.measure or "throughput" in grid.measure,
        device=settings.device, threads=settings.threads, timing_s=settings.timing_s, runtime=settings.runtime,
        signals=(grid.signal,) if "signal" in grid.measure and grid.signal else (),
        score=ScoreSettings(data=grid.data, seed=seed),
    )
    return {"label": variant.label, "seed": seed, **evaluate(variant.spec, plan, cache).to_row()}


def check_grid(grid: Grid, settings: GridSettings) -> None:
    """Everything a grid run needs, checked before any work (``ValueError`` naming the field)."""
    check_device(settings.device)
    check_runtime(settings.runtime, settings.device)
    if grid.signal:
        check_signal(grid.signal)
        check_source(grid.data)
    if settings.threads is not None and settings.threads < 1:
        raise ValueError(f"threads: {settings.threads} is not allowed; must be >= 1")
    if not settings.timing_s > 0:
        raise ValueError(f"timing_s: {settings.timing_s:g} is not allowed; the timing cap must be > 0 seconds")
    if not settings.interleave_s > 0:
        raise ValueError(f"interleave_s: {settings.interleave_s:g} is not allowed; the cap must be > 0 seconds")
    if settings.rounds < 10:
        raise ValueError(f"rounds: {settings.rounds} is not allowed; an interval needs at least 10 rounds")
    if settings.group < 1:
        raise ValueError(f"group: {settings.group} is not allowed; must be >= 1")
    if not grid.name or not all(c.isalnum() or c in "-_." for c in grid.name) or grid.name.startswith("."):
        raise ValueError(f"name: {grid.name!r} is not allowed; a grid name is letters, digits, - and _ only")


def _ratios_setup(grid: Grid, settings: GridSettings) -> dict[str, Any]:
    """What interleaved ratios depend on besides the variants: stored ratios with another setup are stale."""
    threads = settings.threads or (os.cpu_count() or 1)
    return {"protocol": INTERLEAVED_PROTOCOL, "code": code_digest(), "base": grid.base.key,
            "device": settings.device, "threads": threads, "rounds": settings.rounds,
            "interleave_s": settings.interleave_s, "group": settings.group, "runtime": settings.runtime}


def read_ratios(folder: str | Path) -> dict[str, Any]:
    """latency_ratios.json of a grid folder, or an empty record."""
    path = Path(folder) / RATIOS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)  # atomic: an interruption leaves the previous file whole


def _forward(spec: Any, device: str, runtime: str = "eager") -> Callable[[], Any]:
    model = fuse(build(spec), device=device).to(device)
    x = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution, device=device)
    return RUNTIMES[runtime].prepare(model, x)


def time_ratios(grid: Grid, folder: Path, settings: GridSettings, cache: MeasurementCache,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Time every variant against the base, interleaved, in groups of ``settings.group``.

    Variants whose ratio is already in latency_ratios.json under the same setup are skipped, and
    the file is rewritten after each group, so an interrupted run keeps every finished group.
    Returns the file's content.
    """
    setup = _ratios_setup(grid, settings)
    stored = read_ratios(folder)
    data = stored if stored.get("setup") == setup else {"setup": setup, "variants": {}, "groups": []}
    variants = grid_variants(grid)
    todo = [v for v in variants[1:] if v.spec.key not in data["variants"]]
    groups = [todo[i:i + settings.group] for i in range(0, len(todo), settings.group)]
    device = settings.device
    sync = torch.cuda.synchronize if device == "cuda" else None
    for g, group in enumerate(groups):
        if progress is not None:
            progress(g, len(groups), f"latency: interleaved group {g + 1}/{len(groups)} ({len(group)} variants)")
        specs = [variants[0].spec] + [v.spec for v in group]
        with timing_lock(device, cache), cpu_threads(setup["threads"]), torch.inference_mode():
            fns = [_forward(spec, device, settings.runtime) for spec in specs]
            result = time_interleaved(fns, rounds=settings.rounds, max_time_s=settings.interleave_s,
                                      seed=len(data["groups"]), sync=sync)
            del fns
            RUNTIMES[settings.runtime].free()
        keys = [spec.key for spec in specs]
        data["groups"].append({
            "keys": keys, "labels": [variants[0].label] + [v.label for v in group],
            "rounds": result.rounds, "block_runs": list(result.block_runs), "seconds": result.seconds,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "samples_ms": [list(s) for s in result.samples_ms],
        })
        base_median = result.timing(0).median_ms
        for index, (variant, ratio) in enumerate(zip(group, result.ratios), start=1):
            data["variants"][variant.spec.key] = {
                "label": variant.label, "group": len(data["groups"]) - 1, **asdict(ratio),
                "median_ms": result.timing(index).median_ms, "base_median_ms": base_median,
            }
        data["env"] = environment(device, setup["threads"] if device == "cpu" else 0, "float32", 1,
                                  grid.base.resolution, settings.runtime, runtime=settings.runtime)
        _write_json(folder / RATIOS_FILE, data)
    return data


def run_grid(
    path: str | Path,
    *,
    results_dir: str | Path = "results",
    settings: GridSettings = GridSettings(),
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Expand, measure what is missing (one row per variant and seed, appended to rows.jsonl),
    then time the variants against the base interleaved when latency is measured. Returns the
    grid's folder; grid.json records the settings and every run's wall time."""
    started = time.perf_counter()
    grid = load_resolved(path)
    check_grid(grid, settings)
    work = variant_rows(grid)
    folder = Path(results_dir) / grid.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / Path(path).name)  # a copy next to the results, for the record
    previous = read_meta(folder)
    runs = previous.get("runs", []) if previous.get("grid") == str(path) else []
    meta = {"kind": "grid", "grid": str(path), "copy": Path(path).name, "settings": asdict(settings), "runs": runs}
    _write_json(folder / GRID_FILE, meta)
    rows_path = folder / ROWS_FILE
    done = {(r["spec_key"], r["seed"]) for r in read_rows(rows_path)}
    cache = MeasurementCache()
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0, "finished": False}
    runs.append(run)
    try:
        for i, item in enumerate(work):
            variant, seed = item["variant"], item["seed"]
            if progress is not None:
                progress(i, len(work), variant.label)
            if (variant.spec.key, seed) in done:
                continue
            row = _measure_one(grid, variant, seed, settings, cache)
            with rows_path.open("a") as fh:  # one line per finished variant: an interruption loses only the current one
                fh.write(json.dumps(row) + "\n")
        if progress is not None:
            progress(len(work), len(work), "measured")
        if "latency" in grid.measure or "throughput" in grid.measure:
            time_ratios(grid, folder, settings, cache,
                        progress and (lambda g, n, label: progress(len(work), len(work), label)))
        run["finished"] = True
    finally:
        run["seconds"] = time.perf_counter() - started
        _write_json(folder / GRID_FILE, meta)
    if progress is not None:
        progress(len(work), len(work), "done")
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    """grid.json of a grid folder, or an empty record."""
    path = Path(folder) / GRID_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interruption
            continue
    return rows
