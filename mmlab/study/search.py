"""Run a study: suggest → count → (MAC constraint) → time → (latency constraint) → score → record.

Optuna, multi-objective, budgets as constraints (``trial.set_constraint``, feasible when <= 0).
Each trial is one :func:`~mmlab.study.candidate.evaluate` call and stores its
:class:`~mmlab.record.Record` row as user attributes, with the host and pid of the worker that ran
it. A candidate over the MAC budget is recognised from its MAC count alone: it is neither timed nor
scored, its unmeasured objectives are recorded as the worst value (±inf), and its constraint marks
it infeasible. A trial that raises anything is marked failed with its reason (``fail_reason``)
and the study goes on. Storage: SQLite under ``results/<study>/`` unless a URL is given; running
the same configuration again resumes up to the requested trial count.

Many workers, one storage (:func:`run_worker`, on one machine or many):

- **Exactly ``trials`` finished trials.** A worker takes a trial only inside the study's mutex
  (:func:`~mmlab.study.storage.study_mutex`: a PostgreSQL advisory lock, or a file lock next to a
  SQLite file), and only while finished + running trials are fewer than ``trials``; a worker with
  nothing to take waits for the running ones (they may fail and free their slot), then stops.
- **No architecture twice.** Inside the same mutex the trial's architecture is suggested and
  compared with every finished or running trial's spec key; a repeat is not evaluated but stored
  PRUNED with ``duplicate_of`` (the sampler is asked again). Each worker's sampler is also seeded
  per worker and per resume (:func:`worker_seed`), so no process replays another's sequence.
- **Dead workers.** RDB storages (SQLite, PostgreSQL) carry Optuna's heartbeat: a trial whose
  worker died goes FAIL after ``grace_s`` and is retried once (``RetryHeartbeatStaleTrialCallback``,
  the current name of ``RetryFailedTrialCallback``).
- **Signals.** ``--workers N`` starts N processes, each in its own process group, that stop when
  their parent dies; SIGINT and SIGTERM are forwarded to each once, and each marks its running
  trial failed and exits (:func:`run_workers`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import signal as signals
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
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
from mmlab.spec.arch import ArchSpec
from mmlab.spec.presets import PAPER_PRESETS, get_preset
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace, read_space_text
from mmlab.study.candidate import EvalPlan, MachineLock, evaluate
from mmlab.study.pareto import pareto_mask
from mmlab.study.samplers import SAMPLERS, sampler_name
from mmlab.study.storage import (DEFAULT_DB, check_folder_writable, folder_storage_url, open_storage, study_mutex,
                                 write_study_file)

OBJECTIVES = {"signal": "maximize", "latency": "minimize", "macs": "minimize", "params": "minimize"}
METRIC_OF = {"signal": "signal", "latency": "latency_ms", "macs": "macs", "params": "params"}
RESULTS_DIR = Path("results")
MAX_REPEATS = 50
"""Repeated architectures suggested in a row before a worker gives up (the space is exhausted)."""
PARENT_ENV = "MMLAB_PARENT_PID"
"""Environment variable that tells a worker process which process it must not outlive."""
COMPARED = ("objectives", "signal", "data", "budget_mflops", "budget_ms", "space", "seed", "device", "threads",
            "timing_s", "runtime")
"""Config fields a resume must not change: they would mix incomparable figures in one study."""


class SearchFailed(RuntimeError):
    """The search stopped short of its trial count (the report of what finished is written)."""


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
        heartbeat_s / grace_s: a running trial's worker reports every ``heartbeat_s`` seconds; a trial
            silent for ``grace_s`` is failed and retried (RDB storages). Not part of the figures.
        timing_tries: timings taken at most per candidate while they come out disturbed (the
            steadiest is kept, flagged if all were). Not part of the figures.
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
    heartbeat_s: int = 10
    grace_s: int = 60
    timing_tries: int = 3

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        """Inverse of ``asdict`` (JSON turns the objectives tuple into a list)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "objectives" else v for k, v in data.items() if k in known})

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
            budget_mflops=self.budget_mflops, budget_ms=self.budget_ms, timing_tries=self.timing_tries,
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
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ValueError(f"threads: {self.threads} is not allowed; must be >= 1")
        if not (isinstance(self.timing_s, (int, float)) and 0 < self.timing_s < math.inf):
            raise ValueError(f"timing_s: {self.timing_s:g} is not allowed; the timing cap must be > 0 seconds")
        for name, value in (("heartbeat_s", self.heartbeat_s), ("grace_s", self.grace_s),
                            ("timing_tries", self.timing_tries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not allowed; must be a whole number >= 1")
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s: {self.grace_s} is not allowed; must exceed heartbeat_s ({self.heartbeat_s})")
        read_space_text(self.space)

    def resume_command(self) -> str:
        """A command line that resumes this study (defaults left out)."""
        parts = ["mmlab", "search"]
        defaults = SearchConfig()
        for key, value in asdict(self).items():
            if value == getattr(defaults, key) or value is None or key in ("heartbeat_s", "grace_s", "timing_tries"):
                continue
            flag = "--" + key.replace("_", "-")
            if key == "objectives":
                value = ",".join(value)
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(parts)




class Objective:
    """The per-trial work: suggest an architecture (:meth:`suggest`), then one :func:`evaluate`
    (:meth:`__call__`), its row stored as user attributes."""

    def __init__(self, config: SearchConfig, space: SearchSpace, cache: MeasurementCache,
                 lock: MachineLock | None = None) -> None:
        self.config, self.space, self.cache = config, space, cache
        self.plan = config.plan()
        self.lock = lock or MachineLock(self.plan.device, cache.directory)
        self._specs: dict[int, ArchSpec] = {}

    def suggest(self, trial: optuna.Trial) -> ArchSpec:
        """The trial's architecture, remembered for :meth:`__call__`; its key stored as ``spec_key``."""
        spec = self.space.suggest(trial)
        trial.set_user_attr("spec_key", spec.key)
        self._specs[trial.number] = spec
        return spec

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            spec = self._specs.pop(trial.number, None) or self.suggest(trial)
            with self.lock.shared():  # building is heavy: never beside a timing
                model = build(spec)
            record = evaluate(spec, self.plan, self.cache, model=model, lock=self.lock,
                              preset=str(trial.user_attrs.get("preset", "")))
        except Exception as err:  # any failure fails this trial only, with its reason stored
            fail_reason(trial, err)
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


def fail_reason(trial: optuna.Trial, err: BaseException | str) -> None:
    """Store why ``trial`` failed (one line) as its ``fail_reason`` user attribute; never raises."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    try:
        trial.set_user_attr("fail_reason", text[:500])
    except Exception:  # the storage itself is failing: the trial's state will say enough
        pass


def worker_seed(seed: int, offset: int, worker: int) -> int:
    """The sampler seed of one worker: ``seed`` itself for the first worker of a fresh study (so a
    one-process run is reproducible), else a hash of (seed, trials already stored when the run
    started, worker index), so no worker and no resume replays another's sequence."""
    if offset == 0 and worker == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{offset}:{worker}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def open_study(config: SearchConfig, storage: optuna.storages.BaseStorage | None = None,
               seed: int | None = None) -> optuna.Study:
    """Create or load the study; a stored study with other comparable-figure settings is refused."""
    storage = storage if storage is not None else open_storage(config.storage_url)
    directions = [OBJECTIVES[o] for o in config.objectives]
    sampler = SAMPLERS[config.sampler_name](config.seed if seed is None else seed, config.trials)
    try:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=sampler)
    except KeyError:
        try:
            study = optuna.create_study(study_name=config.study, storage=storage, sampler=sampler,
                                        directions=directions)
        except optuna.exceptions.DuplicatedStudyError:  # another host created it just now
            return open_study(config, storage, seed)
        study.set_user_attr("config", asdict(config))
        study.set_user_attr("space_toml", read_space_text(config.space)[1])
        return study
    stored = study.user_attrs.get("config", {})
    for key in COMPARED:
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
    # Reference points, timed once each (a disturbed one is flagged, and retaken when next asked for).
    plan = EvalPlan(**{**plan.__dict__, "budget_mflops": None, "budget_ms": None, "timing": True, "timing_tries": 1,
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


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def reserve(study: optuna.Study, objective: Objective, total: int) -> optuna.Trial | None:
    """Take the next trial, or None when finished + running trials already reach ``total``.

    Call it inside the study mutex: the count, the suggestion and the duplicate check must see
    every other worker's reservations. The trial is RUNNING, stamped with this worker's host and
    pid, its heartbeat recorded, and its architecture new to the study; a suggestion that repeats
    a finished or running trial is stored PRUNED with ``duplicate_of`` and another is asked for.
    A suggestion that raises leaves the trial to fail in :meth:`Objective.__call__`.
    """
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    if states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= total:
        return None
    taken = {t.user_attrs["spec_key"]: t.number for t in trials
             if t.state in (TrialState.COMPLETE, TrialState.RUNNING) and t.user_attrs.get("spec_key")}
    storage = study._storage  # Optuna's own heartbeat helpers work on the storage and trial id
    for _ in range(MAX_REPEATS):
        trial = study.ask()
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)  # at once: a trial never sits RUNNING unwatched
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("worker_pid", os.getpid())
        try:
            spec = objective.suggest(trial)
        except Exception:  # a bad suggestion fails this trial in Objective.__call__, with its reason
            return trial
        if spec.key not in taken:
            return trial
        trial.set_user_attr("duplicate_of", taken[spec.key])
        study.tell(trial, state=TrialState.PRUNED)
        objective._specs.pop(trial.number, None)
    raise SearchFailed(f"the sampler suggested {MAX_REPEATS} architectures in a row that the study already has; "
                       f"the space is (nearly) exhausted: ask for fewer --trials or a larger --space")


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> TrialState:
    """Evaluate a reserved trial with its heartbeat running; tell the storage how it ended.

    Any exception fails the trial alone; an interrupt (SIGINT / SIGTERM) propagates, and the
    caller fails the trial (:func:`fail_if_running`), wherever between reserving and telling it came.
    """
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            values = objective(trial)
        except Exception:
            _tell(study, trial, state=TrialState.FAIL)
            return TrialState.FAIL
    _tell(study, trial, values=values)
    return TrialState.COMPLETE


def fail_if_running(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Fail ``trial`` with ``reason`` unless the storage already holds it finished."""
    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
        fail_reason(trial, reason)
        _tell(study, trial, state=TrialState.FAIL)


def _tell(study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
    try:
        study.tell(trial, **kwargs)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # our heartbeat went stale (a long stall) and another worker failed the trial: it is retried


def run_worker(config: SearchConfig, progress: Callable[[optuna.Study], None] | None = None, *,
               worker: int = 0, offset: int | None = None) -> optuna.Study:
    """Take and run trials in this process until the study has ``config.trials`` finished trials.

    Args:
        config: the study (already prepared by :func:`prepare`).
        progress: called with the study after each trial and while waiting.
        worker: this worker's index among its siblings (seeds its sampler).
        offset: trials in the storage when the run started (seeds its sampler); default: now.
    """
    _quiet_optuna()
    cache = MeasurementCache()
    storage = open_storage(config.storage_url, heartbeat=(config.heartbeat_s, config.grace_s))
    study = open_study(config, storage)
    if offset is None:
        offset = len(study.get_trials(deepcopy=False))
    study.sampler = SAMPLERS[config.sampler_name](worker_seed(config.seed, offset, worker), config.trials)
    space = SearchSpace.from_text(study.user_attrs.get("space_toml") or read_space_text(config.space)[1],
                                  read_space_text(config.space)[0])
    objective = Objective(config, space, cache)
    heartbeat = is_heartbeat_enabled(storage)
    mine: list[TrialState] = []  # this process's trials, in order
    while True:
        trial = None
        try:  # one handler from reserving to telling: an interrupt anywhere in between fails the trial
            with signals_deferred(), study_mutex(storage, config.storage_url, config.study):
                if heartbeat:
                    fail_stale_trials(study)  # a dead worker's trial: FAIL, and a retry queued
                trial = reserve(study, objective, config.trials)
            if trial is not None:
                mine.append(run_trial(study, trial, objective))
        except KeyboardInterrupt:
            if trial is not None:  # a second signal (e.g. SIGTERM after Ctrl-C) must not cut this short
                with signals_deferred():
                    fail_if_running(study, trial, "interrupted (SIGINT / SIGTERM)")
            raise
        if trial is None:
            states = Counter(t.state for t in study.get_trials(deepcopy=False))
            if states[TrialState.COMPLETE] >= config.trials or not (heartbeat and states[TrialState.RUNNING]):
                break
            if progress is not None:
                progress(study)
            time.sleep(min(2.0, config.heartbeat_s))  # a running trial may yet fail and free its slot
            continue
        if len(mine) >= 10 and all(s == TrialState.FAIL for s in mine[-10:]):  # a bug, not bad luck
            reason = study._storage.get_trial(trial._trial_id).user_attrs.get("fail_reason", "no reason stored")
            raise SearchFailed(f"the last 10 trials of this worker failed (trial {trial.number}: {reason})")
        if progress is not None:
            progress(study)
    return study


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Within: SIGINT and SIGTERM are recorded, not acted on, and handed to the handlers they had
    on exit, synchronously, so an interrupt never lands between taking a trial and recording it.

    A signal mask would not do: it blocks only the calling thread, so the kernel hands a signal to
    any other thread (heartbeat, parent watcher, database driver) and Python then raises
    KeyboardInterrupt in the main thread at its next bytecode, inside the region. A recording
    handler runs in the main thread and raises nothing. Main thread only; elsewhere no change.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signals.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signals.SIGINT, signals.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signals.signal(s, handler)
        for signum in dict.fromkeys(caught):  # each signal once, in the order it came
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)  # e.g. default_int_handler: KeyboardInterrupt raised here, now
            elif handler == signals.SIG_DFL:
                signals.raise_signal(signum)  # the default action (SIGTERM: the process ends)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt, like Ctrl-C (main thread only; else no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signals.signal(signals.SIGTERM, signals.default_int_handler)
    try:
        yield
    finally:
        signals.signal(signals.SIGTERM, previous)


@dataclass
class Worker:
    """A worker process started by :func:`spawn_workers`."""

    index: int
    proc: subprocess.Popen
    log: Path
    returncode: int | None = None
    problem: str | None = None

    def describe(self, interrupted: bool) -> str | None:
        """One line about an abnormal exit, or None for a normal one."""
        rc, name = self.returncode, f"worker {self.index} (pid {self.proc.pid})"
        if rc == 0 or (rc == 130 and interrupted) or (rc is not None and rc < 0 and interrupted):
            return None
        if rc is not None and rc < 0:
            try:
                signame = signals.Signals(-rc).name
            except ValueError:
                signame = f"signal {-rc}"
            return f"{name} was killed by {signame}; its trial is failed and retried once its heartbeat is stale"
        return f"{name} exited with code {rc}: {_last_line(self.log)} (log: {self.log})"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "no output"


def worker_command(payload: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "mmlab.study.worker", json.dumps(payload)]


def spawn_workers(config: SearchConfig, n: int, offset: int = 0) -> list[Worker]:
    """Start ``n`` worker processes on the study, each in its own process group (so a terminal's
    Ctrl-C reaches only the parent, which forwards it once), each told to stop when this process
    dies; their output goes to ``results/<study>/logs/worker-<i>.log``."""
    logs = config.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    workers = []
    for i in range(n):
        log = logs / f"worker-{i}.log"
        with open(log, "ab") as fh:
            payload = {"config": asdict(config), "worker": i, "offset": offset}
            proc = subprocess.Popen(worker_command(payload), stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, **group)
        workers.append(Worker(i, proc, log))
    return workers


def run_workers(config: SearchConfig, n: int, *, offset: int = 0,
                progress: Callable[[optuna.Study], None] | None = None,
                notify: Callable[[str], None] | None = None) -> tuple[bool, list[str]]:
    """Run the study on ``n`` worker processes and supervise them until all have exited.

    SIGINT and SIGTERM to this process are forwarded once to each worker's process group (a
    second one kills them); each worker then fails its running trial and exits. A worker that
    dies or fails is reported in one line through ``notify``; the others go on.

    Returns:
        (interrupted, one line per worker that ended abnormally).
    """
    notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
    workers = spawn_workers(config, n, offset)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for w in workers:
            if w.proc.poll() is None:
                try:
                    os.killpg(w.proc.pid, signum if len(received) == 1 else signals.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signals.signal(s, forward) for s in (signals.SIGINT, signals.SIGTERM)}
    problems: list[str] = []
    study = None
    try:
        last = 0.0
        while True:
            for w in workers:
                if w.returncode is None and (rc := w.proc.poll()) is not None:
                    w.returncode = rc
                    if (line := w.describe(bool(received))) is not None:
                        problems.append(line)
                        notify(line)
            if all(w.returncode is not None for w in workers):
                break
            if progress is not None and time.monotonic() - last > 1.0:
                last = time.monotonic()
                try:
                    study = study or optuna.load_study(study_name=config.study, storage=open_storage(config.storage_url))
                    progress(study)
                except Exception:  # progress is cosmetic; the storage may be busy
                    pass
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signals.signal(s, handler)
        for w in workers:  # only on an error of our own: never leave workers behind
            if w.proc.poll() is None:
                os.killpg(w.proc.pid, signals.SIGTERM)
                w.proc.wait()
    return bool(received), problems


def die_with_parent(parent: int | None) -> None:
    """Make this process stop (SIGTERM, handled like Ctrl-C) when ``parent`` dies: Linux's
    PR_SET_PDEATHSIG, and everywhere a watchdog thread that polls the parent pid."""
    if parent is None:
        return
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes  # inline: Linux only

        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(1, signals.SIGTERM, 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before we could ask
        os.kill(os.getpid(), signals.SIGTERM)
        return
    if armed:
        # The kernel sends the one SIGTERM; a watchdog's second one would interrupt the first's
        # clean-up (failing the running trial) and leave that trial RUNNING.
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signals.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def worker_main(argv: list[str]) -> int:
    """Entry of a worker process (``python -m mmlab.study.worker PAYLOAD``): run trials; exit 0
    when the study is done, 130 when interrupted, 1 (after one line on stderr) on an error."""
    payload = json.loads(argv[0])
    config = SearchConfig.from_dict(payload["config"])
    name = f"worker {payload.get('worker', 0)} (pid {os.getpid()})"
    signals.signal(signals.SIGINT, signals.default_int_handler)
    signals.signal(signals.SIGTERM, signals.default_int_handler)  # handled alike
    try:
        parent = os.environ.get(PARENT_ENV)
        die_with_parent(int(parent) if parent else None)
        run_worker(config, worker=int(payload.get("worker", 0)), offset=int(payload.get("offset", 0)))
    except KeyboardInterrupt:
        print(f"{name}: interrupted; its running trial is marked failed", file=sys.stderr)
        return 130
    except Exception as err:
        import traceback

        traceback.print_exc()  # into the worker's log, for whoever looks
        print(f"{name}: error: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}", file=sys.stderr)
        return 1
    return 0


def prepare(config: SearchConfig) -> tuple[optuna.Study, SearchSpace, MeasurementCache]:
    """Validate everything before anything is stored (settings, results folder, cache folder,
    storage); create / load the study; queue the presets."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config.validate()
    check_folder_writable(config.folder)
    cache = MeasurementCache().check()
    space = SearchSpace.load(config.space)
    with MachineLock(config.device, cache.directory).shared():
        check_budgets(config, space, cache)
    storage = open_storage(config.storage_url, heartbeat=(config.heartbeat_s, config.grace_s))
    study = open_study(config, storage)
    write_study_file(config.folder, {"kind": "search", "study": config.study,
                                     "storage": DEFAULT_DB if config.storage is None else config.storage,
                                     "config": asdict(config)})
    with study_mutex(storage, config.storage_url, config.study), MachineLock(config.device, cache.directory).shared():
        enqueue_presets(study, config, space, cache)
    return study, space, cache


def record_of(trial: optuna.trial.FrozenTrial) -> Record | None:
    """The :class:`Record` a finished trial stored, or None (a failed trial has none)."""
    return Record.from_row(trial.user_attrs) if "spec_json" in trial.user_attrs else None
