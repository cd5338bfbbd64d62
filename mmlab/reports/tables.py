"""Text renderings shared by every report: Markdown tables and self-contained HTML pages."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd


def markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else (f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}")
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(str(c)) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)



def write_html(markdown_path: Path, html_path: Path) -> None:
    """A self-contained HTML version of a Markdown report (images embedded as data URIs)."""
    text = markdown_path.read_text()
    body: list[str] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line.replace("|", "").strip()) <= {"-", ":"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif (m := re.match(r"!\[(.*)\]\((.*)\)", line)):
            image = markdown_path.parent / m.group(2)
            if image.is_file():
                data = base64.b64encode(image.read_bytes()).decode()
                body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(markdown_path.parent.name)}"
                         f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    text = html.escape(text)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
