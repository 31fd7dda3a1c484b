"""What a train.py may do at module level: one rule for the runner (which refuses to run a train.py that
breaks it) and the agents (which refuse to propose one). It sits on the ground floor, beside the
messages, because both packages stand on it and neither may import the other.

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


def module_level_problems(source: str) -> list[tuple[ast.stmt, str]]:
    """Each top-level statement of ``source`` that does more than define, with what is wrong.
    Raises SyntaxError if it does not parse."""
    tree = ast.parse(source, filename="train.py")
    return [(node, why) for node in tree.body if (why := stmt_problem(node)) is not None]


def sha256(source: str) -> str:
    """The exact identity of a train.py (``train_py_sha256`` in events)."""
    return hashlib.sha256(source.encode()).hexdigest()


def ast_sha256(source: str) -> str:
    """sha256 of the normalised AST: comments, blank lines, quotes and layout do not change it."""
    tree = ast.parse(source)
    return hashlib.sha256(
        ast.dump(tree, annotate_fields=False, include_attributes=False).encode()
    ).hexdigest()
