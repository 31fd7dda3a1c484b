"""The simulated landscape's unknown edits (see :mod:`runner.executors.landscape`): a top-level statement of
train.py that differs from the reference gets a deterministic, hash-seeded effect; a knob the model does not
know gets a bounded, hash-seeded bump. Also the failure a simulated run ends with and the hash-seeded
uniform numbers every deterministic choice of the landscape draws from."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from runner.contract import parse_knobs

RunStatus = Literal["ok", "crash", "oom", "nan"]


class Failure(Exception):
    """The run fails: ``status`` crash | oom | nan; ``reason`` is the log's last line."""

    def __init__(self, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.status: RunStatus = status
        self.reason = reason


def uniform(*parts: object) -> float:
    """A uniform [0, 1) number from a hash of ``parts``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_KNOB_LINE = re.compile(r"^[A-Z][A-Z0-9_]*\s*(:[^=]*)?=(?!=)")
_DEF = re.compile(r"^(?:async\s+)?(def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")


def _strip_comment(line: str) -> str:
    """``line`` without its ``# comment`` (quotes on the line respected)."""
    if "#" not in line:
        return line
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


@dataclass(frozen=True)
class Scan:
    """One pass over a train.py's text: its code statements and its knob lines."""

    code: dict[str, str]  # normalised text -> name (``def f``, ``class C``, ``import``...)
    knob_lines: str  # the top-level one-line ``UPPER_CASE = ...`` statements, as written


def scan(source: str) -> Scan:
    """The top-level statements of ``source``: code (knob lines, docstrings, comments, blank lines and
    spacing left out, so only a change that could change what runs counts as an edit) and the knob lines.
    Text, not ``ast``: parsing train.py costs ~10 ms, this ~1 ms, and a fleet does it once per experiment."""
    blocks: list[list[str]] = []
    raws: list[str] = []  # the first raw line of each block
    depth, in_doc, cont = 0, "", False
    for raw in source.splitlines():
        stripped = raw.strip()
        if in_doc:  # inside a docstring: drop until it closes
            if in_doc in stripped:
                in_doc = ""
            continue
        if stripped[:3] in ('"""', "'''") and depth == 0 and not cont:
            quote = stripped[:3]
            if stripped.count(quote) < 2 or stripped == quote:
                in_doc = quote
            continue
        line = " ".join(_strip_comment(raw).split())
        if not line:
            continue
        top = not raw[:1].isspace() and depth == 0 and not cont
        if top and not (blocks and blocks[-1][-1].startswith("@")):
            blocks.append([line])
            raws.append(raw)
        elif blocks:
            blocks[-1].append(line)
        depth = max(0, depth + sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}"))
        cont = line.endswith("\\")
    code: dict[str, str] = {}
    knob_lines: list[str] = []
    for b, raw in zip(blocks, raws, strict=True):
        if _KNOB_LINE.match(b[0]):
            if len(b) == 1:
                knob_lines.append(raw)
            continue
        head = next((ln for ln in b if not ln.startswith("@")), b[0])
        m = _DEF.match(head)
        code["\n".join(b)] = f"{m.group(1)} {m.group(2)}" if m else head.split(" ", 1)[0]
    return Scan(code, "\n".join(knob_lines) + "\n")


def code_statements(source: str) -> dict[str, str]:
    """Normalised text → name of each top-level code statement of ``source`` (see :func:`scan`)."""
    return scan(source).code


def read_knobs(source: str, lines: str | None = None) -> dict[str, Any]:
    """train.py's knobs through the one knob parser, fed only the knob lines when they parse on their own
    (the same single-line statements it would pick from the whole file, at a twentieth of the cost)."""
    if lines is not None and lines.strip():
        knobs = parse_knobs(lines)
        if knobs:
            return knobs
    return parse_knobs(source)


@dataclass(frozen=True)
class CodeEffect:
    """What the non-knob edits of a train.py do: a quality Δ, a step-time factor, or a failure."""

    delta: float = 0.0
    speed: float = 1.0  # step time multiplier
    failure: Failure | None = None
    edits: int = 0


def _statement_effect(key: str, name: str) -> CodeEffect:
    u, mag, sp = uniform("cat", key), uniform("mag", key), uniform("speed", key)
    if u < 0.05:
        return CodeEffect(
            failure=Failure("crash", f"RuntimeError: shape mismatch in {name} (simulated bug)"), edits=1
        )
    if u < 0.08:
        return CodeEffect(
            failure=Failure("nan", f"FAIL: nan loss at step {int(40 + 400 * mag)} (edit of {name})"), edits=1
        )
    if u < 0.52:
        delta = (mag - 0.5) * 0.0006
    elif u < 0.88:
        delta = min(0.03, 0.0005 - math.log(1 - mag) * 0.003)
    else:
        delta = -min(0.005, 0.0003 - math.log(1 - mag) * 0.0012)
    # a few edits also change the step time: 10 % slower (up to +12 %), 3 % faster (up to -4 %)
    speed = 1.0 + 0.12 * sp / 0.10 if sp < 0.10 else (1.0 - 0.04 * (sp - 0.10) / 0.03 if sp < 0.13 else 1.0)
    return CodeEffect(delta, speed, edits=1)


def code_effect(source_code: dict[str, str], reference_code: dict[str, str] | None) -> CodeEffect:
    """The summed effect of every statement of ``source_code`` not in the reference (and of every
    reference statement removed without a replacement of the same name)."""
    if not reference_code or not source_code:
        return CodeEffect()
    shared = sum(1 for d in reference_code if d in source_code)
    if shared < len(reference_code) / 2:
        return CodeEffect()  # a different program altogether (a stand-in): no code effect
    added = [(d, n) for d, n in source_code.items() if d not in reference_code]
    names = {n for _, n in added}
    removed = [(d, n) for d, n in reference_code.items() if d not in source_code and n not in names]
    delta, speed, edits = 0.0, 1.0, 0
    for key, name in [*added, *(("removed:" + d, n) for d, n in removed)]:
        e = _statement_effect(key, name)
        if e.failure is not None:
            return e
        delta, speed, edits = delta + e.delta, speed * e.speed, edits + 1
    return CodeEffect(delta, speed, edits=edits)


def unknown_knob(name: str, v: Any) -> float:
    """A bounded bump (GPU units) for a knob the model does not know, optimum and height from its name."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return (-0.001 + 0.003 * uniform("cat", name, repr(v))) * 0.5
    x0 = 10 ** (6 * uniform("x0", name) - 3)
    height = 0.0005 + 0.003 * uniform("h", name)
    d = math.log((abs(float(v)) + 1e-12) / x0)
    return height * (1 - math.exp(-d * d / 2))
