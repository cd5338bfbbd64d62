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


def test_a_trial_that_raises_fails_alone_and_the_study_goes_on(tmp_path, monkeypatch):
    import mmlab.study.search as search_mod

    real, calls = search_mod.evaluate, {"n": 0}

    def flaky(spec, plan, cache=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("naswot: the kernel matrix is singular")
        return real(spec, plan, cache, **kw)

    monkeypatch.setattr(search_mod, "evaluate", flaky)
    result = runner.invoke(app, search_args(tmp_path, "f", 4))
    assert result.exit_code == 0, result.output
    study = stored(tmp_path, "f")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and len(finished(study)) == 4
    assert failed[0].user_attrs["fail_reason"] == "ValueError: naswot: the kernel matrix is singular"
    assert {"worker_host", "worker_pid"} <= set(failed[0].user_attrs)


def test_an_error_still_writes_the_report_and_is_one_line(tmp_path, monkeypatch):
    import mmlab.api as api_mod

    def boom(*args, **kw):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(api_mod, "measure_presets", boom)
    result = runner.invoke(app, search_args(tmp_path, "r", 3))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: RuntimeError: out of memory (finished trials are kept; report: {tmp_path / 'r' / 'report.md'})"]
    assert "Traceback" not in result.output
    assert len(pd.read_csv(tmp_path / "r" / "trials.csv")) == 3


def test_resume_with_other_settings_is_refused(tmp_path):
    assert runner.invoke(app, search_args(tmp_path, "t", 2)).exit_code == 0
    for extra, message in ((["--threads", "2"], "threads: 2 differs from the stored study's 1"),
                           (["--timing-s", "0.1"], "timing_s: 0.1 differs from the stored study's 0.05"),
                           (["--signal", "macs"], "signal: 'macs' differs from the stored study's 'params'")):
        args = search_args(tmp_path, "t", 3)
        for flag, value in zip(extra[::2], extra[1::2]):
            args[args.index(flag) + 1] = value
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert len(stored(tmp_path, "t").trials) == 2


@pytest.mark.parametrize("extra, message", [
    (["--threads", "0"], "threads: 0 is not allowed; must be >= 1"),
    (["--timing-s", "-1"], "timing_s: -1 is not allowed; the timing cap must be > 0 seconds"),
    (["--timing-s", "inf"], "timing_s: inf is not allowed"),
    (["--trials", "0"], "trials: 0 is not allowed"),
    (["--study", "../escape"], "study: '../escape' is not allowed"),
    (["--study", "/etc"], "study: '/etc' is not allowed"),
    (["--study", ".."], "study: '..' is not allowed"),
    (["--study", ""], "study: '' is not allowed"),
    (["--data", "imagefolder:/no/such/folder"], "imagefolder: '/no/such/folder' is not a folder"),
    (["--data", "mnist"], "unknown dataset source 'mnist'"),
    (["--objectives", "signal,signal"], "objectives: 'signal,signal' is not allowed"),
])
def test_bad_search_inputs_are_one_line_and_touch_nothing(tmp_path, extra, message):
    args = search_args(tmp_path, "b", 2)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_results_dir_and_cache_dir_that_are_files(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    args = search_args(tmp_path, "b", 2)
    args[args.index("--results-dir") + 1] = str(a_file)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and f"results_dir: {a_file / 'b'} is under {a_file}, which is a file" in result.output
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(a_file))
    result = runner.invoke(app, search_args(tmp_path, "c", 2))
    assert result.exit_code == 2 and f"cache: {a_file} is a file, not a folder" in result.output
    assert not (tmp_path / "c").exists()  # checked before any work


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_results_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = search_args(tmp_path, "b", 2)
    args[args.index("--results-dir") + 1] = str(locked)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "cannot be created" in result.output


def test_repeated_suggestions_are_pruned_not_evaluated(tmp_path):
    """A space of 2 architectures and 2 trials: every further suggestion repeats one; they are
    stored PRUNED naming the trial they repeat, and a resume past the space's size stops in one line."""
    space = tmp_path / "two.toml"
    space.write_text('name = "two"\nresolution = [64]\nnum_classes = 10\nd_state = [1, 2]\n'
                     '[[stage]]\nwidth = 16\ndepth = 1\n[[stage]]\nwidth = 32\ndepth = 1\n')
    args = ["search", "--space", str(space), "--study", "two", "--trials", "2", "--objectives", "macs,params",
            "--sampler", "random", "--results-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = stored(tmp_path, "two")
    keys = [t.user_attrs["spec_key"] for t in finished(study)]
    assert len(keys) == 2 and len(set(keys)) == 2
    for t in study.trials:
        if t.state.name == "PRUNED":
            assert t.user_attrs["spec_key"] in keys and "macs" not in t.user_attrs
    args[args.index("--trials") + 1] = "3"
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "the space is (nearly) exhausted" in result.output
