"""Analysis of a ledger file: the HTML/PNG report, agents head to head, and the git history of kept changes.

These read an exported or snapshot DuckDB file (:func:`open_ledger`), never the live projector's connection.
"""

from ledger.analysis.compare import CompareResult, compare
from ledger.analysis.figures import report_figures, write_pngs
from ledger.analysis.gitexport import export_git
from ledger.analysis.report import render_report, write_report
from ledger.analysis.rundata import RunData, latest_run, load_run, summary
from ledger.analysis.snapshot import open_ledger

__all__ = [
    "CompareResult",
    "RunData",
    "compare",
    "export_git",
    "latest_run",
    "load_run",
    "open_ledger",
    "render_report",
    "report_figures",
    "summary",
    "write_pngs",
    "write_report",
]
