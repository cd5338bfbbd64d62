"""A search's report: trials → DataFrame → Pareto set → CSV / Markdown / HTML / PNG, from storage alone."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mmlab.reports.plots import draw_pareto
from mmlab.reports.refine import write_refine_outputs
from mmlab.reports.tables import markdown_table, write_html
from mmlab.signals.registry import evidence
from mmlab.spec.arch import ArchSpec
from mmlab.spec.space import SearchSpace
from mmlab.study.pareto import pareto_mask
from mmlab.study.samplers import sampler_name
from mmlab.study.storage import load_study


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, objective values, constraints, metrics, spec fields, env."""
    config = study.user_attrs.get("config", {})
    objectives = config.get("objectives", [f"value{i}" for i in range(len(study.directions))])
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update(t.user_attrs)  # the trial's Record row (mmlab.record), or only fail_reason
        row["preset"] = t.user_attrs.get("preset", "")
        for name, value in zip(objectives, t.values or [None] * len(objectives)):
            row[f"objective_{name}"] = value if value is None or math.isfinite(value) else None
        for name, value in t.constraints.items():
            row[f"constraint_{name}"] = value
        row["feasible"] = bool(t.user_attrs.get("feasible", False)) and t.state.name == "COMPLETE"
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        rows.append(row)
    return pd.DataFrame(rows)


def search_pareto(frame: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> pd.DataFrame:
    """The feasible Pareto set of a trials frame, best first on the first objective."""
    columns = [f"objective_{o}" for o in objectives]
    feasible = frame[frame["feasible"]].dropna(subset=columns)
    if feasible.empty:
        return feasible
    mask = pareto_mask(feasible[columns].to_numpy().tolist(), directions)
    front = feasible[mask]
    return front.sort_values(columns[0], ascending=directions[0] == "minimize")


def _stage_settings(spec_json: str) -> str:
    spec = ArchSpec.from_json(spec_json)
    return "; ".join(
        f"w{s['width']} d{s['depth']} k{s['kernel']} g/l/i {s['global_ch']}/{s['local_ch']}/{s['identity_ch']} wt{s['wavelet_levels']}"
        for s in spec.splits()
    )


def write_search_report(folder: Path, command: str | None = None) -> dict[str, Path]:
    """(Re)write trials.csv, pareto.csv, pareto.png and report.md (+ report.html) from the storage.

    Reads only what the study stores: its trials and the paper presets' rows that the search
    measured (``preset_rows``); it never measures or scores.
    """
    study, meta = load_study(folder)
    config = study.user_attrs.get("config", meta.get("config", {}))
    objectives = list(config.get("objectives", []))
    directions = [d.name.lower() for d in study.directions]
    frame = trials_frame(study)
    front = search_pareto(frame, objectives, directions) if not frame.empty else frame
    paths = {name: folder / name for name in ("trials.csv", "pareto.csv", "pareto.png", "report.md", "report.html")}
    frame.to_csv(paths["trials.csv"], index=False)
    front.to_csv(paths["pareto.csv"], index=False)
    budgets = {"macs": config.get("budget_mflops"), "latency": config.get("budget_ms")}
    draw_pareto(frame, front, presets_frame(study), paths["pareto.png"],
                signal=f"signal: {config.get('signal', 'signal')}\n" + textwrap.fill(f"({evidence(config.get('signal', ''))})", 42),
                objectives=tuple(objectives),
                budgets={k: v for k, v in budgets.items() if v is not None})

    finished = int((frame["state"] == "COMPLETE").sum()) if not frame.empty else 0
    feasible = int(frame["feasible"].sum()) if not frame.empty else 0
    budgets = ", ".join(
        f"{label} <= {config[key]:g}" for key, label in (("budget_mflops", "MACs (M)"), ("budget_ms", "latency (ms)"))
        if config.get(key) is not None
    ) or "none"
    space_toml = study.user_attrs.get("space_toml")
    space = SearchSpace.from_text(space_toml, str(config.get("space", "space"))) if space_toml else None
    lines = [
        f"# Search `{study.study_name}`",
        "",
        f"- command: `{command or study.user_attrs.get('command', '')}`",
        f"- budgets: {budgets} (`--budget-mflops` is in millions of MACs, complete count, 1 multiply-add = 1)",
        f"- objectives: {', '.join(f'{o} ({d})' for o, d in zip(objectives, directions))}; "
        f"signal `{config.get('signal')}` on data `{config.get('data')}` ({evidence(config.get('signal', ''))})",
        f"- sampler: {_sampler_line(config)}, seed {config.get('seed')}",
        f"- storage: `{meta['storage']}`" + (" (inside this folder)" if "://" not in meta["storage"] else ""),
        f"- trials: {len(frame)} in storage, {finished} finished, {feasible} feasible, front {len(front)}",
        "",
        "![pareto](pareto.png)",
        "",
        "## Pareto front (feasible)",
        "",
    ]
    if front.empty:
        lines.append("No feasible finished trial yet.")
    else:
        shown = front.copy()
        shown["stages"] = shown["spec_json"].map(_stage_settings)
        shown["rebuild"] = shown["trial"].map(
            lambda n: f"`mmlab export {folder.as_posix()} --trial {n} -o trial{n}.toml`")
        columns = ["trial", "preset"] + [c for c in ("signal", "latency_ms", "macs", "macs_paper", "params") if c in shown] + [
            "resolution", "scan", "d_state", "ssm_ratio", "ffn_ratio", "stages", "rebuild"]
        lines.append(markdown_table(shown, columns))
    refined, refined_paths = write_refine_outputs(folder, study, front, str(config.get("signal", "signal")))
    lines += refined  # the trained front, once `mmlab refine` has run
    paths.update(refined_paths)
    if space is not None:
        lines += ["", f"## Space `{space.name}`", "", *(f"- {line}" for line in space.describe())]
    paths["report.md"].write_text("\n".join(lines) + "\n")
    write_html(paths["report.md"], paths["report.html"])
    return paths


def _sampler_line(config: dict[str, Any]) -> str:
    name = sampler_name(config.get("sampler", "auto"), config.get("trials", 50))
    return name if config.get("sampler") == name else f"{config.get('sampler')} ({name})"


def presets_frame(study) -> pd.DataFrame:
    """The paper presets as reference points, as the search measured and stored them."""
    rows = study.user_attrs.get("preset_rows") or []
    frame = pd.DataFrame(rows)
    for column in ("preset", "macs", "latency_ms", "signal"):
        if column not in frame:
            frame[column] = math.nan
    return frame
