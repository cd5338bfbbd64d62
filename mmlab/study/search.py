"""Run a study: suggest → count → (MAC constraint) → time → (latency constraint) → score → record.

Optuna, multi-objective, budgets as constraints (``trial.set_constraint``, feasible when <= 0).
Each trial is one :func:`~mmlab.study.candidate.evaluate` call and stores its
:class:`~mmlab.record.Record` row as user attributes. A candidate over the MAC budget is
recognised from its MAC count alone: it is neither timed nor scored, its unmeasured objectives are
recorded as the worst value (±inf), and its constraint marks it infeasible. A trial that raises is
marked failed with its reason (``fail_reason``) and the study goes on. Storage: SQLite under
``results/<study>/`` unless a URL is given; running the same configuration again resumes up to
the requested trial count.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from mmlab.meter.cache import MeasurementCache
from mmlab.meter.devices import check_device
from mmlab.meter.measure import cached_counts
from mmlab.meter.runtimes import check_runtime
from mmlab.model import build
from mmlab.record import Record
from mmlab.signals.data import check_source
from mmlab.signals.registry import DEFAULT_SIGNAL, check_signal
from mmlab.signals.score import ScoreSettings
from mmlab.spec.presets import PAPER_PRESETS, get_preset
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace, read_space_text
from mmlab.study.candidate import EvalPlan, evaluate
from mmlab.study.pareto import pareto_mask
from mmlab.study.samplers import SAMPLERS, sampler_name
from mmlab.study.storage import DEFAULT_DB, folder_storage_url, open_storage, write_study_file

OBJECTIVES = {"signal": "maximize", "latency": "minimize", "macs": "minimize", "params": "minimize"}
METRIC_OF = {"signal": "signal", "latency": "latency_ms", "macs": "macs", "params": "params"}
RESULTS_DIR = Path("results")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study; stored with it so reports and resumes can rebuild it.

    Attributes:
        study: study name; outputs go to ``results_dir / study``.
        trials: total number of finished trials wanted.
        budget_mflops: MAC budget in millions of MACs (complete count, ``macs``; the flag keeps the
            name users know, but the unit is multiply-adds, the paper's "FLOPs"), or None.
        budget_ms: latency budget in milliseconds, or None.
        objectives: among ``signal``, ``latency``, ``macs``, ``params``.
        signal: accuracy signal name (see :data:`mmlab.signals.SIGNALS`).
        data: data source for the signal.
        sampler: a name in :data:`mmlab.study.samplers.SAMPLERS`.
        seed: sampler and signal seed.
        space: a shipped space name (``default``, ``tiny``) or a space file.
        storage: Optuna storage URL; default SQLite under the study folder.
        device: where latency is measured (``cpu`` or ``cuda``).
        threads: CPU threads for timing (None: all cores).
        timing_s: CPU timing cap per candidate (seconds, warm-up excluded).
        runtime: timing runtime (see :data:`mmlab.meter.RUNTIMES`).
        results_dir: parent folder of study outputs.
    """

    study: str = "default"
    trials: int = 50
    budget_mflops: float | None = None
    budget_ms: float | None = None
    objectives: tuple[str, ...] = ("signal", "latency")
    signal: str = DEFAULT_SIGNAL
    data: str = "synthetic"
    sampler: str = "auto"
    seed: int = 0
    space: str = DEFAULT_SPACE
    storage: str | None = None
    device: str = "cpu"
    threads: int | None = None
    timing_s: float = 2.0
    runtime: str = "eager"
    results_dir: str = str(RESULTS_DIR)

    @property
    def folder(self) -> Path:
        return Path(self.results_dir) / self.study

    @property
    def storage_url(self) -> str:
        return folder_storage_url(self.folder, self.storage)

    @property
    def sampler_name(self) -> str:
        return sampler_name(self.sampler, self.trials)

    def plan(self) -> EvalPlan:
        """What each trial measures."""
        return EvalPlan(
            timing="latency" in self.objectives or self.budget_ms is not None,
            device=self.device, threads=self.threads, timing_s=self.timing_s, runtime=self.runtime,
            signals=(self.signal,) if "signal" in self.objectives else (),
            score=ScoreSettings(data=self.data, seed=self.seed),
            budget_mflops=self.budget_mflops, budget_ms=self.budget_ms,
        )

    def validate(self) -> None:
        """Every field checked before anything is stored; ``ValueError`` naming the field."""
        if not self.study or "/" in self.study or "\\" in self.study or self.study.startswith(".") \
                or not all(c.isalnum() or c in "-_." for c in self.study):
            raise ValueError(f"study: {self.study!r} is not allowed; use a plain name of letters, digits, - and _")
        if self.trials < 1:
            raise ValueError(f"trials: {self.trials} is not allowed; must be >= 1")
        for name, value in (("budget_mflops", self.budget_mflops), ("budget_ms", self.budget_ms)):
            if value is not None and not value > 0:
                raise ValueError(f"{name}: {value:g} is not allowed; a budget must be > 0")
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: {','.join(self.objectives)!r} is not allowed; give distinct names")
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise ValueError(f"objectives: {name!r} is not allowed; choose among {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: {self.sampler!r} is not allowed; choose among {', '.join(SAMPLERS)}")
        check_signal(self.signal)
        check_source(self.data)
        check_device(self.device)
        check_runtime(self.runtime, self.device)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads} is not allowed; must be >= 1")
        if not self.timing_s > 0:
            raise ValueError(f"timing_s: {self.timing_s:g} is not allowed; the timing cap must be > 0 seconds")
        read_space_text(self.space)

    def resume_command(self) -> str:
        """A command line that resumes this study (defaults left out)."""
        parts = ["mmlab", "search"]
        defaults = SearchConfig()
        for key, value in asdict(self).items():
            if value == getattr(defaults, key) or value is None:
                continue
            flag = "--" + key.replace("_", "-")
            if key == "objectives":
                value = ",".join(value)
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(parts)


class Objective:
    """The per-trial work: one :func:`evaluate`, its row stored as user attributes."""

    def __init__(self, config: SearchConfig, space: SearchSpace, cache: MeasurementCache) -> None:
        self.config, self.space, self.cache = config, space, cache
        self.plan = config.plan()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            spec = self.space.suggest(trial)
            record = evaluate(spec, self.plan, self.cache, model=build(spec),
                              preset=str(trial.user_attrs.get("preset", "")))
        except Exception as err:  # any failure fails this trial only, with its reason stored
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"[:500])
            raise
        for name, violation in record.constraints.items():
            trial.set_constraint(name, violation)
        row = record.to_row()
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            trial.set_user_attr(key, value)
        worst = {"maximize": -math.inf, "minimize": math.inf}
        values = []
        for o in self.config.objectives:
            v = row.get(METRIC_OF[o])
            values.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else worst[OBJECTIVES[o]])
        return tuple(values)


def open_study(config: SearchConfig) -> optuna.Study:
    """Create or load the study; a stored study with other comparable-figure settings is refused."""
    storage = open_storage(config.storage_url)
    directions = [OBJECTIVES[o] for o in config.objectives]
    sampler = SAMPLERS[config.sampler_name](config.seed, config.trials)
    try:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(study_name=config.study, storage=storage, sampler=sampler, directions=directions)
        study.set_user_attr("config", asdict(config))
        study.set_user_attr("space_toml", read_space_text(config.space)[1])
        return study
    stored = study.user_attrs.get("config", {})
    for key in ("objectives", "signal", "data", "budget_mflops", "budget_ms", "space", "seed", "device",
                "threads", "timing_s", "runtime"):
        old, new = stored.get(key), asdict(config)[key]
        if key == "objectives":
            old, new = list(old or []), list(new)
        if old != new:
            raise ValueError(f"{key}: {new!r} differs from the stored study's {old!r}; "
                             f"use another --study name, or the same settings to resume")
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and bool(trial.user_attrs.get("feasible", False)) \
        and all(v <= 0 for v in trial.constraints.values())


def enqueue_presets(study: optuna.Study, config: SearchConfig, space: SearchSpace, cache: MeasurementCache) -> list[str]:
    """Queue the paper presets that the space contains and that fit the MAC budget (once)."""
    if study.user_attrs.get("presets_enqueued"):
        return []
    queued = []
    for name in PAPER_PRESETS:
        spec = get_preset(name)
        params = space.params_for(spec)
        if params is None:
            continue
        if config.budget_mflops is not None and cached_counts(spec, cache)["macs"] / 1e6 > config.budget_mflops:
            continue
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)
        queued.append(name)
    study.set_user_attr("presets_enqueued", queued or ["none"])
    return queued


def measure_presets(study: optuna.Study, config: SearchConfig, cache: MeasurementCache) -> list[dict[str, Any]]:
    """Measure the six paper presets as reference points (counts, timing, signal unless it is
    ``train``) and store their rows with the study, so reports draw them without measuring."""
    plan = config.plan()
    plan = EvalPlan(**{**plan.__dict__, "budget_mflops": None, "budget_ms": None, "timing": True,
                       "signals": tuple(s for s in plan.signals if s != "train")})
    rows = []
    for name in PAPER_PRESETS:
        record = evaluate(get_preset(name), plan, cache, preset=name)
        rows.append({k: v for k, v in record.to_row().items() if k != "spec_json"})
    study.set_user_attr("preset_rows", json.loads(json.dumps(rows, default=float)))
    return rows


def check_budgets(config: SearchConfig, space: SearchSpace, cache: MeasurementCache) -> None:
    """Refuse a MAC budget that no member of the space can meet, naming the minimum."""
    if config.budget_mflops is None:
        return
    smallest = cached_counts(space.smallest(), cache)["macs"] / 1e6
    if config.budget_mflops < smallest:
        raise ValueError(f"budget_mflops: {config.budget_mflops:g} is not allowed; the smallest member of "
                         f"space {space.name!r} needs {smallest:.1f} M MACs")


def front_size(trials: list[optuna.trial.FrozenTrial], directions: list[str]) -> tuple[int, int]:
    """(feasible trials, size of the feasible Pareto front)."""
    feasible = [t for t in trials if is_feasible(t)]
    if not feasible:
        return 0, 0
    return len(feasible), int(sum(pareto_mask([t.values for t in feasible], directions)))


def run_worker(config: SearchConfig, progress: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Run trials in this process until the study has ``config.trials`` finished trials."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")
    cache = MeasurementCache()
    study = open_study(config)
    space = SearchSpace.from_text(study.user_attrs.get("space_toml") or read_space_text(config.space)[1],
                                  read_space_text(config.space)[0])
    objective = Objective(config, space, cache)
    mine: list[optuna.trial.FrozenTrial] = []  # this process's trials, in order
    while len(finished(study)) < config.trials:
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda _, t: mine.append(t)])
        if len(mine) >= 10 and all(t.state == TrialState.FAIL for t in mine[-10:]):  # a bug, not bad luck
            reason = mine[-1].user_attrs.get("fail_reason", "see the log above")
            raise RuntimeError(f"the last 10 trials failed (trial {mine[-1].number}: {reason})")
        if progress is not None:
            progress(study)
    return study


def worker_command(config: SearchConfig) -> list[str]:
    return [sys.executable, "-m", "mmlab", "search", "--worker-json", json.dumps(asdict(config))]


def prepare(config: SearchConfig) -> tuple[optuna.Study, SearchSpace, MeasurementCache]:
    """Validate everything before anything is stored; create / load the study; queue the presets."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config.validate()
    space = SearchSpace.load(config.space)
    cache = MeasurementCache()
    check_budgets(config, space, cache)
    study = open_study(config)
    storage = DEFAULT_DB if config.storage is None else config.storage
    write_study_file(config.folder, {"kind": "search", "study": config.study, "storage": storage,
                                     "config": asdict(config)})
    enqueue_presets(study, config, space, cache)
    return study, space, cache


def spawn_workers(config: SearchConfig, n: int) -> list[subprocess.Popen]:
    """Start ``n`` extra worker processes on the same storage (they inherit stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [subprocess.Popen(worker_command(config), env=env, stdout=subprocess.DEVNULL) for _ in range(n)]


def record_of(trial: optuna.trial.FrozenTrial) -> Record | None:
    """The :class:`Record` a finished trial stored, or None (a failed trial has none)."""
    return Record.from_row(trial.user_attrs) if "spec_json" in trial.user_attrs else None
