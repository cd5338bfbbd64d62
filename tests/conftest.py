"""Shared fixtures: paths to the reference tables next to the checkout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def read_tsv(name: str) -> list[dict[str, str]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference table {path} not found (it lives in ../shared/reference)")
    with path.open() as fh:
        return list(csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
