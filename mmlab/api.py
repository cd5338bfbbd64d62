"""One library function per command: ``search``, ``ablate``, ``proxy_check``, ``report``, ``export``.

The CLI parses arguments, calls one of these and prints; scripts and notebooks call them directly.
"""

from __future__ import annotations

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
from mmlab.study.search import (SearchConfig, SearchFailed, finished, front_size, measure_presets, prepare,
                                run_worker, run_workers, sigterm_as_interrupt)
from mmlab.study.refine import Progress, best_result, load_refine, provenance, refine_worker, rung_summaries
from mmlab.study.storage import load_study

__all__ = ["RefineResult", "SearchFailed", "SearchResult", "ablate", "export", "proxy_check", "refine", "report",
           "search"]


@dataclass(frozen=True)
class SearchResult:
    """What a search run did: counts of finished / new / feasible trials, front size, report path,
    and one line per worker that ended abnormally (``problems``)."""

    finished: int
    new: int
    feasible: int
    front: int
    seconds: float
    report: Path
    interrupted: bool
    resume_command: str
    problems: tuple[str, ...] = ()


def search(config: SearchConfig, *, workers: int = 1,
           progress: Callable[[optuna.Study], None] | None = None,
           notify: Callable[[str], None] | None = None) -> SearchResult:
    """Run (or resume) a study with ``workers`` processes, then write its report from the storage.

    One worker runs in this process; more run as child processes (see
    :func:`mmlab.study.search.run_workers`). Ctrl-C or SIGTERM stops every worker (their running
    trials are marked failed, finished ones kept): ``interrupted`` says so and ``resume_command``
    continues it. The report is written whatever happens, from what the storage holds; an error
    is raised after it (``ValueError`` as raised, anything else as :class:`SearchFailed`, one line).

    Args:
        config: the study.
        workers: processes working on it.
        progress: called with the study as trials finish.
        notify: receives one line per worker that died or failed (default: stderr).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: {workers} is not allowed; must be >= 1")
    study, _, cache = prepare(config)  # raises before anything is stored
    study.set_user_attr("command", config.resume_command())
    directions = [d.name.lower() for d in study.directions]
    started = time.perf_counter()
    done_before = len(finished(study))
    interrupted, problems, error = False, [], None
    try:
        with sigterm_as_interrupt():
            if workers == 1:
                run_worker(config, progress)
            else:
                interrupted, problems = run_workers(config, workers, offset=len(study.get_trials(deepcopy=False)),
                                                    progress=progress, notify=notify)
            done = len(finished(study))
            if not interrupted and done < config.trials:
                raise SearchFailed(f"the workers stopped at {done} of {config.trials} finished trials: "
                                   + "; ".join(problems or [f"see {config.folder / 'logs'}"]))
            if not interrupted and not study.user_attrs.get("preset_rows"):
                measure_presets(study, config, cache)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as err:  # written up after the report
        error = err
    try:
        paths = write_search_report(config.folder, command=config.resume_command())
    except Exception as err:
        if error is None:
            raise SearchFailed(f"the report could not be written ({type(err).__name__}: {_first_line(err)})") from err
        paths = {"report.md": config.folder / "report.md"}
    if error is not None:
        if isinstance(error, (ValueError, SearchFailed)):
            raise error
        raise SearchFailed(f"{type(error).__name__}: {_first_line(error)} (finished trials are kept; "
                           f"report: {paths['report.md']})") from error
    trials = finished(study)
    feasible, front = front_size(trials, directions)
    return SearchResult(len(trials), len(trials) - done_before, feasible, front, time.perf_counter() - started,
                        paths["report.md"], interrupted, config.resume_command(), tuple(problems))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def ablate(grid: str | Path, *, settings: GridSettings = GridSettings(), results_dir: str | Path = "results",
           progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Measure every variant of a grid file and write its tables and plots; returns the folder.

    Interrupted, it keeps every finished variant (re-running resumes) and re-raises.
    """
    folder = run_grid(grid, results_dir=results_dir, settings=settings, progress=progress)
    write_grid_report(folder)
    return folder


def proxy_check(settings: _proxy_check.CheckSettings = _proxy_check.CheckSettings(), *,
                results_dir: str | Path = "results", shard: tuple[int, int] = (0, 1),
                progress: Callable[[int, int, str], None] | None = None, write: bool = True,
                deadline: float | None = None) -> Path:
    """Sample, score and train architectures (see :func:`mmlab.study.proxy_check.proxy_check`, which
    also says what ``deadline`` does), then write the correlation report (unless ``write`` is False,
    e.g. in all shards but the last)."""
    folder = _proxy_check.proxy_check(settings, results_dir=results_dir, shard=shard, progress=progress,
                                      deadline=deadline)
    if write:
        write_proxy_report(folder)
    return folder


def report(folder: str | Path) -> dict[str, Path]:
    """Regenerate the report of a search, grid or proxy-check folder from what it stores."""
    return write_report(folder)


@dataclass(frozen=True)
class RefineResult:
    """What a refine run did: jobs trained / failed by this process, every rung's summary (epochs,
    candidates, survivors, train and wall seconds), the winner (``best``: trial, top-1 mean and
    standard error, epochs), the report, and whether it was interrupted (``resume_command`` resumes)."""

    trained: int
    failed: tuple[str, ...]
    rungs: tuple[dict[str, Any], ...]
    best: dict[str, Any] | None
    finished: bool
    seconds: float
    report: Path
    interrupted: bool
    resume_command: str


def refine(folder: str | Path, *, progress: Callable[[Progress], None] | None = None, **settings: Any) -> RefineResult:
    """Successive halving over a searched front with real training (see :mod:`mmlab.study.refine`),
    then the search report rewritten with its refined section, refined.csv and refined_pareto.png.

    ``settings`` are :class:`mmlab.study.refine.RefineConfig` fields (``top_k``, ``rungs``, ``eta``,
    ``seeds``, ``data``, ``max_per_class``, ``batch_size``, ``seed``, ``keep_presets``, ``device``);
    a refine already stored keeps its own, so ``refine(folder)`` resumes it. Several processes
    may run it on one storage at once. Ctrl-C or SIGTERM queues the running job again, writes the
    report of what finished and returns with ``interrupted``.

    Raises:
        ValueError: in one line, before anything is trained (bad setting, unknown study, ...).
    """
    folder = Path(folder)
    started = time.perf_counter()
    interrupted, run = False, None
    try:
        with sigterm_as_interrupt():
            run = refine_worker(folder, progress=progress, **settings)
            interrupted = run.interrupted
    except KeyboardInterrupt:  # outside a job (while opening or waiting): nothing to queue again
        interrupted = True
    paths = write_search_report(folder)
    study, _ = load_study(folder)
    state = load_refine(study)
    return RefineResult(
        trained=len(run.trained) if run else 0, failed=tuple(run.failed) if run else (),
        rungs=tuple(rung_summaries(state)) if state else (), best=best_result(state) if state else None,
        finished=bool(state and state.finished), seconds=time.perf_counter() - started, report=paths["report.md"],
        interrupted=interrupted, resume_command=f"mmlab refine {folder.as_posix()}")


def export(folder: str | Path, trial: int | None = None, output: str | Path = "arch.toml", *,
           refined: str | None = None) -> tuple[Path, ArchSpec]:
    """Write one trial's architecture as a spec file (TOML with provenance, or JSON).

    ``refined="best"`` exports the winner of ``mmlab refine`` instead of ``trial``; a TOML export of
    a refined trial records its trained top-1 (± standard error), epochs, seeds and data.
    """
    folder, output = Path(folder), Path(output)
    study, _ = load_study(folder)
    if (trial is None) == (refined is None):
        raise ValueError("export: give either --trial N or --refined best")
    state = load_refine(study)
    if refined is not None:
        if refined != "best":
            raise ValueError(f"refined: {refined!r} is not allowed; use --refined best (or --trial N)")
        best = best_result(state) if state is not None else None
        if best is None:
            raise ValueError(f"{folder}: no refined result yet; run `mmlab refine {folder}` first")
        trial = int(best["trial"])
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
        trained = provenance(state, trial) if state is not None else {}
        record = {"study": study.study_name, "trial": trial, "folder": str(folder), **metrics, **trained}
        how = "--refined best" if refined else f"--trial {trial}"
        output.write_text(f"# exported by mmlab export {folder} {how}\n"
                          + tomli_w.dumps({"provenance": record, "arch": spec.to_dict()}))
    return output, spec
