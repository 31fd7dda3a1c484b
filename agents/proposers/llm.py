"""What the two LLM proposers share: the tools, the prompt, parsing tool input, and their settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.edits import Edit
from agents.knobs import parse_knobs
from agents.proposers.base import AgentContext, Grid, NoteDraft, ProposalBatch, ProposalDraft, Rejection
from agents.proposers.memory_prompt import memory_sections
from agents.proposers.retry import RetryPolicy

PROPOSE_TOOL = "propose_experiments"
GRID_TOOL = "propose_grid"
NOTE_TOOL = "write_note"

PROPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "experiments": {
            "type": "array",
            "description": "The wave: independent experiments, each a set of edits to the parent train.py.",
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "description": "What changes, in a few words."},
                    "rationale": {"type": "string", "description": "Why it might lower val_bpb."},
                    "edits": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "search": {"type": "string", "description": "Exact text of train.py, unique."},
                                "replace": {"type": "string"},
                            },
                            "required": ["search", "replace"],
                        },
                    },
                    "tier": {"type": "string", "enum": ["screen", "validate"]},
                },
                "required": ["description", "edits"],
            },
        }
    },
    "required": ["experiments"],
}

GRID_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "description": {"type": "string", "description": "What the wave tests, in a few words."},
        "rationale": {"type": "string"},
        "factors": {
            "type": "array",
            "description": "Knobs and the values to try; every combination becomes one experiment.",
            "items": {
                "type": "object",
                "properties": {"knob": {"type": "string"}, "values": {"type": "array", "items": {}}},
                "required": ["knob", "values"],
            },
        },
        "variants": {
            "type": "array",
            "description": "Optional code variants (edits to the parent), crossed with the factors.",
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "edits": {"type": "array", "items": {"type": "object", "properties": {
                        "search": {"type": "string"}, "replace": {"type": "string"}}, "required": ["search", "replace"]}},
                },
                "required": ["description", "edits"],
            },
        },
    },
    "required": ["description"],
}  # fmt: skip

NOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "body": {"type": "string", "description": "Markdown: what was learned, with hypothesis ids."},
    },
    "required": ["title", "body"],
}

PROPOSE_DESCRIPTION = (
    "Submit a wave of experiments. Each is a list of search/replace edits applied to the parent train.py "
    "(each search text must occur exactly once). Tier 'screen' for new ideas, 'validate' to re-check one."
)
GRID_DESCRIPTION = (
    "Submit a wave as a factorial design: knobs x values (and optional code variants); the swarm runs every "
    "combination not already run or in flight, then writes the main effects and interactions to the notebook."
)
NOTE_DESCRIPTION = "Write a short note to the shared notebook: what the last results taught you."

SYSTEM_TEMPLATE = """You are {agent}, one researcher in a swarm of agents improving train.py together.
Every agent proposes experiments; runners execute them; the shared ledger records every result.
You edit only train.py, with search/replace blocks against the parent train.py shown below.

{program_md}

How to answer: call `{propose}` with up to {k} experiments, or `{grid}` with a factorial design of at most {k}
combinations (a grid exposes interactions that single changes miss), and call `{note}` with a short note of
what the latest results taught you. Read the shared memory below first: build on the best, do not repeat a
dead end or what another agent is testing now.
Differences smaller than the σ of a hardware class are noise. Never repeat an experiment already run.
If you cannot call tools, answer with one ```json block holding {{"experiments": [...]}} in the tool's
shape, or with one ```diff block (a unified diff of train.py) per experiment, each under a one-line title."""

MAX_TAIL = 1500
MAX_NOTE_BODY = 600
RECENT_WITH_MEMORY = 15  # the memory already holds the best of everything: the latest few suffice


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def system_prompt(ctx: AgentContext, k: int) -> str:
    return SYSTEM_TEMPLATE.format(
        agent=ctx.agent, program_md=ctx.program_md.strip(), propose=PROPOSE_TOOL, grid=GRID_TOOL, note=NOTE_TOOL, k=k
    )


def user_prompt(ctx: AgentContext, k: int) -> str:
    """The context of one wave, as markdown."""
    r = ctx.reply
    out: list[str] = [f"# Wave {ctx.wave}: propose up to {k} experiments (hardware request: {ctx.hw_class})"]
    out.append("\n## Hardware classes (baseline mean and noise σ of val_bpb)")
    for s in r.stats:
        sigma = ctx.sigma.get(s.hw_class, s.sigma)
        out.append(
            f"- {s.hw_class}: baseline {_fmt(s.baseline_mean)} over {s.baseline_runs} runs, "
            f"σ {_fmt(sigma)}, {s.runners_online} runners online"
        )
    out.append(f"- runners online {r.runners_online}, experiments pending {r.pending}")
    out.append("\n## Best so far per hardware class")
    for b in r.best:
        out.append(f"- {b.hw_class}: {b.val_bpb:.4f} by {b.agent} ({b.hypothesis_id[:8]}): {b.description}")
    if r.lineage:
        out.append("\n## Your lineage (kept, oldest first)")
        for e in r.lineage:
            out.append(f"- {e.hypothesis_id[:8]} {_fmt(e.val_bpb)} on {e.ran_on or e.hw_class}: {e.description}")
    if ctx.results:
        out.append("\n## Your results since your last turn")
        for x in ctx.results:
            out.append(f"- {x.hypothesis_id[:8]} {x.status} {_fmt(x.val_bpb)} on {x.hw_class}: {x.description}")
    if ctx.memory is not None:
        out.extend(memory_sections(ctx.memory, ctx.agent))
    if ctx.tried:
        out.append(f"\n## Already tried on your parent ({ctx.parent_id[:8]}), by anyone: do not repeat")
        out.append(", ".join(f"[{t}]" for t in ctx.tried))
    out.append("\n## Recent results of all agents (newest first)")
    out.append("| id | agent | status | val_bpb | class | decision | description |\n|---|---|---|---|---|---|---|")
    for e in r.recent[: RECENT_WITH_MEMORY if ctx.memory is not None else None]:
        out.append(
            f"| {e.hypothesis_id[:8]} | {e.agent} | {e.status or 'pending'} | {_fmt(e.val_bpb)} | "
            f"{e.ran_on or e.hw_class} | {e.decision or ''} | {e.description[:100]} |"
        )
    if r.notes and ctx.memory is None:
        out.append("\n## Notebook: notes since your last look")
        for n in r.notes:
            out.append(f"### {n.title} ({n.agent})\n{n.body[:MAX_NOTE_BODY]}")
    if ctx.rejections:
        out.append("\n## Your previous turn: proposals that were rejected (fix these mistakes)")
        for rej in ctx.rejections:
            out.append(f"- {rej.description or '(no description)'}: {rej.reason}")
    if ctx.crashes:
        out.append("\n## Your experiments that failed (traceback tails)")
        for c in ctx.crashes:
            out.append(f"### {c.hypothesis_id[:8]} {c.status}: {c.description}\n{c.reason}\n```\n{c.log_tail[-MAX_TAIL:]}\n```")
    knobs = parse_knobs(ctx.parent_source)
    if knobs:
        out.append("\n## Knobs of the parent train.py")
        out.append(", ".join(f"{k.name}={k.source_text}" for k in knobs.values()))
    out.append(
        f"\n## Parent train.py ({ctx.parent_id}, val_bpb {_fmt(ctx.parent_val_bpb)}); your edits apply to this\n"
        f"```python\n{ctx.parent_source}\n```"
    )
    return "\n".join(out)


def parse_tool_input(name: str, args: Any, batch: ProposalBatch) -> None:
    """Turn one tool call's input into drafts, notes or rejections (never raises)."""
    if name == NOTE_TOOL:
        if isinstance(args, Mapping) and isinstance(args.get("title"), str) and isinstance(args.get("body"), str):
            batch.notes.append(NoteDraft(args["title"][:200], args["body"][:20_000]))
        else:
            batch.rejections.append(Rejection(f"{NOTE_TOOL} needs string fields title and body", excerpt=_ex(args)))
        return
    if name == GRID_TOOL:
        parse_grid(args, batch)
        return
    if name != PROPOSE_TOOL:
        batch.rejections.append(Rejection(f"unknown tool {name!r}; use {PROPOSE_TOOL}, {GRID_TOOL} or {NOTE_TOOL}"))
        return
    experiments = args.get("experiments") if isinstance(args, Mapping) else None
    if not isinstance(experiments, list):
        batch.rejections.append(Rejection(f"{PROPOSE_TOOL} needs a list field 'experiments'", excerpt=_ex(args)))
        return
    for exp in experiments:
        if not isinstance(exp, Mapping):
            batch.rejections.append(Rejection("an experiment must be an object", excerpt=_ex(exp)))
            continue
        desc = exp.get("description")
        desc = desc if isinstance(desc, str) else ""
        edits_raw = exp.get("edits")
        edits: list[Edit] = []
        bad = not isinstance(edits_raw, list) or not edits_raw
        for e in edits_raw if isinstance(edits_raw, list) else []:
            if isinstance(e, Mapping) and isinstance(e.get("search"), str) and isinstance(e.get("replace"), str):
                edits.append(Edit(e["search"], e["replace"], str(e.get("file") or "train.py")))
            else:
                bad = True
        if bad:
            batch.rejections.append(
                Rejection("edits must be a non-empty list of {search: str, replace: str}", desc, _ex(edits_raw))
            )
            continue
        tier = exp.get("tier", "screen")
        rationale = exp.get("rationale")
        batch.proposals.append(
            ProposalDraft(
                description=desc[:500] or "(no description)",
                rationale=rationale[:4000] if isinstance(rationale, str) else "",
                edits=edits,
                tier="validate" if tier == "validate" else "screen",
            )
        )


def parse_grid(args: Any, batch: ProposalBatch) -> None:
    """A ``propose_grid`` call as a :class:`Grid` (or a rejection saying what is wrong)."""
    if not isinstance(args, Mapping):
        batch.rejections.append(Rejection(f"{GRID_TOOL} needs an object", excerpt=_ex(args)))
        return
    desc = str(args.get("description") or "")
    factors: dict[str, list[Any]] = {}
    for f in args.get("factors") or []:
        knob, values = (f.get("knob"), f.get("values")) if isinstance(f, Mapping) else (None, None)
        if not isinstance(knob, str) or not isinstance(values, list) or not values:
            batch.rejections.append(Rejection("each factor needs a knob name and a non-empty list of values",
                                              desc, _ex(f)))  # fmt: skip
            return
        factors[knob] = values
    variants: list[tuple[str, list[Edit]]] = []
    for v in args.get("variants") or []:
        edits = [Edit(e["search"], e["replace"]) for e in (v.get("edits") or []) if isinstance(v, Mapping)
                 and isinstance(e, Mapping) and isinstance(e.get("search"), str) and isinstance(e.get("replace"), str)]
        if not edits:
            batch.rejections.append(Rejection("a variant needs edits of {search: str, replace: str}", desc, _ex(v)))
            return
        variants.append((str(v.get("description") or "variant")[:200], edits))
    if not factors and not variants:
        batch.rejections.append(Rejection(f"{GRID_TOOL} needs factors or variants", desc, _ex(args)))
        return
    rationale = args.get("rationale")
    batch.grids.append(Grid(desc[:500] or "grid", factors, variants, rationale if isinstance(rationale, str) else ""))


def parse_json_args(name: str, raw: str, batch: ProposalBatch) -> None:
    try:
        args = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        batch.rejections.append(Rejection(f"{name}: arguments are not valid JSON ({e})", excerpt=_ex(raw)))
        return
    parse_tool_input(name, args, batch)


def _ex(x: Any, n: int = 200) -> str:
    s = x if isinstance(x, str) else repr(x)
    return s[:n]


# --------------------------------------------------------------------------------------------------
# settings

TOOL_CHOICES = ("required", "auto")


@dataclass
class LlmSettings:
    """Settings of an LLM proposer (the API key and header values are never logged or put into an event).

    One retry policy: the SDK's own retries are off; ``attempts`` tries within ``call_seconds`` in all,
    each request at most ``timeout`` seconds (see :mod:`agents.proposers.retry`).
    """

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int = 8192
    temperature: float | None = None
    timeout: float = 300.0  # one HTTP request
    tool_choice: str = "required"  # "auto" for servers that refuse "required" (found out and remembered)
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # extra HTTP headers (a proxy's key)
    attempts: int = 3
    backoff: float = 2.0  # seconds before the first retry, doubled per attempt, jittered
    max_backoff: float = 60.0
    call_seconds: float = 600.0  # total cap of one call, retries included
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> ($/Mtok in, out)

    def __post_init__(self) -> None:
        if self.tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice {self.tool_choice!r}: use one of {', '.join(TOOL_CHOICES)}")
        if self.timeout <= 0 or self.call_seconds <= 0 or self.max_tokens <= 0 or self.attempts < 1:
            raise ValueError("timeout, call_seconds and max_tokens must be positive and attempts at least 1")

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, self.backoff, self.max_backoff, self.call_seconds)
