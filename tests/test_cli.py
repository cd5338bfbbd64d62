import json
import subprocess
import sys

from typer.testing import CliRunner

from mmlab.cli import app
from mmlab.spec.presets import PRESETS, get_preset

runner = CliRunner()


def test_presets_table():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["name", "resolution", "params", "widths", "depths"]
    t2 = next(line for line in lines if line.startswith("t2 "))
    assert "8,836,890" in t2 and "144,272,368" in t2 and "1,2,2" in t2


def test_presets_json():
    result = runner.invoke(app, ["presets", "--json"])
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert {r["name"]: r["params"] for r in rows}["b4"] == 17_122_849


def test_show_preset_table():
    result = runner.invoke(app, ["show", "s6"])
    assert result.exit_code == 0, result.output
    assert "params: 15,036,632" in result.output
    # stage 2 of s6: width 384 at 7x7, split 272/76/36, d_inner 544, dt_rank 17
    row = next(line.split() for line in result.output.splitlines() if line.split()[:2] == ["2", "384"])
    assert row[4:10] == ["7", "272", "76", "36", "544", "17"]


def test_show_json_and_spec_file(tmp_path):
    path = tmp_path / "arch.toml"
    path.write_text(get_preset("t4").to_toml())
    result = runner.invoke(app, ["show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"] == 14_176_090
    assert data["key"] == get_preset("t4").key
    assert [s["global_ch"] for s in data["splits"]] == [144, 256, 272]


def test_show_unknown_preset():
    result = runner.invoke(app, ["show", "t3"])
    assert result.exit_code != 0
    assert "unknown preset 't3'" in result.output
    assert "t2" in result.output


def test_show_bad_spec_file_names_the_field(tmp_path):
    data = get_preset("t2").to_dict()
    data["d_state"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "d_state: 0 is not allowed" in result.output
    assert len(result.output.strip().splitlines()) == 1


def run_without_torch(argv: list[str]) -> str:
    """Run the CLI in a fresh interpreter; assert it succeeded without loading torch; return its stdout."""
    script = ("import sys\nfrom mmlab.cli import app\n"
              f"try:\n    app({argv!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
              "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH", proc.stderr[-500:]
    return proc.stdout


def built_param_count(name: str) -> int:
    """The count the CLI printed before it had a formula: the built network's parameters."""
    import torch

    import mmlab

    with torch.device("meta"):
        return sum(p.numel() for p in mmlab.build(PRESETS[name]).parameters())


def test_presets_imports_no_torch_and_prints_the_built_counts():
    lines = run_without_torch(["presets"]).splitlines()
    assert lines[0].split()[:3] == ["name", "resolution", "params"]
    printed = {line.split()[0]: line.split()[2] for line in lines[2:]}
    assert printed == {name: f"{built_param_count(name):,}" for name in PRESETS}


def test_show_imports_no_torch_and_prints_the_built_count():
    out = run_without_torch(["show", "t2"])
    assert out.splitlines()[0] == f"spec t2 (key {PRESETS['t2'].key})"
    assert out.splitlines()[-1] == f"params: {built_param_count('t2'):,} (all parameters, frozen wavelet filters included)"
    assert json.loads(run_without_torch(["show", "t2", "--json"]))["params"] == built_param_count("t2")


def test_help_keeps_square_brackets():
    """Typer renders help with rich, which reads "[deploy]" or "[default: 9]" as a style tag and
    drops it unless escaped: every option help that holds "[" must print it."""
    import typer

    group = typer.main.get_command(app)
    checked = 0
    for name, command in group.commands.items():
        output = runner.invoke(app, [name, "--help"], env={"COLUMNS": "1000"}).output
        for param in command.params:
            text = (getattr(param, "help", None) or "").replace("\\[", "[")
            for piece in (t for t in text.split() if "[" in t):
                assert piece in output, (name, param.name, piece)
                checked += 1
    assert checked >= 8  # mmlab[deploy] (three commands), refine's defaults, fashion-mnist[:PATH]
