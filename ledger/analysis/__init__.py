"""Analysis of a ledger file: the HTML/PNG report, agents head to head, and the git history of kept changes.

These read an exported or snapshot DuckDB file (:func:`open_ledger`), never the live projector's connection.
The names below load on first use (PEP 562), so the ledger process, which answers ``compare`` over the bus,
does not pay for matplotlib at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CompareResult": "compare", "compare": "compare", "report_figures": "figures", "write_pngs": "figures",
    "export_git": "gitexport", "render_report": "report", "write_report": "report", "RunData": "rundata",
    "latest_run": "rundata", "load_run": "rundata", "summary": "rundata", "open_ledger": "snapshot",
}  # fmt: skip
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ledger.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ledger.analysis.{_HOMES[name]}"), name)
