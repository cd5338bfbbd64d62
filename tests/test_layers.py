"""The package's layering: every import points down, no circles, and the CLI's help loads no torch.

The layer order is written once, here. A module may import its own layer and any layer below it.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmlab"

LAYERS = [
    ("base", ["mmlab._version", "mmlab._lazy"]),
    ("spec", ["mmlab.spec"]),
    ("model", ["mmlab.model"]),
    ("meter", ["mmlab.meter"]),
    ("signals", ["mmlab.signals"]),
    ("record", ["mmlab.record"]),
    ("study", ["mmlab.study"]),
    ("reports", ["mmlab.reports"]),
    ("api", ["mmlab.api"]),
    ("cli", ["mmlab.cli", "mmlab.__main__"]),
]


def layer_of(module: str) -> int:
    if module == "mmlab":
        return 0  # the root only re-exports lazily
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = index
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best


def modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(module: str) -> list[tuple[str, int]]:
    """Every mmlab import in a module's source, top level or inline, with its line."""
    path = ROOT.parent / (module.replace(".", "/") + ("/__init__.py" if (ROOT.parent / module.replace(".", "/")).is_dir() else ".py"))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmlab"):
            found += [(f"{node.module}.{a.name}" if node.module == "mmlab" else node.module, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("mmlab")]
    return found


def test_every_module_is_in_a_layer():
    for module in modules():
        layer_of(module)


def test_no_import_points_up():
    """Source check, so inline imports (which run late) are caught too; lazy re-exports are strings."""
    upward = []
    for module in modules():
        for target, line in imports_of(module):
            if module == "mmlab" and target in ("mmlab._lazy", "mmlab._version"):
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module}:{line} imports {target}")
    assert upward == []


def test_importing_each_layer_in_order_loads_nothing_above_it():
    """In a fresh interpreter, import every module bottom-up; after each, no higher layer is loaded."""
    order = sorted((m for m in modules() if m != "mmlab.__main__"), key=layer_of)  # __main__ runs the CLI
    script = f"""
import importlib, json, sys
seen = {{}}
for name in {order!r}:
    importlib.import_module(name)
    seen[name] = sorted(m for m in sys.modules if m.startswith("mmlab"))
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    for name, loaded in json.loads(out).items():
        above = [m for m in loaded if m != "mmlab" and layer_of(m) > layer_of(name)]
        assert above == [], f"importing {name} loaded {above}"


@pytest.mark.parametrize("argv", [["--help"], ["presets", "--help"], ["search", "--help"], ["ablations"]])
def test_cli_without_torch(argv):
    script = ("import sys\nfrom mmlab.cli import app\n"
              f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
              "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH", proc.stderr[-500:]


def test_import_mmlab_is_cheap():
    proc = subprocess.run([sys.executable, "-c", "import sys, mmlab; print(sorted(m for m in ('torch', 'pandas', 'optuna') if m in sys.modules))"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
