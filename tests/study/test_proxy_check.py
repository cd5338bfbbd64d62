import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mmlab.study.candidate as candidate
from mmlab.api import proxy_check
from mmlab.cli import app
from mmlab.reports.proxy_check import signal_table, write_proxy_report
from mmlab.study.proxy_check import TARGET, CheckSettings, read_check
from mmlab.study.stats import bootstrap, kendall, partial_spearman, regret, spearman, top_precision

runner = CliRunner()
TINY = dict(data="synthetic:n=60,classes=3", n=4, epochs=1, max_per_class=None, retest=3, space="tiny",
            budget_mflops=None, signals=("synflow", "naswot", "params", "macs"))


def test_statistics_by_hand():
    x, y = np.array([1.0, 3.0, 2.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])
    assert spearman(x, y) == pytest.approx(0.8)  # one swapped pair: 1 - 6*2/(4*15)
    assert kendall(x, y) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert top_precision(np.array([4.0, 3, 2, 1]), np.array([1.0, 2, 3, 4]), 0.25) == 0.0
    assert regret(x, y) == 0.0 and regret(-x, y) == 30.0
    z = np.array([2.0, 1.0, 4.0, 3.0])
    assert partial_spearman(y, y, z) == pytest.approx(1.0)  # a perfect ranking stays perfect given anything
    assert np.isnan(partial_spearman(z, y, z))  # a signal that is the control has nothing left to say
    # rxy = 0.8, rxz = 0, ryz = 0.6: (0.8 - 0 * 0.6) / sqrt((1 - 0) * (1 - 0.36)) = 1, since the
    # one pair x gets wrong is the pair z explains in y.
    assert partial_spearman(x, y, z) == pytest.approx(1.0)


def test_bootstrap_interval_covers_a_known_correlation():
    """Bivariate normal with Pearson 0.6 has Spearman 6/π·asin(0.3) = 0.582; 95% intervals cover it ~95% of the time."""
    true = 6 / np.pi * np.arcsin(0.3)
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        xy = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=60)
        interval = bootstrap({"x": xy[:, 0]}, xy[:, 1], spearman, n_boot=400, seed=trial)[0]["x"]
        covered += interval.contains(true)
    assert covered >= 34  # binomial(40, 0.95): P(< 34) is below 0.5%


def test_default_choice_needs_evidence_against_params():
    rng = np.random.default_rng(0)
    params = rng.uniform(1, 2, 40)
    target = params + rng.normal(0, 0.05, 40)
    noise = rng.normal(0, 1, 40)
    frame = pd.DataFrame({"params": params, "signal_params": params, "signal_naswot": noise, TARGET: target})
    table, choice = signal_table(frame, ["naswot", "params"])
    assert choice["signal"] == "params"  # a proxy that is noise never wins
    frame["signal_naswot"] = target  # a perfect proxy beats params with certainty
    frame["signal_params"] = params + rng.normal(0, 0.5, 40)
    assert signal_table(frame, ["naswot", "params"])[1]["signal"] == "naswot"


def test_proxy_check_end_to_end_resume_and_shards(tmp_path, monkeypatch):
    settings = CheckSettings(**TINY)
    folder = proxy_check(settings, results_dir=tmp_path, shard=(0, 2), write=False)
    proxy_check(settings, results_dir=tmp_path, shard=(1, 2))  # the second shard finishes and writes the report
    main, retest, stored = read_check(folder)
    assert len(main) == 4 and len(retest) == 3 and stored["retest"] == 3
    rows = pd.read_csv(folder / "rows.csv")
    for signal in (*TINY["signals"], "train"):
        assert rows[f"signal_{signal}"].notna().all(), signal
    assert set(r["signal_seed"] for r in retest) == {1}
    recommendation = json.loads((folder / "recommendation.json").read_text())
    assert recommendation["retest_pairs"] == 3 and recommendation["signal"] in TINY["signals"]
    for signal in TINY["signals"]:
        assert (folder / f"scatter_{signal}.png").is_file()
    assert "noise ceiling" in (folder / "report.md").read_text()
    # Everything is done: a second run scores and trains nothing.
    monkeypatch.setattr(candidate, "score", lambda *a, **k: pytest.fail("re-scored a finished architecture"))
    proxy_check(settings, results_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs: 2 differs from the stored check's 1"):
        proxy_check(CheckSettings(**{**TINY, "epochs": 2}), results_dir=tmp_path)
    # A partial check (one main run missing, e.g. stopped at a deadline) chooses no default.
    assert recommendation["complete"] is True
    lines = (folder / "rows.jsonl").read_text().splitlines()
    last_main = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "main")
    (folder / "rows.jsonl").write_text("".join(line + "\n" for i, line in enumerate(lines) if i != last_main))
    write_proxy_report(folder)
    partial = json.loads((folder / "recommendation.json").read_text())
    assert partial["complete"] is False and partial["signal"] == "params" and partial["n"] == 3
    assert partial["partial_leader"]["signal"] in TINY["signals"] and "partial check (3 of 4" in partial["why"]
    assert "Partial check" in (folder / "report.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "2"], "n: 2 is not allowed"),
        (["--data", "imagefolder:/no/such/dir"], "is not a folder"),
        (["--data", "fashion-mnist:/nonexistent"], "fashion-mnist: the idx files"),
        (["--data", "mnist"], "mnist"),
        (["--epochs", "0"], "epochs: 0 is not allowed"),
        (["--retest", "50"], "retest: 50 is not allowed"),
        (["--batch-size", "1"], "batch_size: 1 is not allowed"),
        (["--shard", "2/2"], "shard: 2/2 is not allowed"),
    ],
)
def test_proxy_check_errors(tmp_path, args, message):
    result = runner.invoke(app, ["proxy-check", "--results-dir", str(tmp_path), "--space", "tiny", "--n", "4",
                                 "--retest", "2", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not any(tmp_path.iterdir())


def test_score_cli(tmp_path):
    result = runner.invoke(app, ["score", "tiny", "--signal", "params", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["signal"] == "params" and data["value"] > 0
    result = runner.invoke(app, ["score", "tiny", "--signal", "naswot", "--data", "synthetic"])
    assert result.exit_code == 0 and "tiny naswot = " in result.output
    result = runner.invoke(app, ["score", "tiny", "--signal", "vibes"])
    assert result.exit_code == 2 and "signal: 'vibes' is not allowed" in result.output
    result = runner.invoke(app, ["score", "t3"])
    assert result.exit_code == 2 and "unknown preset 't3'" in result.output
    for signal in ("params", "synflow", "train"):
        result = runner.invoke(app, ["score", "tiny", "--signal", signal, "--data", "fashion-mnist:/nonexistent"])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_deadline_starts_no_run_that_would_end_after_it(tmp_path, monkeypatch):
    """A shard stops before a run its finished runs say would outlast the deadline; the resume does it."""
    import time

    settings = CheckSettings(**{**TINY, "retest": 0})
    folder = proxy_check(settings, results_dir=tmp_path, shard=(0, 2), write=False)  # architectures 0 and 2
    rows_path = folder / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    rows_path.write_text("".join(json.dumps({**r, "score_s": 1000.0}) + "\n" for r in rows))  # as if each took 1000 s
    real_score = candidate.score
    monkeypatch.setattr(candidate, "score", lambda *a, **k: pytest.fail("started a run that would end after the deadline"))
    proxy_check(settings, results_dir=tmp_path, shard=(1, 2), write=False, deadline=time.time() + 500)
    assert len(read_check(folder)[0]) == 2
    monkeypatch.setattr(candidate, "score", real_score)
    proxy_check(settings, results_dir=tmp_path, shard=(1, 2), write=False, deadline=time.time() + 5000)
    assert len(read_check(folder)[0]) == 4
