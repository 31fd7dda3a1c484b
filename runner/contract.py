"""The runner's side of the experiment contract: what a train.py may do at module level, its knobs, and
how its output is read.

The module-level rule (the trusted evaluation imports train.py, so importing it must do nothing but define):
a train.py is accepted when every top-level statement is one of

* ``import x`` / ``from x import y`` (imports run the imported module's code, which is trusted: the
  interpreter's, the venv's, or the runner's pristine prepare.py);
* ``def`` / ``async def`` / ``class`` (decorators and base classes may be names/attributes and calls of
  them, e.g. ``@torch.no_grad()`` or ``@dataclass(frozen=True)``; default argument values and class
  bodies follow the expression rule below, class bodies may hold defs and assignments);
* an assignment / annotated assignment / augmented assignment whose target is a name (or tuple of names)
  and whose value is an expression *without calls, comprehensions, lambdas with calls, await, yield or
  walrus*: literals, names, attributes, subscripts, arithmetic, comparisons, boolean ops, conditional
  expressions, containers and f-strings (e.g. ``TOTAL = 2 ** 19``, ``DTYPE = torch.bfloat16``);
* a bare string / constant expression (docstrings), ``pass``;
* ``if __name__ == "__main__":`` with any body (it does not run on import);
* ``if TYPE_CHECKING:`` / ``try: import x except ImportError: ...`` whose bodies follow these same rules.

Everything else is refused: top-level calls (``torch.manual_seed(0)``, ``main()``), loops, ``with``,
``del``, ``global``, ``raise``, ``assert``, ``try`` that does more than import, other ``if`` blocks.
Attribute access can still run code through properties; the rule is a guard against accidents and
obvious abuse, the sandbox (executors) is the defence against hostile code.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from runner.errors import ContractViolation

_FORBIDDEN_EXPR = (
    ast.Call,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.NamedExpr,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _expr_ok(node: ast.AST | None) -> str | None:
    """None if the expression runs no code of its own, else what is wrong."""
    if node is None:
        return None
    for sub in ast.walk(node):
        if isinstance(sub, ast.Lambda):
            continue  # a lambda's body only runs when called
        if isinstance(sub, _FORBIDDEN_EXPR):
            return f"{type(sub).__name__.lower()} at line {getattr(sub, 'lineno', '?')}"
    return None


def _decorator_ok(node: ast.expr) -> str | None:
    # @name, @a.b, @name(...), @a.b(...) with constant-ish args: defining, not doing
    target = node.func if isinstance(node, ast.Call) else node
    if not isinstance(target, ast.Name | ast.Attribute):
        return f"decorator at line {node.lineno}"
    if isinstance(node, ast.Call):
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if (why := _expr_ok(arg)) is not None:
                return f"decorator argument: {why}"
    return None


def _is_main_guard(node: ast.If) -> bool:
    t = node.test
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and len(t.ops) == 1
        and isinstance(t.ops[0], ast.Eq)
        and len(t.comparators) == 1
        and isinstance(t.comparators[0], ast.Constant)
        and t.comparators[0].value == "__main__"
    )


def _targets_ok(targets: list[ast.expr]) -> bool:
    def ok(t: ast.expr) -> bool:
        if isinstance(t, ast.Name):
            return True
        if isinstance(t, ast.Tuple | ast.List):
            return all(ok(e) for e in t.elts)
        return False

    return all(ok(t) for t in targets)


def _stmt_problem(node: ast.stmt, *, in_class: bool = False) -> str | None:
    line = getattr(node, "lineno", "?")
    if isinstance(node, ast.Import | ast.ImportFrom | ast.Pass):
        return None
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        for d in node.decorator_list:
            if (why := _decorator_ok(d)) is not None:
                return f"line {line}: def {node.name}: {why}"
        a = node.args
        for default in [*a.defaults, *(d for d in a.kw_defaults if d is not None)]:
            if (why := _expr_ok(default)) is not None:
                return f"line {line}: def {node.name}: default value runs code ({why})"
        return None
    if isinstance(node, ast.ClassDef):
        for d in node.decorator_list:
            if (why := _decorator_ok(d)) is not None:
                return f"line {line}: class {node.name}: {why}"
        for base in [*node.bases, *(k.value for k in node.keywords)]:
            if (why := _expr_ok(base)) is not None:
                return f"line {line}: class {node.name}: base runs code ({why})"
        for stmt in node.body:
            if (why := _stmt_problem(stmt, in_class=True)) is not None:
                return f"class {node.name}: {why}"
        return None
    if isinstance(node, ast.Assign):
        if not in_class and not _targets_ok(node.targets):
            return f"line {line}: assignment to something other than a name"
        why = _expr_ok(node.value)
        return None if why is None else f"line {line}: assignment runs code ({why})"
    if isinstance(node, ast.AnnAssign):
        if not in_class and not isinstance(node.target, ast.Name):
            return f"line {line}: assignment to something other than a name"
        why = _expr_ok(node.value) or _expr_ok(node.annotation)
        return None if why is None else f"line {line}: assignment runs code ({why})"
    if isinstance(node, ast.AugAssign):
        if not isinstance(node.target, ast.Name):
            return f"line {line}: assignment to something other than a name"
        why = _expr_ok(node.value)
        return None if why is None else f"line {line}: assignment runs code ({why})"
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return None  # docstring
    if isinstance(node, ast.If) and not in_class:
        if _is_main_guard(node):
            return None
        t = node.test
        is_tc = (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
            isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
        )
        if is_tc:
            for stmt in [*node.body, *node.orelse]:
                if (why := _stmt_problem(stmt)) is not None:
                    return why
            return None
        return f'line {line}: top-level if (only `if __name__ == "__main__":` and TYPE_CHECKING are allowed)'
    if isinstance(node, ast.Try) and not in_class:
        imports_only = all(isinstance(s, ast.Import | ast.ImportFrom | ast.Pass) for s in node.body)
        handlers_ok = (
            all(_stmt_problem(s) is None for h in node.handlers for s in h.body) and not node.finalbody
        )
        if imports_only and handlers_ok and not node.orelse:
            return None
        return f"line {line}: top-level try (only `try: import ... except ImportError: ...` is allowed)"
    kind = type(node).__name__
    if isinstance(node, ast.Expr):
        kind = "expression statement (e.g. a call)"
    return f"line {line}: top-level {kind} does work at import time"


def check_module_level(source: str) -> None:
    """Raise :class:`ContractViolation` if importing ``source`` would do more than define things."""
    try:
        tree = ast.parse(source, filename="train.py")
    except SyntaxError as e:
        raise ContractViolation(f"train.py does not parse: {e.msg} at line {e.lineno}") from e
    for node in tree.body:
        if (why := _stmt_problem(node)) is not None:
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
