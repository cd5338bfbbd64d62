import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mmlab
import mmlab.study.grid as study_grid
from mmlab.api import ablate
from mmlab.cli import app
from mmlab.meter.latency import time_interleaved
from mmlab.reports.grid import grid_table
from mmlab.spec.grid import load_grid
from mmlab.spec.presets import get_preset
from mmlab.study.grid import GridSettings

runner = CliRunner()
FAST = GridSettings(threads=1, timing_s=0.2, interleave_s=0.2)
"""Short caps: one thread, 0.2 s per variant's own timing, 10 interleaved rounds (the least)."""


def run_grid(path, **kwargs):
    return ablate(path, settings=FAST, **kwargs)

GRID = """
base = "tiny"
mode = "{mode}"
measure = ["params", "macs", "latency", "signal"]
signal = "params"
seeds = [0]

[[factor]]
name = "d_state"
ablation = "d_state"
values = [1, 4]

[[factor]]
name = "scan"
ablation = "scan"
values = ["forward", "bidi"]
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def write_grid(tmp_path, mode="one-at-a-time", name="g", timed=True):
    """The two-factor grid; ``timed=False`` leaves latency out where a test does not need it (a
    timing is the slow part of a run on a busy machine)."""
    path = tmp_path / f"{name}.toml"
    text = GRID.format(mode=mode)
    path.write_text(text if timed else text.replace('"latency", ', ""))
    return path


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """One timed run of the two-factor grid, shared by the tests that read it (timing is the slow
    part); tests that change files work on a copy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        root = tmp_path_factory.mktemp("timed")
        path = write_grid(root)
        return path, run_grid(path, results_dir=root / "out")


def n_params(spec) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in mmlab.build(spec).parameters())


def test_one_at_a_time_table_and_deltas(timed_run):
    _, folder = timed_run
    table = pd.read_csv(folder / "table.csv")
    # base + 2 + 2 levels, of which d_state=1 and scan=bidi equal the base
    assert list(table["label"]) == ["base", "d_state=1", "scan=bidi", "d_state=4", "scan=forward"]
    assert list(table["same_as"].fillna("")) == ["", "base", "base", "", ""]
    tiny = get_preset("tiny")
    base_params = n_params(tiny)
    row = table[table["label"] == "d_state=4"].iloc[0]
    hand = n_params(tiny.replace(d_state=4)) - base_params
    assert row["params_delta"] == hand
    assert row["params_delta_pct"] == pytest.approx(100 * hand / base_params)
    assert row["params_effect"] == pytest.approx(100 * hand / base_params) and row["params_measurable"] == 1
    assert table[table["label"] == "base"].iloc[0]["latency_ms_delta"] == 0
    # latency effects come from the interleaved run, with an interval around the median ratio
    timed = table[table["label"].isin(["d_state=4", "scan=forward"])]
    assert (timed["latency_ratio_low"] <= timed["latency_ratio"]).all()
    assert (timed["latency_ratio"] <= timed["latency_ratio_high"]).all()
    assert (timed["latency_ratio_rounds"] >= 10).all()
    assert timed["latency_ms_effect"].tolist() == pytest.approx((100 * (timed["latency_ratio"] - 1)).tolist())
    for name in ("table.md", "report.md", "report.html", "bar_params.png", "bar_latency_ms.png", "scatter.png",
                 "latency_ratios.json"):
        assert (folder / name).is_file(), name
    md_rows = [line.split(" | ")[:2] for line in (folder / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert md_rows[1:] == [["| base", "tiny"], ["| d_state (base: 1)", "4"], ["| scan (base: bidi)", "forward"]]


def test_factorial_expansion_and_dedup(tmp_path):
    folder = run_grid(write_grid(tmp_path, "factorial", "f", timed=False), results_dir=tmp_path / "out")
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # 2 x 2 distinct networks, each measured once
    table = pd.read_csv(folder / "table.csv")
    assert len(table) == 4


def test_resume_after_interruption(tmp_path, monkeypatch):
    import mmlab.study.grid as run_mod

    calls = {"n": 0}
    real = run_mod._measure_one

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "_measure_one", flaky)
    path = write_grid(tmp_path, timed=False)
    with pytest.raises(KeyboardInterrupt):
        run_grid(path, results_dir=tmp_path / "out")
    rows_path = tmp_path / "out" / "g" / "rows.jsonl"
    assert len(rows_path.read_text().splitlines()) == 2
    measured = []
    monkeypatch.setattr(run_mod, "_measure_one", lambda grid, variant, *a, **k: measured.append(variant.label) or real(grid, variant, *a, **k))
    run_grid(path, results_dir=tmp_path / "out")
    assert measured == ["scan=forward"]  # only what was missing
    assert len(rows_path.read_text().splitlines()) == 3


def test_report_regenerates_from_rows(tmp_path):
    folder = run_grid(write_grid(tmp_path, timed=False), results_dir=tmp_path / "out")
    (folder / "table.md").unlink()
    (folder / "report.html").unlink()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "table.md").is_file()
    assert "data:image/png;base64," in (folder / "report.html").read_text()


def test_grid_table_without_rows_has_every_level(tmp_path):
    table = grid_table(load_grid(write_grid(tmp_path)), [])
    assert len(table) == 5 and "params" not in table


def test_cli_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "tiny"\nmesure = ["params"]\n[[factor]]\nname = "x"\nablation = "d_state"\nvalues = [2]\n')
    result = runner.invoke(app, ["ablate", str(bad), "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown key 'mesure'" in result.output
    impossible = tmp_path / "imp.toml"
    impossible.write_text('base = "tiny"\n[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = [1, 7]\n')
    result = runner.invoke(app, ["ablate", str(impossible), "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "wavelet_levels: 7 is not allowed" in result.output
    assert not (tmp_path / "out" / "imp").exists()  # reported before anything ran
    result = runner.invoke(app, ["ablations"])
    assert result.exit_code == 0 and "no_wavelet" in result.output and "width_mult" in result.output


@pytest.mark.parametrize("signal, data, message", [
    ("synflo", "synthetic", "signal: 'synflo' is not allowed"),
    ("naswot", "imagefolder:/nonexistent", "imagefolder: '/nonexistent' is not a folder"),
])
def test_grid_signal_and_data_checked_before_any_work(tmp_path, signal, data, message):
    path = tmp_path / "g.toml"
    path.write_text(GRID.format(mode="one-at-a-time").replace('signal = "params"', f'signal = "{signal}"\ndata = "{data}"'))
    with pytest.raises(ValueError, match=message):
        run_grid(path, results_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interleaved_ratios_are_stored_and_a_rerun_measures_nothing(timed_run, tmp_path, monkeypatch):
    path, first = timed_run
    folder = tmp_path / "out" / first.name
    shutil.copytree(first, folder)
    ratios = json.loads((folder / "latency_ratios.json").read_text())
    keys = {v.spec.key: v.label for v in study_grid.grid_variants(load_grid(path))[1:]}
    assert {k: v["label"] for k, v in ratios["variants"].items()} == keys
    assert ratios["setup"]["threads"] == 1 and ratios["setup"]["base"] == get_preset("tiny").key
    group = ratios["groups"][0]
    assert group["labels"][0] == "base" and len(group["samples_ms"]) == 3 and len(group["samples_ms"][0]) >= 10

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(study_grid, "time_interleaved", refuse)
    monkeypatch.setattr(study_grid, "_measure_one", refuse)
    run_grid(path, results_dir=tmp_path / "out")  # resumes: everything is there
    assert runner.invoke(app, ["report", str(folder)]).exit_code == 0
    assert len(json.loads((folder / "grid.json").read_text())["runs"]) == 2

    # a ratio that is missing (an interrupted group) is timed again, alone
    forward = next(k for k, label in keys.items() if label == "scan=forward")
    del ratios["variants"][forward]
    (folder / "latency_ratios.json").write_text(json.dumps(ratios))
    timed = []
    monkeypatch.setattr(study_grid, "time_interleaved", lambda fns, **kw: timed.append(len(fns)) or time_interleaved(fns, **kw))
    run_grid(path, results_dir=tmp_path / "out")
    assert timed == [2]  # the base and scan=forward
    assert forward in json.loads((folder / "latency_ratios.json").read_text())["variants"]


def test_factorial_grid_without_the_base_combination_measures_the_base(tmp_path):
    path = tmp_path / "nb.toml"
    path.write_text('base = "tiny"\nmode = "factorial"\nmeasure = ["params"]\n'
                    '[[factor]]\nname = "d_state"\nablation = "d_state"\nvalues = [2]\n'
                    '[[factor]]\nname = "scan"\nablation = "scan"\nvalues = ["forward", "cross"]\n')
    folder = run_grid(path, results_dir=tmp_path / "out")
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["base", "d_state=2 scan=forward", "d_state=2 scan=cross"]
    md = [line.split(" | ")[0] for line in (folder / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert md[1:] == ["| base", "| d_state=2 scan=forward", "| d_state=2 scan=cross"]


def test_measure_signal_without_a_signal_uses_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(study_grid, "DEFAULT_SIGNAL", "params")  # a cheap stand-in for the project's default
    path = tmp_path / "ds.toml"
    path.write_text('base = "tiny"\nmeasure = ["params", "signal"]\n'
                    '[[factor]]\nname = "d_state"\nablation = "d_state"\nvalues = [2]\n')
    folder = run_grid(path, results_dir=tmp_path / "out")
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert {(r["signal_name"], r["seed"]) for r in rows} == {("params", 0)}
    assert "signal `params`" in (folder / "report.md").read_text()
