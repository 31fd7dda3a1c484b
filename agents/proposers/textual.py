"""Edits from a model that answers in text instead of calling a tool (small local models often do).

Two shapes are understood, tried in this order:

* a JSON value in a fenced block (or the whole answer): ``{"experiments": [...]}`` as the tool takes it, a
  list of experiments, one experiment, or a tool call written out (``{"name": ..., "arguments": ...}``,
  also inside ``<tool_call>`` tags);
* fenced unified diffs of train.py (```` ```diff ````), one experiment per block; each hunk becomes a
  search/replace edit (its context and removed lines -> its context and added lines), so line numbers
  that the model got wrong do not matter.

Whatever is found goes through the same parsing as a tool call (:func:`agents.proposers.llm.parse_tool_input`)
and later the same validation as every proposal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agents.edits import TRAIN_PY, Edit
from agents.proposers.base import ProposalBatch, ProposalDraft, Rejection

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)
_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_HUNK = re.compile(r"^@@ .*?@@")


def _json_candidates(text: str) -> list[str]:
    out = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in ("json", "", "tool_call", "javascript")]
    out += _TOOL_TAG.findall(text)
    stripped = text.strip()
    if stripped[:1] in "{[":
        out.append(stripped)
    return out


def _as_tool_call(value: Any, propose_tool: str) -> tuple[str, Any] | None:
    """(tool name, arguments) that a JSON value written in text stands for, or None."""
    if isinstance(value, list):
        return propose_tool, {"experiments": value}
    if not isinstance(value, Mapping):
        return None
    if "experiments" in value:
        return propose_tool, value
    name = value.get("name") or value.get("tool")
    args = value.get("arguments", value.get("parameters", value.get("input")))
    if isinstance(name, str) and args is not None:
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        return name, args
    if "edits" in value:
        return propose_tool, {"experiments": [value]}
    return None


def diff_edits(diff: str) -> list[Edit]:
    """Search/replace edits from a unified diff (one per hunk). Raises ValueError if it holds no hunk."""
    edits: list[Edit] = []
    target = TRAIN_PY
    old: list[str] | None = None
    new: list[str] = []

    def close() -> None:
        if old is not None and (old or new):
            search = "\n".join(old) + "\n" if old else ""
            edits.append(Edit(search, "\n".join(new) + "\n" if new else "", target))

    lines = diff.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            continue  # a file header (a removed line "-- x" is never followed by "+++ ")
        if line.startswith("+++ ") and i > 0 and lines[i - 1].startswith("--- "):
            close()
            old, new = None, []
            name = line[4:].strip().split("\t")[0]
            target = name[2:] if name.startswith(("a/", "b/")) else name
            continue
        if _HUNK.match(line):
            close()
            old, new = [], []
            continue
        if old is None or line.startswith("\\"):  # outside a hunk, or "\ No newline at end of file"
            continue
        if line.startswith("-"):
            old.append(line[1:])
        elif line.startswith("+"):
            new.append(line[1:])
        else:  # context; models often drop the leading space of an empty line
            old.append(line[1:] if line.startswith(" ") else line)
            new.append(line[1:] if line.startswith(" ") else line)
    close()
    if not edits:
        raise ValueError("no @@ hunk in the diff")
    return edits


def _title_before(text: str, pos: int) -> str:
    for line in reversed(text[:pos].splitlines()):
        line = line.strip().strip("#*-: ").strip()
        if line:
            return line[:200]
    return ""


def parse_text_answer(text: str, batch: ProposalBatch, *, propose_tool: str) -> bool:
    """Add the proposals (or rejections) a text answer holds to ``batch``; False when it holds neither
    a JSON proposal nor a diff."""
    from agents.proposers.llm import parse_tool_input  # one parser for tool input, wherever it comes from

    for raw in _json_candidates(text):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            continue
        call = _as_tool_call(value, propose_tool)
        if call is not None:
            parse_tool_input(call[0], call[1], batch)
            return True
    found = False
    for m in _FENCE.finditer(text):
        body = m.group(2)
        if m.group(1).lower() not in ("diff", "patch", "udiff") and not re.search(r"^@@ ", body, re.M):
            continue
        found = True
        title = _title_before(text, m.start()) or "(from a diff in the text answer)"
        try:
            edits = diff_edits(body)
        except ValueError as e:
            batch.rejections.append(Rejection(f"a diff in the answer could not be read: {e}", title, body[:200]))
            continue
        batch.proposals.append(ProposalDraft(description=title[:500], rationale="from a text answer", edits=edits))
    return found
