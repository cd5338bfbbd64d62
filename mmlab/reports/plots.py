"""Figures, drawn with matplotlib from data computed elsewhere (mmlab.report)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import pandas as pd  # noqa: E402


def draw_pareto(
    frame: pd.DataFrame, front: pd.DataFrame, presets: pd.DataFrame, path: Path | str, signal: str = "signal",
    objectives: tuple[str, ...] = ("signal", "latency"), budgets: dict[str, float] | None = None,
) -> None:
    """Two panels: signal vs latency and signal vs MACs.

    Feasible trials in colour, infeasible ones as grey ticks under the data (they were never
    scored), the Pareto front in red (joined by a line in the panel of the objectives it is a
    front of), budgets as dashed lines, the paper presets as labelled black stars; presets far
    outside the trials' range are named in the corner instead of stretching the axes.
    """
    budgets = budgets or {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    done = frame[frame["state"] == "COMPLETE"] if not frame.empty else frame
    good = done[done["feasible"]] if not done.empty else done
    levels = good["signal"].dropna() if "signal" in good else pd.Series(dtype=float)
    low = levels.min() - 0.05 * (levels.max() - levels.min() or 1.0) if not levels.empty else 0.0
    panels = (("latency_ms", "latency (ms)", "latency", 1.0), ("macs", "MACs (M, complete count)", "macs", 1e-6))
    for ax, (x, label, objective, scale) in zip(axes, panels):
        if not done.empty and x in done:
            bad = done[~done["feasible"]].dropna(subset=[x])
            ax.plot(bad[x] * scale, [low] * len(bad), "|", c="grey", ms=12, label="infeasible (not scored)")
            if "signal" in good:
                pts = good.dropna(subset=[x, "signal"])
                ax.scatter(pts[x] * scale, pts["signal"], c="tab:blue", s=18, label="feasible")
        if not front.empty and x in front and "signal" in front:
            line = front.dropna(subset=[x, "signal"]).sort_values(x)
            style = "-o" if {objective, "signal"} <= set(objectives) else "o"
            ax.plot(line[x] * scale, line["signal"], style, c="tab:red", ms=5, label="Pareto front")
        budget = budgets.get(objective)
        if budget is not None:
            ax.axvline(budget, ls="--", c="grey", lw=1, label="budget")
        if not presets.empty and x in presets:
            pts = presets.dropna(subset=[x, "signal"])
            span = (done[x] * scale).max() if not done.empty and x in done else None
            inside = pts[pts[x] * scale <= 1.5 * span] if span == span and span else pts
            ax.scatter(inside[x] * scale, inside["signal"], marker="*", c="black", s=90, label="paper presets")
            for _, row in inside.iterrows():
                ax.annotate(row["preset"], (row[x] * scale, row["signal"]), textcoords="offset points", xytext=(5, 4))
            outside = sorted(set(pts["preset"]) - set(inside["preset"]))
            if outside:
                ax.text(0.99, 0.01, "off the axis: " + ", ".join(outside), transform=ax.transAxes, ha="right",
                        va="bottom", fontsize=8, color="dimgrey")
        ax.set_xlabel(label)
        ax.set_ylabel(signal)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_grid_bars(effects: pd.DataFrame, label: str, path: Path | str) -> None:
    """One metric's effects against the base as horizontal bars, grouped by factor (a bold header
    row per factor, one colour each), with error bars where there is an interval; an effect whose
    interval contains 0 is drawn pale and hatched. The base is not drawn: it is the zero line.

    Args:
        effects: factor, level, effect, low, high, measurable (:func:`mmlab.reports.grid.effects_frame`).
        label: the x axis label.
        path: where the PNG goes.
    """
    groups = list(dict.fromkeys(effects["factor"]))
    ticks: list[tuple[float, str, bool]] = []  # (y, text, is a factor header)
    y = 0.0
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * (len(effects) + len(groups)) + 1.3))
    any_ns = False
    for g, factor in enumerate(groups):
        if factor:
            ticks.append((y, factor, True))
            y += 1
        for _, row in effects[effects["factor"] == factor].iterrows():
            noise = row["measurable"] == 0
            any_ns = any_ns or noise
            ax.barh(y, row["effect"], color=colors(g % 10), alpha=0.35 if noise else 0.9, hatch="///" if noise else None,
                    edgecolor=colors(g % 10), height=0.7)
            if pd.notna(row["low"]) and pd.notna(row["high"]) and row["low"] != row["high"]:
                ax.errorbar(row["effect"], y, xerr=[[row["effect"] - row["low"]], [row["high"] - row["effect"]]],
                            fmt="none", ecolor="black", elinewidth=1, capsize=3)
            ticks.append((y, str(row["level"]), False))
            y += 1
        y += 0.4
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
    for tick, (_, _, header) in zip(ax.get_yticklabels(), ticks):
        if header:
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    if any_ns:
        ax.legend(handles=[Patch(facecolor="lightgrey", hatch="///", edgecolor="grey",
                                 label="no measurable difference (interval contains 0)")], loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_grid_scatter(points: pd.DataFrame, x_label: str, y_label: str, path: Path | str) -> None:
    """Speed against accuracy signal: every distinct variant labelled, with its error bars, the
    base a red star.

    Args:
        points: label, x, x_low, x_high, y, y_low, y_high, base (:func:`mmlab.reports.grid.scatter_frame`).
        x_label, y_label: the axis labels.
        path: where the PNG goes.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for _, row in points.iterrows():
        base = bool(row["base"])
        ax.errorbar(row["x"], row["y"], xerr=[[row["x"] - row["x_low"]], [row["x_high"] - row["x"]]],
                    yerr=[[row["y"] - row["y_low"]], [row["y_high"] - row["y"]]], fmt="*" if base else "o",
                    color="tab:red" if base else "tab:blue", ms=14 if base else 5, elinewidth=0.8, capsize=2,
                    zorder=3 if base else 2, label="base" if base else None)
        ax.annotate(str(row["label"]), (row["x"], row["y"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=7 if not base else 9, fontweight="bold" if base else "normal",
                    color="tab:red" if base else "black")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if points["base"].any():
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_proxy_scatter(frame: pd.DataFrame, x: str, y: str, rho: float, path: Path | str) -> None:
    """One proxy against trained accuracy, Spearman's ρ in the title."""
    pair = frame[[x, y]].dropna()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(pair[x], pair[y], s=20, c="tab:blue")
    ax.set_xlabel(x)
    ax.set_ylabel("held-out top-1 after short training (%)")
    ax.set_title(f"{x}: Spearman ρ = {rho:.2f}" if rho == rho else f"{x}: ρ undefined")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
