"""The ablation report from stored rows alone: the paper's layout, effects with intervals, charts, HTML width.

Rows here are written by hand (no network is built, counted or timed), so each test knows exactly
which effects are inside their intervals.
"""

import doctest
import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

import mmlab.reports.grid as report_grid
from mmlab.reports.any import write_report
from mmlab.reports.grid import grid_table, seed_effect
from mmlab.spec.grid import load_grid
from mmlab.study.grid import GRID_FILE, RATIOS_FILE, ROWS_FILE, grid_variants, resolve_grid

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

TWO_FACTORS = """
base = "tiny"
mode = "{mode}"
measure = ["params", "macs", "macs_paper", "latency", "signal"]
signal = "synflow"
seeds = [0, 1, 2]

[[factor]]
name = "d_state"
ablation = "d_state"
values = [1, 4]

[[factor]]
name = "scan"
ablation = "scan"
values = ["forward", "bidi", "cross"]
"""

# label -> (latency ratio, low, high), (signal offset per seed against the base): d_state=4 is a
# real effect on both; scan=forward is inside both intervals; scan=cross is slower, signal unclear
EFFECTS = {
    "d_state=4": ((1.030, 1.010, 1.050), (1.0, 1.1, 0.9)),
    "scan=forward": ((0.990, 0.970, 1.020), (0.2, -0.3, 0.05)),
    "scan=cross": ((1.080, 1.050, 1.110), (0.5, -0.4, 0.1)),
}
BASE_SIGNAL = {0: 10.0, 1: 10.4, 2: 9.8}


def make_folder(tmp_path, text, name="g"):
    """A grid folder as `mmlab ablate` leaves it, with hand-made rows and interleaved ratios."""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    grid = resolve_grid(load_grid(path))
    folder = tmp_path / "out" / grid.name
    folder.mkdir(parents=True)
    shutil.copyfile(path, folder / path.name)
    meta = {"kind": "grid", "grid": str(path), "copy": path.name, "settings": {"device": "cpu"},
            "runs": [{"started": "2026-01-01T00:00:00", "seconds": 12.5, "finished": True}]}
    (folder / GRID_FILE).write_text(json.dumps(meta))
    rows, ratios = [], {"setup": {"base": grid.base.key}, "variants": {}, "groups": [{"seconds": 3.0}]}
    for i, variant in enumerate(grid_variants(grid)):
        timing, offsets = EFFECTS.get(variant.label, ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
        if i and variant.label not in EFFECTS:  # other variants (factorial, wide grids): alternate real and noise
            timing, offsets = list(EFFECTS.values())[i % 3]
        for seed in grid.seeds:
            rows.append({
                "label": variant.label, "seed": seed, "spec_key": variant.spec.key,
                "params": 15_000_000 + 1000 * i, "macs": 650_000_000 + 10_000 * i, "macs_paper": 649_000_000 + 9_000 * i,
                "latency_ms": 45.0 * timing[0], "latency_p10_ms": 44.0 * timing[0], "latency_p90_ms": 46.5 * timing[0],
                "signal": BASE_SIGNAL[seed % 3] + offsets[seed % 3], "signal_name": grid.signal,
                "measure_s": 1.0, "score_s": 0.5,
            })
        if i:
            ratios["variants"][variant.spec.key] = {"label": variant.label, "ratio": timing[0], "low": timing[1],
                                                    "high": timing[2], "rounds": 60, "median_ms": 45.0 * timing[0]}
    (folder / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / RATIOS_FILE).write_text(json.dumps(ratios))
    return folder, grid


def md_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.fixture(autouse=True)
def _no_measuring(monkeypatch):
    """Reports never measure: any attempt to build, count, time or score fails the test."""
    import mmlab.meter.measure as measure_mod
    import mmlab.study.grid as study_grid

    def refuse(*args, **kwargs):
        raise AssertionError("a report tried to measure")

    for module, name in ((study_grid, "time_interleaved"), (study_grid, "evaluate"), (study_grid, "build"),
                         (measure_mod, "measure"), (measure_mod, "time_cpu")):
        monkeypatch.setattr(module, name, refuse)


def test_markdown_table_of_a_two_factor_grid_has_one_row_per_distinct_level(tmp_path):
    folder, grid = make_folder(tmp_path, TWO_FACTORS.format(mode="one-at-a-time"))
    write_report(folder)
    rows = md_rows(folder / "table.md")
    assert [r[:2] for r in rows] == [["base", "tiny"], ["d_state (base: 1)", "4"], ["scan (base: bidi)", "forward"],
                                     ["", "cross"]]
    # the levels equal to the base (d_state=1, scan=bidi) have no row; the base row has no change
    levels = [r[1] for r in rows[1:]]
    assert len(levels) == len(set(levels)) == 3 and "1" not in levels and "bidi" not in levels
    assert all("(" not in cell for cell in rows[0][2:])
    header = (folder / "table.md").read_text().splitlines()[2]
    assert header == "| factor | level | params (M) | MACs (M) | MACs paper (M) | latency (ms) | synflow |"
    # the compact view (report.md, and the HTML made from it) leaves out the paper's MAC convention
    compact = (folder / "report.md").read_text()
    assert "| factor | level | params (M) | MACs (M) | latency (ms) | synflow |" in compact
    # table.csv keeps every level, the ones equal to the base included, with every raw column
    table = pd.read_csv(folder / "table.csv")
    assert list(table["label"]) == ["base", "d_state=1", "scan=bidi", "d_state=4", "scan=forward", "scan=cross"]
    for col in ("params", "params_delta", "params_delta_pct", "latency_ratio", "latency_ratio_low", "latency_ms_effect",
                "latency_ms_measurable", "signal_effect_low", "signal_seeds", "signal_std"):
        assert col in table, col


def test_factorial_table_merges_the_base_combination(tmp_path):
    folder, grid = make_folder(tmp_path, TWO_FACTORS.format(mode="factorial"), name="f")
    write_report(folder)
    rows = md_rows(folder / "table.md")
    labels = [r[0] for r in rows]
    # 2 x 3 combinations; d_state=1 scan=bidi is the base: one row, first
    assert labels[0] == "base" and len(labels) == 6 and len(set(labels)) == 6
    assert "d_state=1 scan=bidi" not in labels and "d_state=4 scan=cross" in labels


def test_effects_inside_their_interval_are_marked(tmp_path):
    folder, grid = make_folder(tmp_path, TWO_FACTORS.format(mode="one-at-a-time"))
    write_report(folder)
    cells = {r[1]: r for r in md_rows(folder / "table.md")}
    latency, signal = 5, 6
    assert cells["4"][latency] == "46.35 (+3.0% [+1.0, +5.0])"
    assert cells["forward"][latency] == "44.55 (−1.0% [−3.0, +2.0] ns)"
    assert cells["cross"][latency].endswith("[+5.0, +11.0])")
    assert "ns" not in cells["4"][signal] and cells["forward"][signal].endswith(" ns)")
    assert cells["cross"][signal].endswith(" ns)")
    assert cells["4"][2] == "15.00 (+0.01%)" and cells["4"][3] == "650.0 (+<0.01%)"  # exact: no interval
    table = pd.read_csv(folder / "table.csv").set_index("label")
    assert table.loc["scan=forward", "latency_ms_measurable"] == 0 and table.loc["d_state=4", "latency_ms_measurable"] == 1
    assert table.loc["d_state=4", "latency_ms_effect"] == pytest.approx(3.0)
    assert table.loc["d_state=4", "signal_effect_unit"] == "%"
    assert math.isnan(table.loc["base", "latency_ms_measurable"])
    report = (folder / "report.md").read_text()
    assert "- latency (ms): 2 of 3 effects survive their interval (d_state=4, scan=cross); no measurable difference: scan=forward" in report
    assert "- synflow: 1 of 3 effects survive their interval (d_state=4)" in report
    assert "wall time: 12 s in 1 run" in report


def test_seed_effect_is_a_paired_t_interval():
    base, variant = {0: 10.0, 1: 10.4, 2: 9.8}, {0: 11.0, 1: 11.5, 2: 10.7}
    diff, low, high, n = seed_effect(base, variant)
    diffs = [1.0, 1.1, 0.9]
    half = stats.t.ppf(0.975, 2) * pd.Series(diffs).std() / math.sqrt(3)
    assert n == 3 and diff == pytest.approx(1.0)
    assert (low, high) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    one = seed_effect({0: 1.0}, {0: 2.0})
    assert one[0] == 1.0 and math.isnan(one[1]) and math.isnan(one[2])
    # no seed in common: the two means are compared (Welch)
    welch = seed_effect({0: 1.0, 1: 1.2}, {2: 2.0, 3: 2.4})
    assert welch[0] == pytest.approx(1.1) and welch[1] < 1.1 < welch[2]


def test_cell_format_doctests():
    assert doctest.testmod(report_grid, raise_on_error=False).failed == 0


def test_one_seed_and_old_folders_show_no_interval(tmp_path):
    # a folder from before interleaved timing, one seed: changes are shown, without intervals or marks
    text = TWO_FACTORS.format(mode="one-at-a-time").replace("seeds = [0, 1, 2]", "seeds = [0]")
    folder, grid = make_folder(tmp_path, text)
    (folder / RATIOS_FILE).unlink()
    write_report(folder)
    cells = {r[1]: r for r in md_rows(folder / "table.md")}
    assert cells["4"][5] == "46.35 (+3.0%)" and "[" not in cells["forward"][6] and "ns" not in cells["forward"][6]
    text = (folder / "table.md").read_text()
    assert "no interleaved run is stored" in text and "one seed, so no interval" in text


def test_default_signal_and_training_seeds(tmp_path, monkeypatch):
    text = TWO_FACTORS.format(mode="one-at-a-time").replace('signal = "synflow"\n', "").replace("seeds = [0, 1, 2]\n", "")
    path = tmp_path / "d.toml"
    path.write_text(text)
    raw = load_grid(path)
    assert raw.signal is None and raw.seeds is None  # the spec layer leaves the defaults to the runner
    from mmlab.signals.registry import DEFAULT_SIGNAL
    import mmlab.study.grid as study_grid

    assert (resolve_grid(raw).signal, resolve_grid(raw).seeds) == (DEFAULT_SIGNAL, (0,) if DEFAULT_SIGNAL != "train" else (0, 1))
    monkeypatch.setattr(study_grid, "DEFAULT_SIGNAL", "train")
    resolved = resolve_grid(raw)
    assert (resolved.signal, resolved.seeds) == ("train", (0, 1))
    assert report_grid.signal_metric(resolved).header == "train top-1 (%)"
    assert report_grid.effect_unit(resolved, "signal") == "pt"  # a change in top-1 is in percentage points
    path.write_text(text.replace('measure = [', 'seeds = [3]\nmeasure = ['))
    assert resolve_grid(load_grid(path)).seeds == (3,)


def test_charts_are_drawn_per_metric_without_the_base(tmp_path):
    folder, grid = make_folder(tmp_path, TWO_FACTORS.format(mode="one-at-a-time"))
    paths = write_report(folder)
    for name in ("bar_params.png", "bar_macs.png", "bar_macs_paper.png", "bar_latency_ms.png", "bar_signal.png",
                 "scatter.png"):
        assert paths[name].stat().st_size > 5000, name
    frame = report_grid.effects_frame(grid, grid_table(grid, json_lines(folder / ROWS_FILE),
                                                       json.loads((folder / RATIOS_FILE).read_text())), "latency_ms")
    assert list(zip(frame["factor"], frame["level"])) == [("d_state", "4"), ("scan", "forward"), ("scan", "cross")]
    assert list(frame["measurable"]) == [1.0, 0.0, 1.0]
    assert list(frame["low"]) == [pytest.approx(1.0), pytest.approx(-3.0), pytest.approx(5.0)]


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed: the HTML width is not checked")
def test_html_report_fits_1280_px_without_horizontal_scroll(tmp_path):
    """The widest grid we ship (the paper's 8 factors around s6) at 1280 px in headless Chromium:
    the page is no wider than the window (a script writes scrollWidth and clientWidth into the DOM)."""
    folder, grid = make_folder(tmp_path, (ROOT / "studies" / "paper_ablations.toml").read_text().replace(
        "seeds = [0]", "seeds = [0, 1, 2]"), name="paper_ablations")
    write_report(folder)
    assert len(md_rows(folder / "table.md")) == 16  # the base and 15 levels that differ from it
    page = (folder / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>const p = document.createElement('pre'); p.id = 'probe';"
                                  " const d = document.documentElement; p.textContent = d.scrollWidth + ' ' + d.clientWidth;"
                                  " document.body.appendChild(p);</script></body>"))
    out = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    marker = '<pre id="probe">'
    assert marker in out.stdout, out.stderr[-2000:]
    scroll, client = map(int, out.stdout.split(marker, 1)[1].split("<", 1)[0].split())
    assert 1200 <= client <= 1280 and scroll <= client, (scroll, client)
