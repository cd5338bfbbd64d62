"""``write_report(folder)``: regenerate whatever kind of results folder this is, from what it stores."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mmlab.reports.grid import write_grid_report
from mmlab.reports.proxy_check import write_proxy_report
from mmlab.reports.search import write_search_report
from mmlab.study.grid import GRID_FILE
from mmlab.study.proxy_check import SETTINGS_FILE
from mmlab.study.storage import STUDY_FILE

WRITERS: dict[str, Callable[[Path], dict[str, Path]]] = {
    STUDY_FILE: write_search_report,
    GRID_FILE: write_grid_report,
    SETTINGS_FILE: write_proxy_report,
}
"""The file that marks a folder's kind → the writer of its report (checked in this order)."""


def write_report(folder: str | Path) -> dict[str, Path]:
    """Rewrite the report of a search, grid or proxy-check folder; ``ValueError`` for anything else."""
    folder = Path(folder)
    for marker, writer in WRITERS.items():
        if (folder / marker).is_file():
            return writer(folder)
    raise ValueError(f"{folder}: no study.json, grid.json or check.json here; give a folder written by "
                     "`mmlab search`, `mmlab ablate` or `mmlab proxy-check`")
