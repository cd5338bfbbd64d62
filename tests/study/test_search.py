import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmlab.spec import load_spec
from mmlab.cli import app
from mmlab.study.pareto import pareto_mask
from mmlab.study.search import Objective, SearchConfig, finished
from mmlab.study.storage import load_study

runner = CliRunner()
TINY_SPACE = "tiny"
BUDGET = "0.9"  # M MACs: the tiny space spans about 0.3 to 3 M, so both sides of it occur


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def search_args(results, study="s", trials=6, *extra):
    return ["search", "--space", TINY_SPACE, "--study", study, "--trials", str(trials), "--budget-mflops", BUDGET,
            "--signal", "params", "--timing-s", "0.05", "--threads", "1", "--results-dir", str(results), *extra]


def stored(results, study="s"):
    study_obj, _ = load_study(results / study)
    return study_obj


def test_search_end_to_end_and_resume(tmp_path):
    result = runner.invoke(app, search_args(tmp_path))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "s"
    for name in ("trials.csv", "pareto.csv", "pareto.png", "report.md", "report.html", "study.json"):
        assert (folder / name).is_file(), name
    study = stored(tmp_path)
    done = finished(study)
    assert len(done) == 6
    frame = pd.read_csv(folder / "trials.csv")
    assert sorted(frame["trial"]) == [t.number for t in study.get_trials()]
    # Outputs agree with the storage: feasibility, MACs, the front.
    for t in done:
        row = frame[frame["trial"] == t.number].iloc[0]
        assert row["macs"] == t.user_attrs["macs"]
        assert bool(row["feasible"]) == (t.user_attrs["macs"] <= 0.9e6)
    feasible = [t for t in done if t.user_attrs["feasible"]]
    front = pd.read_csv(folder / "pareto.csv")
    mask = pareto_mask([t.values for t in feasible], ["maximize", "minimize"])
    assert sorted(front["trial"]) == sorted(t.number for t, m in zip(feasible, mask) if m)
    assert (front["macs"] <= 0.9e6).all()
    assert "Pareto front" in (folder / "report.md").read_text()
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    first = {t.number: t.params for t in done}

    # Same command, more trials: resumes, loses nothing.
    result = runner.invoke(app, search_args(tmp_path, "s", 9))
    assert result.exit_code == 0, result.output
    study = stored(tmp_path)
    assert len(finished(study)) == 9
    assert all(study.trials[n].params == p for n, p in first.items())

    # mmlab report regenerates from the storage alone.
    (folder / "trials.csv").unlink()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(folder / "trials.csv")) == 9


def test_over_budget_trials_are_infeasible_and_never_timed(tmp_path, monkeypatch):
    timed = []
    import mmlab.study.candidate as candidate_mod

    real_measure = candidate_mod.measure
    monkeypatch.setattr(candidate_mod, "measure", lambda spec, **kw: timed.append(spec.key) or real_measure(spec, **kw))
    result = runner.invoke(app, search_args(tmp_path, "c", 8))
    assert result.exit_code == 0, result.output
    done = finished(stored(tmp_path, "c"))
    over = [t for t in done if t.user_attrs["macs"] > 0.9e6]
    under = [t for t in done if t.user_attrs["macs"] <= 0.9e6]
    assert over and under
    for t in over:
        assert t.constraints["macs_mflops"] > 0 and not t.user_attrs["feasible"]
        assert "latency_ms" not in t.user_attrs and t.user_attrs["signal"] is None
        assert t.user_attrs["spec_key"] not in timed
    for t in under:
        assert t.constraints["macs_mflops"] <= 0 and t.user_attrs["feasible"]
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["signal"] == t.user_attrs["params"]


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_call = Objective.__call__

    def flaky(self, trial):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_call(self, trial)

    monkeypatch.setattr(Objective, "__call__", flaky)
    result = runner.invoke(app, search_args(tmp_path, "i", 6))
    assert result.exit_code == 130
    assert "resume with" in result.output and "mmlab search" in result.output
    study = stored(tmp_path, "i")
    assert len(finished(study)) == 3
    assert [t.state.name for t in study.trials].count("FAIL") == 1
    assert (tmp_path / "i" / "trials.csv").is_file()
    result = runner.invoke(app, search_args(tmp_path, "i", 6))
    assert result.exit_code == 0, result.output
    assert len(finished(stored(tmp_path, "i"))) == 6


def test_two_worker_processes_lose_nothing(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mmlab", *search_args(tmp_path, "w", 8, "--workers", "2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = stored(tmp_path, "w")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= 8 and "FAIL" not in states and "RUNNING" not in states
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    assert len(pd.read_csv(tmp_path / "w" / "trials.csv")) == len(numbers)


def test_export_round_trip(tmp_path):
    assert runner.invoke(app, search_args(tmp_path, "e", 3)).exit_code == 0
    study = stored(tmp_path, "e")
    trial = finished(study)[-1]
    out = tmp_path / "arch.toml"
    result = runner.invoke(app, ["export", str(tmp_path / "e"), "--trial", str(trial.number), "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = load_spec(out)
    assert spec.key == trial.user_attrs["spec_key"]
    shown = runner.invoke(app, ["show", str(out), "--json"])
    assert json.loads(shown.output)["key"] == spec.key
    result = runner.invoke(app, ["export", str(tmp_path / "e"), "--trial", "99", "-o", str(out)])
    assert result.exit_code == 2 and "trial: 99 is not in study" in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget-mflops", "0"], "budget_mflops: 0 is not allowed; a budget must be > 0"),
        (["--budget-mflops", "0.01"], "smallest member of space 'tiny' needs"),
        (["--budget-ms", "-1"], "budget_ms: -1 is not allowed"),
        (["--objectives", "signal,accuracy"], "objectives: 'accuracy' is not allowed"),
        (["--signal", "vibes"], "signal: 'vibes' is not allowed"),
        (["--storage", "nosuchdb://x/y"], "storage: 'nosuchdb://x/y' cannot be opened"),
        (["--workers", "0"], "workers: 0 is not allowed"),
    ],
)
def test_search_errors_touch_nothing(tmp_path, extra, message):
    assert runner.invoke(app, search_args(tmp_path, "keep", 2)).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "keep").iterdir()}
    n_before = len(stored(tmp_path, "keep").trials)
    result = runner.invoke(app, search_args(tmp_path, "keep", 4, *extra))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(stored(tmp_path, "keep").trials) == n_before
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "keep").iterdir()} == before


def test_unknown_sampler_and_bad_space_file(tmp_path):
    result = runner.invoke(app, search_args(tmp_path, "x", 2, "--sampler", "annealing"))
    assert result.exit_code == 2 and "annealing" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("resolutoin = [64]\n[[stage]]\nwidth = 16\ndepth = 1\n")
    args = search_args(tmp_path, "x", 2)
    args[args.index("--space") + 1] = str(bad)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "unknown key 'resolutoin'" in result.output
    assert not (tmp_path / "x").exists()


def test_sampler_choice_by_trial_count():
    assert SearchConfig(trials=50).sampler_name == "tpe"
    assert SearchConfig(trials=1000).sampler_name == "nsga2"
    assert SearchConfig(trials=50, sampler="gp").sampler_name == "gp"
