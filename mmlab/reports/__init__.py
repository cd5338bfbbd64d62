"""Reports shared by every kind of run: rows and storage → tables, plots, Markdown / HTML; never measures."""

from mmlab._lazy import lazy_exports

__all__ = ["markdown_table", "write_grid_report", "write_html", "write_proxy_report", "write_report",
           "write_search_report"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "markdown_table": "mmlab.reports.tables",
    "write_html": "mmlab.reports.tables",
    "write_grid_report": "mmlab.reports.grid",
    "write_proxy_report": "mmlab.reports.proxy_check",
    "write_search_report": "mmlab.reports.search",
    "write_report": "mmlab.reports.any",
})
