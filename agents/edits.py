"""Edits to train.py and their validation.

A proposal is a list of search/replace blocks applied to the parent train.py (each search text must occur
exactly once). The result must parse and compile, stay under a size limit, define only things at module
level (imports, defs, classes, constant assignments, the ``__main__`` guard), and not repeat a train.py that
any agent already proposed, judged by the exact sha256 and by the sha256 of its normalised AST (comments
and formatting do not make a new experiment).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.errors import ValidationError
from bus.trainpy import (
    ast_dump,
    ast_sha256,
    compile_tree,
    contract_problems,
    knob_values,
    parse,
    parse_knobs,
    sha256,
)

TRAIN_PY = "train.py"
MAX_SOURCE_BYTES = 256 * 1024
MAX_EDITS = 40


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str
    file: str = TRAIN_PY


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
# validation


@dataclass(frozen=True)
class Validated:
    """A train.py that passed validation, with what the event needs."""

    source: str
    sha256: str
    ast_sha256: str
    diff: str
    knobs: dict[str, Any] | None = None  # its knob values (bus.trainpy.knob_values), from the same parse


#: where str.splitlines breaks a line and Python's tokenizer does not: line numbers would disagree
_ODD_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class _Shape:
    """What a knob-only change of a parent needs of it: each line that holds one knob statement and nothing
    else (0-based line -> (knob name, its index among the top-level statements)), the statements as
    :func:`bus.trainpy.ast_sha256` dumps them (None where the dump is not their plain join), its knob values."""

    knob_lines: dict[int, tuple[str, int]]
    dumps: tuple[str, ...] | None
    values: dict[str, Any]


_HEAD, _TAIL = "Module([", "], [])"


@functools.lru_cache(maxsize=16)
def _shape(parent: str) -> _Shape:
    """Raises SyntaxError if ``parent`` does not parse."""
    tree = parse(parent)
    touching: dict[int, list[int]] = {}
    for i, node in enumerate(tree.body):
        for line in range(node.lineno - 1, node.end_lineno or node.lineno):
            touching.setdefault(line, []).append(i)
    knobs = parse_knobs(parent, tree)
    knob_lines = {k.lineno - 1: (k.name, touching[k.lineno - 1][0]) for k in knobs.values()
                  if len(touching[k.lineno - 1]) == 1}  # fmt: skip
    dumps: tuple[str, ...] | None = tuple(ast_dump(n) for n in tree.body)
    if ast_dump(tree) != _HEAD + ", ".join(dumps or ()) + _TAIL:  # not the layout the splice relies on
        dumps = None
    return _Shape(knob_lines, dumps, knob_values(parent, tree))


def _changed_knob_lines(parent: str, source: str) -> list[tuple[int, str, Any]] | None:
    """(statement index, the new line, its own tree) of each line ``source`` changes, if it changes only lines
    that hold one knob statement alone and still do, with the same name (``NAME = <literal>``); else None."""
    a, b = parent.splitlines(), source.splitlines()
    if len(a) != len(b) or parent.endswith("\n") != source.endswith("\n"):
        return None
    if _ODD_BREAKS.search(parent) or _ODD_BREAKS.search(source):
        return None
    try:
        knob_lines = _shape(parent).knob_lines
    except SyntaxError:
        return None
    out = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            continue
        if i not in knob_lines:
            return None
        name, index = knob_lines[i]
        try:
            tree = parse(y)  # one line on its own: cheap
        except SyntaxError:
            return None
        if len(tree.body) != 1 or list(parse_knobs(y, tree)) != [name]:  # the knob alone, nothing beside it
            return None
        out.append((index, y, tree))
    return out


def knob_lines_only(parent: str, source: str) -> bool:
    """Whether ``source`` differs from ``parent`` only in lines that hold one knob alone and still do, with
    the same name (``NAME = <literal>``): then it is exactly as runnable as its parent."""
    return _changed_knob_lines(parent, source) is not None


def _knob_edit_identity(parent: str, changed: list[tuple[int, str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """(ast_sha256, knob values) of a knob-only change of ``parent`` (:func:`_changed_knob_lines`), without
    parsing it whole: the parent's statement dumps with each changed line's own put in its place. Exactly
    what a full parse gives (tests/test_agents_unit.py compares them)."""
    shape = _shape(parent)
    if shape.dumps is None:
        return None
    dumps, values = list(shape.dumps), dict(shape.values)
    for index, line, tree in changed:
        dumps[index] = ast_dump(tree.body[0])
        values.update(knob_values(line, tree))
    whole = _HEAD + ", ".join(dumps) + _TAIL
    return hashlib.sha256(whole.encode()).hexdigest(), values


def validate_source(source: str, parent: str, *, max_bytes: int = MAX_SOURCE_BYTES,
                    parent_runs: bool = False) -> Validated:  # fmt: skip
    """Check a complete new train.py against its parent (everything except dedup). What makes a train.py
    runnable is the runners' own rule (bus.trainpy.contract_problems): what an agent publishes, a runner
    will run. ``parent_runs``: the parent is known to be runnable (the baseline, or a result that ran ok);
    then a change of knob values alone needs no parse, compile and contract check, and its identity is read
    off the parent's (:func:`_knob_edit_identity`): ~1 ms an edit instead of ~25."""
    size = len(source.encode())
    if size > max_bytes:
        raise ValidationError(f"train.py would be {size} bytes; the limit is {max_bytes}")
    if "\x00" in source:
        raise ValidationError("train.py contains a NUL byte")
    changed = _changed_knob_lines(parent, source) if parent_runs else None
    if changed is not None:
        fast = _knob_edit_identity(parent, changed)
        if fast is None:
            tree = parse(source, filename=TRAIN_PY)  # parses: its parent's lines did, and only knob lines changed
            fast = ast_sha256(tree), knob_values(source, tree)
        return Validated(source, sha256(source), fast[0], unified_diff(parent, source), fast[1])
    try:
        tree = parse(source, filename=TRAIN_PY)
    except SyntaxError as e:
        raise ValidationError(f"train.py does not parse: line {e.lineno}: {e.msg}: {(e.text or '').strip()}") from e
    try:
        compile_tree(tree, TRAIN_PY)
    except (SyntaxError, ValueError) as e:
        raise ValidationError(f"train.py does not compile: {e}") from e
    problems = contract_problems(tree)
    if problems:
        raise ValidationError("; ".join(problems[:3]))
    return Validated(source, sha256(source), ast_sha256(tree), unified_diff(parent, source), knob_values(source, tree))


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
