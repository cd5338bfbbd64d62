"""Rows → DataFrame → Pareto set → CSV / Markdown / HTML; figures are drawn by mmlab.plot."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mmlab.arch import ArchSpec


def pareto_mask(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """True for each point that no other point dominates.

    A point dominates another if it is at least as good in every objective and strictly better
    in one; ``directions`` are ``maximize`` / ``minimize`` per objective. Duplicates of a
    non-dominated point are all kept.
    """
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    pts = [[s * v for s, v in zip(signs, row)] for row in values]  # everything minimised
    mask = []
    for i, p in enumerate(pts):
        dominated = any(
            all(q_k <= p_k for q_k, p_k in zip(q, p)) and any(q_k < p_k for q_k, p_k in zip(q, p))
            for j, q in enumerate(pts) if j != i
        )
        mask.append(not dominated)
    return mask


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives minimised) up to ``reference``."""
    pts = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in pts:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


# ---- searches ---------------------------------------------------------------------------------
def load_search(folder: Path):
    """The Optuna study behind ``results/<study>`` (reads study.json for the storage URL)."""
    import optuna

    meta = json.loads((folder / "study.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from mmlab.search import _open_storage

    return optuna.load_study(study_name=meta["study"], storage=_open_storage(meta["storage"])), meta


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, objective values, constraints, metrics, spec fields, env."""
    config = study.user_attrs.get("config", {})
    objectives = config.get("objectives", [f"value{i}" for i in range(len(study.directions))])
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        spec_json = t.user_attrs.get("spec_json")
        if spec_json:
            row.update(ArchSpec.from_json(spec_json).to_row())
        row["preset"] = t.user_attrs.get("preset", "")
        for name, value in zip(objectives, t.values or [None] * len(objectives)):
            row[f"objective_{name}"] = value if value is None or math.isfinite(value) else None
        for name, value in t.constraints.items():
            row[f"constraint_{name}"] = value
        row["feasible"] = bool(t.user_attrs.get("feasible", False)) and t.state.name == "COMPLETE"
        row.update({k: v for k, v in t.user_attrs.items() if k not in ("spec_json", "spec_key", "preset", "feasible")})
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


def markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else (f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}")
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


def write_search_report(folder: Path, command: str | None = None, measure_presets: bool = False) -> dict[str, Path]:
    """(Re)write trials.csv, pareto.csv, pareto.png and report.md (+ report.html) from the storage.

    ``measure_presets``: time and score the paper presets this machine has not measured yet (the
    end of a search does; ``mmlab report`` only draws what the cache holds).
    """
    from mmlab.plot import draw_pareto

    study, meta = load_search(folder)
    config = study.user_attrs.get("config", meta.get("config", {}))
    objectives = list(config.get("objectives", []))
    directions = [d.name.lower() for d in study.directions]
    frame = trials_frame(study)
    front = search_pareto(frame, objectives, directions) if not frame.empty else frame
    paths = {name: folder / name for name in ("trials.csv", "pareto.csv", "pareto.png", "report.md", "report.html")}
    frame.to_csv(paths["trials.csv"], index=False)
    front.to_csv(paths["pareto.csv"], index=False)
    budgets = {"macs": config.get("budget_mflops"), "latency": config.get("budget_ms")}
    draw_pareto(frame, front, presets_frame(config, measure_missing=measure_presets), paths["pareto.png"],
                signal=config.get("signal", "signal"), objectives=tuple(objectives),
                budgets={k: v for k, v in budgets.items() if v is not None})

    finished = int((frame["state"] == "COMPLETE").sum()) if not frame.empty else 0
    feasible = int(frame["feasible"].sum()) if not frame.empty else 0
    budgets = ", ".join(
        f"{label} <= {config[key]:g}" for key, label in (("budget_mflops", "MACs (M)"), ("budget_ms", "latency (ms)"))
        if config.get(key) is not None
    ) or "none"
    from mmlab.space import SearchSpace

    space = SearchSpace.load(config["space"]) if config.get("space") else None
    lines = [
        f"# Search `{study.study_name}`",
        "",
        f"- command: `{command or study.user_attrs.get('command', '')}`",
        f"- budgets: {budgets} (MACs: complete count, 1 multiply-add = 1)",
        f"- objectives: {', '.join(f'{o} ({d})' for o, d in zip(objectives, directions))}; "
        f"signal `{config.get('signal')}` on data `{config.get('data')}`",
        f"- sampler: {_sampler_line(config)}, seed {config.get('seed')}",
        f"- storage: `{meta['storage']}`",
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
    if space is not None:
        lines += ["", f"## Space `{space.name}`", "", *(f"- {line}" for line in space.describe())]
    paths["report.md"].write_text("\n".join(lines) + "\n")
    write_html(paths["report.md"], paths["report.html"])
    return paths


def _sampler_line(config: dict[str, Any]) -> str:
    from mmlab.search import SearchConfig

    name = SearchConfig(trials=config.get("trials", 50), sampler=config.get("sampler", "auto")).sampler_name
    return name if config.get("sampler") == name else f"{config.get('sampler')} ({name})"


def presets_frame(config: dict[str, Any], measure_missing: bool = False) -> pd.DataFrame:
    """The paper presets as reference points: MACs always; latency and signal from the cache, or
    measured now (and cached) when ``measure_missing``. The ``train`` signal is never run for them.
    """
    from mmlab.meter import MeasurementCache, cached_counts, cached_timing, measure
    from mmlab.presets import PAPER_PRESETS, get_preset
    from mmlab.search import SearchConfig, cached_score, signal_key

    cache = MeasurementCache()
    rows = []
    device, threads = config.get("device", "cpu"), config.get("threads")
    for name in PAPER_PRESETS:
        spec = get_preset(name)
        timing = cached_timing(spec, cache, device=device, threads=threads)
        signal = cache.get(signal_key(spec, config.get("signal", ""), config.get("data", ""), config.get("seed", 0)))
        if measure_missing and timing is None:
            timing = measure(spec, device=device, threads=threads, cache=cache, max_time_s=config.get("timing_s", 2.0))
        if measure_missing and signal is None and config.get("signal") not in (None, "train"):
            cfg = SearchConfig(signal=config["signal"], data=config.get("data", "synthetic"), seed=config.get("seed", 0))
            signal = {"signal": cached_score(spec, cfg, cache)}
        rows.append({
            "preset": name, **cached_counts(spec, cache),
            "latency_ms": timing["latency_ms"] if timing else math.nan,
            "signal": signal["signal"] if signal else math.nan,
        })
    return pd.DataFrame(rows)


def write_html(markdown_path: Path, html_path: Path) -> None:
    """A self-contained HTML version of a Markdown report (images embedded as data URIs)."""
    text = markdown_path.read_text()
    body: list[str] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line.replace("|", "").strip()) <= {"-", ":"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif (m := re.match(r"!\[(.*)\]\((.*)\)", line)):
            image = markdown_path.parent / m.group(2)
            if image.is_file():
                data = base64.b64encode(image.read_bytes()).decode()
                body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(markdown_path.parent.name)}"
                         f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    text = html.escape(text)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
