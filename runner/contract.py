"""The runner's side of train.py's contract (the rules themselves live in bus/trainpy.py): refusing a
train.py that breaks it, and reading a failed step's output for what it says about the failure."""

from __future__ import annotations

from typing import Any

from bus import trainpy
from bus.trainpy import ProgressLine, Summary, contract_problems, parse_progress, parse_summary
from runner.errors import ContractViolation

__all__ = ["ProgressLine", "Summary", "check_module_level", "last_error", "looks_like_oom", "parse_knobs",
           "parse_progress", "parse_summary", "traceback_tail"]

def parse_knobs(source: str) -> dict[str, Any]:
    """``{name: value}`` of train.py's knobs (bus.trainpy.parse_knobs), tuples kept; empty if it does not
    parse (the simulator's landscape reads them)."""
    try:
        return {k: v.value for k, v in trainpy.parse_knobs(source).items()}
    except SyntaxError:
        return {}


def check_module_level(source: str) -> None:
    """Raise :class:`ContractViolation` if ``source`` is not a runnable train.py (bus.trainpy)."""
    problems = contract_problems(source)
    if problems:
        raise ContractViolation(problems[0])


_OOM_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",  # torch.AcceleratorError
    "CUBLAS_STATUS_ALLOC_FAILED",
    "OutOfMemoryError",
    "MemoryError",
    "std::bad_alloc",
    "Cannot allocate memory",
)


def looks_like_oom(log_tail: str) -> bool:
    return any(m in log_tail for m in _OOM_MARKERS)


def traceback_tail(text: str, chars: int) -> str:
    """The end of a log, starting at the last traceback if there is one (so the error is what shows)."""
    idx = text.rfind("Traceback (most recent call last)")
    tail = text[idx:] if idx >= 0 else text
    return tail[-chars:]


def last_error(text: str) -> str:
    """The last exception line of a log (``ValueError: boom``), or "" when there is none: what a crash's
    reason quotes so that it explains itself in tables."""
    idx = text.rfind("Traceback (most recent call last)")
    if idx < 0:
        return ""
    lines = [ln.strip() for ln in text[idx:].splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "[runner]")) and not ln.startswith("Traceback"):
            return ln[:300]
    return ""
