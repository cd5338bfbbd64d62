"""An ablation grid's report: rows.jsonl → paper-style table, bar charts, scatter, Markdown / HTML."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mmlab.reports.plots import draw_grid_bars, draw_grid_scatter
from mmlab.reports.tables import markdown_table, write_html
from mmlab.spec.grid import BASE, Grid, expand, load_grid
from mmlab.study.grid import GRID_FILE, ROWS_FILE, read_rows

METRICS = {  # measure item -> (column, unit label, higher is better)
    "params": ("params", "parameters", False),
    "macs": ("macs", "MACs (complete)", False),
    "macs_paper": ("macs_paper", "MACs (paper convention)", False),
    "latency": ("latency_ms", "CPU latency (ms)", False),
    "throughput": ("throughput_ips", "throughput (img/s)", True),
    "signal": ("signal", "signal", True),
}


def grid_table(grid: Grid, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per factor level (levels equal to another variant repeat its numbers, marked
    ``same_as``), seeds averaged, with each metric's change against the base (absolute and %)."""
    measured = pd.DataFrame(rows)
    metric_cols = [METRICS[m][0] for m in grid.measure if METRICS[m][0] in measured]
    by_key = measured.groupby("spec_key")[metric_cols].mean() if not measured.empty else pd.DataFrame()
    base_key = grid.base.key
    table_rows = []
    for variant in expand(grid).variants:
        entries = [(variant.label, variant.factors, "")] + [
            (label, factors, variant.label) for label, factors in zip(variant.aliases, variant.alias_factors)
        ]
        for label, factors, same_as in entries:
            row: dict[str, Any] = {"label": label}
            row.update({f"factor.{name}": _level(level) for name, level in factors.items()})
            row["same_as"] = same_as
            row["spec_key"] = variant.spec.key
            if variant.spec.key in by_key.index:
                row.update(by_key.loc[variant.spec.key].to_dict())
            table_rows.append(row)
    table = pd.DataFrame(table_rows)
    if base_key in by_key.index:
        base = by_key.loc[base_key]
        for col in metric_cols:
            table[f"{col}_delta"] = table[col] - base[col]
            table[f"{col}_delta_pct"] = 100.0 * (table[col] - base[col]) / base[col] if base[col] else math.nan
    return table


def _level(level: Any) -> str:
    return ",".join(map(str, level)) if isinstance(level, (tuple, list)) else str(level)


def _display(grid: Grid, table: pd.DataFrame, metric_cols: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The table as a paper shows it: one-at-a-time grids as (factor, level) rows, factorial
    grids with one column per factor; each metric followed by its change against the base."""
    shown = table.copy()
    if grid.mode == "one-at-a-time":
        def factor_level(row: pd.Series) -> tuple[str, str]:
            changed = [(f.name, row[f"factor.{f.name}"]) for f in grid.factors if row[f"factor.{f.name}"] != BASE]
            return changed[0] if changed else (BASE, "")

        pairs = shown.apply(factor_level, axis=1, result_type="expand")
        shown["factor"], shown["level"] = pairs[0], pairs[1]
        # Rows in file order: the base, then each factor's levels as listed.
        order = {(BASE, ""): -1}
        for f in grid.factors:
            for level in f.levels:
                order.setdefault((f.name, _level(level)), len(order))
        shown = shown.iloc[sorted(range(len(shown)), key=lambda i: order.get((shown["factor"].iloc[i], shown["level"].iloc[i]), 1e9))]
        columns = ["factor", "level", "same_as"]
    else:
        shown = shown.rename(columns={f"factor.{f.name}": f.name for f in grid.factors})
        columns = ["label"] + [f.name for f in grid.factors] + ["same_as"]
    for col in metric_cols:
        columns += [col, f"{col}_delta", f"{col}_delta_pct"] if f"{col}_delta" in shown else [col]
    return shown, columns


def write_grid_report(folder: str | Path) -> dict[str, Path]:
    """(Re)write table.csv, table.md, per-metric bar charts, the speed–signal scatter and the reports."""
    folder = Path(folder)
    meta = json.loads((folder / GRID_FILE).read_text())
    # The original file when it is still there (a relative spec-file base resolves against it), else the copy.
    grid = load_grid(meta["grid"] if Path(meta["grid"]).is_file() else folder / meta["copy"])
    rows = read_rows(folder / ROWS_FILE)
    table = grid_table(grid, rows)
    paths: dict[str, Path] = {"table.csv": folder / "table.csv", "table.md": folder / "table.md"}
    table.to_csv(paths["table.csv"], index=False)

    metric_cols = [METRICS[m][0] for m in grid.measure if METRICS[m][0] in table]
    shown, columns = _display(grid, table, metric_cols)
    paths["table.md"].write_text(f"# {grid.name}: ablation table\n\n" + markdown_table(shown, columns) + "\n")

    for m in grid.measure:
        col, unit, _ = METRICS[m]
        if col in table:
            paths[f"bar_{col}.png"] = folder / f"bar_{col}.png"
            draw_grid_bars(table, col, unit, paths[f"bar_{col}.png"])
    speed = next((METRICS[m][0] for m in ("latency", "throughput") if m in grid.measure), None)
    if speed and "signal" in table:
        paths["scatter.png"] = folder / "scatter.png"
        draw_grid_scatter(table, speed, METRICS["latency" if speed == "latency_ms" else "throughput"][1],
                          f"signal ({grid.signal})", paths["scatter.png"])

    env = next((r for r in rows if "env_hardware" in r), {})
    lines = [
        f"# Ablation grid `{grid.name}`",
        "",
        f"- base: `{grid.base_source}` (spec {grid.base.key}); mode: {grid.mode}; seeds: {list(grid.seeds)}",
        f"- measured: {', '.join(grid.measure)}" + (f"; signal `{grid.signal}` on `{grid.data}`" if grid.signal else ""),
        "- factors: " + "; ".join(f"{f.name} ({f.ablation or f.field or 'one ablation per level'}): {', '.join(_level(v) for v in f.levels)}"
                                  for f in grid.factors),
        f"- variants: {len(table)} factor levels, {table['spec_key'].nunique()} distinct networks, "
        f"{len({r['spec_key'] for r in rows})} measured",
        f"- machine: {env.get('env_hardware', '-')}, {env.get('env_threads', '-')} threads, torch {env.get('env_torch', '-')}"
        f" (settings {meta.get('settings')})",
        "- MACs: one multiply-add = 1; `macs` is complete, `macs_paper` leaves out the wavelet sub-band convs; "
        "latency is the fused model's batch-1 median; `_delta` columns are against the base.",
        "",
        "## Table",
        "",
        markdown_table(shown, columns),
        "",
    ]
    for name in paths:
        if name.endswith(".png"):
            lines += [f"![{name}]({name})", ""]
    paths["report.md"] = folder / "report.md"
    paths["report.md"].write_text("\n".join(lines))
    paths["report.html"] = folder / "report.html"
    write_html(paths["report.md"], paths["report.html"])
    return paths
