"""A proxy check's report: every signal against short training, with intervals and the noise ceiling."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlab.reports.plots import draw_proxy_scatter
from mmlab.reports.tables import markdown_table, write_html
from mmlab.signals.registry import SIGNALS
from mmlab.study.proxy_check import TARGET, read_check
from mmlab.study.stats import (bootstrap, kendall, partial_spearman, probability_better, regret, spearman,
                               top_precision)

BEATS_PARAMS = 0.9
"""A signal becomes the default only if it beats ``params`` with at least this paired-bootstrap probability."""


def noise_ceiling(main: list[dict[str, Any]], retest: list[dict[str, Any]]) -> tuple[int, Any]:
    """(pairs, Spearman ρ between the two training seeds with its interval) on the retest subset."""
    first = {r["spec_key"]: r[TARGET] for r in main if r.get(TARGET) is not None}
    pairs = [(first[r["spec_key"]], r[TARGET]) for r in retest if r["spec_key"] in first and r.get(TARGET) is not None]
    if len(pairs) < 3:
        return len(pairs), None
    a, b = (np.array(x, dtype=float) for x in zip(*pairs))
    intervals, _ = bootstrap({"seed": a}, b, spearman)
    return len(pairs), intervals["seed"]


def signal_table(frame: pd.DataFrame, signals: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per signal: ρ, τ, partial ρ | params (each with a 95% interval), top-25% precision,
    regret, and the paired probability that its ρ beats params'; plus the recommended default."""
    target = frame[TARGET].to_numpy(dtype=float)
    columns = {s: frame[f"signal_{s}"].to_numpy(dtype=float) for s in signals if f"signal_{s}" in frame}
    rho, draws = bootstrap(columns, target, spearman)
    tau, _ = bootstrap(columns, target, kendall)
    params = frame["params"].to_numpy(dtype=float)
    names = list(columns)
    partial = {}
    for name, values in columns.items():
        both = np.column_stack([values, params])
        stat = (lambda xp, y: partial_spearman(xp[:, 0], y, xp[:, 1]))
        partial[name] = bootstrap({name: both}, target, stat)[0][name]
    rows = []
    j_params = names.index("params") if "params" in names else None
    for j, name in enumerate(names):
        p_better = probability_better(draws, j, j_params) if j_params is not None and name != "params" else math.nan
        rows.append({
            "signal": name, "kind": SIGNALS[name].kind, "n": len(target),
            "spearman_rho": rho[name].value, "rho_low": rho[name].low, "rho_high": rho[name].high,
            "kendall_tau": tau[name].value, "tau_low": tau[name].low, "tau_high": tau[name].high,
            "partial_rho_given_params": partial[name].value, "partial_low": partial[name].low, "partial_high": partial[name].high,
            "top25_precision": top_precision(columns[name], target), "regret_pp": regret(columns[name], target),
            "p_beats_params": p_better,
            "ρ [95% CI]": rho[name].fmt(), "τ [95% CI]": tau[name].fmt(), "partial ρ | params": partial[name].fmt(),
        })
    table = pd.DataFrame(rows)
    candidates = table[(table["kind"] != "baseline") & (table["p_beats_params"] >= BEATS_PARAMS)]
    if candidates.empty:
        best = table[table["signal"] == "params"].iloc[0]
        why = (f"no proxy beats params with paired-bootstrap probability >= {BEATS_PARAMS}; "
               f"params has the evidence")
    else:
        best = candidates.sort_values("rho_low", ascending=False).iloc[0]
        why = (f"highest lower 95% bound of ρ among the signals that beat params with probability "
               f">= {BEATS_PARAMS} (p = {best['p_beats_params']:.2f})")
    choice = {"signal": best["signal"], "rho": best["spearman_rho"], "rho_low": best["rho_low"],
              "rho_high": best["rho_high"], "why": why}
    return table, choice


def write_proxy_report(folder: Path) -> dict[str, Path]:
    """(Re)write rows.csv, correlations.csv / .md, scatter_<signal>.png, recommendation.json and report.md."""
    main, retest, settings = read_check(folder)
    frame = pd.DataFrame(main).dropna(subset=[TARGET]) if main else pd.DataFrame()
    if len(frame) < 3:
        raise ValueError(f"{folder}: {len(frame)} finished architectures; a report needs at least 3")
    frame.to_csv(folder / "rows.csv", index=False)
    signals = [s for s in settings.get("signals", []) if f"signal_{s}" in frame]
    table, choice = signal_table(frame, signals)
    pairs, ceiling = noise_ceiling(main, retest)
    planned_main, planned_retest = settings["n"], settings.get("retest", 0)
    complete = len(main) >= planned_main and len(retest) >= planned_retest
    if not complete:  # a partial sample is not the committed evidence a default needs: params stays
        leader = {k: choice[k] for k in ("signal", "rho", "rho_low", "rho_high")}
        by_name = table.set_index("signal")
        params = by_name.loc["params"] if "params" in by_name.index else {}
        choice = {"signal": "params", **{k: params.get(c, math.nan) for k, c in
                                         (("rho", "spearman_rho"), ("rho_low", "rho_low"), ("rho_high", "rho_high"))},
                  "why": (f"partial check ({len(main)} of {planned_main} architectures, {len(retest)} of "
                          f"{planned_retest} retests): no default is chosen from a partial sample; "
                          f"on it the rule would pick {leader['signal']}"),
                  "partial_leader": leader}
    choice.update({"complete": complete, "planned": {"n": planned_main, "retest": planned_retest},
                   "data": settings["data"], "n": len(frame), "noise_ceiling": ceiling.value if ceiling else None,
                   "noise_ceiling_low": ceiling.low if ceiling else None, "noise_ceiling_high": ceiling.high if ceiling else None,
                   "retest_pairs": pairs, "protocol": {k: settings.get(k) for k in ("epochs", "max_per_class", "batch_size")}})
    (folder / "recommendation.json").write_text(json.dumps(choice, indent=2, default=float) + "\n")
    table.to_csv(folder / "correlations.csv", index=False)
    shown = ["signal", "kind", "ρ [95% CI]", "τ [95% CI]", "partial ρ | params", "top25_precision", "regret_pp", "p_beats_params"]
    text = markdown_table(table, shown)
    (folder / "correlations.md").write_text(text + "\n")
    for name in signals:
        rho = float(table.set_index("signal").loc[name, "spearman_rho"])
        draw_proxy_scatter(frame, f"signal_{name}", TARGET, rho, folder / f"scatter_{name}.png")
    train_s = [r["score_s"] for r in retest if r.get("score_s")]
    processes = len({r.get("host_pid") for r in main + retest})  # runs that shared a machine took longer
    wall = sum(r.get("score_s", 0) + r.get("measure_s", 0) for r in main + retest)
    geometry = settings.get("geometry", "")
    lines = [
        f"# Proxy check on `{settings['data']}`",
        "",
        *([] if complete else [
            f"> **Partial check:** {len(main)} of {planned_main} architectures and {len(retest)} of {planned_retest} "
            "retests have finished. The same command resumes it; until it is complete no default is chosen from it.",
            ""]),
        f"- sample: {len(frame)} architectures from space `{settings['space']}` under "
        f"{settings.get('budget_mflops')} M MACs (seed {settings['seed']}); signals on the untrained network",
        f"- ground truth `{TARGET}`: held-out top-1 (%) on the whole test split after {settings['epochs']} epochs on "
        f"{settings.get('max_per_class') or 'all'} training images per class (AdamW, warm-up + cosine, label smoothing, "
        f"PreciseBN; mmlab.signals.train)",
        f"- geometry: training and the data-driven proxies see each network with a stride-4 stem at 32 px (stages at "
        f"8×8, 4×4, 2×2; 4-stage specs at 64 px), the proportions of its own resolution ({geometry}); "
        "synflow, params and macs see the network as specified",
        f"- gradient proxies and meco score a copy with zero-initialised BatchNorm γ set to 1",
        f"- noise ceiling (Spearman ρ between two training seeds on {pairs} architectures): "
        + (ceiling.fmt() if ceiling else "not measured (fewer than 3 retest pairs)"),
        f"- one short training: {np.median(train_s):.0f} s median (retest runs; device "
        f"{', '.join(sorted({str(r.get('signal_device', '?')) for r in retest}))}; {processes} processes wrote rows)"
        if train_s else "- one short training: no retest run timed yet",
        f"- wall time of every signal and training run added up: {wall / 60:.1f} min",
        f"- top-1 over the sample: min {frame[TARGET].min():.2f}, median {frame[TARGET].median():.2f}, "
        f"max {frame[TARGET].max():.2f}",
        "",
        "## Rank correlation with trained top-1 (95% paired-bootstrap intervals, 2000 resamples)",
        "",
        text,
        "",
        f"**Default signal by this evidence: `{choice['signal']}`**, ρ = {choice['rho']:.2f} "
        f"[{choice['rho_low']:.2f}, {choice['rho_high']:.2f}]: {choice['why']}.",
        "",
        "`top25_precision`: share of the signal's top quarter that is in training's top quarter; "
        "`regret_pp`: best top-1 in the sample minus the top-1 of the signal's favourite (points); "
        "`p_beats_params`: paired-bootstrap probability that the signal's ρ exceeds that of params.",
        "",
        *(f"![{s}](scatter_{s}.png)" for s in signals),
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    write_html(folder / "report.md", folder / "report.html")
    return {name: folder / name for name in ("rows.csv", "correlations.csv", "correlations.md", "recommendation.json",
                                             "report.md", "report.html")}
