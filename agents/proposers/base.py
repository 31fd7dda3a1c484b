"""The Proposer protocol and the plain data that flows between the loop and a proposer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agents.edits import Edit, SeenSet
from bus.events import ContextReply, MemoryReply, Tier


def new_hypothesis_id() -> str:
    return str(uuid.uuid4())


@dataclass
class ProposalDraft:
    """One hypothesis as a proposer states it: search/replace ``edits`` on the parent (LLMs) or a complete
    ``source`` (knob proposers). The loop validates it and turns it into a HypothesisProposed."""

    description: str
    rationale: str = ""
    edits: list[Edit] | None = None
    source: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)  # the knob values it sets, when it is a knob change
    tier: Tier = "screen"
    hypothesis_id: str = field(default_factory=new_hypothesis_id)


@dataclass(frozen=True)
class NoteDraft:
    title: str
    body: str
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejection:
    """Model output that did not become a hypothesis, with the reason the model sees next turn."""

    reason: str
    description: str = ""
    excerpt: str = ""


@dataclass(frozen=True)
class LlmCall:
    """Accounting of one model call (or of one call's retries that all failed)."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_seconds: float = 0.0
    ok: bool = True
    error: str = ""


@dataclass
class Grid:
    """A wave as a design: every combination of ``factors`` (knob -> values) applied to the parent, times
    each of ``variants`` (lists of edits; none: the parent as it is). The loop expands it, drops what was
    run or is in flight, and analyses the wave when it completes (main effects and interactions, a note)."""

    description: str
    factors: dict[str, list[Any]] = field(default_factory=dict)
    variants: list[tuple[str, list[Edit]]] = field(default_factory=list)  # (label, edits)
    rationale: str = ""


@dataclass
class ProposalBatch:
    proposals: list[ProposalDraft] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    notes: list[NoteDraft] = field(default_factory=list)
    calls: list[LlmCall] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """A finished (or rejected) hypothesis as proposers see it: any agent's, with its knobs."""

    hypothesis_id: str
    agent: str
    status: str  # ok, crash, timeout, oom, nan, rejected, lost
    val_bpb: float | None = None
    hw_class: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    parent: str = ""
    reason: str = ""
    log_tail: str = ""
    own: bool = False
    tags: tuple[str, ...] = ()


@dataclass
class AgentContext:
    """What a proposer reads before a wave: the ledger's ContextReply plus the loop's own knowledge."""

    run: str
    agent: str
    wave: int
    program_md: str
    reply: ContextReply
    parent_id: str  # hypothesis the wave builds on (a hypothesis id or "baseline")
    parent_source: str
    parent_val_bpb: float | None = None
    hw_class: str = "any"
    best_sources: dict[str, str] = field(default_factory=dict)  # hw class -> train.py of its best
    rejections: list[Rejection] = field(default_factory=list)  # from the previous turn
    crashes: list[Result] = field(default_factory=list)  # own failed runs since the previous turn
    results: list[Result] = field(default_factory=list)  # own results decided since the previous turn
    sigma: dict[str, float] = field(default_factory=dict)  # hw class -> σ used by the decision rule
    seen: SeenSet = field(default_factory=SeenSet)
    deadline: float | None = None  # time.monotonic() by which propose must return (the wave's LLM time cap)
    memory: MemoryReply | None = None  # the swarm's shared memory (bus.memory): bests, effects, in flight...
    # normalised changes (bus.memory.change_key) not to propose on this parent: failed dead ends and what
    # others are testing on the same parent now
    avoid: set[str] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)  # changes already proposed on this parent (normalised)


@runtime_checkable
class Proposer(Protocol):
    """Where hypotheses come from. Implementations: Claude, OpenAI-compatible, Optuna TPE, random.

    ``propose`` must not raise for bad model output or API failures: it returns what it could, with
    :class:`Rejection` s and failed :class:`LlmCall` s describing the rest.
    """

    provider: str  # anthropic, openai, optuna, random
    model: str
    strategy: str
    writes_notes: bool  # True: notes come from the proposer (write_note); False: the loop summarises

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        """Up to ``k`` hypotheses building on ``context.parent_source``."""
        ...

    async def observe(self, results: Sequence[Result]) -> None:
        """Every finished result of the run not seen before (all agents), plus own rejected drafts."""
        ...

    async def aclose(self) -> None:
        """Release clients."""
        ...
