import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mmlab
from mmlab.spec.grid import load_grid
from mmlab.api import ablate as run_grid
from mmlab.reports.grid import grid_table
from mmlab.cli import app
from mmlab.spec.presets import get_preset

runner = CliRunner()

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


def write_grid(tmp_path, mode="one-at-a-time", name="g"):
    path = tmp_path / f"{name}.toml"
    path.write_text(GRID.format(mode=mode))
    return path


def n_params(spec) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in mmlab.build(spec).parameters())


def test_one_at_a_time_table_and_deltas(tmp_path):
    folder = run_grid(write_grid(tmp_path), results_dir=tmp_path / "out")
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
    assert table[table["label"] == "base"].iloc[0]["latency_ms_delta"] == 0
    for name in ("table.md", "report.md", "report.html", "bar_params.png", "bar_latency_ms.png", "scatter.png"):
        assert (folder / name).is_file(), name
    md_rows = [line.split(" | ")[:3] for line in (folder / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert md_rows[1:] == [["| base", "", ""], ["| d_state", "1", "base"], ["| d_state", "4", ""],
                           ["| scan", "forward", ""], ["| scan", "bidi", "base"]]


def test_factorial_expansion_and_dedup(tmp_path):
    folder = run_grid(write_grid(tmp_path, "factorial", "f"), results_dir=tmp_path / "out")
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
    path = write_grid(tmp_path)
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
    folder = run_grid(write_grid(tmp_path), results_dir=tmp_path / "out")
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
