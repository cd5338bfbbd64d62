"""A proxy check's report: rows.jsonl → correlations of every signal with training, scatter plots, Markdown."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mmlab.reports.plots import draw_proxy_scatter
from mmlab.reports.tables import markdown_table
from mmlab.study.proxy_check import CHECKED, TARGET, correlations, read_check


def write_proxy_report(folder: Path) -> dict[str, Path]:
    """(Re)write rows.csv, correlations.csv / .md, scatter_<signal>.png and report.md from rows.jsonl."""
    rows, settings = read_check(folder)
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "settings"} for r in rows])
    frame.to_csv(folder / "rows.csv", index=False)
    corr = correlations(frame)
    corr.to_csv(folder / "correlations.csv", index=False)
    table = markdown_table(corr, ["signal", "kind", "n", "spearman_rho", "kendall_tau", "spearman_p", "kendall_p"])
    (folder / "correlations.md").write_text(table + "\n")
    for signal in CHECKED:
        rho = corr.set_index("signal").loc[signal, "spearman_rho"] if signal in set(corr["signal"]) else math.nan
        draw_proxy_scatter(frame, f"signal_{signal}", TARGET, rho, folder / f"scatter_{signal}.png")
    lines = [
        f"# Proxy check on `{settings['data']}`",
        "",
        f"{len(frame)} architectures sampled from `{settings['space']}` (seed {settings['seed']}); every signal on "
        f"the untrained network (synflow, params and macs on the network as specified, the data-driven signals "
        f"adapted to the data: classes, channels, 64 px); `signal_train` = held-out top-1 (%) after "
        f"{settings['epochs']} epochs of training at 64 px (mmlab.proxies.train defaults).",
        "Rank correlations of each signal with `signal_train` (higher ρ/τ: the signal ranks architectures more like "
        "training does; params and MACs are the baselines any proxy should beat):",
        "",
        table,
        "",
        f"top-1 over the sample: min {frame[TARGET].min():.1f}, median {frame[TARGET].median():.1f}, "
        f"max {frame[TARGET].max():.1f}",
        "",
        *(f"![{s}](scatter_{s}.png)" for s in CHECKED),
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return {name: folder / name for name in ("rows.csv", "correlations.csv", "correlations.md", "report.md")}
