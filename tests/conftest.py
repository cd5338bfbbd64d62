"""Shared fixtures: the reference tables vendored under tests/data (see tests/data/README.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "data"


def read_tsv(name: str) -> list[dict[str, str]]:
    with (REFERENCE / name).open() as fh:
        return list(csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _session_cache(tmp_path_factory, monkeypatch) -> None:
    """Tests never read or write the user's measurement cache; one shared cache per test session."""
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
