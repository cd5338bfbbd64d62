"""Run a study: suggest → count → (MAC constraint) → time → (latency constraint) → score → record.

Optuna, multi-objective, budgets as constraints (``trial.set_constraint``, feasible when <= 0).
A candidate over the MAC budget is recognised from its MAC count alone: it is neither timed nor
scored, its unmeasured objectives are recorded as the worst value (±inf), and its constraint
marks it infeasible. Storage: SQLite under ``results/<study>/`` unless a URL is given; running
the same configuration again resumes up to the requested trial count.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shlex
import subprocess
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from mmlab.arch import ArchSpec
from mmlab.meter import MeasurementCache, cached_counts, measure
from mmlab.meter.cache import cache_key
from mmlab.model import build
from mmlab.presets import PAPER_PRESETS, get_preset
from mmlab.space import DEFAULT_SPACE, SearchSpace

OBJECTIVES = {"signal": "maximize", "latency": "minimize", "macs": "minimize", "params": "minimize"}
METRIC_OF = {"signal": "signal", "latency": "latency_ms", "macs": "macs", "params": "params"}
SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
RESULTS_DIR = Path("results")
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study; stored with it so reports and resumes can rebuild it.

    Attributes:
        study: study name; outputs go to ``results_dir / study``.
        trials: total number of finished trials wanted.
        budget_mflops: MAC budget in millions (complete count, ``macs``), or None.
        budget_ms: latency budget in milliseconds, or None.
        objectives: among ``signal``, ``latency``, ``macs``, ``params``.
        signal: accuracy signal name (see :class:`mmlab.proxies.Signal`).
        data: data source for the signal.
        sampler: ``auto`` (TPE up to 300 trials, NSGA-II beyond), ``tpe``, ``nsga2``, ``gp``, ``random``.
        seed: sampler and signal seed.
        space: path of the search-space file.
        storage: Optuna storage URL; default SQLite under the study folder.
        device: where latency is measured (``cpu`` or ``cuda``).
        threads: CPU threads for timing (None: all cores).
        timing_s: CPU timing cap per candidate (seconds, warm-up excluded).
        results_dir: parent folder of study outputs.
    """

    study: str = "default"
    trials: int = 50
    budget_mflops: float | None = None
    budget_ms: float | None = None
    objectives: tuple[str, ...] = ("signal", "latency")
    signal: str = "synflow"
    data: str = "synthetic"
    sampler: str = "auto"
    seed: int = 0
    space: str = str(DEFAULT_SPACE)
    storage: str | None = None
    device: str = "cpu"
    threads: int | None = None
    timing_s: float = 2.0
    results_dir: str = str(RESULTS_DIR)

    @property
    def folder(self) -> Path:
        return Path(self.results_dir) / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').as_posix()}"

    @property
    def sampler_name(self) -> str:
        return ("tpe" if self.trials <= 300 else "nsga2") if self.sampler == "auto" else self.sampler

    def validate(self) -> None:
        from mmlab.proxies import Signal

        if not self.study or "/" in self.study or self.study.startswith("."):
            raise ValueError(f"study: {self.study!r} is not allowed; use a plain name like 'default'")
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
        if self.signal not in {s.value for s in Signal}:
            raise ValueError(f"signal: {self.signal!r} is not allowed; choose among {', '.join(s.value for s in Signal)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: {self.device!r} is not allowed; choose cpu or cuda")

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


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    name, seed = config.sampler_name, config.seed
    if name == "tpe":
        # multivariate + constant_liar: good with few trials and with parallel workers.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(10, config.trials // 6)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


@contextmanager
def device_lock(device: str, cache: MeasurementCache) -> Iterator[None]:
    """Serialise timings on one device across processes (a lock file next to the cache)."""
    cache.directory.mkdir(parents=True, exist_ok=True)
    with open(cache.directory / f".timing-{device}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def signal_key(spec: ArchSpec, signal: str, data: str, seed: int) -> str:
    from mmlab import __version__

    return cache_key({"kind": "signal", "spec": spec.key, "signal": signal, "data": data, "seed": seed, "mmlab": __version__})


def cached_score(spec: ArchSpec, config: SearchConfig, cache: MeasurementCache) -> float:
    """The accuracy signal of ``spec``, cached like a measurement (environment-independent)."""
    from mmlab.proxies import score

    key = signal_key(spec, config.signal, config.data, config.seed)
    if (hit := cache.get(key)) is not None:
        return float(hit["signal"])
    value = float(score(spec, config.signal, data=config.data, seed=config.seed))
    cache.put(key, {"signal": value})
    return value


class Objective:
    """The per-trial work; metrics are stored as user attributes, objectives as values."""

    def __init__(self, config: SearchConfig, space: SearchSpace, cache: MeasurementCache) -> None:
        self.config, self.space, self.cache = config, space, cache

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        cfg = self.config
        spec = self.space.suggest(trial)
        model = build(spec)  # built once: counted here, fused and timed by measure() if feasible
        metrics: dict[str, Any] = dict(cached_counts(spec, self.cache, model))
        trial.set_user_attr("spec_json", spec.to_json())
        trial.set_user_attr("spec_key", spec.key)
        feasible = True
        if cfg.budget_mflops is not None:
            violation = metrics["macs"] / 1e6 - cfg.budget_mflops
            trial.set_constraint("macs_mflops", violation)
            feasible = violation <= 0
        if feasible and ("latency" in cfg.objectives or cfg.budget_ms is not None):
            with device_lock(cfg.device, self.cache):
                row = measure(spec, device=cfg.device, threads=cfg.threads, cache=self.cache,
                              max_time_s=cfg.timing_s, model=model)
            metrics.update({k: v for k, v in row.items() if k.startswith(("latency", "throughput", "env_"))})
            if cfg.budget_ms is not None:
                violation = row["latency_ms"] - cfg.budget_ms
                trial.set_constraint("latency_ms", violation)
                feasible = violation <= 0
        if feasible and "signal" in cfg.objectives:
            metrics["signal"] = cached_score(spec, cfg, self.cache)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("feasible", feasible)
        worst = {"maximize": -math.inf, "minimize": math.inf}
        return tuple(
            float(metrics[METRIC_OF[o]]) if METRIC_OF[o] in metrics else worst[OBJECTIVES[o]] for o in cfg.objectives
        )


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            # Several workers share the file: wait for locks instead of failing.
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        if url.startswith(("journal:", "file:")) or url.endswith((".log", ".journal")):
            path = url.split(":", 1)[1] if ":" in url else url
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # any driver / URL problem: one line for the user
        raise ValueError(f"storage: {url!r} cannot be opened ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def open_study(config: SearchConfig) -> optuna.Study:
    """Create or load the study; a stored study with another configuration is refused."""
    storage = _open_storage(config.storage_url)
    directions = [OBJECTIVES[o] for o in config.objectives]
    try:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=make_sampler(config))
    except KeyError:
        study = optuna.create_study(study_name=config.study, storage=storage, sampler=make_sampler(config),
                                    directions=directions)
        study.set_user_attr("config", asdict(config))
        return study
    stored = study.user_attrs.get("config", {})
    for key in ("objectives", "signal", "data", "budget_mflops", "budget_ms", "space", "seed", "device"):
        old, new = stored.get(key), asdict(config)[key]
        if key == "objectives":
            old, new = list(old or []), list(new)
        if old != new:
            raise ValueError(f"{key}: {new!r} differs from the stored study's {old!r}; "
                             f"use another --study name, or the same settings to resume")
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


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
    from mmlab.report import pareto_mask

    feasible = [t for t in trials if t.user_attrs.get("feasible", True) and all(v <= 0 for v in t.constraints.values())]
    if not feasible:
        return 0, 0
    values = [t.values for t in feasible]
    return len(feasible), int(sum(pareto_mask(values, directions)))


def run_worker(config: SearchConfig, progress: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Run trials in this process until the study has ``config.trials`` finished trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")
    cache = MeasurementCache()
    space = SearchSpace.load(config.space)
    study = open_study(config)
    objective = Objective(config, space, cache)
    mine: list[optuna.trial.FrozenTrial] = []  # this process's trials, in order
    while len(finished(study)) < config.trials:
        study.optimize(objective, n_trials=1, catch=(RuntimeError,), callbacks=[lambda _, t: mine.append(t)])
        if len(mine) >= 10 and all(t.state == TrialState.FAIL for t in mine[-10:]):  # a bug, not bad luck
            raise RuntimeError(f"the last 10 trials failed (trial {mine[-1].number} and before); see the log above")
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
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' is not available on this machine; use --device cpu")
    study = open_study(config)
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / STUDY_FILE).write_text(json.dumps({"kind": "search", "study": config.study,
                                                       "storage": config.storage_url, "config": asdict(config)}, indent=2))
    enqueue_presets(study, config, space, cache)
    return study, space, cache


def spawn_workers(config: SearchConfig, n: int) -> list[subprocess.Popen]:
    """Start ``n`` extra worker processes on the same storage (they inherit stdout/stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [subprocess.Popen(worker_command(config), env=env, stdout=subprocess.DEVNULL) for _ in range(n)]
