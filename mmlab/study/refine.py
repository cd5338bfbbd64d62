"""Refine a searched front by training: successive halving over its best candidates, shared and resumable.

``mmlab refine results/<study>`` takes the K best feasible trials of a finished search (the Pareto
front, then the next non-dominated layers until K, the paper presets that fit always among them;
a layer that overflows is cut by NSGA-II's crowding distance), trains each for the first rung's
epochs, keeps the best ⌈n/η⌉ by held-out top-1 (mean over seeds), trains those on to the next
rung, and so on (Jamieson & Talwalkar's successive halving, the inner loop of Hyperband).
Training is :func:`mmlab.signals.train.train` at the data geometry of
:func:`mmlab.signals.score.adapt`. A rung of E epochs after one of E' resumes from the earlier
rung's weights and trains E - E' more epochs, with a fresh AdamW and a fresh warm-up + cosine over
them (a warm restart, as in SGDR) and its own shuffling seed; so "9 epochs" means 1 + 2 + 6 in
three restarts, not one 9-epoch cosine.

Storage: a linked Optuna study ``<study>:refine`` in the search's own storage (``:`` cannot occur
in a search's name, so it never collides). Each of its trials is one *attempt* at one job, a
(search trial, rung, seed) triple named by its ``job`` user attribute (``t12/r1/s0``); the
attempt's state is the job's: WAITING (queued), RUNNING (claimed), COMPLETE (trained; its value
and ``top1`` are the held-out top-1), FAIL. The linked study's user attributes hold the settings
(``config``, compared on every resume), the frozen candidate list (``candidates``) and each rung's
members and, once it is done, its times (``rung0``, ``rung1``, ...). Weights are not in the
database: each finished attempt writes ``results/<study>/refine/t<trial>-r<rung>-s<seed>-a<attempt>.pt``
(the adapted spec, the state dict, top-1) and stores the path; the next rung starts from it.

Sharing the work, exactly once: every state change (claim, completion, failure, queueing the next
rung) happens inside the linked study's mutex (:func:`mmlab.study.storage.study_mutex`: an flock
beside a SQLite or journal file, a PostgreSQL advisory lock on a server), so two processes never
claim the same job, and the next rung is queued by exactly one of them, from the same ranking.
A claim carries the worker's machine (host name and boot id), pid and a heartbeat
(``heartbeat_at``, every ``heartbeat_s``); an attempt whose worker is gone (on this machine, its pid
is dead and two beats were missed; anywhere, no beat for ``grace_s``) is failed as ``lost`` and
queued again; a job lost :data:`MAX_LOST` times is failed. Ctrl-C / SIGTERM
fails the running attempt as ``interrupted`` and queues it again, so running the same command
resumes: nothing finished is trained twice and nothing is lost. A job whose training raises is
failed as ``error`` with its ``fail_reason``; its candidate is marked failed, never promoted, and
the run goes on.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from mmlab.meter.devices import check_device
from mmlab.signals.data import check_source
from mmlab.signals.score import ScoreSettings, adapt
from mmlab.signals.train import TRAIN_BATCH, train
from mmlab.spec.arch import ArchSpec
from mmlab.study.pareto import pareto_mask
from mmlab.study.search import is_feasible
from mmlab.study.storage import load_study, open_storage, study_mutex, study_url

__all__ = ["Progress", "RefineConfig", "RefineRun", "best_result", "linked_name", "load_refine", "parse_rungs",
           "provenance", "refine_worker", "rung_summaries", "select_candidates", "summarize", "top1_error"]

LINK_SUFFIX = ":refine"
CHECKPOINTS = "refine"
"""Sub-folder of ``results/<study>/`` that holds the weights of every finished attempt."""
MAX_LOST = 3
"""Attempts of one job whose worker died before the job is failed (it keeps killing its workers)."""
POLL_S = 1.0
"""Seconds between looks at the storage while other processes hold the remaining jobs."""
SEED_STRIDE = 1000
"""Rung r of a run with seed s shuffles (and drops paths) with seed s + r * SEED_STRIDE."""
OUTCOMES = ("error", "interrupted", "lost")
"""Why an attempt failed: its training raised (final), the user stopped it, or its worker vanished."""
COMPARED = ("top_k", "rungs", "eta", "seeds", "data", "max_per_class", "batch_size", "seed", "keep_presets")
"""Settings a resume must not change (the device may change: CPU and GPU runs may share the work)."""


@dataclass(frozen=True)
class RefineConfig:
    """Everything a refine's numbers depend on, and how it runs.

    Attributes:
        top_k: candidates taken from the search (K), the fitting presets among them.
        rungs: cumulative training epochs at each rung, strictly increasing.
        eta: each rung keeps the best ⌈n / eta⌉ of its n candidates.
        seeds: training seeds per (candidate, rung); ranking uses their mean.
        data: data source (see :func:`mmlab.signals.data.dataset_names`).
        max_per_class: training images per class taken from the source (None: all).
        batch_size: training batch size.
        seed: the data split's seed and the first training seed (the others are seed + 1, ...).
        keep_presets: carry the presets that fit through every rung, as references at equal
            epochs, besides the ⌈n / eta⌉ survivors.
        device: ``cpu`` or ``cuda``.
        heartbeat_s / grace_s: a claimed job's worker stamps it every ``heartbeat_s`` seconds; a
            claim silent for ``grace_s`` is taken back (one whose pid died on this machine after two
            missed beats). Give every process on a storage the same values.
    """

    top_k: int = 9
    rungs: tuple[int, ...] = (1, 3, 9)
    eta: int = 3
    seeds: int = 1
    data: str = "fashion-mnist"
    max_per_class: int | None = 1000
    batch_size: int = TRAIN_BATCH
    seed: int = 0
    keep_presets: bool = False
    device: str = "cpu"
    heartbeat_s: float = 10.0
    grace_s: float = 120.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RefineConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "rungs" else v for k, v in data.items() if k in known})

    def validate(self) -> None:
        """Every field checked before anything is stored; ``ValueError`` naming the field."""
        for name in ("top_k", "eta", "seeds", "batch_size"):
            value, least = getattr(self, name), {"eta": 2, "batch_size": 2}.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: {value!r} is not allowed; must be an integer >= {least}")
        rungs = self.rungs
        if not rungs or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in rungs) \
                or any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise ValueError(f"rungs: {','.join(map(str, rungs)) or '(none)'!r} is not allowed; give training epochs "
                             f"per rung, each >= 1 and strictly increasing, e.g. 1,3,9")
        if self.max_per_class is not None and (isinstance(self.max_per_class, bool) or self.max_per_class < 1):
            raise ValueError(f"max_per_class: {self.max_per_class!r} is not allowed; must be >= 1 (or None: all)")
        if not (0 < self.heartbeat_s < self.grace_s):
            raise ValueError(f"grace_s: {self.grace_s:g} is not allowed; must exceed heartbeat_s ({self.heartbeat_s:g}) > 0")
        check_source(self.data)
        check_device(self.device)

    def comparable(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in COMPARED}

    def score_settings(self) -> ScoreSettings:
        """Data geometry and split of every training run (the split's seed is ``seed``, whatever the run's)."""
        return ScoreSettings(data=self.data, seed=self.seed, max_per_class=self.max_per_class,
                             batch_size=self.batch_size, device=self.device)


def parse_rungs(text: str) -> tuple[int, ...]:
    """``"1,3,9"`` → (1, 3, 9); ``ValueError`` in one line for anything else (order is checked by validate)."""
    try:
        rungs = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ValueError(f"rungs: {text!r} is not allowed; give training epochs per rung, e.g. 1,3,9") from None
    if not rungs:
        raise ValueError(f"rungs: {text!r} is not allowed; give training epochs per rung, e.g. 1,3,9")
    return rungs


def linked_name(study_name: str) -> str:
    return study_name + LINK_SUFFIX


def job_key(trial: int, rung: int, seed: int) -> str:
    return f"t{trial}/r{rung}/s{seed}"


# --- which candidates -------------------------------------------------------------------------------------------


def _minimised(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    return [v if d == "minimize" else -v for v, d in zip(values, directions)]


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point (all objectives minimised): the extremes of every
    objective are infinite, the others sum the normalised gap between their two neighbours."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:]):
            distance[here] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def select_candidates(trials: Sequence[FrozenTrial], directions: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The feasible finished trials to refine: presets that fit first, then non-dominated layers.

    Layer 0 is the feasible Pareto front, layer 1 the front of the rest, and so on, until
    ``top_k`` candidates; the layer that would overflow gives its most isolated members
    (largest crowding distance, then lowest trial number). Presets count towards ``top_k`` but are
    always taken, even beyond it.

    Returns:
        One dict per candidate (``trial``, ``spec_key``, ``preset``, ``layer``), in selection order.
    """
    pool = [t for t in trials if is_feasible(t) and t.values is not None
            and all(math.isfinite(v) for v in t.values) and "spec_json" in t.user_attrs]
    pool.sort(key=lambda t: t.number)
    layer_of: dict[int, int] = {}
    rest, layer = list(pool), 0
    layers: list[list[FrozenTrial]] = []
    while rest:
        mask = pareto_mask([t.values for t in rest], directions)
        layers.append([t for t, m in zip(rest, mask) if m])
        for t in layers[-1]:
            layer_of[t.number] = layer
        rest = [t for t, m in zip(rest, mask) if not m]
        layer += 1
    chosen = [t for t in pool if t.user_attrs.get("preset")]
    for members in layers:
        fresh = [t for t in members if t not in chosen]
        room = top_k - len(chosen)
        if room <= 0:
            break
        if len(fresh) > room:
            crowd = crowding_distance([_minimised(t.values, directions) for t in fresh])
            ranked = sorted(zip(fresh, crowd), key=lambda tc: (-tc[1], tc[0].number))
            fresh = sorted((t for t, _ in ranked[:room]), key=lambda t: t.number)
        chosen += fresh
    return [{"trial": t.number, "spec_key": t.user_attrs.get("spec_key", ""), "preset": t.user_attrs.get("preset", ""),
             "layer": layer_of[t.number]} for t in chosen]


# --- the stored state --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One (search trial, rung, seed) and its attempts (linked-study trials, oldest first)."""

    trial: int
    rung: int
    seed: int
    attempts: list[FrozenTrial] = field(default_factory=list)

    @property
    def key(self) -> str:
        return job_key(self.trial, self.rung, self.seed)

    @property
    def label(self) -> str:
        return f"trial {self.trial} rung {self.rung} seed {self.seed}"

    @property
    def latest(self) -> FrozenTrial:
        return self.attempts[-1]

    @property
    def done(self) -> FrozenTrial | None:
        return next((a for a in self.attempts if a.state == TrialState.COMPLETE), None)

    @property
    def lost(self) -> int:
        return sum(a.user_attrs.get("outcome") == "lost" for a in self.attempts)

    @property
    def status(self) -> str:
        """``done``, ``failed``, ``running``, ``waiting`` or ``orphan`` (its last attempt ended without a retry)."""
        if self.done is not None:
            return "done"
        if any(a.user_attrs.get("outcome") == "error" for a in self.attempts) or self.lost >= MAX_LOST:
            return "failed"
        state = self.latest.state
        return {TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}.get(state, "orphan")

    @property
    def final(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def fail_reason(self) -> str:
        for a in reversed(self.attempts):
            if a.state == TrialState.FAIL:
                return str(a.user_attrs.get("fail_reason", "failed"))
        return ""


@dataclass
class RefineState:
    """What the linked study holds: settings, candidates, rung members and every job."""

    study: optuna.Study
    config: RefineConfig
    candidates: list[dict[str, Any]]
    rungs: list[dict[str, Any]]
    jobs: dict[str, Job]

    def rung_jobs(self, rung: int) -> list[Job]:
        return [j for j in self.jobs.values() if j.rung == rung]

    def rung_complete(self, rung: int) -> bool:
        return rung < len(self.rungs) and all(j.final for j in self.rung_jobs(rung))

    @property
    def finished(self) -> bool:
        last = len(self.rungs) - 1
        if last < 0 or not self.rung_complete(last):
            return False
        return last == len(self.config.rungs) - 1 or not self.rungs[last]["trials"]

    def ranking(self, rung: int) -> list[tuple[int, float]]:
        """(trial, mean top-1 over seeds) of the rung's candidates that trained every seed, best first."""
        results: dict[int, list[float]] = {}
        failed = set()
        for job in self.rung_jobs(rung):
            if job.status == "failed":
                failed.add(job.trial)
            elif job.done is not None:
                results.setdefault(job.trial, []).append(float(job.done.user_attrs["top1"]))
        ranked = [(t, sum(v) / len(v)) for t, v in results.items() if t not in failed and len(v) == self.config.seeds]
        return sorted(ranked, key=lambda tv: (-tv[1], tv[0]))


def _read(study: optuna.Study, config: RefineConfig | None = None) -> RefineState:
    attrs = study.user_attrs
    config = config or RefineConfig.from_dict(attrs.get("config", {}))
    jobs: dict[str, Job] = {}
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "job" not in a:
            continue
        job = jobs.setdefault(a["job"], Job(int(a["trial"]), int(a["rung"]), int(a["seed"])))
        job.attempts.append(t)
    rungs = []
    while f"rung{len(rungs)}" in attrs:
        rungs.append(attrs[f"rung{len(rungs)}"])
    return RefineState(study, config, list(attrs.get("candidates", [])), rungs, jobs)


def load_refine(search: optuna.Study) -> RefineState | None:
    """The refine of a search study (read only), or None if it was never refined."""
    try:
        linked = optuna.load_study(study_name=linked_name(search.study_name), storage=search._storage)
    except KeyError:
        return None
    if "config" not in linked.user_attrs:
        return None
    return _read(linked)


# --- results: mean, standard error ----------------------------------------------------------------------------


def top1_error(top1s: Sequence[float], val_images: int) -> dict[str, float]:
    """Mean held-out top-1 (%) over seeds and its standard error.

    Two independent parts: the binomial standard error of an accuracy measured on ``val_images``
    images, √(p(1 - p) / n) (the same images for every seed, so it does not shrink with seeds),
    with p taken as (k + 1) / (n + 2) for k correct (Laplace), so a perfect score on a small set
    still has an error; and the seed spread, s / √S (sample standard deviation over the S seeds;
    0 when S = 1, where it cannot be estimated). Combined as the root of the sum of their squares.
    """
    n = len(top1s)
    mean = sum(top1s) / n
    images = max(int(val_images), 1)
    p = (mean / 100.0 * images + 1) / (images + 2)
    binomial = 100.0 * math.sqrt(p * (1 - p) / images)
    sd = math.sqrt(sum((v - mean) ** 2 for v in top1s) / (n - 1)) if n > 1 else 0.0
    seed_se = sd / math.sqrt(n) if n > 1 else 0.0
    return {"top1_mean": mean, "top1_se": math.hypot(binomial, seed_se), "top1_binomial_se": binomial,
            "top1_seed_sd": sd}


def summarize(state: RefineState) -> list[dict[str, Any]]:
    """One row per (candidate, rung) with results: top-1 mean and standard error over the seeds
    that finished, train time, and ``status`` (``trained``, ``failed``, ``partial``: some seeds
    still to run); ``final`` marks each candidate's highest rung with a result."""
    rows = []
    for rung, _ in enumerate(state.rungs):
        by_trial: dict[int, list[Job]] = {}
        for job in state.rung_jobs(rung):
            by_trial.setdefault(job.trial, []).append(job)
        for trial, jobs in sorted(by_trial.items()):
            done = [j.done for j in jobs if j.done is not None]
            failed = [j for j in jobs if j.status == "failed"]
            if not done and not failed:
                continue
            row: dict[str, Any] = {"trial": trial, "rung": rung, "epochs": state.config.rungs[rung],
                                   "seeds": len(done), "status": "failed" if failed else
                                   ("trained" if len(done) == state.config.seeds else "partial")}
            if done:
                row.update(top1_error([float(a.user_attrs["top1"]) for a in done],
                                      int(done[0].user_attrs.get("val_images", 0))))
                row["val_images"] = int(done[0].user_attrs.get("val_images", 0))
                row["train_s"] = sum(float(a.user_attrs.get("train_s", 0.0)) for a in done)
                row["checkpoints"] = ";".join(str(a.user_attrs.get("checkpoint", "")) for a in done)
            if failed:
                row["fail_reason"] = failed[0].fail_reason
            rows.append(row)
    best_rung: dict[int, int] = {}
    for row in rows:
        if row["status"] != "failed" and "top1_mean" in row:
            best_rung[row["trial"]] = max(best_rung.get(row["trial"], -1), row["rung"])
    for row in rows:
        row["final"] = best_rung.get(row["trial"]) == row["rung"]
    return rows


def best_result(state: RefineState) -> dict[str, Any] | None:
    """The winner of the halving: among candidates trained on every seed at the highest rung anyone
    reached, the best mean top-1 (the lower trial number on a tie); None before any result."""
    rows = [r for r in summarize(state) if r["final"] and r["status"] == "trained"]
    if not rows:
        return None
    top = max(r["rung"] for r in rows)
    return max((r for r in rows if r["rung"] == top), key=lambda r: (r["top1_mean"], -r["trial"]))


def provenance(state: RefineState, trial: int) -> dict[str, Any]:
    """What a spec exported from a refined trial records: its trained top-1 at its highest rung, and
    the data and protocol behind it (empty when the trial was not refined or has no result)."""
    rows = [r for r in summarize(state) if r["trial"] == trial and r["final"]]
    if not rows:
        return {}
    row, cfg = rows[0], state.config
    return {"refined_top1": row["top1_mean"], "refined_top1_se": row["top1_se"], "refined_epochs": row["epochs"],
            "refined_rung": row["rung"], "refined_seeds": row["seeds"], "refined_data": cfg.data,
            "refined_max_per_class": cfg.max_per_class if cfg.max_per_class is not None else "all",
            "refined_val_images": row["val_images"], "refined_batch_size": cfg.batch_size,
            "refined_seed": cfg.seed, "refined_checkpoints": row["checkpoints"]}


def rung_summaries(state: RefineState) -> list[dict[str, Any]]:
    """Per rung: epochs, candidates, jobs trained / failed, survivors, summed train time and wall time."""
    out = []
    for rung, info in enumerate(state.rungs):
        jobs = state.rung_jobs(rung)
        done = [j.done for j in jobs if j.done is not None]
        starts = [a.datetime_start for j in jobs for a in j.attempts if a.datetime_start]
        ends = [a.datetime_complete for j in jobs for a in j.attempts if a.datetime_complete]
        wall = (max(ends) - min(starts)).total_seconds() if starts and ends and all(j.final for j in jobs) else None
        out.append({
            "rung": rung, "epochs": state.config.rungs[rung],
            "more_epochs": state.config.rungs[rung] - (state.config.rungs[rung - 1] if rung else 0),
            "candidates": list(info.get("trials", [])), "jobs": len(jobs), "trained": len(done),
            "failed": sorted({j.trial for j in jobs if j.status == "failed"}),
            "survivors": state.rungs[rung + 1]["trials"] if rung + 1 < len(state.rungs) else None,
            "train_s": sum(float(a.user_attrs.get("train_s", 0.0)) for a in done),
            "wall_s": info.get("wall_s", wall), "complete": all(j.final for j in jobs),
        })
    return out


# --- running ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """What a worker reports after each job and while it waits for other processes' jobs."""

    rung: int
    epochs: int
    done: int
    total: int
    running: int
    failed: int
    line: str = ""


@dataclass
class RefineRun:
    """What :func:`refine_worker` did in this process."""

    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    finished: bool = False
    interrupted: bool = False
    seconds: float = 0.0


def _machine() -> str:
    """This machine: host name and boot id (two hosts may share a name; a boot id is unique)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _one_line(err: BaseException | str) -> str:
    if isinstance(err, str):
        return err[:500]
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"[:500]


class _Worker:
    """One process's view of a refine: the storages, the mutex and the jobs' state changes."""

    def __init__(self, folder: Path, given: dict[str, Any]) -> None:
        self.folder = folder
        self.search, meta = load_study(folder)  # ValueError in one line for a folder that is no study
        self.url = study_url(folder, meta)
        self.storage = open_storage(self.url, create=False)
        self.name = linked_name(self.search.study_name)
        self.host, self.pid = _machine(), os.getpid()
        self.config = self._open(given)
        self.specs: dict[int, ArchSpec] = {}

    def mutex(self):
        return study_mutex(self.storage, self.url, self.name)

    def _open(self, given: dict[str, Any]) -> RefineConfig:
        """Create the linked study (candidates frozen, rung 0 queued) or load it, comparing the settings."""
        given = {k: tuple(v) if k == "rungs" else v for k, v in given.items()}
        with self.mutex():
            try:
                self.linked = optuna.load_study(study_name=self.name, storage=self.storage)
                stored = self.linked.user_attrs.get("config")
            except KeyError:
                self.linked, stored = None, None
            base = RefineConfig.from_dict(stored) if stored else RefineConfig()
            config = replace(base, **given)  # TypeError for a setting that does not exist
            config.validate()  # every setting, stored or given, checked before anything is trained
            if stored:
                for key in COMPARED:
                    if key in given and config.comparable()[key] != base.comparable()[key]:
                        raise ValueError(f"{key}: {config.comparable()[key]!r} differs from this study's refine "
                                         f"({base.comparable()[key]!r}); leave it out to resume, or start over: "
                                         f"optuna delete-study --study-name '{self.name}' --storage '{self.url}'")
                return config
            if self.linked is None:
                self.linked = optuna.create_study(study_name=self.name, storage=self.storage, direction="maximize")
            self._start(config)
            return config

    def _start(self, config: RefineConfig) -> None:
        """Freeze the candidates and queue rung 0. Idempotent, so a start cut short is finished by the next one."""
        candidates = self.linked.user_attrs.get("candidates")
        if candidates is None:
            directions = [d.name.lower() for d in self.search.directions]
            candidates = select_candidates(self.search.get_trials(deepcopy=False), directions, config.top_k)
            if not candidates:
                raise ValueError(f"{self.folder}: no feasible finished trial to refine; run or resume `mmlab search` first")
            self.linked.set_user_attr("search_study", self.search.study_name)
            self.linked.set_user_attr("candidates", candidates)
        self._queue(0, [c["trial"] for c in candidates], config, ranking=[])
        self.linked.set_user_attr("config", asdict(config))  # last: a refine without config is not started

    def _queue(self, rung: int, trials: list[int], config: RefineConfig, ranking: list) -> None:
        """Queue the rung's jobs that are not queued yet, then record the rung (a rung is seen only whole)."""
        queued = {t.user_attrs.get("job") for t in self.linked.get_trials(deepcopy=False)}
        for trial in trials:
            for s in range(config.seeds):
                if job_key(trial, rung, s) not in queued:
                    self._enqueue(trial, rung, s, config, attempt=0)
        self.linked.set_user_attr(f"rung{rung}", {"trials": trials, "ranking": ranking, "queued_at": time.time()})

    def _enqueue(self, trial: int, rung: int, seed: int, config: RefineConfig, attempt: int) -> None:
        self.linked.enqueue_trial({}, user_attrs={
            "job": job_key(trial, rung, seed), "trial": trial, "rung": rung, "seed": seed, "attempt": attempt,
            "epochs": config.rungs[rung], "from_epochs": config.rungs[rung - 1] if rung else 0})

    def state(self) -> RefineState:
        return _read(self.linked, self.config)

    # Everything below that changes a job's state runs inside the mutex.

    def _recover(self, state: RefineState) -> None:
        """Take back the claims of dead or silent workers, and retry any job left without an attempt."""
        now = time.time()
        for job in state.jobs.values():
            if job.rung >= len(state.rungs):
                continue  # queued by a start or an advance that was cut short: the next one finishes it
            if job.status == "orphan":
                self._enqueue(job.trial, job.rung, job.seed, self.config, attempt=len(job.attempts))
                continue
            if job.status != "running":
                continue
            a = job.latest
            beat = a.user_attrs.get("heartbeat_at") or (a.datetime_start.timestamp() if a.datetime_start else now)
            host, pid = a.user_attrs.get("host"), a.user_attrs.get("pid")
            silent = now - float(beat)
            if host == self.host and isinstance(pid, int) and pid != self.pid and not _alive(pid) \
                    and silent > 2 * self.config.heartbeat_s:  # two missed beats: not a pid of another namespace
                reason = f"lost: worker pid {pid} on {host} died"
            elif silent > self.config.grace_s:
                reason = f"lost: no heartbeat from pid {pid} on {host} for {silent:.0f} s"
            else:
                continue
            if self._fail(a, "lost", reason) and job.lost + 1 < MAX_LOST:
                self._enqueue(job.trial, job.rung, job.seed, self.config, attempt=len(job.attempts))

    def _fail(self, attempt: FrozenTrial, outcome: str, reason: str) -> bool:
        """Mark an attempt failed; False when it had already finished (nothing changed)."""
        try:
            self.storage.set_trial_user_attr(attempt._trial_id, "outcome", outcome)
            self.storage.set_trial_user_attr(attempt._trial_id, "fail_reason", reason[:500])
            self.storage.set_trial_state_values(attempt._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def _advance(self, state: RefineState) -> bool:
        """Queue the next rung once the last one is complete; True when something was queued."""
        last = len(state.rungs) - 1
        if last < 0 or not state.rung_complete(last):
            return False
        info = dict(state.rungs[last])
        if "wall_s" not in info:  # the rung's times, stored once it is complete
            summary = rung_summaries(state)[last]
            info.update(wall_s=summary["wall_s"], train_s=summary["train_s"], completed_at=time.time())
            self.linked.set_user_attr(f"rung{last}", info)
            state.rungs[last] = info
        if state.finished:
            return False
        ranking = state.ranking(last)
        keep = [t for t, _ in ranking[:math.ceil(len(ranking) / self.config.eta)]]
        if self.config.keep_presets:
            presets = {c["trial"] for c in state.candidates if c.get("preset")}
            keep += [t for t, _ in ranking if t in presets and t not in keep]
        self._queue(last + 1, keep, self.config, ranking=[[t, v] for t, v in ranking])
        return True

    def _claim(self, state: RefineState) -> Job | None:
        waiting = sorted((j for j in state.jobs.values() if j.status == "waiting" and j.rung < len(state.rungs)),
                         key=lambda j: (j.rung, state.rungs[j.rung]["trials"].index(j.trial), j.seed))
        for job in waiting:
            tid = job.latest._trial_id
            if not self.storage.set_trial_state_values(tid, TrialState.RUNNING):
                continue  # only outside the mutex could this happen (an Optuna ask() on the linked study)
            for key, value in (("host", self.host), ("pid", self.pid), ("device", self.config.device),
                               ("heartbeat_at", time.time())):
                self.storage.set_trial_user_attr(tid, key, value)
            return job
        return None

    def next_job(self) -> tuple[Job | None, RefineState]:
        with self.mutex():
            state = self.state()
            self._recover(state)
            while self._advance(state := self.state()):
                pass
            return self._claim(state), self.state()

    # Training: outside the mutex.

    def spec(self, trial: int) -> ArchSpec:
        if not self.specs:
            self.specs = {t.number: ArchSpec.from_json(t.user_attrs["spec_json"])
                          for t in self.search.get_trials(deepcopy=False) if "spec_json" in t.user_attrs}
        return self.specs[trial]

    def checkpoint_of(self, state: RefineState, trial: int, rung: int, seed: int) -> Path:
        job = state.jobs.get(job_key(trial, rung, seed))
        done = job.done if job is not None else None
        if done is None:
            raise RuntimeError(f"rung {rung} of trial {trial} (seed {seed}) has no result to resume from")
        return self.folder / done.user_attrs["checkpoint"]

    def run(self, job: Job, state: RefineState) -> dict[str, Any]:
        """Train one claimed job; returns the user attributes of its result (weights already on disk)."""
        cfg, attempt = self.config, job.latest
        adapted, ds = adapt(self.spec(job.trial), cfg.score_settings())
        init = None
        if job.rung > 0:
            path = self.checkpoint_of(state, job.trial, job.rung - 1, job.seed)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: the weights of rung {job.rung - 1} to resume from")
            init = torch.load(path, map_location="cpu", weights_only=True)["state"]
        epochs = cfg.rungs[job.rung] - (cfg.rungs[job.rung - 1] if job.rung else 0)
        run_seed = cfg.seed + job.seed
        with _Heartbeat(self.storage, attempt._trial_id, cfg.heartbeat_s):
            result = train(adapted, ds.train, ds.val, epochs=epochs, batch_size=cfg.batch_size,
                           seed=run_seed + SEED_STRIDE * job.rung, device=cfg.device, num_classes=ds.num_classes,
                           init_state=init)
        relative = Path(CHECKPOINTS) / f"t{job.trial}-r{job.rung}-s{job.seed}-a{attempt.user_attrs['attempt']}.pt"
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{self.pid}.part")
        torch.save({"state": result.state, "spec_json": adapted.to_json(), "trial": job.trial, "rung": job.rung,
                    "epochs": cfg.rungs[job.rung], "seed": run_seed, "top1": result.top1, "data": ds.name}, partial)
        os.replace(partial, path)  # whole or absent: a killed save never leaves a torn file under the real name
        return {"top1": result.top1, "top1_per_epoch": list(result.top1_per_epoch), "train_s": result.seconds,
                "train_images": result.train_images, "val_images": len(ds.val), "data": ds.name,
                "checkpoint": relative.as_posix(), "finished_at": time.time()}

    def complete(self, job: Job, attrs: dict[str, Any]) -> bool:
        """Store a result; False when the claim was taken back meanwhile (the result is dropped)."""
        tid = job.latest._trial_id
        with self.mutex():
            if self.storage.get_trial(tid).state != TrialState.RUNNING:
                (self.folder / attrs["checkpoint"]).unlink(missing_ok=True)
                return False
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(tid, key, value)
            self.storage.set_trial_state_values(tid, TrialState.COMPLETE, values=[float(attrs["top1"])])
        return True

    def fail(self, job: Job, err: BaseException | str, outcome: str) -> None:
        with self.mutex():
            attempt = self.storage.get_trial(job.latest._trial_id)
            if attempt.state == TrialState.RUNNING and self._fail(attempt, outcome, _one_line(err)) \
                    and outcome == "interrupted":
                self._enqueue(job.trial, job.rung, job.seed, self.config, attempt=len(job.attempts))


class _Heartbeat:
    """Stamp ``heartbeat_at`` on a claimed attempt every ``every`` seconds while training runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, every: float) -> None:
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="refine-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat_at", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # taken back: the result will be dropped when training ends
            except Exception:  # the storage is briefly busy: beat again next time
                continue

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _progress_of(state: RefineState) -> Progress:
    rung = len(state.rungs) - 1
    jobs = state.rung_jobs(rung)
    return Progress(rung=rung, epochs=state.config.rungs[rung], done=sum(j.status == "done" for j in jobs),
                    total=len(jobs), running=sum(j.status == "running" for j in jobs),
                    failed=sum(j.status == "failed" for j in jobs))


def refine_worker(folder: str | Path, *, progress: Callable[[Progress], None] | None = None,
                  **given: Any) -> RefineRun:
    """Work on the refine of ``results/<study>`` until every rung is done; safe to run in many processes.

    The first process creates the refine from the settings in ``given`` (:class:`RefineConfig`'s
    fields, over its defaults); later ones and resumes take the stored settings, and any setting in
    ``given`` must match them (the device and the heartbeat excepted). An interrupt
    (KeyboardInterrupt; SIGTERM where the caller maps it so) queues the running job again and
    returns, with ``interrupted`` set.

    Raises:
        ValueError: in one line, before anything is trained: a bad setting, a folder that is no
            study, a stored refine with other settings, or a study with nothing feasible.
    """
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = _Worker(Path(folder), given)
    run = RefineRun()
    job = None
    try:
        while True:
            job, state = worker.next_job()
            if progress is not None:
                progress(_progress_of(state))
            if job is None:
                if state.finished:
                    break
                time.sleep(POLL_S)  # other processes hold the rest of this rung
                continue
            try:
                attrs = worker.run(job, state)
            except Exception as err:  # this candidate fails alone, with its reason; the run goes on
                worker.fail(job, err, "error")
                run.failed.append(job.key)
                line = f"{job.label} failed: {_one_line(err)}"
            else:
                if worker.complete(job, attrs):
                    run.trained.append(job.key)
                    line = f"{job.label}: top-1 {attrs['top1']:.2f}% ({attrs['train_s']:.1f} s)"
                else:
                    line = f"{job.label}: its claim was taken back while it trained; the result is dropped"
            job = None
            if progress is not None:
                progress(Progress(**{**asdict(_progress_of(worker.state())), "line": line}))
        run.finished = True
    except KeyboardInterrupt:
        if job is not None:  # claimed, not stored: back in the queue
            worker.fail(job, "interrupted (SIGINT / SIGTERM); queued again", "interrupted")
        run.interrupted = True
    run.seconds = time.perf_counter() - started
    return run
