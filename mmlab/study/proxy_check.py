"""Which accuracy signal can be trusted on this data? Rank correlations of every proxy with training.

``proxy_check`` samples architectures from a search space, computes every zero-cost proxy and the
params / MACs baselines, trains each candidate briefly, and reports Spearman's ρ and Kendall's τ
of each signal against the trained held-out top-1, with one scatter plot per signal. Results are
appended to ``rows.jsonl`` as each candidate finishes, so an interrupted check resumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from scipy import stats

from mmlab.meter.cache import MeasurementCache
from mmlab.signals.data import check_source
from mmlab.signals.registry import SIGNALS
from mmlab.signals.score import ScoreSettings
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace
from mmlab.study.candidate import EvalPlan, evaluate

CHECKED = tuple(name for name, info in SIGNALS.items() if info.kind != "training")
TARGET = "signal_train"


def _folder_name(data: str) -> str:
    return "proxy_check_" + "".join(c if c.isalnum() else "_" for c in data.split(":", 1)[0])


def correlations(frame: pd.DataFrame, target: str = TARGET) -> pd.DataFrame:
    """Spearman's ρ and Kendall's τ (with p-values) of every signal column against ``target``."""
    rows = []
    for signal in CHECKED:
        column = f"signal_{signal}"
        if column not in frame:
            continue
        pair = frame[[column, target]].dropna()
        if len(pair) < 3 or pair[column].nunique() < 2 or pair[target].nunique() < 2:
            rho = rho_p = tau = tau_p = math.nan
        else:
            rho, rho_p = stats.spearmanr(pair[column], pair[target])
            tau, tau_p = stats.kendalltau(pair[column], pair[target])
        rows.append({"signal": signal, "kind": SIGNALS[signal].kind,
                     "n": len(pair), "spearman_rho": rho, "spearman_p": rho_p, "kendall_tau": tau, "kendall_p": tau_p})
    return pd.DataFrame(rows)


def proxy_check(
    data: str = "digits",
    n: int = 20,
    *,
    epochs: int = 3,
    space: str | Path | None = None,
    seed: int = 0,
    results_dir: str | Path = "results",
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Sample ``n`` architectures, score them with every signal, train them, write the report.

    Returns:
        The output folder (``results/proxy_check_<data>``) holding rows.jsonl; the report
        (rows.csv, correlations, scatter plots, report.md) is written by :mod:`mmlab.reports`.
    """
    if n < 3:
        raise ValueError(f"n: {n} is not allowed; a rank correlation needs at least 3 architectures")
    if epochs < 1:
        raise ValueError(f"epochs: {epochs} is not allowed; must be >= 1")
    check_source(data)  # fail fast on a bad source, before any work
    specs = SearchSpace.load(space).sample(n, seed=seed)
    folder = Path(results_dir) / _folder_name(data)
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / "rows.jsonl"
    settings = {"data": data, "epochs": epochs, "seed": seed, "space": str(space or DEFAULT_SPACE)}
    plan = EvalPlan(timing=False, signals=(*CHECKED, "train"), score=ScoreSettings(data=data, seed=seed, epochs=epochs))
    cache = MeasurementCache()
    done = {}
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("settings") == settings:
                done[row["spec_key"]] = row
    for i, spec in enumerate(specs):
        if progress is not None:
            progress(i, len(specs), spec.key)
        if spec.key in done:
            continue
        row: dict[str, Any] = {**evaluate(spec, plan, cache).to_row(), "settings": settings}
        with rows_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[spec.key] = row
    if progress is not None:
        progress(len(specs), len(specs), "done")
    return folder


def read_check(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows and settings of a proxy check's folder (the latest settings written)."""
    rows: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for line in (folder / "rows.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption
            continue
        if row.get("settings") != settings:
            rows, settings = {}, row.get("settings", {})
        rows[row["spec_key"]] = row
    return list(rows.values()), settings
