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

from mmlab.proxies import Signal, score
from mmlab.space import SearchSpace

CHECKED = tuple(s.value for s in Signal if s is not Signal.train)


def _folder_name(data: str) -> str:
    return "proxy_check_" + "".join(c if c.isalnum() else "_" for c in data.split(":", 1)[0])


def correlations(frame: pd.DataFrame, target: str = "train_top1") -> pd.DataFrame:
    """Spearman's ρ and Kendall's τ (with p-values) of every signal column against ``target``."""
    rows = []
    for signal in CHECKED:
        if signal not in frame:
            continue
        pair = frame[[signal, target]].dropna()
        if len(pair) < 3 or pair[signal].nunique() < 2 or pair[target].nunique() < 2:
            rho = rho_p = tau = tau_p = math.nan
        else:
            rho, rho_p = stats.spearmanr(pair[signal], pair[target])
            tau, tau_p = stats.kendalltau(pair[signal], pair[target])
        rows.append({"signal": signal, "kind": "baseline" if signal in ("params", "macs") else "zero-cost proxy",
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
        The output folder (``results/proxy_check_<data>``): rows.csv, correlations.csv,
        correlations.md, scatter_<signal>.png, report.md.
    """
    if n < 3:
        raise ValueError(f"n: {n} is not allowed; a rank correlation needs at least 3 architectures")
    if epochs < 1:
        raise ValueError(f"epochs: {epochs} is not allowed; must be >= 1")
    from mmlab.data import load_dataset
    from mmlab.proxies import DEFAULT_RESOLUTION

    load_dataset(data, DEFAULT_RESOLUTION, seed=seed)  # fail fast on a bad source, before any work
    specs = SearchSpace.load(space).sample(n, seed=seed)
    folder = Path(results_dir) / _folder_name(data)
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / "rows.jsonl"
    settings = {"data": data, "epochs": epochs, "seed": seed, "space": str(space or "studies/default.toml")}
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
        row: dict[str, Any] = {"spec_key": spec.key, "spec_json": spec.to_json(), "settings": settings}
        for signal in CHECKED:
            row[signal] = score(spec, signal, data=data, seed=seed)
        row["train_top1"] = score(spec, Signal.train, data=data, seed=seed, epochs=epochs)
        with rows_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[spec.key] = row
    if progress is not None:
        progress(len(specs), len(specs), "done")
    write_proxy_report(folder, [done[s.key] for s in specs], settings)
    return folder


def write_proxy_report(folder: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    from mmlab.plot import draw_proxy_scatter
    from mmlab.report import markdown_table

    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "settings"} for r in rows])
    frame.to_csv(folder / "rows.csv", index=False)
    corr = correlations(frame)
    corr.to_csv(folder / "correlations.csv", index=False)
    table = markdown_table(corr, ["signal", "kind", "n", "spearman_rho", "kendall_tau", "spearman_p", "kendall_p"])
    (folder / "correlations.md").write_text(table + "\n")
    for signal in CHECKED:
        rho = corr.set_index("signal").loc[signal, "spearman_rho"] if signal in set(corr["signal"]) else math.nan
        draw_proxy_scatter(frame, signal, "train_top1", rho, folder / f"scatter_{signal}.png")
    lines = [
        f"# Proxy check on `{settings['data']}`",
        "",
        f"{len(frame)} architectures sampled from `{settings['space']}` (seed {settings['seed']}); every signal on "
        f"the untrained network (synflow, params and macs on the network as specified, the data-driven signals "
        f"adapted to the data: classes, channels, 64 px); `train_top1` = held-out top-1 (%) after "
        f"{settings['epochs']} epochs of training at 64 px (mmlab.proxies.train defaults).",
        "Rank correlations of each signal with `train_top1` (higher ρ/τ: the signal ranks architectures more like "
        "training does; params and MACs are the baselines any proxy should beat):",
        "",
        table,
        "",
        f"top-1 over the sample: min {frame['train_top1'].min():.1f}, median {frame['train_top1'].median():.1f}, "
        f"max {frame['train_top1'].max():.1f}",
        "",
        *(f"![{s}](scatter_{s}.png)" for s in CHECKED),
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
