"""A refine's outputs, from the storage alone: refined.csv, refined_pareto.png and the report section.

:func:`write_refine_outputs` is called by :func:`mmlab.reports.search.write_search_report`, so
``mmlab report results/<study>`` rebuilds them too; a study never refined gets nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mmlab.reports.tables import markdown_table  # noqa: E402
from mmlab.study.pareto import pareto_mask  # noqa: E402
from mmlab.study.refine import RefineState, load_refine, rung_summaries, summarize  # noqa: E402
from mmlab.study.stats import Interval, bootstrap, spearman  # noqa: E402

CSV_COLUMNS = ["trial", "preset", "spec_key", "rung", "epochs", "seeds", "top1_mean", "top1_se", "top1_binomial_se",
               "top1_seed_sd", "val_images", "latency_ms", "latency_p10_ms", "latency_p90_ms", "macs", "params",
               "signal", "layer", "status", "final", "front", "train_s", "checkpoints", "fail_reason"]
"""refined.csv: one row per (candidate, rung) with a result; top-1 in %, latency of the search's timing."""


def refine_frame(study, state: RefineState) -> pd.DataFrame:
    """Every (candidate, rung) result joined with the search's measurements of the candidate."""
    trials = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    layers = {c["trial"]: c.get("layer") for c in state.candidates}
    rows = []
    for row in summarize(state):
        attrs = trials.get(row["trial"], {})
        rows.append({**row, "preset": attrs.get("preset", ""), "spec_key": attrs.get("spec_key", ""),
                     "layer": layers.get(row["trial"]),
                     **{k: attrs.get(k) for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "macs", "params",
                                                  "signal")}})
    frame = pd.DataFrame(rows, columns=[c for c in CSV_COLUMNS if c != "front"])
    frame["final"] = frame["final"].astype(bool)
    frame["front"] = False
    final = refined_front(frame)
    frame.loc[final.index, "front"] = True
    return frame[CSV_COLUMNS]


def refined_front(frame: pd.DataFrame) -> pd.DataFrame:
    """The trained front: each candidate at the highest rung it reached, non-dominated in (top-1 max,
    latency min), fastest first. Candidates stopped early were trained less: their top-1 is from
    fewer epochs, which is what successive halving decides on."""
    if frame.empty:
        return frame
    final = frame[frame["final"] & (frame["status"] != "failed")].dropna(subset=["top1_mean", "latency_ms"])
    if final.empty:
        return final
    mask = pareto_mask(final[["top1_mean", "latency_ms"]].to_numpy(dtype=float).tolist(), ["maximize", "minimize"])
    return final[mask].sort_values("latency_ms")


def signal_correlation(frame: pd.DataFrame) -> tuple[Interval, int]:
    """Spearman's ρ between the search signal and top-1 after rung 0 (every candidate trained
    equally), with a 95% bootstrap interval over candidates, and the number of candidates."""
    first = frame[(frame["rung"] == 0) & (frame["status"] != "failed")].dropna(subset=["top1_mean", "signal"])
    n = len(first)
    if n < 3:
        return Interval(math.nan, math.nan, math.nan), n
    x = first["signal"].to_numpy(dtype=float)
    y = first["top1_mean"].to_numpy(dtype=float)
    intervals, _ = bootstrap({"signal": x}, y, spearman, n_boot=2000, seed=0)
    return intervals["signal"], n


def draw_refined_pareto(frame: pd.DataFrame, front: pd.DataFrame, proxy_front: pd.DataFrame, path: Path | str, *,
                        signal: str = "signal", data: str = "") -> None:
    """Trained top-1 against measured latency.

    Every candidate at every rung it reached (one colour per rung, a thin line joining its rungs),
    with error bars: the standard error of top-1 (binomial, combined with the seed spread) and the
    latency's p10–p90; the refined front in red; presets as labelled black stars; the search's
    proxy front faintly, on its own right-hand axis (the search signal's units).
    """
    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    done = frame[frame["status"] != "failed"].dropna(subset=["top1_mean", "latency_ms"]) if not frame.empty else frame
    colours = plt.get_cmap("viridis")
    rungs = sorted(done["rung"].unique()) if not done.empty else []
    for _, group in done.groupby("trial"):
        if len(group) > 1:
            line = group.sort_values("rung")
            ax.plot(line["latency_ms"], line["top1_mean"], "-", c="grey", lw=0.6, alpha=0.5, zorder=1)
    for r in rungs:
        pts = done[done["rung"] == r]
        low = (pts["latency_ms"] - pts["latency_p10_ms"]).clip(lower=0).fillna(0)
        high = (pts["latency_p90_ms"] - pts["latency_ms"]).clip(lower=0).fillna(0)
        colour = colours(0.15 + 0.7 * (r / max(1, len(rungs) - 1)))
        ax.errorbar(pts["latency_ms"], pts["top1_mean"], yerr=pts["top1_se"].fillna(0), xerr=[low, high], fmt="o",
                    ms=5, c=colour, elinewidth=0.8, capsize=2, zorder=2,
                    label=f"rung {r}: {_epochs(int(pts['epochs'].iloc[0]))}")
    if not front.empty:
        ax.plot(front["latency_ms"], front["top1_mean"], "-", c="tab:red", lw=1.5, zorder=3, label="refined front")
    final = done[done["final"]] if not done.empty else done
    for _, row in final.iterrows():
        if row["preset"]:
            ax.scatter([row["latency_ms"]], [row["top1_mean"]], marker="*", s=160, c="black", zorder=4)
            ax.annotate(f"{row['preset']} ({int(row['epochs'])} ep)", (row["latency_ms"], row["top1_mean"]),
                        textcoords="offset points", xytext=(6, -12), fontsize=9, fontweight="bold")
        else:
            ax.annotate(f"#{int(row['trial'])}", (row["latency_ms"], row["top1_mean"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    if final.empty or not final["preset"].astype(bool).any():
        ax.scatter([], [], marker="*", s=160, c="black", label="paper presets (none fit)")
    else:
        ax.scatter([], [], marker="*", s=160, c="black", label="paper presets that fit")
    handles, labels = ax.get_legend_handles_labels()
    if not proxy_front.empty and {"latency_ms", "signal"} <= set(proxy_front):
        proxy = proxy_front.dropna(subset=["latency_ms", "signal"]).sort_values("latency_ms")
        twin = ax.twinx()
        twin.plot(proxy["latency_ms"], proxy["signal"], "s--", c="grey", ms=3, lw=0.8, alpha=0.35)
        twin.set_ylabel(f"search signal ({signal}), faint", color="grey")
        twin.tick_params(axis="y", colors="grey")
        handles.append(plt.Line2D([], [], ls="--", marker="s", c="grey", alpha=0.35, ms=3))
        labels.append(f"search's proxy front ({signal}, right axis)")
    ax.set_xlabel("measured latency (ms, median; bars p10–p90)")
    ax.set_ylabel(f"trained top-1 on {data} (%, ± standard error)" if data else "trained top-1 (%, ± SE)")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _fmt_top1(row: pd.Series) -> str:
    return f"{row['top1_mean']:.2f} ± {row['top1_se']:.2f}"


def write_refine_outputs(folder: Path, study, proxy_front: pd.DataFrame | None = None,
                         signal: str = "signal") -> tuple[list[str], dict[str, Path]]:
    """Write refined.csv and refined_pareto.png; return the report section's lines and the paths.

    Nothing is written (and no lines returned) for a study that was never refined.
    """
    state = load_refine(study)
    if state is None:
        return [], {}
    cfg = state.config
    paths = {"refined.csv": folder / "refined.csv", "refined_pareto.png": folder / "refined_pareto.png"}
    frame = refine_frame(study, state)
    frame.to_csv(paths["refined.csv"], index=False)
    front = frame[frame["front"]].sort_values("latency_ms")
    draw_refined_pareto(frame, front, proxy_front if proxy_front is not None else pd.DataFrame(),
                        paths["refined_pareto.png"], signal=signal, data=cfg.data)

    rungs = rung_summaries(state)
    jobs = list(state.jobs.values())
    finished = sum(j.final for j in jobs)
    presets = [c["preset"] for c in state.candidates if c.get("preset")]
    val = int(frame["val_images"].dropna().iloc[0]) if frame["val_images"].notna().any() else 0
    per_class = "all images" if cfg.max_per_class is None else f"at most {cfg.max_per_class} training images per class"
    lines = [
        "",
        f"## Refined: trained top-1 on `{cfg.data}`",
        "",
        f"- `mmlab refine`: {len(state.candidates)} candidates (Pareto layers "
        f"{', '.join(map(str, sorted({c['layer'] for c in state.candidates})))}; presets that fit: "
        f"{', '.join(presets) or 'none'}), successive halving with η = {cfg.eta} over rungs of "
        f"{', '.join(map(str, cfg.rungs))} epochs (cumulative), {cfg.seeds} seed{'s' if cfg.seeds > 1 else ''} each"
        + ("; presets carried through every rung" if cfg.keep_presets else ""),
        f"- training: the short-training signal (AdamW, warm-up + cosine, label smoothing, PreciseBN) at the data "
        f"geometry, batch {cfg.batch_size}, {per_class}, {val:,} held-out images; each rung resumes from the "
        f"previous rung's weights with a fresh optimizer and schedule (a warm restart)",
        f"- progress: {'finished' if state.finished else 'in progress'}, {finished} of {len(jobs)} queued jobs done"
        f" (weights under `{folder.name}/refine/`)",
        "- top-1 ± standard error: binomial on the held-out images, combined with the seed spread (s / √seeds)",
        "",
        "![refined pareto](refined_pareto.png)",
        "",
        "### Refined front",
        "",
    ]
    if front.empty:
        lines.append("No trained result yet.")
    else:
        shown = front.copy()
        shown["top-1 % ± SE"] = shown.apply(_fmt_top1, axis=1)
        shown["export"] = shown["trial"].map(lambda n: f"`mmlab export {folder.as_posix()} --trial {n} -o t{n}.toml`")
        lines.append(markdown_table(shown, ["trial", "preset", "epochs", "seeds", "top-1 % ± SE", "latency_ms", "macs",
                                            "params", "signal", "export"]))
    lines += ["", "### Rung by rung", ""]
    table = pd.DataFrame([{
        "rung": r["rung"], "epochs": r["epochs"], "more epochs": r["more_epochs"], "candidates": len(r["candidates"]),
        "trained jobs": r["trained"], "failed": ", ".join(f"#{t}" for t in r["failed"]) or "-",
        "kept": "-" if r["survivors"] is None else ", ".join(f"#{t}" for t in r["survivors"]) or "none",
        "train s": r["train_s"], "wall s": r["wall_s"] if r["wall_s"] is not None else math.nan,
    } for r in rungs])
    lines.append(markdown_table(table, list(table.columns)))
    for r in rungs:
        ranked = frame[(frame["rung"] == r["rung"]) & frame["top1_mean"].notna()].sort_values("top1_mean",
                                                                                           ascending=False)
        if not ranked.empty:
            lines += ["", f"- rung {r['rung']} ({_epochs(r['epochs'])}), best first: "
                      + ", ".join(f"#{int(x.trial)}{' (' + x.preset + ')' if x.preset else ''} {x.top1_mean:.2f}"
                                  for x in ranked.itertuples())]
    failed = frame[frame["status"] == "failed"]
    if not failed.empty:
        lines += ["", "### Failed candidates", ""]
        lines += [f"- trial {int(x.trial)} at rung {int(x.rung)}: {x.fail_reason}" for x in failed.itertuples()]
    rho, n = signal_correlation(frame)
    lines += ["", "### Search signal against trained accuracy", ""]
    if n < 3:
        lines.append(f"Too few candidates with both numbers after rung 0 ({n}) for a rank correlation.")
    else:
        lines.append(f"Spearman ρ between the search signal (`{signal}`) and top-1 after rung 0 "
                     f"({_epochs(cfg.rungs[0])}, every candidate trained alike), "
                     f"n = {n}: {rho.fmt(2)} (95% bootstrap interval over candidates). The candidates are the "
                     "search's best, a narrow range, where a rank correlation tends to be weaker than over a whole space.")
    return lines, paths

