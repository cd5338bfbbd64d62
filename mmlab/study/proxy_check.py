"""Which accuracy signal can be trusted on this data? Every signal against short training, with statistics.

``proxy_check`` samples N architectures from a space (default: the default space under a 300 M
MAC budget, the region users search), computes every signal on each, trains each with the
check's seed and, for a subset, with a second seed: the rank correlation between the two seeds is
the noise ceiling no signal can beat. Each finished architecture is appended to ``rows.jsonl``
at once, so an interrupted check (Ctrl-C included) resumes, and several processes can share the
work with ``shard=(i, k)`` (process i takes every k-th architecture). The statistics live in
:mod:`mmlab.study.stats`; the report in :mod:`mmlab.reports.proxy_check`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmlab.meter.cache import MeasurementCache
from mmlab.meter.devices import check_device
from mmlab.meter.measure import cached_counts
from mmlab.signals.data import check_source
from mmlab.signals.registry import SIGNALS
from mmlab.signals.score import ScoreSettings, data_geometry
from mmlab.spec.arch import ArchSpec
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace, read_space_text
from mmlab.study.candidate import EvalPlan, evaluate
from mmlab.study.grid import read_rows  # one reader of JSON-lines rows, cut last lines skipped

CHECKED = tuple(name for name, info in SIGNALS.items() if info.kind != "training")
TARGET = "signal_train"
SAMPLE_FILE, ROWS_FILE, SETTINGS_FILE = "sample.json", "rows.jsonl", "check.json"


@dataclass(frozen=True)
class CheckSettings:
    """Everything a check's numbers depend on (stored in check.json; a resume must match).

    Attributes:
        data: data source. n: architectures. epochs / max_per_class / batch_size: the training
        protocol (max_per_class: training images per class; None: all). seed: sample, proxies
        and first training seed; the retest subset trains again with seed + 1. retest: how many
        architectures (the first ones of the sample) get the second seed. space / budget_mflops:
        where the sample comes from (MACs in millions, complete count). device: where signals and
        training run. signals: the signals checked.
    """

    data: str = "fashion-mnist"
    n: int = 40
    epochs: int = 3
    max_per_class: int | None = 500
    batch_size: int | None = None
    seed: int = 0
    retest: int = 10
    space: str = DEFAULT_SPACE
    budget_mflops: float | None = 300.0
    device: str = "cpu"
    signals: tuple[str, ...] = field(default=CHECKED)

    def score(self, seed: int) -> ScoreSettings:
        return ScoreSettings(data=self.data, seed=seed, epochs=self.epochs, max_per_class=self.max_per_class,
                             batch_size=self.batch_size, device=self.device, space=self.space)

    def comparable(self) -> dict[str, Any]:
        """The fields that change the numbers (device excepted: CPU and GPU runs may share work)."""
        return {k: v for k, v in asdict(self).items() if k != "device"}


def folder_name(data: str) -> str:
    return "proxy_check_" + "".join(c if c.isalnum() else "_" for c in data.split(":", 1)[0])


def check_settings(s: CheckSettings) -> None:
    if s.n < 3:
        raise ValueError(f"n: {s.n} is not allowed; a rank correlation needs at least 3 architectures")
    if s.epochs < 1:
        raise ValueError(f"epochs: {s.epochs} is not allowed; must be >= 1")
    if s.batch_size is not None and s.batch_size < 2:
        raise ValueError(f"batch_size: {s.batch_size} is not allowed; training needs batches of at least 2")
    if not 0 <= s.retest <= s.n:
        raise ValueError(f"retest: {s.retest} is not allowed; must be between 0 and n ({s.n})")
    if s.budget_mflops is not None and not s.budget_mflops > 0:
        raise ValueError(f"budget_mflops: {s.budget_mflops:g} is not allowed; a budget must be > 0")
    for name in s.signals:
        if name not in CHECKED:
            raise ValueError(f"signals: {name!r} is not allowed; choose among {', '.join(CHECKED)}")
    check_source(s.data)
    check_device(s.device)
    read_space_text(s.space)


def draw_sample(s: CheckSettings, cache: MeasurementCache) -> list[ArchSpec]:
    """N distinct architectures from the space, drawn uniformly, kept if within the MAC budget."""
    space = SearchSpace.load(s.space)
    kept: list[ArchSpec] = []
    for spec in space.sample(40 * s.n, seed=s.seed):
        if s.budget_mflops is None or cached_counts(spec, cache)["macs"] / 1e6 <= s.budget_mflops:
            kept.append(spec)
        if len(kept) == s.n:
            return kept
    raise ValueError(f"budget_mflops: only {len(kept)} of {40 * s.n} sampled architectures fit "
                     f"{s.budget_mflops:g} M MACs; raise the budget or lower n")


def prepare(s: CheckSettings, results_dir: str | Path = "results") -> tuple[Path, list[ArchSpec]]:
    """The check's folder and sample: created once, then reused (a resume with other settings is refused)."""
    check_settings(s)
    folder = Path(results_dir) / folder_name(s.data)
    stored = folder / SETTINGS_FILE
    if stored.is_file():
        old = json.loads(stored.read_text())
        for key, value in json.loads(json.dumps(s.comparable())).items():
            if old.get(key) != value:
                raise ValueError(f"{key}: {value!r} differs from the stored check's {old.get(key)!r} in {folder}; "
                                 "use --results-dir elsewhere, or the same settings to resume")
        return folder, [ArchSpec.from_json(j) for j in json.loads((folder / SAMPLE_FILE).read_text())]
    sample = draw_sample(s, MeasurementCache())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAMPLE_FILE).write_text(json.dumps([spec.to_json() for spec in sample], indent=1))
    stored.write_text(json.dumps({**s.comparable(), "geometry": "input side, stem stride = "
                                  + ", ".join(f"{n} stages: {data_geometry(_stages(sample, n))}" for n in sorted({x.num_stages for x in sample}))},
                                 indent=2))
    return folder, sample


def _stages(sample: list[ArchSpec], n: int) -> ArchSpec:
    return next(spec for spec in sample if spec.num_stages == n)


def work_list(s: CheckSettings, sample: list[ArchSpec]) -> list[tuple[str, int, ArchSpec]]:
    """(kind, seed, spec): every architecture with the check's seed; each of the first ``retest`` is
    followed at once by its second-seed run, so a partial check already has its noise ceiling."""
    work = []
    for i, spec in enumerate(sample):
        work.append(("main", s.seed, spec))
        if i < s.retest:
            work.append(("retest", s.seed + 1, spec))
    return work


def proxy_check(
    s: CheckSettings = CheckSettings(),
    *,
    results_dir: str | Path = "results",
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int, int, str], None] | None = None,
    deadline: float | None = None,
) -> Path:
    """Score and train what ``rows.jsonl`` does not hold yet (this shard's share); returns the folder.

    ``deadline`` (a ``time.time()`` instant): start no run that would not finish by then, judged by
    the median seconds of the finished runs of the same kind on this device (a run cut off by the
    caller's deadline is lost; one never started costs nothing and is left for the resume).
    """
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard: {index}/{count} is not allowed; give I/K with 0 <= I < K")
    folder, sample = prepare(s, results_dir)
    rows_path = folder / ROWS_FILE
    work = work_list(s, sample)
    mine = [item for i, item in enumerate(work) if i % count == index]
    cache = MeasurementCache()
    for i, (kind, seed, spec) in enumerate(mine):
        rows = read_rows(rows_path)  # re-read: other shards append too
        done = {(r["kind"], r["spec_key"]) for r in rows}
        if progress is not None:
            progress(i, len(mine), f"{kind} {spec.key}")
        if (kind, spec.key) in done:
            continue
        if deadline is not None and time.time() + expected_seconds(rows, kind, s.device) > deadline:
            if progress is not None:
                progress(i, len(mine), "deadline: the rest is left for the resume")
            return folder
        signals = (*s.signals, "train") if kind == "main" else ("train",)
        record = evaluate(spec, EvalPlan(timing=False, signals=signals, score=s.score(seed)), cache)
        line = json.dumps({"kind": kind, **record.to_row(), "host_pid": f"{os.uname().nodename}:{os.getpid()}"})
        with rows_path.open("a") as fh:  # one line per finished architecture: an interruption loses only the current one
            fh.write(line + "\n")
    if progress is not None:
        progress(len(mine), len(mine), "done")
    return folder


def expected_seconds(rows: list[dict[str, Any]], kind: str, device: str) -> float:
    """Median seconds of the finished ``kind`` runs on ``device`` among ``rows`` (0 when there are none)."""
    seconds = sorted(r["score_s"] + r.get("measure_s", 0.0) for r in rows
                     if r.get("kind") == kind and r.get("signal_device") == device and r.get("score_s"))
    return statistics.median(seconds) if seconds else 0.0


def read_check(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(main rows, retest rows, settings) of a check's folder, one row per architecture and kind."""
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_rows(folder / ROWS_FILE):
        rows[(row.get("kind", "main"), row["spec_key"])] = row
    main = [r for (kind, _), r in rows.items() if kind == "main"]
    retest = [r for (kind, _), r in rows.items() if kind == "retest"]
    return main, retest, settings
