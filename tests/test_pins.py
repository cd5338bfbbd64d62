"""The version floors in pyproject.toml are true: each covers the newest feature the code uses.

FEATURES lists, per distribution, the feature that sets its floor, where the code uses it, and
how to check that the installed version has it; a floor below the feature's version fails here.
"""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# distribution -> (minimum version the features need, [(feature, source file using it, check)])
FEATURES = {
    "optuna": ("5.0", [
        ("trial.set_constraint", "mmlab/study/search.py", lambda: hasattr(__import__("optuna").trial.Trial, "set_constraint")),
        ("RetryHeartbeatStaleTrialCallback", "mmlab/study/storage.py",
         lambda: hasattr(__import__("optuna").storages, "RetryHeartbeatStaleTrialCallback")),
        ("heartbeat_stale_trial_callback", "mmlab/study/storage.py",
         lambda: "heartbeat_stale_trial_callback" in __import__("inspect").signature(
             __import__("optuna").storages.RDBStorage).parameters),
    ]),
    "sqlalchemy": ("2.0", [  # the postgresql+psycopg dialect (psycopg 3)
        ("postgresql+psycopg", "mmlab/study/storage.py",
         lambda: __import__("importlib").util.find_spec("sqlalchemy.dialects.postgresql.psycopg") is not None),
    ]),
    "psycopg": ("3.1", [
        ("psycopg 3", "mmlab/study/storage.py", lambda: True),
    ]),
}


def floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    out = {}
    for spec in specs:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)", spec)
        if match:
            out[match.group(1).lower()] = match.group(3)
    return out


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


@pytest.mark.parametrize("dist", sorted(FEATURES))
def test_floor_covers_the_features_used(dist):
    needed, features = FEATURES[dist]
    floor = floors().get(dist)
    assert floor is not None, f"pyproject.toml names no floor for {dist}, which the code needs (>= {needed})"
    assert as_tuple(floor) >= as_tuple(needed), f"{dist}>={floor} in pyproject.toml, but the code needs >= {needed}"
    for name, path, _ in features:
        assert name.split(".")[-1].split("+")[-1] in (ROOT / path).read_text(), f"{path} no longer uses {name}"


@pytest.mark.parametrize("dist", sorted(FEATURES))
def test_installed_version_has_the_features(dist):
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (an optional extra)")
    needed, features = FEATURES[dist]
    assert as_tuple(installed) >= as_tuple(needed)
    for name, _, check in features:
        assert check(), f"{dist} {installed} lacks {name}"


def test_every_dependency_has_a_floor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        assert ">=" in spec, f"{spec}: give the oldest version that works"
