"""An ablation grid's report: rows.jsonl + latency_ratios.json → the paper's table, effect charts,
a speed–accuracy scatter, Markdown / HTML. Never measures.

Every metric's effect is its change against the base with an interval where the figure is noisy:

- counts (params, MACs) are exact: the change is the difference, no interval;
- latency: the median ratio variant / base over rounds timed interleaved in one run, with its
  bootstrap 95% interval (:mod:`mmlab.study.grid`); throughput is its inverse (CPU, batch 1);
- the signal: the mean over seeds of the paired difference variant − base (same seed), with a
  95% Student-t interval across seeds (none with one seed); in % of the base, or in percentage
  points for a trained top-1.

An effect whose interval contains 0 is marked ``ns``: no measurable difference.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from mmlab.reports.plots import draw_grid_bars, draw_grid_scatter
from mmlab.reports.tables import markdown_table, write_html
from mmlab.signals.registry import SIGNALS
from mmlab.spec.grid import BASE, Grid, load_grid
from mmlab.study.grid import ROWS_FILE, grid_variants, read_meta, read_ratios, read_rows, resolve_grid

NS = "ns"
"""The marker of an effect whose interval contains 0."""


@dataclass(frozen=True)
class Metric:
    """How one measured quantity is shown.

    Attributes:
        column: its column in rows and table.csv.
        header: the table header, unit included.
        scale: the raw value is multiplied by this for display (params and MACs in millions).
        exact: a count: its change needs no interval.
    """

    column: str
    header: str
    scale: float = 1.0
    exact: bool = False


METRICS: dict[str, Metric] = {  # measure item -> how it is shown
    "params": Metric("params", "params (M)", 1e-6, True),
    "macs": Metric("macs", "MACs (M)", 1e-6, True),
    "macs_paper": Metric("macs_paper", "MACs paper (M)", 1e-6, True),
    "latency": Metric("latency_ms", "latency (ms)"),
    "throughput": Metric("throughput_ips", "throughput (img/s)"),
    "signal": Metric("signal", "signal"),
}
COMPACT = ("params", "macs", "latency", "throughput", "signal")
"""The metrics of the compact view (report.md / report.html): MACs in the complete count only."""


def signal_metric(grid: Grid) -> Metric:
    """The signal's column as shown: a trained top-1 in %, a proxy under its own name."""
    info = SIGNALS.get(grid.signal or "")
    if info is not None and info.kind == "training":
        return Metric("signal", f"{grid.signal} top-1 (%)")
    if info is not None and info.kind == "baseline":  # "params" / "macs" as a signal: say so
        return Metric("signal", f"{grid.signal} (signal)")
    return Metric("signal", grid.signal or "signal")


def effect_unit(grid: Grid, column: str) -> str:
    """``"pt"`` (percentage points) for a trained top-1, ``"%"`` of the base otherwise."""
    info = SIGNALS.get(grid.signal or "")
    return "pt" if column == "signal" and info is not None and info.kind == "training" else "%"


def _level(level: Any) -> str:
    return ",".join(map(str, level)) if isinstance(level, (tuple, list)) else str(level)


# ---- effects -------------------------------------------------------------------------------------
def seed_effect(base: dict[int, float], variant: dict[int, float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean difference ``variant − base`` over seeds and its Student-t interval.

    Seeds both were run with are paired (a seed fixes the data split, initialisation and batch
    order, so pairing removes what the two runs share); without common seeds the two means are
    compared (Welch). Returns ``(difference, low, high, n)``; the interval is NaN with fewer than
    two values on a side.
    """
    common = sorted(set(base) & set(variant))
    if common:
        diffs = [variant[s] - base[s] for s in common]
        n = len(diffs)
        mean = sum(diffs) / n
        if n < 2:
            return mean, math.nan, math.nan, n
        sd = statistics.stdev(diffs)
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
        return mean, mean - half, mean + half, n
    b, v = list(base.values()), list(variant.values())
    if not b or not v:
        return math.nan, math.nan, math.nan, 0
    mean = sum(v) / len(v) - sum(b) / len(b)
    if len(b) < 2 or len(v) < 2:
        return mean, math.nan, math.nan, min(len(b), len(v))
    vb, vv = statistics.variance(b) / len(b), statistics.variance(v) / len(v)
    se = math.sqrt(vb + vv)
    dof = (vb + vv) ** 2 / ((vb ** 2 / (len(b) - 1)) + (vv ** 2 / (len(v) - 1))) if se > 0 else 1.0
    half = float(stats.t.ppf((1 + level) / 2, dof)) * se
    return mean, mean - half, mean + half, min(len(b), len(v))


def measurable(low: float, high: float) -> float:
    """1.0 when the interval excludes 0, 0.0 when it contains it (no measurable difference), NaN
    when there is no interval."""
    if math.isnan(low) or math.isnan(high):
        return math.nan
    return 0.0 if low <= 0.0 <= high else 1.0


def _effects(grid: Grid, metric: str, column: str, values: dict[str, Any], base_key: str,
             per_seed: dict[str, dict[int, float]], ratios: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """spec key → effect columns of one metric (``<col>_effect``, ``_effect_low``, ``_effect_high``,
    ``_measurable``, ``_effect_unit``, ``_effect_source``)."""
    out: dict[str, dict[str, Any]] = {}
    base = values.get(base_key, math.nan)
    unit = effect_unit(grid, column)
    for key, value in values.items():
        effect = low = high = math.nan
        source = ""
        if key == base_key:
            effect, source = 0.0, "base"
        elif metric in ("latency", "throughput") and key in ratios:
            r = ratios[key]
            ratio, r_low, r_high = r["ratio"], r["low"], r["high"]
            if metric == "throughput":  # throughput = batch / time: the inverse ratio
                ratio, r_low, r_high = 1 / ratio, 1 / r_high, 1 / r_low
            effect, low, high = 100 * (ratio - 1), 100 * (r_low - 1), 100 * (r_high - 1)
            source = f"interleaved, {r['rounds']} rounds"
        elif metric == "signal" and key in per_seed and base_key in per_seed:
            diff, d_low, d_high, n = seed_effect(per_seed[base_key], per_seed[key])
            scale = 1.0 if unit == "pt" else (100 / abs(base) if base else math.nan)
            effect, low, high = diff * scale, d_low * scale, d_high * scale
            source = f"{n} seed{'s' if n != 1 else ''}"
        elif not math.isnan(base) and base:
            effect = value - base if unit == "pt" else 100 * (value - base) / base
            if METRICS[metric].exact:
                low = high = effect
                source = "exact"
            else:
                source = "separate timings" if metric in ("latency", "throughput") else ""
        out[key] = {
            f"{column}_effect": effect, f"{column}_effect_low": low, f"{column}_effect_high": high,
            f"{column}_measurable": (float(value != base) if source == "exact" else measurable(low, high))
            if key != base_key else math.nan,
            f"{column}_effect_unit": unit, f"{column}_effect_source": source,
        }
    return out


# ---- the table -----------------------------------------------------------------------------------
def grid_table(grid: Grid, rows: list[dict[str, Any]], ratios: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every factor level as a row (table.csv): the base first, levels equal to another variant
    marked ``same_as`` and given its numbers; seeds averaged; each metric's change against the
    base as ``<col>_delta`` / ``<col>_delta_pct`` (plain differences of the columns) and as an
    effect with its interval (``<col>_effect``, ``_effect_low``, ``_effect_high``,
    ``_measurable``: 0 for no measurable difference; see the module's docstring).

    Args:
        grid: the grid (its defaults are resolved here).
        rows: rows.jsonl.
        ratios: latency_ratios.json (:func:`mmlab.study.grid.read_ratios`); its ratios are used
            only when they are against this grid's base.
    """
    grid = resolve_grid(grid)
    variants = grid_variants(grid)
    base_key = grid.base.key
    ratios = ratios or {}
    by_ratio = ratios.get("variants", {}) if ratios.get("setup", {}).get("base") == base_key else {}
    measured = pd.DataFrame(rows)
    metric_cols = [METRICS[m].column for m in grid.measure if METRICS[m].column in measured]
    extra = [c for c in ("latency_p10_ms", "latency_p90_ms", "latency_runs") if c in measured]
    by_key = measured.groupby("spec_key")[metric_cols + extra].mean() if not measured.empty else pd.DataFrame()
    per_seed: dict[str, dict[int, float]] = {}
    if "signal" in metric_cols:
        for _, r in measured.dropna(subset=["signal"]).iterrows():
            per_seed.setdefault(r["spec_key"], {})[int(r.get("seed", 0))] = float(r["signal"])
    effects: dict[str, dict[str, Any]] = {}
    for m in grid.measure:
        col = METRICS[m].column
        if col in metric_cols and base_key in by_key.index:
            for key, cols in _effects(grid, m, col, by_key[col].to_dict(), base_key, per_seed, by_ratio).items():
                effects.setdefault(key, {}).update(cols)
    table_rows = []
    for variant in variants:
        entries = [(variant.label, variant.factors, "")] + [
            (label, factors, variant.label) for label, factors in zip(variant.aliases, variant.alias_factors)
        ]
        key = variant.spec.key
        for label, factors, same_as in entries:
            row: dict[str, Any] = {"label": label}
            row.update({f"factor.{name}": _level(level) for name, level in factors.items()})
            row["same_as"] = same_as
            row["spec_key"] = key
            if key in by_key.index:
                row.update(by_key.loc[key].to_dict())
                if "signal" in metric_cols:
                    seeds = per_seed.get(key, {})
                    row["signal_seeds"] = len(seeds)
                    row["signal_std"] = statistics.stdev(seeds.values()) if len(seeds) > 1 else math.nan
            if key in by_ratio:
                r = by_ratio[key]
                row.update({"latency_ratio": r["ratio"], "latency_ratio_low": r["low"],
                            "latency_ratio_high": r["high"], "latency_ratio_rounds": r["rounds"],
                            "latency_interleaved_ms": r["median_ms"]})
            row.update(effects.get(key, {}))
            table_rows.append(row)
    table = pd.DataFrame(table_rows)
    if base_key in by_key.index:
        base = by_key.loc[base_key]
        for col in metric_cols:
            table[f"{col}_delta"] = table[col] - base[col]
            table[f"{col}_delta_pct"] = 100.0 * (table[col] - base[col]) / base[col] if base[col] else math.nan
    return table


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:#.4g}".rstrip(".")  # four significant digits, trailing zeros kept: 15.00, 654.8, 0.1960


def _decimals(*values: float) -> int:
    """Decimals for a change and its interval, from the largest of them: 2 under 1, 1 under 100, else 0."""
    size = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    return 2 if size < 1 else 1 if size < 100 else 0


def _signed(value: float, decimals: int) -> str:
    if value == 0:
        return "0"
    text = f"{abs(value):.{decimals}f}"
    if float(text) == 0:
        text = "<" + f"{10.0 ** -decimals:.{decimals}f}"
    return ("+" if value > 0 else "−") + text


def effect_cell(value: float, effect: float, low: float, high: float, unit: str, base: bool = False,
                exact: bool = False, scale: float = 1.0) -> str:
    """``value (Δ [low, high])``, with ``ns`` when the interval contains 0; the base: its value alone.

    >>> effect_cell(46.2, 2.6, 0.9, 4.1, "%")
    '46.20 (+2.6% [+0.9, +4.1])'
    >>> effect_cell(45.2, 0.4, -1.2, 2.0, "%")
    '45.20 (+0.4% [−1.2, +2.0] ns)'
    >>> effect_cell(71.3, -0.8, -1.9, 0.3, "pt")
    '71.30 (−0.8 pt [−1.9, +0.3] ns)'
    >>> effect_cell(15036632, 0.0222, 0.0222, 0.0222, "%", exact=True, scale=1e-6)
    '15.04 (+0.02%)'
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = _number(value * scale)
    if base or effect is None or math.isnan(effect):
        return text
    suffix = "%" if unit == "%" else " pt"
    interval = not exact and not (math.isnan(low) or math.isnan(high)) and low != high  # equal: no noise to show
    decimals = _decimals(effect, low, high) if interval else _decimals(effect)
    inner = _signed(effect, decimals) + suffix
    if interval:
        inner += f" [{_signed(low, decimals)}, {_signed(high, decimals)}]"
        if low <= 0 <= high:
            inner += f" {NS}"
    return f"{text} ({inner})"


def display_rows(grid: Grid, table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as a paper prints it: the base first, then one row per factor level grouped by
    factor (one-at-a-time), or one row per combination (factorial). A level that gives the base's
    spec has no row: its factor's cell names it, ``kernels (base: 7,5,3)``. A level that gives
    another variant's spec keeps its row, marked ``= <that variant>``.

    Returns dicts with ``factor``, ``level`` (one-at-a-time) or ``variant`` (factorial), ``row``
    (the table.csv row) and ``base`` (True for the base row).
    """
    grid = resolve_grid(grid)
    base_key = grid.base.key
    base_rows = table[(table["spec_key"] == base_key) & (table["same_as"].fillna("") == "")]
    out: list[dict[str, Any]] = []
    if not base_rows.empty:
        out.append({"factor": BASE, "level": grid.base_source, "variant": BASE, "row": base_rows.iloc[0], "base": True})
    others = table[table["spec_key"] != base_key]
    if grid.mode == "factorial":
        for _, row in others.iterrows():
            label = row["label"] + (f" (= {row['same_as']})" if row["same_as"] else "")
            out.append({"factor": "", "level": "", "variant": label, "row": row, "base": False})
        return out
    base_levels = {}
    for _, row in table[table["spec_key"] == base_key].iterrows():
        for f in grid.factors:
            if row[f"factor.{f.name}"] != BASE:
                base_levels.setdefault(f.name, []).append(row[f"factor.{f.name}"])
    for f in grid.factors:
        first = True
        for level in f.levels:
            if level == BASE:
                continue
            text = _level(level)
            match = others[others[f"factor.{f.name}"] == text]
            match = match[[all(r[f"factor.{g.name}"] == BASE for g in grid.factors if g.name != f.name)
                           for _, r in match.iterrows()]]
            if match.empty:
                continue
            row = match.iloc[0]
            name = f.name
            if first and f.name in base_levels:
                name += f" (base: {', '.join(base_levels[f.name])})"
            level_text = text + (f" (= {row['same_as']})" if row["same_as"] else "")
            out.append({"factor": name if first else "", "level": level_text, "variant": row["label"], "row": row,
                        "base": False})
            first = False
    return out


def base_only_factors(grid: Grid, table: pd.DataFrame) -> list[str]:
    """Factors every listed level of which gives the base's spec (they have no row)."""
    shown = {e["factor"].split(" (base:")[0] for e in display_rows(grid, table) if not e["base"]}
    return [f.name for f in grid.factors if f.name not in shown] if grid.mode != "factorial" else []


def display_table(grid: Grid, table: pd.DataFrame, measures: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """The human table: label columns then one "value (Δ)" cell per metric in ``measures``."""
    grid = resolve_grid(grid)
    labels = ["variant"] if grid.mode == "factorial" else ["factor", "level"]
    columns = list(labels)
    metrics = []
    for m in grid.measure:
        metric = signal_metric(grid) if m == "signal" else METRICS[m]
        if m in measures and metric.column in table:
            metrics.append(metric)
            columns.append(metric.header)
    cells = []
    for entry in display_rows(grid, table):
        cell = {c: entry[c] for c in labels}
        row = entry["row"]
        for metric in metrics:
            col = metric.column
            if row is None:
                cell[metric.header] = ""
                continue
            cell[metric.header] = effect_cell(
                row.get(col, math.nan), row.get(f"{col}_effect", math.nan), row.get(f"{col}_effect_low", math.nan),
                row.get(f"{col}_effect_high", math.nan), row.get(f"{col}_effect_unit", "%"), base=entry["base"],
                exact=metric.exact, scale=metric.scale)
        cells.append(cell)
    return pd.DataFrame(cells, columns=columns), columns


def legend(grid: Grid, table: pd.DataFrame, ratios: dict[str, Any]) -> list[str]:
    """What the cells mean, in sentences under the table."""
    grid = resolve_grid(grid)
    lines = ["Each cell: value (change against the base). Counts are exact: one multiply-add = 1 MAC; "
             "`MACs` is the complete count, `MACs paper` leaves out the wavelet sub-band convs, as the authors count."]
    if "latency_ms" in table or "throughput_ips" in table:
        source = table.get("latency_ms_effect_source", pd.Series(dtype=str)).fillna("")
        if source.str.startswith("interleaved").any():
            rounds = sorted({int(r["rounds"]) for r in ratios.get("variants", {}).values()})
            span = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}–{rounds[-1]}" if rounds else "?"
            lines.append(f"Latency: the variant's own batch-1 median (ms); its change is the median ratio to the base "
                         f"over {span} rounds timed interleaved in one run (each round runs the base and a few variants "
                         "once each, in random order), [95% bootstrap interval].")
        else:
            lines.append("Latency: the variant's own batch-1 median (ms); its change compares separate timings "
                         "(no interleaved run is stored): no interval, read small differences as noise.")
    if "signal" in table:
        n = len(grid.seeds or ())
        unit = "percentage points" if effect_unit(grid, "signal") == "pt" else "% of the base"
        if n > 1:
            lines.append(f"`{grid.signal}` on `{grid.data}`: mean over seeds {list(grid.seeds or ())}; its change is the "
                         f"mean paired difference (same seed), in {unit}, [95% t interval across seeds].")
        else:
            lines.append(f"`{grid.signal}` on `{grid.data}`: one seed, so no interval: read small differences as noise "
                         "(list two or more `seeds` in the grid file).")
    lines.append(f"{NS}: no measurable difference (the interval contains 0). A factor's \"(base: x)\" is the level the "
                 "base uses; it has no row of its own.")
    hidden = base_only_factors(grid, table)
    if hidden:
        lines.append(f"Every listed level of {', '.join(hidden)} gives the base's network: no row.")
    return lines


def effects_frame(grid: Grid, table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Chart data of one metric: one row per displayed level, the base left out (factor, level,
    effect, low, high, measurable)."""
    rows = []
    for entry in display_rows(grid, table):
        row = entry["row"]
        if entry["base"] or row is None or f"{column}_effect" not in row or pd.isna(row[f"{column}_effect"]):
            continue
        factor = entry["factor"].split(" (base:")[0] if grid.mode != "factorial" else ""
        rows.append({"factor": factor, "level": entry["level"] if grid.mode != "factorial" else entry["variant"],
                     "effect": row[f"{column}_effect"], "low": row[f"{column}_effect_low"],
                     "high": row[f"{column}_effect_high"], "measurable": row[f"{column}_measurable"]})
    frame = pd.DataFrame(rows, columns=["factor", "level", "effect", "low", "high", "measurable"])
    # one-at-a-time: a factor's later levels have "" as factor; carry the name down
    frame["factor"] = frame["factor"].replace("", pd.NA).ffill().fillna("")
    return frame


def scatter_frame(grid: Grid, table: pd.DataFrame, speed: str) -> tuple[pd.DataFrame, str]:
    """Scatter data: one point per distinct network (label, x, x_low, x_high, y, y_low, y_high,
    base) and the x axis label.

    With interleaved ratios, a variant's speed is the base's own figure times its ratio to the
    base, bars its 95% interval: the effect the table reports, placed on the base's scale. Without
    them, each network's own timing, bars p10–p90. The signal: mean over seeds, bars its 95% t interval.
    """
    grid = resolve_grid(grid)
    distinct = table[table["same_as"].fillna("") == ""].dropna(subset=[speed, "signal"])
    base_rows = distinct[distinct["spec_key"] == grid.base.key]
    base_speed = base_rows[speed].iloc[0] if not base_rows.empty else math.nan
    interleaved = "latency_ratio" in distinct and distinct["latency_ratio"].notna().any()
    points = []
    for _, row in distinct.iterrows():
        is_base = row["spec_key"] == grid.base.key
        x = row[speed]
        x_low, x_high = (row.get("latency_p10_ms", x), row.get("latency_p90_ms", x)) if speed == "latency_ms" else (x, x)
        if interleaved:
            x_low = x_high = x = base_speed
            if not is_base and pd.notna(row.get("latency_ratio")):
                ratios = (row["latency_ratio"], row["latency_ratio_low"], row["latency_ratio_high"])
                x, x_low, x_high = (base_speed * r for r in ratios) if speed == "latency_ms" else \
                    (base_speed / r for r in (ratios[0], ratios[2], ratios[1]))
        n = row.get("signal_seeds", 1)
        n = 1 if pd.isna(n) else int(n)
        sd = row.get("signal_std", math.nan)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 and not pd.isna(sd) else 0.0
        points.append({"label": row["label"], "x": x, "x_low": x_low, "x_high": x_high, "y": row["signal"],
                       "y_low": row["signal"] - half, "y_high": row["signal"] + half, "base": is_base})
    header = METRICS["latency" if speed == "latency_ms" else "throughput"].header
    if interleaved:
        label = f"{header}: the base's own, times the ratio timed interleaved (bars 95% interval)"
    else:
        label = f"{header}, each network's own timing" + (" (bars p10–p90)" if speed == "latency_ms" else "")
    frame = pd.DataFrame(points, columns=["label", "x", "x_low", "x_high", "y", "y_low", "y_high", "base"])
    return frame, label


def surviving(grid: Grid, table: pd.DataFrame) -> list[str]:
    """One line per noisy metric: which effects survive their intervals and which do not."""
    lines = []
    for m in grid.measure:
        metric = signal_metric(grid) if m == "signal" else METRICS[m]
        col = metric.column
        if metric.exact or f"{col}_measurable" not in table:
            continue
        shown = [e for e in display_rows(grid, table) if not e["base"] and e["row"] is not None]
        real = [e["variant"] for e in shown if e["row"].get(f"{col}_measurable") == 1.0]
        noise = [e["variant"] for e in shown if e["row"].get(f"{col}_measurable") == 0.0]
        if not real and not noise:
            continue
        lines.append(f"- {metric.header}: {len(real)} of {len(real) + len(noise)} effects survive their interval"
                     + (f" ({', '.join(real)})" if real else "")
                     + (f"; no measurable difference: {', '.join(noise)}" if noise else ""))
    return lines


def _wall_time(meta: dict[str, Any], rows: list[dict[str, Any]], ratios: dict[str, Any]) -> str:
    runs = meta.get("runs") or []
    interleaved = sum(g.get("seconds", 0.0) for g in ratios.get("groups", []))
    measured = sum(r.get("measure_s", 0.0) or 0.0 for r in rows)
    scored = sum(r.get("score_s", 0.0) or 0.0 for r in rows)
    parts = f"measuring {measured:.0f} s, scoring {scored:.0f} s, interleaved timing {interleaved:.0f} s"
    if runs:
        total = sum(r.get("seconds", 0.0) for r in runs)
        return f"{total:.0f} s in {len(runs)} run{'s' if len(runs) != 1 else ''} ({parts}; cached figures cost nothing)"
    if any("measure_s" in r for r in rows):
        return f"not recorded (this folder predates it); {parts}"
    return "not recorded (this folder predates it)"


def write_grid_report(folder: str | Path) -> dict[str, Path]:
    """(Re)write table.csv, table.md, one effect chart per metric, the speed–signal scatter and the reports."""
    folder = Path(folder)
    meta = read_meta(folder)
    if not meta:
        raise ValueError(f"{folder}: no readable grid.json; give a folder written by `mmlab ablate`")
    # The original file when it is still there (a relative spec-file base resolves against it), else the copy.
    grid = resolve_grid(load_grid(meta["grid"] if Path(meta["grid"]).is_file() else folder / meta["copy"]))
    rows = read_rows(folder / ROWS_FILE)
    ratios = read_ratios(folder)
    table = grid_table(grid, rows, ratios)
    paths: dict[str, Path] = {"table.csv": folder / "table.csv", "table.md": folder / "table.md"}
    table.to_csv(paths["table.csv"], index=False)

    notes = legend(grid, table, ratios)
    full, full_columns = display_table(grid, table, tuple(METRICS))
    paths["table.md"].write_text(f"# {grid.name}: ablation table\n\n" + markdown_table(full, full_columns) + "\n\n"
                                 + "\n\n".join(notes) + "\n")

    for m in grid.measure:
        metric = signal_metric(grid) if m == "signal" else METRICS[m]
        col = metric.column
        if f"{col}_effect" not in table:
            continue
        frame = effects_frame(grid, table, col)
        if frame.empty:
            continue
        unit = "percentage points" if effect_unit(grid, col) == "pt" else "% of the base"
        paths[f"bar_{col}.png"] = folder / f"bar_{col}.png"
        name = metric.header.split(" (")[0] if metric.header.endswith(")") and m != "signal" else metric.header
        draw_grid_bars(frame, f"{name}: change against the base ({unit})", paths[f"bar_{col}.png"])
    speed = next((METRICS[m].column for m in ("latency", "throughput") if m in grid.measure), None)
    if speed and speed in table and "signal" in table:
        points, x_label = scatter_frame(grid, table, speed)
        if not points.empty:
            paths["scatter.png"] = folder / "scatter.png"
            seeds = len(grid.seeds or ())
            y_label = signal_metric(grid).header + (f" (mean of {seeds} seeds; bars 95% interval)" if seeds > 1 else "")
            draw_grid_scatter(points, x_label, y_label, paths["scatter.png"])

    env = next((r for r in rows if "env_hardware" in r), {})
    compact, compact_columns = display_table(grid, table, COMPACT)
    factors = "; ".join(f"{f.name} ({f.ablation or f.field or 'one ablation per level'}): "
                        f"{', '.join(_level(v) for v in f.levels)}" for f in grid.factors)
    lines = [
        f"# Ablation grid `{grid.name}`",
        "",
        f"- base: `{grid.base_source}` (spec {grid.base.key}); mode: {grid.mode}",
        f"- measured: {', '.join(grid.measure)}"
        + (f"; signal `{grid.signal}` on `{grid.data}`, seeds {list(grid.seeds or ())}" if grid.signal else ""),
        f"- factors: {factors}",
        f"- {len(compact)} rows: the base and every level that is not the base's; "
        f"{table['spec_key'].nunique()} distinct networks, {len({r['spec_key'] for r in rows})} measured",
        f"- machine: {env.get('env_hardware', '-')}, {env.get('env_threads', '-')} threads, torch {env.get('env_torch', '-')}",
        f"- settings: {meta.get('settings')}",
        f"- wall time: {_wall_time(meta, rows, ratios)}",
        "",
        "## Table",
        "",
        markdown_table(compact, compact_columns),
        "",
        *[line for note in notes for line in (note, "")],
        "Every column (MACs in the paper's convention, raw deltas, intervals, ratios): `table.md`, `table.csv`.",
        "",
    ]
    survivors = surviving(grid, table)
    if survivors:
        lines += ["## Effects against their intervals", "", *survivors, ""]
    charts = [name for name in paths if name.endswith(".png")]
    if charts:
        lines += ["## Charts", ""]
        for name in charts:
            lines += [f"![{name}]({name})", ""]
    paths["report.md"] = folder / "report.md"
    paths["report.md"].write_text("\n".join(lines))
    paths["report.html"] = folder / "report.html"
    write_html(paths["report.md"], paths["report.html"])
    return paths
