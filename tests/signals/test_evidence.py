"""The evidence shown beside a signal in plots and reports is what the committed proxy-check says."""

import json
import re
from pathlib import Path

import pandas as pd

from mmlab.signals.registry import DEFAULT_SIGNAL, EVIDENCE

CHECK = Path(__file__).resolve().parents[2] / "results" / "proxy_check_fashion_mnist"


def test_evidence_quotes_the_committed_check():
    table = pd.read_csv(CHECK / "correlations.csv").set_index("signal")
    n = len(pd.read_csv(CHECK / "rows.csv"))
    recommendation = json.loads((CHECK / "recommendation.json").read_text())
    for name, text in EVIDENCE.items():
        row = table.loc[name]
        quoted = re.search(r"ρ (\S+) \[(\S+), (\S+)\]", text.replace("−", "-"))
        assert quoted, text
        assert [float(v) for v in quoted.groups()] == [round(row[c], 2) for c in ("spearman_rho", "rho_low", "rho_high")], name
        assert f"N = {n} of {recommendation['planned']['n']}" in text
    assert recommendation["signal"] == DEFAULT_SIGNAL  # the default is the check's recommendation
