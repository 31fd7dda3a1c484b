"""Edits to train.py and their validation.

A proposal is a list of search/replace blocks applied to the parent train.py (each search text must occur
exactly once). The result must parse and compile, stay under a size limit, define only things at module
level (imports, defs, classes, constant assignments, the ``__main__`` guard), and not repeat a train.py that
any agent already proposed, judged by the exact sha256 and by the sha256 of its normalised AST (comments
and formatting do not make a new experiment).
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.errors import ValidationError

TRAIN_PY = "train.py"
MAX_SOURCE_BYTES = 256 * 1024
MAX_EDITS = 40


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str
    file: str = TRAIN_PY


def sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def ast_sha256(source: str) -> str:
    """sha256 of the normalised AST: comments, blank lines, quotes and layout do not change it."""
    tree = ast.parse(source)
    return hashlib.sha256(ast.dump(tree, annotate_fields=False, include_attributes=False).encode()).hexdigest()


def unified_diff(parent: str, child: str, name: str = TRAIN_PY) -> str:
    return "".join(
        difflib.unified_diff(
            parent.splitlines(keepends=True), child.splitlines(keepends=True), f"a/{name}", f"b/{name}"
        )
    )


def apply_edits(source: str, edits: Sequence[Edit]) -> str:
    """Apply search/replace blocks in order. Raises :class:`ValidationError` naming the block that failed."""
    if not edits:
        raise ValidationError("no edits: give at least one {search, replace} block on train.py")
    if len(edits) > MAX_EDITS:
        raise ValidationError(f"{len(edits)} edit blocks; at most {MAX_EDITS}")
    out = source
    for i, e in enumerate(edits, 1):
        if e.file.strip().lstrip("./") not in (TRAIN_PY, ""):
            raise ValidationError(f"edit {i} targets {e.file!r}: only train.py may change")
        if not e.search:
            raise ValidationError(f"edit {i}: empty search text; quote the exact lines of train.py to replace")
        n = out.count(e.search)
        if n == 0:
            raise ValidationError(
                f"edit {i}: search text not found in train.py (it must match exactly, whitespace included): "
                f"{_excerpt(e.search)}"
            )
        if n > 1:
            raise ValidationError(
                f"edit {i}: search text occurs {n} times in train.py; include more context so it is unique: "
                f"{_excerpt(e.search)}"
            )
        out = out.replace(e.search, e.replace, 1)
    if out == source:
        raise ValidationError("the edits change nothing")
    return out


def _excerpt(text: str, n: int = 120) -> str:
    text = text.strip().replace("\n", "⏎")
    return repr(text[:n] + ("…" if len(text) > n else ""))


# --------------------------------------------------------------------------------------------------
# module-level side effects

# calls allowed in a module-level assignment: pure constructors and lookups
_SAFE_CALLS = frozenset(
    {
        "int", "float", "str", "bool", "tuple", "list", "dict", "set", "frozenset", "range", "len", "min",
        "max", "abs", "round", "sum", "sorted", "getattr", "isinstance", "field", "dataclasses.field",
        "os.environ.get", "os.getenv", "math.sqrt", "math.log", "math.log2", "math.exp", "math.ceil",
        "math.floor", "torch.device", "torch.cuda.is_available", "torch.backends.mps.is_available",
        "namedtuple", "collections.namedtuple", "TypeVar", "typing.TypeVar", "NamedTuple", "partial",
        "functools.partial", "logging.getLogger", "Path", "pathlib.Path",
    }
)  # fmt: skip


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _pure_expr(node: ast.expr) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and _dotted(sub.func) not in _SAFE_CALLS:
            return False
        if isinstance(sub, ast.Await | ast.Yield | ast.YieldFrom | ast.NamedExpr):
            return False
    return True


def _is_main_guard(node: ast.If) -> bool:
    t = node.test
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and len(t.comparators) == 1
        and isinstance(t.comparators[0], ast.Constant)
        and t.comparators[0].value == "__main__"
    )


def _stmt_ok(node: ast.stmt) -> bool:
    match node:
        case ast.Import() | ast.ImportFrom() | ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
            return True
        case ast.Pass():
            return True
        case ast.Expr(value=ast.Constant()):
            return True  # docstring
        case ast.Assign(value=v) | ast.AnnAssign(value=v) | ast.AugAssign(value=v):
            return v is None or _pure_expr(v)
        case ast.If():
            if _is_main_guard(node):
                return True
            return _pure_expr(node.test) and all(_stmt_ok(s) for s in node.body + node.orelse)
        case ast.Try():
            # try: import x / except ImportError: fallback
            return all(_stmt_ok(s) for s in node.body + node.orelse + node.finalbody) and all(
                _stmt_ok(s) for h in node.handlers for s in h.body
            )
    return False


def module_side_effects(source: str) -> list[str]:
    """Module-level statements that do something at import (``ast.dump`` of each, for comparison)."""
    tree = ast.parse(source)
    return [ast.dump(n) for n in tree.body if not _stmt_ok(n)]


@functools.lru_cache(maxsize=8)
def _parent_side_effects(parent: str) -> frozenset[str]:
    """Side effects the parent already has (cached: every draft of a wave shares one parent)."""
    try:
        return frozenset(module_side_effects(parent))
    except SyntaxError:
        return frozenset()


def _describe(source: str, dumped: Iterable[str]) -> list[str]:
    bad = set(dumped)
    lines = source.splitlines()
    return [
        f"line {n.lineno}: {lines[n.lineno - 1].strip()[:80]}"
        for n in ast.parse(source).body
        if ast.dump(n) in bad
    ]


# --------------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class Validated:
    """A train.py that passed validation, with what the event needs."""

    source: str
    sha256: str
    ast_sha256: str
    diff: str


def validate_source(source: str, parent: str, *, max_bytes: int = MAX_SOURCE_BYTES) -> Validated:
    """Check a complete new train.py against its parent (everything except dedup).

    Module-level side effects already present in the parent are tolerated (the harness decides what the
    base may do); new ones are rejected.
    """
    size = len(source.encode())
    if size > max_bytes:
        raise ValidationError(f"train.py would be {size} bytes; the limit is {max_bytes}")
    if "\x00" in source:
        raise ValidationError("train.py contains a NUL byte")
    try:
        tree = ast.parse(source, filename=TRAIN_PY)
    except SyntaxError as e:
        raise ValidationError(f"train.py does not parse: line {e.lineno}: {e.msg}: {(e.text or '').strip()}") from e
    try:
        compile(tree, TRAIN_PY, "exec")
    except (SyntaxError, ValueError) as e:
        raise ValidationError(f"train.py does not compile: {e}") from e
    allowed = _parent_side_effects(parent)
    new = [d for d in module_side_effects(source) if d not in allowed]
    if new:
        where = "; ".join(_describe(source, new)[:3])
        raise ValidationError(
            "train.py must be importable without side effects: module level may only hold imports, defs, "
            f"classes, constant assignments and the `if __name__ == \"__main__\":` guard; offending: {where}"
        )
    return Validated(source, sha256(source), ast_sha256(source), unified_diff(parent, source))


class SeenSet:
    """Hashes (exact and normalised-AST) of every train.py known to have been proposed."""

    def __init__(self) -> None:
        self._hashes: set[str] = set()

    def add(self, *hashes: str) -> None:
        self._hashes.update(h for h in hashes if h)

    def __contains__(self, h: object) -> bool:
        return h in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, v: Validated) -> None:
        if v.sha256 in self._hashes:
            raise ValidationError("duplicate: this exact train.py was already proposed (by some agent)")
        if v.ast_sha256 in self._hashes:
            raise ValidationError(
                "duplicate: this train.py differs from one already proposed only in comments or formatting"
            )
