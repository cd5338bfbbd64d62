"""mmlab refine: successive halving over a searched front, stored with the study, shared and resumable.

The studies here are built directly in Optuna storage, with the rows a search stores, over tiny-space
architectures (a real search takes minutes on two shared cores); training is real, on a few dozen
synthetic images, one torch thread.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

import mmlab.study.refine as refine_mod
from mmlab.api import export, refine
from mmlab.cli import app
from mmlab.model import build
from mmlab.record import Record
from mmlab.signals.score import ScoreSettings, adapt
from mmlab.signals.train import train
from mmlab.spec import ArchSpec, get_preset
from mmlab.spec.space import SearchSpace
from mmlab.study.refine import (RefineConfig, linked_name, load_refine, select_candidates, summarize, top1_error)
from mmlab.study.storage import load_study

runner = CliRunner()
DATA = "synthetic:n=48,classes=3"
FAST = {"data": DATA, "batch_size": 16, "max_per_class": None}
# (signal, latency ms): layer 0 = trials 0, 1, 2; layer 1 = 3, 4; layer 2 = 5, 6; trial 7 is infeasible.
POINTS = [(9.0, 3.0), (7.0, 2.0), (5.0, 1.0), (8.0, 3.5), (6.0, 2.5), (7.5, 4.0), (4.0, 3.0), (10.0, 1.0)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one torch thread trains these tiny networks fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_specs(n: int):
    space = SearchSpace.load("tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    specs = {}
    while len(specs) < n:
        spec = space.suggest(study.ask())
        specs.setdefault(spec.key, spec)
    return list(specs.values())


def make_study(results: Path, name: str = "s", points=POINTS, presets: dict[int, str] | None = None) -> Path:
    """A finished search study in results/<name>/, as `mmlab search` leaves it (rows of Record)."""
    folder = results / name
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}",
                                directions=["maximize", "minimize"])
    config = {"study": name, "objectives": ["signal", "latency"], "signal": "params", "data": "synthetic",
              "budget_mflops": 0.9, "space": "tiny"}
    study.set_user_attr("config", config)
    for i, (spec, (value, latency)) in enumerate(zip(tiny_specs(len(points)), points)):
        feasible = i != 7
        record = Record(spec, preset=(presets or {}).get(i, ""), counts={"params": 1000 + i, "macs": 500_000 + i},
                        timing={"latency_ms": latency, "latency_p10_ms": 0.9 * latency, "latency_p90_ms": 1.2 * latency},
                        signals={"params": value}, signal="params",
                        constraints={"macs_mflops": -0.1 if feasible else 0.5})
        study.add_trial(optuna.trial.create_trial(values=[value, latency], user_attrs=record.to_row(),
                                                  constraints=record.constraints))
    (folder / "study.json").write_text(json.dumps({"kind": "search", "study": name, "storage": "study.db",
                                                   "config": config}))
    return folder


def jobs_of(folder: Path):
    study, _ = load_study(folder)
    linked = optuna.load_study(study_name=linked_name(study.study_name), storage=study._storage)
    return linked.get_trials(deepcopy=False)


def complete_keys(folder: Path) -> list[str]:
    return [t.user_attrs["job"] for t in jobs_of(folder) if t.state == TrialState.COMPLETE]


class Recorder:
    """Wraps refine's train(): records (epochs, resumed?) per call; raises on chosen calls."""

    def __init__(self, monkeypatch, fail_on=None, interrupt_at=None):
        self.calls, self.fail_on, self.interrupt_at = [], fail_on, interrupt_at
        monkeypatch.setattr(refine_mod, "train", self)

    def __call__(self, spec, *args, **kwargs):
        self.calls.append((spec.key, kwargs["epochs"], kwargs.get("init_state") is not None))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.fail_on is not None and self.fail_on(spec):
            raise RuntimeError("simulated out-of-memory")
        return train(spec, *args, **kwargs)


# --- train(): resume from weights, hand back the state ----------------------------------------------------------


def test_train_hands_back_its_state_and_resumes_from_it():
    adapted, ds = adapt(get_preset("tiny"), ScoreSettings(data=DATA))
    first = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, num_classes=ds.num_classes)
    assert first.state is not None and set(first.state) == set(build(adapted).state_dict())
    # The state is the network that was evaluated: loaded into a fresh build it scores the same.
    model = build(adapted)
    model.load_state_dict(first.state)
    model.eval()
    with torch.inference_mode():
        images = torch.stack([ds.val[i][0] for i in range(len(ds.val))])
        labels = torch.tensor([ds.val[i][1] for i in range(len(ds.val))])
        assert 100.0 * float((model(images).argmax(1) == labels).float().mean()) == pytest.approx(first.top1)
    # With lr 0 the weights stay: a resumed run scores what it started from, a fresh one does not.
    kept = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, lr=0.0, init_state=first.state)
    fresh = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, lr=0.0)
    assert kept.top1 == first.top1
    assert all(torch.equal(kept.state[k], first.state[k]) for k in first.state if "running" not in k and "num_batches" not in k)
    assert not all(torch.equal(fresh.state[k], first.state[k]) for k in first.state)
    with pytest.raises(ValueError, match="init_state: does not fit"):
        train(adapted.replace_stage(0, width=16), ds.train, ds.val, epochs=1, batch_size=16, init_state=first.state)


# --- pure parts -----------------------------------------------------------------------------------------------


def test_candidates_are_front_layers_presets_first(tmp_path):
    study, _ = load_study(make_study(tmp_path, presets={6: "t2"}))
    trials = study.get_trials()
    pick = lambda k: [c["trial"] for c in select_candidates(trials, ["maximize", "minimize"], k)]  # noqa: E731
    assert pick(3) == [6, 0, 2]  # the preset (layer 2), then the front cut by crowding distance: its two extremes
    assert sorted(pick(6)) == [0, 1, 2, 3, 4, 6]
    assert sorted(pick(20)) == [0, 1, 2, 3, 4, 5, 6]  # never the infeasible trial 7
    layers = {c["trial"]: c["layer"] for c in select_candidates(trials, ["maximize", "minimize"], 20)}
    assert layers == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}


def test_top1_error_combines_binomial_and_seed_spread():
    p = 81 / 102  # 80 of 100 right, Laplace: (k + 1) / (n + 2)
    one = top1_error([80.0], 100)
    assert one["top1_mean"] == 80.0 and one["top1_se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / 100))
    assert one["top1_seed_sd"] == 0.0
    two = top1_error([78.0, 82.0], 100)
    assert two["top1_seed_sd"] == pytest.approx(math.sqrt(8))
    assert two["top1_se"] == pytest.approx(math.sqrt(one["top1_se"] ** 2 + 8 / 2))
    assert top1_error([100.0], 10)["top1_se"] > 5  # a perfect score on ten images is not certain


# --- the refine ---------------------------------------------------------------------------------------------------


def test_refine_trains_the_right_pairs_and_writes_its_outputs(tmp_path, monkeypatch):
    folder = make_study(tmp_path)
    rec = Recorder(monkeypatch)
    result = refine(folder, top_k=5, rungs=(1, 2, 4), eta=2, **FAST)
    # K = 5, eta = 2: 5 candidates at rung 0, ceil(5/2) = 3 at rung 1, ceil(3/2) = 2 at rung 2.
    assert [len(r["candidates"]) for r in result.rungs] == [5, 3, 2]
    assert len(rec.calls) == result.trained == 10
    assert sorted(complete_keys(folder)) == sorted(set(complete_keys(folder)))
    # Each rung trains only the epochs it adds, from the previous rung's weights.
    assert [(e, resumed) for _, e, resumed in rec.calls] == [(1, False)] * 5 + [(1, True)] * 3 + [(2, True)] * 2
    state = load_refine(load_study(folder)[0])
    assert state.finished
    for rung in (0, 1):  # survivors are the best of the rung before
        ranking = state.ranking(rung)
        assert state.rungs[rung + 1]["trials"] == [t for t, _ in ranking[:math.ceil(len(ranking) / 2)]]
    for t in jobs_of(folder):
        assert (folder / t.user_attrs["checkpoint"]).is_file() and t.user_attrs["train_s"] > 0
    csv = pd.read_csv(folder / "refined.csv")
    assert len(csv) == 10 and set(csv["rung"]) == {0, 1, 2} and csv["top1_se"].notna().all()
    assert csv.groupby("trial")["final"].sum().eq(1).all()
    assert (folder / "refined_pareto.png").stat().st_size > 10_000
    report = (folder / "report.md").read_text()
    assert "## Refined: trained top-1" in report and "### Rung by rung" in report and "Spearman ρ" in report
    assert "refined_pareto.png" in report and "data:image/png;base64," in (folder / "report.html").read_text()
    # Exporting the winner records its trained accuracy and data.
    path, spec = export(folder, output=tmp_path / "best.toml", refined="best")
    text = path.read_text()
    assert f"trial = {result.best['trial']}" in text and f'refined_data = "{DATA}"' in text
    assert "refined_top1 = " in text and "refined_epochs = 4" in text
    # Run again: nothing left to train.
    again = refine(folder)
    assert again.trained == 0 and len(rec.calls) == 10


def test_interrupted_refine_resumes_and_trains_nothing_twice(tmp_path, monkeypatch):
    folder = make_study(tmp_path)
    rec = Recorder(monkeypatch, interrupt_at=4)
    first = refine(folder, top_k=4, rungs=(1, 2), eta=2, **FAST)
    assert first.interrupted and first.trained == 3 and (folder / "refined.csv").is_file()
    done = complete_keys(folder)
    assert len(done) == 3
    interrupted = [t for t in jobs_of(folder) if t.state == TrialState.FAIL]
    assert [t.user_attrs["outcome"] for t in interrupted] == ["interrupted"]
    rec.calls.clear()
    rec.interrupt_at = None
    second = refine(folder)  # the stored settings: nothing to repeat on the command line
    assert not second.interrupted and second.finished
    assert second.trained == len(rec.calls) == (4 - 3) + 2  # the interrupted job, then rung 1
    keys = complete_keys(folder)
    assert len(keys) == len(set(keys)) == 6 and set(done) <= set(keys)


def test_a_candidate_that_fails_is_marked_and_skipped(tmp_path, monkeypatch):
    folder = make_study(tmp_path)
    study, _ = load_study(folder)
    bad, _ = adapt(ArchSpec.from_json(study.trials[0].user_attrs["spec_json"]), ScoreSettings(data=DATA))
    rec = Recorder(monkeypatch, fail_on=lambda spec: spec.key == bad.key)  # refine trains the adapted spec
    result = refine(folder, top_k=4, rungs=(1, 2), eta=2, **FAST)
    assert result.finished and result.failed == ("t0/r0/s0",)
    assert 0 not in result.rungs[1]["candidates"] and result.rungs[0]["failed"] == [0]
    assert len(result.rungs[1]["candidates"]) == 2  # ceil(3 / 2) of the three that trained
    failed = [t for t in jobs_of(folder) if t.state == TrialState.FAIL]
    assert failed[0].user_attrs["outcome"] == "error" and "simulated out-of-memory" in failed[0].user_attrs["fail_reason"]
    csv = pd.read_csv(folder / "refined.csv")
    assert csv.loc[csv["trial"] == 0, "status"].tolist() == ["failed"]
    assert "### Failed candidates" in (folder / "report.md").read_text()
    assert len(rec.calls) == 4 + 2


def test_settings_are_stored_and_a_resume_may_not_change_them(tmp_path, monkeypatch):
    folder = make_study(tmp_path)
    Recorder(monkeypatch, interrupt_at=1)
    assert refine(folder, top_k=2, rungs=(1,), **FAST).interrupted
    with pytest.raises(ValueError, match=r"^top_k: 3 differs from this study's refine \(2\)"):
        refine(folder, top_k=3)
    state = load_refine(load_study(folder)[0])
    assert state.config.data == DATA and state.config.rungs == (1,)


# --- processes -------------------------------------------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    import mmlab.study.refine as refine
    folder, log, stall_at, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    pause = float(sys.argv[5])
    run = refine._Worker.run
    count = 0
    def logged(self, job, state):
        global count
        count += 1
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {job.key}\\n")
        if count == stall_at:
            time.sleep(600)  # killed here
        time.sleep(pause)  # stretch each job, so both processes are at work together
        return run(self, job, state)
    refine._Worker.run = logged
    refine.refine_worker(folder, **settings)
""")


def start(tmp_path, folder, log, stall_at, settings, pause=0.0):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script), str(folder), str(log), str(stall_at), json.dumps(settings),
                             str(pause)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_worker_loses_nothing_and_its_job_is_taken_back(tmp_path):
    folder = make_study(tmp_path)
    log = tmp_path / "trained.log"
    settings = {"top_k": 4, "rungs": [1, 2], "eta": 2, **FAST}
    proc = start(tmp_path, folder, log, 3, settings)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) == 3):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-rung, its third job claimed and running
    proc.wait()
    before = complete_keys(folder)
    assert len(before) == 2
    running = [t for t in jobs_of(folder) if t.state == TrialState.RUNNING]
    assert len(running) == 1 and running[0].user_attrs["pid"] == proc.pid
    trained = []
    real = refine_mod._Worker.run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refine_mod._Worker, "run", lambda self, job, state: trained.append(job.key) or real(self, job, state))
        result = refine(folder, heartbeat_s=0.5)  # a dead pid on this machine is taken back after two missed beats
    assert result.finished
    assert running[0].user_attrs["job"] in trained and not set(trained) & set(before)
    assert len(trained) == (4 - 2) + 2
    lost = [t for t in jobs_of(folder) if t.state == TrialState.FAIL]
    assert [t.user_attrs["outcome"] for t in lost] == ["lost"] and "died" in lost[0].user_attrs["fail_reason"]
    keys = complete_keys(folder)
    assert len(keys) == len(set(keys)) == 6 and set(before) <= set(keys)


def test_two_processes_never_train_the_same_pair(tmp_path):
    folder = make_study(tmp_path)
    log = tmp_path / "trained.log"
    settings = {"top_k": 6, "rungs": [1, 2], "eta": 2, **FAST}
    procs = [start(tmp_path, folder, log, 0, settings, pause=0.5) for _ in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    keys = [key for _, key in lines]
    assert len(keys) == len(set(keys)) == 6 + 3  # every job once, by one process or the other
    assert {pid for pid, _ in lines} == {str(p.pid) for p in procs}  # and both took part
    assert sorted(keys) == sorted(complete_keys(folder))
    assert all(t.state == TrialState.COMPLETE for t in jobs_of(folder))


# --- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "top_k: 0 is not allowed"),
    (["--rungs", "3,1"], "rungs: '3,1' is not allowed"),
    (["--rungs", "1,x"], "rungs: '1,x' is not allowed"),
    (["--eta", "1"], "eta: 1 is not allowed"),
    (["--data", "imagefolder:/nonexistent"], "imagefolder: '/nonexistent' is not a folder"),
])
def test_bad_arguments_are_one_line_and_train_nothing(tmp_path, monkeypatch, args, message):
    folder = make_study(tmp_path)
    rec = Recorder(monkeypatch)
    result = runner.invoke(app, ["refine", str(folder), "--data", DATA, *args])
    assert result.exit_code == 2 and rec.calls == []
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_unknown_study_and_missing_cuda(tmp_path):
    result = runner.invoke(app, ["refine", str(tmp_path / "nope")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "no study.json here" in result.output
    if not torch.cuda.is_available():
        folder = make_study(tmp_path)
        result = runner.invoke(app, ["refine", str(folder), "--data", DATA, "--device", "cuda"])
        assert result.exit_code == 2 and "device: 'cuda' is not available" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_cli_refine_and_export(tmp_path):
    folder = make_study(tmp_path)
    result = runner.invoke(app, ["refine", str(folder), "--top-k", "3", "--rungs", "1,2", "--data", DATA,
                                 "--batch-size", "16", "--max-per-class", "0"])
    assert result.exit_code == 0, result.output
    assert "rung 0: 3 candidates at 1 epoch," in result.output and "rung 1: 1 candidates at 2 epochs" in result.output
    assert "best: trial" in result.output
    result = runner.invoke(app, ["export", str(folder), "--refined", "best", "-o", str(tmp_path / "a.toml")])
    assert result.exit_code == 0, result.output
    assert "refined_top1" in (tmp_path / "a.toml").read_text()
    result = runner.invoke(app, ["export", str(folder), "--refined", "worst"])
    assert result.exit_code == 2 and "refined: 'worst' is not allowed" in result.output
    result = runner.invoke(app, ["export", str(folder)])
    assert result.exit_code == 2 and "give either --trial N or --refined best" in result.output


def test_a_study_never_refined_reports_and_exports_as_before(tmp_path):
    from mmlab.reports.search import write_search_report

    folder = make_study(tmp_path)
    paths = write_search_report(folder)
    assert "refined.csv" not in paths and not (folder / "refined.csv").exists()
    assert "Refined" not in (folder / "report.md").read_text()
    path, _ = export(folder, 1, tmp_path / "one.toml")
    assert "trial = 1" in path.read_text() and "refined_top1" not in path.read_text()
    with pytest.raises(ValueError, match="no refined result yet"):
        export(folder, output=tmp_path / "x.toml", refined="best")
    assert linked_name("s") not in optuna.get_all_study_names(f"sqlite:///{folder / 'study.db'}")  # reading made none
