"""train.py's contract, one home for each rule, on the ground floor because the runner, the agents, the
simulator and the tests all read train.py and none of them may import another:

* :func:`contract_problems` — what makes a train.py runnable (the module-level rule below, and a
  module-level ``build_model(config)`` for the evaluation): the runner refuses what breaks it, the agents
  never propose it;
* :func:`parse_knobs` — what a knob is: a module-level ``UPPER_CASE = <literal>`` on one line;
* :func:`parse_progress` / :func:`parse_summary` — train.py's output: progress lines, the ``---`` block,
  the NaN failure line (exit code :data:`NAN_EXIT_CODE`);
* :func:`profile_of_class` — which half of the per-profile knobs a hardware class runs.

The rule (the trusted evaluation imports train.py, so importing it must do nothing but define):
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
import operator
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def stmt_problem(node: ast.stmt, *, in_class: bool = False) -> str | None:
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
            if (why := stmt_problem(stmt, in_class=True)) is not None:
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
                if (why := stmt_problem(stmt)) is not None:
                    return why
            return None
        return f'line {line}: top-level if (only `if __name__ == "__main__":` and TYPE_CHECKING are allowed)'
    if isinstance(node, ast.Try) and not in_class:
        imports_only = all(isinstance(s, ast.Import | ast.ImportFrom | ast.Pass) for s in node.body)
        handlers_ok = (
            all(stmt_problem(s) is None for h in node.handlers for s in h.body) and not node.finalbody
        )
        if imports_only and handlers_ok and not node.orelse:
            return None
        return f"line {line}: top-level try (only `try: import ... except ImportError: ...` is allowed)"
    kind = type(node).__name__
    if isinstance(node, ast.Expr):
        kind = "expression statement (e.g. a call)"
    return f"line {line}: top-level {kind} does work at import time"


_PARSE_LOCK = threading.Lock()


def parse(source: str, filename: str = "train.py") -> ast.Module:
    """``ast.parse``, one thread at a time: CPython 3.11's AST conversion is not thread-safe ("SystemError:
    AST constructor recursion depth mismatch" when a fleet's runners checked train.py in threads at once)."""
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)


def compile_tree(tree: ast.Module, filename: str = "train.py") -> None:
    """``compile(tree)`` (turning the Python AST back into CPython's: the same unsafe conversion), one thread
    at a time with :func:`parse`. Raises SyntaxError/ValueError for what does not compile."""
    with _PARSE_LOCK:
        compile(tree, filename, "exec")


def literal(text: str) -> object:
    """``ast.literal_eval`` of a string (it parses: one thread at a time with :func:`parse`)."""
    with _PARSE_LOCK:
        return ast.literal_eval(text)


def module_level_problems(source: str | ast.Module) -> list[tuple[ast.stmt, str]]:
    """Each top-level statement of ``source`` (or its parsed tree) that does more than define, with what is
    wrong. Raises SyntaxError if it does not parse."""
    tree = parse(source) if isinstance(source, str) else source
    return [(node, why) for node in tree.body if (why := stmt_problem(node)) is not None]


def sha256(source: str) -> str:
    """The exact identity of a train.py (``train_py_sha256`` in events)."""
    return hashlib.sha256(source.encode()).hexdigest()


def ast_dump(node: ast.AST) -> str:
    """The normalised dump :func:`ast_sha256` hashes: no field names, no positions."""
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def ast_sha256(source: str | ast.Module) -> str:
    """sha256 of the normalised AST (of ``source``, or of its parsed tree): comments, blank lines, quotes
    and layout do not change it."""
    tree = parse(source) if isinstance(source, str) else source
    return hashlib.sha256(ast_dump(tree).encode()).hexdigest()


def contract_problems(source: str | ast.Module) -> list[str]:
    """Why ``source`` (or its parsed tree) is not a runnable train.py, in words (empty: it is)."""
    try:  # parsed once (~8 ms for train.py, one thread at a time): a fleet checks each claim
        tree = parse(source) if isinstance(source, str) else source
    except SyntaxError as e:
        return [f"train.py does not parse: {e.msg} at line {e.lineno}"]
    out = [
        "train.py module level must only define things (imports, constants, defs, classes, the __main__ guard): "
        + why
        for _, why in module_level_problems(tree)
    ]
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    if "build_model" not in defined:
        out.append("train.py defines no module-level build_model(config): the evaluation needs it")
    return out


# --------------------------------------------------------------------------------------------------
# knobs

KnobValue = bool | int | float | str | tuple[Any, ...]

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def _literal(node: ast.expr) -> Any:
    """Value of a literal expression, allowing arithmetic on numbers (``2**19``, ``3 * 64``)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _literal(node.left), _literal(node.right)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)):
            raise ValueError("arithmetic on non-numbers")
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    return ast.literal_eval(node)


@dataclass(frozen=True)
class Knob:
    name: str
    value: KnobValue
    lineno: int  # 1-based
    col_offset: int  # of the value, in characters
    end_col_offset: int
    source_text: str  # the value as written, e.g. "2**19"


def parse_knobs(source: str, tree: ast.Module | None = None) -> dict[str, Knob]:
    """Every module-level ``UPPER_CASE = <literal>`` (or ``UPPER_CASE: T = <literal>``) on a single line, in
    file order. A knob is edited by rewriting only its value's characters on that line. Raises SyntaxError
    if the source does not parse. ``tree``: ``source`` already parsed (it is not parsed again)."""
    tree = parse(source) if tree is None else tree
    lines = source.splitlines()
    knobs: dict[str, Knob] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value_node = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value_node = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id.isupper() and not target.id.startswith("_")):
            continue
        if node.lineno != node.end_lineno or value_node.end_col_offset is None:
            continue
        try:
            value = _literal(value_node)
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError, OverflowError):
            continue
        if not isinstance(value, bool | int | float | str | tuple):
            continue
        line = lines[node.lineno - 1]
        raw = line.encode()  # ast offsets are UTF-8 byte offsets; convert to character offsets
        col = len(raw[: value_node.col_offset].decode())
        end = len(raw[: value_node.end_col_offset].decode())
        knobs[target.id] = Knob(target.id, value, node.lineno, col, end, line[col:end])
    return knobs


def knob_values(source: str, tree: ast.Module | None = None) -> dict[str, Any]:
    """``{name: value}`` of train.py's knobs (tuples as lists, so the dict survives msgpack/JSON); empty if
    the source does not parse. ``tree``: ``source`` already parsed."""
    try:
        knobs = parse_knobs(source, tree)
    except SyntaxError:
        return {}
    return {k: list(v.value) if isinstance(v.value, tuple) else v.value for k, v in knobs.items()}


def profile_of_class(hw_class: str) -> str | None:
    """The profile (which half of the CPU_/GPU_ knob pairs) a hardware class runs: ``cpu`` for the cpu
    class, ``gpu`` for any GPU class, None for ``any`` (either)."""
    if hw_class in ("", "any"):
        return None
    return "cpu" if hw_class == "cpu" else "gpu"


# --------------------------------------------------------------------------------------------------
# output

NAN_EXIT_CODE = 3  # train.py exits with this after printing "FAIL: nan loss at step N"
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
    """One ``step N | progress P | loss L | tok/s T`` line, or None."""
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
    text: dict[str, str] = field(default_factory=dict)
    nan_step: int | None = None

    def get(self, key: str, default: float = 0.0) -> float:
        return self.values.get(key, default)


def parse_summary(text: str) -> Summary:
    """The last ``---`` block of ``text`` (numbers in ``values``, everything in ``text``); also notes a
    ``FAIL: nan loss`` line."""
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
        out.text[key.strip()] = value.strip()
        try:
            out.values[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return out
