"""Random search over train.py's knob space: the floor every smarter proposer must beat."""

from __future__ import annotations

import random
from collections.abc import Sequence

from agents.knobs import KnobSpec, search_space
from agents.proposers.base import AgentContext, ProposalBatch, Result
from agents.proposers.knob_search import knob_draft

MAX_TRIES = 50  # samples per slot before giving up on finding an unseen point


class RandomProposer:
    provider = "random"
    model = "random"
    strategy = "random search over knobs"
    writes_notes = False

    def __init__(
        self, base_source: str, *, seed: int = 0, space: list[KnobSpec] | None = None, device: str | None = None
    ) -> None:
        self.space = space if space is not None else search_space(base_source, device=device)
        self.rng = random.Random(seed)

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        if not self.space:
            return batch
        wave_hashes: set[str] = set()
        for _ in range(k):
            for _ in range(MAX_TRIES):
                draft = knob_draft(context, {s.name: s.sample(self.rng) for s in self.space}, "random")
                if draft is not None and draft.source not in wave_hashes:
                    assert draft.source is not None
                    wave_hashes.add(draft.source)
                    batch.proposals.append(draft)
                    break
        return batch

    async def observe(self, results: Sequence[Result]) -> None:
        return None

    async def aclose(self) -> None:
        return None
