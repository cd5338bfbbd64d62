"""Figures, drawn with matplotlib from data computed elsewhere (mmlab.report)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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


def draw_grid_bars(table: pd.DataFrame, column: str, label: str, path: Path | str) -> None:
    """One bar per factor level (levels equal to another variant hatched), the base's value dashed."""
    rows = table.dropna(subset=[column])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4.2))
    colors = ["tab:red" if lbl == "base" else "tab:blue" for lbl in rows["label"]]
    bars = ax.bar(range(len(rows)), rows[column], color=colors)
    for bar, same in zip(bars, rows.get("same_as", [""] * len(rows))):
        if isinstance(same, str) and same:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    base = rows[rows["label"] == "base"][column]
    if not base.empty:
        ax.axhline(base.iloc[0], ls="--", c="tab:red", lw=1)
    ax.set_xticks(range(len(rows)), rows["label"], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_grid_scatter(table: pd.DataFrame, x: str, x_label: str, y_label: str, path: Path | str) -> None:
    """Speed against signal, one labelled point per distinct variant, the base marked."""
    rows = table[table["same_as"].fillna("") == ""].dropna(subset=[x, "signal"])
    fig, ax = plt.subplots(figsize=(7, 5))
    base = rows["label"] == "base"
    ax.scatter(rows[~base][x], rows[~base]["signal"], c="tab:blue", s=22)
    ax.scatter(rows[base][x], rows[base]["signal"], c="tab:red", marker="*", s=140, label="base")
    for _, row in rows.iterrows():
        ax.annotate(row["label"], (row[x], row["signal"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
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
