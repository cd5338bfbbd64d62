import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import mmlab.study.candidate as candidate
from mmlab.cli import app
from mmlab.api import proxy_check
from mmlab.study.proxy_check import CHECKED, TARGET, correlations

runner = CliRunner()
TINY_SPACE = "tiny"


def test_correlations_by_hand():
    frame = pd.DataFrame({"signal_synflow": [1.0, 2.0, 3.0, 4.0], "signal_params": [4.0, 3.0, 2.0, 1.0],
                          "signal_naswot": [1.0, 3.0, 2.0, 4.0], TARGET: [10.0, 20.0, 30.0, 40.0]})
    table = correlations(frame).set_index("signal")
    assert table.loc["synflow", "spearman_rho"] == pytest.approx(1.0)
    assert table.loc["params", "kendall_tau"] == pytest.approx(-1.0)
    assert table.loc["naswot", "spearman_rho"] == pytest.approx(0.8)  # one swapped pair: 1 - 6*2/(4*15)
    assert table.loc["naswot", "kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert table.loc["params", "kind"] == "baseline"


def test_proxy_check_end_to_end_and_resume(tmp_path, monkeypatch):
    folder = proxy_check("synthetic", 3, epochs=1, space=TINY_SPACE, results_dir=tmp_path)
    assert folder.name == "proxy_check_synthetic"
    rows = pd.read_csv(folder / "rows.csv")
    assert len(rows) == 3
    for signal in (*CHECKED, "train"):
        assert rows[f"signal_{signal}"].notna().all(), signal
    table = pd.read_csv(folder / "correlations.csv")
    assert set(table["signal"]) == set(CHECKED)
    for signal in CHECKED:
        assert (folder / f"scatter_{signal}.png").is_file()
    assert "spearman_rho" in (folder / "correlations.md").read_text()
    # A second run with the same settings scores nothing again.
    monkeypatch.setattr(candidate, "score", lambda *a, **k: pytest.fail("re-scored a finished architecture"))
    proxy_check("synthetic", 3, epochs=1, space=TINY_SPACE, results_dir=tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "2"], "n: 2 is not allowed"),
        (["--data", "imagefolder:/no/such/dir"], "is not a folder"),
        (["--data", "mnist"], "mnist"),
        (["--epochs", "0"], "epochs: 0 is not allowed"),
    ],
)
def test_proxy_check_errors(tmp_path, args, message):
    result = runner.invoke(app, ["proxy-check", "--results-dir", str(tmp_path), "--space", TINY_SPACE, *args])
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
