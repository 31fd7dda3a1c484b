"""Analysis of a ledger file: the HTML/PNG report, agents head to head, and the git history of kept changes.

These read an exported or snapshot DuckDB file (:func:`open_ledger`), never the live projector's connection.
The figures and the report load on first use (PEP 562), so the ledger process, which answers ``compare``
over the bus, does not pay for matplotlib at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

from ledger.analysis.compare import CompareResult, compare
from ledger.analysis.gitexport import export_git
from ledger.analysis.rundata import RunData, latest_run, load_run, summary
from ledger.analysis.snapshot import open_ledger

_LAZY = {"report_figures": "figures", "write_pngs": "figures", "render_report": "report", "write_report": "report"}

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ledger.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ledger.analysis.{_LAZY[name]}"), name)
