"""The runner's side of the experiment contract: the module-level rule (in bus/trainpy.py, shared with the
agents), train.py's knobs, and how its output is read."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any

from bus.trainpy import stmt_problem
from runner.errors import ContractViolation


def check_module_level(source: str) -> None:
    """Raise :class:`ContractViolation` if importing ``source`` would do more than define things."""
    try:
        tree = ast.parse(source, filename="train.py")
    except SyntaxError as e:
        raise ContractViolation(f"train.py does not parse: {e.msg} at line {e.lineno}") from e
    for node in tree.body:
        if (why := stmt_problem(node)) is not None:
            raise ContractViolation(
                f"train.py module level must only define things (imports, constants, defs, classes, the "
                f"__main__ guard): {why}"
            )
    names = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    } | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if "build_model" not in names:
        raise ContractViolation(
            "train.py defines no module-level build_model(config): the evaluation needs it"
        )


# --------------------------------------------------------------------------------------------------
# knobs

_KNOB = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _const_value(node: ast.expr) -> Any:
    """Literal, or arithmetic over literals (2 ** 19, 3e-4 * 2); raises ValueError otherwise."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        pass
    if isinstance(node, ast.BinOp):
        a, b = _const_value(node.left), _const_value(node.right)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)):
            raise ValueError("non-numeric operands")
        ops: dict[type, Any] = {
            ast.Add: lambda x, y: x + y,
            ast.Sub: lambda x, y: x - y,
            ast.Mult: lambda x, y: x * y,
            ast.Div: lambda x, y: x / y,
            ast.FloorDiv: lambda x, y: x // y,
            ast.Pow: lambda x, y: x**y if abs(y) <= 64 else math.inf,
        }
        fn = ops.get(type(node.op))
        if fn is None:
            raise ValueError("unsupported operator")
        return fn(a, b)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _const_value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not a constant")


def parse_knobs(source: str) -> dict[str, Any]:
    """Module-level UPPER_CASE constants of train.py whose value is a literal (or literal arithmetic)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    knobs: dict[str, Any] = {}
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and value is not None and _KNOB.match(target.id):
            try:
                knobs[target.id] = _const_value(value)
            except (ValueError, ZeroDivisionError, OverflowError):
                continue
    return knobs


# --------------------------------------------------------------------------------------------------
# output

_PROGRESS = re.compile(
    r"^step\s+(\d+)\s*\|\s*progress\s+([0-9.eE+-]+)\s*\|\s*loss\s+([0-9.eE+-]+|nan|inf)\s*(?:\|\s*tok/s\s+(\d+))?"
)
_NAN = re.compile(r"^FAIL: nan loss at step (\d+)")


@dataclass
class ProgressLine:
    step: int
    progress: float
    loss: float
    tok_per_s: int = 0


def parse_progress(line: str) -> ProgressLine | None:
    m = _PROGRESS.match(line.strip())
    if not m:
        return None
    try:
        return ProgressLine(int(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4) or 0))
    except ValueError:
        return None


@dataclass
class Summary:
    """The ``---`` block a train.py prints at the end: ``key: value`` lines (untrusted, informational)."""

    values: dict[str, float] = field(default_factory=dict)
    nan_step: int | None = None

    def get(self, key: str, default: float = 0.0) -> float:
        return self.values.get(key, default)


def parse_summary(text: str) -> Summary:
    """The last ``---`` block of ``text``; numbers only. Also notes a ``FAIL: nan loss`` line."""
    out = Summary()
    lines = text.splitlines()
    for line in lines:
        if m := _NAN.match(line.strip()):
            out.nan_step = int(m.group(1))
    try:
        start = len(lines) - 1 - lines[::-1].index("---")
    except ValueError:
        return out
    for line in lines[start + 1 :]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            out.values[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return out


_OOM_MARKERS = (
    "CUDA out of memory",
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
