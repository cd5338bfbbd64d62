"""Run an ablation grid: measure every distinct variant once and keep its row.

Every distinct variant is measured once (the measurement cache makes a repeat free), each result
is appended to ``results/<grid>/rows.jsonl`` as soon as it exists, and a re-run skips what is
there, so an interrupted run resumes where it stopped. ``mmlab report results/<grid>`` rebuilds
every table and figure from rows.jsonl alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmlab.meter.cache import MeasurementCache
from mmlab.meter.devices import check_device
from mmlab.signals.data import check_source
from mmlab.signals.registry import check_signal
from mmlab.signals.score import ScoreSettings
from mmlab.spec.grid import Grid, Variant, expand, load_grid
from mmlab.study.candidate import EvalPlan, evaluate

GRID_FILE = "grid.json"
ROWS_FILE = "rows.jsonl"


@dataclass(frozen=True)
class GridSettings:
    """How a grid is measured on this machine (stored in grid.json)."""

    device: str = "cpu"
    threads: int | None = None
    timing_s: float = 3.0


def variant_rows(grid: Grid) -> list[dict[str, Any]]:
    """The work list: one entry per (distinct variant, seed), in expansion order."""
    expansion = expand(grid)  # raises on impossible combinations, before anything runs
    return [{"variant": v, "seed": seed} for v in expansion.variants for seed in grid.seeds]


def _measure_one(grid: Grid, variant: Variant, seed: int, settings: GridSettings, cache: MeasurementCache) -> dict[str, Any]:
    plan = EvalPlan(
        timing="latency" in grid.measure or "throughput" in grid.measure,
        device=settings.device, threads=settings.threads, timing_s=settings.timing_s,
        signals=(grid.signal,) if "signal" in grid.measure and grid.signal else (),
        score=ScoreSettings(data=grid.data, seed=seed),
    )
    return {"label": variant.label, "seed": seed, **evaluate(variant.spec, plan, cache).to_row()}


def check_grid(grid: Grid, settings: GridSettings) -> None:
    """Everything a grid run needs, checked before any work (``ValueError`` naming the field)."""
    check_device(settings.device)
    if grid.signal:
        check_signal(grid.signal)
        check_source(grid.data)
    if settings.threads is not None and settings.threads < 1:
        raise ValueError(f"threads: {settings.threads} is not allowed; must be >= 1")
    if not settings.timing_s > 0:
        raise ValueError(f"timing_s: {settings.timing_s:g} is not allowed; the timing cap must be > 0 seconds")
    if not grid.name or not all(c.isalnum() or c in "-_." for c in grid.name) or grid.name.startswith("."):
        raise ValueError(f"name: {grid.name!r} is not allowed; a grid name is letters, digits, - and _ only")


def run_grid(
    path: str | Path,
    *,
    results_dir: str | Path = "results",
    settings: GridSettings = GridSettings(),
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Expand, measure what is missing, append each row to rows.jsonl. Returns the grid's folder."""
    grid = load_grid(path)
    check_grid(grid, settings)
    work = variant_rows(grid)
    folder = Path(results_dir) / grid.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / Path(path).name)  # a copy next to the results, for the record
    meta = {"kind": "grid", "grid": str(path), "copy": Path(path).name, "settings": settings.__dict__}
    (folder / GRID_FILE).write_text(json.dumps(meta, indent=2))
    rows_path = folder / ROWS_FILE
    done = {(r["spec_key"], r["seed"]) for r in read_rows(rows_path)}
    cache = MeasurementCache()
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
        progress(len(work), len(work), "done")
    return folder


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
