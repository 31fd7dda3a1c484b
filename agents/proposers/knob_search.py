"""What the two knob proposers (Optuna TPE and random search) share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.edits import ast_sha256, sha256
from agents.errors import ValidationError
from agents.knobs import KnobSpec, apply_knobs, parse_knobs
from agents.proposers.base import AgentContext, NoteDraft, ProposalDraft, Result
from bus.memory import change_key


def knob_draft(ctx: AgentContext, params: Mapping[str, Any], label: str) -> ProposalDraft | None:
    """A draft setting ``params`` on the parent, or None if it would be a duplicate, change nothing, repeat
    a change that failed (a dead end of the shared memory) or one another agent is testing on this parent
    now (``ctx.avoid``)."""
    present = parse_knobs(ctx.parent_source)
    changes = {k: v for k, v in params.items() if k in present}
    try:
        source = apply_knobs(ctx.parent_source, changes)
    except ValidationError:
        return None
    if source == ctx.parent_source or sha256(source) in ctx.seen or ast_sha256(source) in ctx.seen:
        return None
    changed = {k: v for k, v in changes.items() if present[k].value != v}
    if ctx.avoid and change_key(changed) in ctx.avoid:
        return None
    desc = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    return ProposalDraft(
        description=f"{label}: {desc}"[:500],
        rationale=f"{label} sample over {len(params)} knobs",
        source=source,
        knobs=dict(changes),
    )


def in_space(space: list[KnobSpec], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a result that lie inside the search space (others cannot be told to the sampler)."""
    return {s.name: knobs[s.name] for s in space if s.name in knobs and s.contains(knobs[s.name])}


def summary_note(agent: str, label: str, results: list[Result]) -> NoteDraft | None:
    """A generated note for non-LLM agents: the wave's results, best first."""
    own = [r for r in results if r.own]
    if not own:
        return None
    ok = sorted((r for r in own if r.status == "ok" and r.val_bpb is not None), key=lambda r: r.val_bpb or 0.0)
    failed = [r for r in own if r.status != "ok"]
    lines = [f"{label} wave by {agent}: {len(ok)} ok, {len(failed)} failed."]
    for r in ok[:5]:
        lines.append(f"- {r.hypothesis_id[:8]} {r.val_bpb:.4f}: {r.description}")
    for r in failed[:3]:
        lines.append(f"- {r.hypothesis_id[:8]} {r.status}: {r.description} ({r.reason[:100]})")
    title = f"{label}: best {ok[0].val_bpb:.4f}" if ok else f"{label}: {len(failed)} failed"
    return NoteDraft(title, "\n".join(lines), tuple(r.hypothesis_id for r in own))
