import pandas as pd

from mmlab.reports.tables import markdown_table


def test_markdown_table_escapes_pipes_in_headers_and_cells():
    """A '|' in a column name or a cell must not add a column: every line has the same cell count."""
    frame = pd.DataFrame({"signal": ["a|b"], "partial ρ | params": [0.5]})
    lines = markdown_table(frame, ["signal", "partial ρ | params"]).splitlines()
    cells = [len(line.replace("\\|", "").strip("|").split("|")) for line in lines]
    assert cells == [2, 2, 2], lines
