"""One library function per command: ``search``, ``ablate``, ``proxy_check``, ``report``, ``export``.

The CLI parses arguments, calls one of these and prints; scripts and notebooks call them directly.
"""

from __future__ import annotations

import signal as signals
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from mmlab.reports.any import write_report
from mmlab.reports.grid import write_grid_report
from mmlab.reports.proxy_check import write_proxy_report
from mmlab.reports.search import write_search_report
from mmlab.spec.arch import ArchSpec
from mmlab.study import proxy_check as _proxy_check
from mmlab.study.grid import GridSettings, run_grid
from mmlab.study.search import (SearchConfig, finished, front_size, measure_presets, prepare, run_worker,
                                spawn_workers)
from mmlab.study.storage import load_study

__all__ = ["SearchResult", "ablate", "export", "proxy_check", "report", "search"]


@dataclass(frozen=True)
class SearchResult:
    """What a search run did: counts of finished / new / feasible trials, front size, report path."""

    finished: int
    new: int
    feasible: int
    front: int
    seconds: float
    report: Path
    interrupted: bool
    resume_command: str


def search(config: SearchConfig, *, workers: int = 1,
           progress: Callable[[optuna.Study], None] | None = None) -> SearchResult:
    """Run (or resume) a study with ``workers`` processes, then write its report from the storage.

    Ctrl-C stops every worker (their running trials are marked failed, finished ones kept) and the
    report is still written; ``interrupted`` says so and ``resume_command`` continues it.
    """
    if workers < 1:
        raise ValueError(f"workers: {workers} is not allowed; must be >= 1")
    study, _, cache = prepare(config)
    study.set_user_attr("command", config.resume_command())
    directions = [d.name.lower() for d in study.directions]
    started = time.perf_counter()
    done_before = len(finished(study))
    procs = spawn_workers(config, workers - 1) if workers > 1 else []
    interrupted = False
    try:
        run_worker(config, progress)
        for proc in procs:
            proc.wait()
        if not study.user_attrs.get("preset_rows"):
            measure_presets(study, config, cache)
    except KeyboardInterrupt:
        interrupted = True
        for proc in procs:  # SIGINT, so each worker's Optuna marks its running trial failed
            proc.send_signal(signals.SIGINT)
        for proc in procs:
            proc.wait()
    finally:
        paths = write_search_report(config.folder, command=config.resume_command())
    trials = finished(study)
    feasible, front = front_size(trials, directions)
    return SearchResult(len(trials), len(trials) - done_before, feasible, front, time.perf_counter() - started,
                        paths["report.md"], interrupted, config.resume_command())


def ablate(grid: str | Path, *, settings: GridSettings = GridSettings(), results_dir: str | Path = "results",
           progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Measure every variant of a grid file and write its tables and plots; returns the folder.

    Interrupted, it keeps every finished variant (re-running resumes) and re-raises.
    """
    folder = run_grid(grid, results_dir=results_dir, settings=settings, progress=progress)
    write_grid_report(folder)
    return folder


def proxy_check(data: str = "digits", n: int = 20, **options: Any) -> Path:
    """Sample, score and train architectures (see :func:`mmlab.study.proxy_check.proxy_check`), then
    write the correlation report; returns the folder."""
    folder = _proxy_check.proxy_check(data, n, **options)
    write_proxy_report(folder)
    return folder


def report(folder: str | Path) -> dict[str, Path]:
    """Regenerate the report of a search, grid or proxy-check folder from what it stores."""
    return write_report(folder)


def export(folder: str | Path, trial: int, output: str | Path = "arch.toml") -> tuple[Path, ArchSpec]:
    """Write one trial's architecture as a spec file (TOML with provenance, or JSON)."""
    folder, output = Path(folder), Path(output)
    study, _ = load_study(folder)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial not in trials or "spec_json" not in trials[trial].user_attrs:
        raise ValueError(f"trial: {trial} is not in study {study.study_name!r} "
                         f"(trials 0..{max(trials) if trials else -1} with a spec)")
    t = trials[trial]
    spec = ArchSpec.from_json(t.user_attrs["spec_json"])
    if output.suffix.lower() == ".json":
        output.write_text(spec.to_json(indent=2) + "\n")
    else:
        import tomli_w  # inline: only a TOML export needs the writer

        metrics = {k: v for k, v in t.user_attrs.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
                   and k not in ("spec_json",) and not k.startswith("env_")}
        provenance = {"study": study.study_name, "trial": trial, "folder": str(folder), **metrics}
        output.write_text(f"# exported by mmlab export {folder} --trial {trial}\n"
                          + tomli_w.dumps({"provenance": provenance, "arch": spec.to_dict()}))
    return output, spec
