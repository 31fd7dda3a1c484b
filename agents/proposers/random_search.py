"""Random search over train.py's knob space: the floor every smarter proposer must beat.

By default it is *local*: each draft re-samples 1 to ``max_knobs`` knobs of the parent (the best so far)
from their declared ranges, as a person tweaking a config would. ``max_knobs=None`` re-samples every
knob at once (global random search), which on a 20-knob space rarely beats a tuned default.
"""

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
    strategy = "random search over knobs (1-3 at a time, from the best so far)"
    writes_notes = False

    def __init__(
        self,
        base_source: str,
        *,
        seed: int = 0,
        space: list[KnobSpec] | None = None,
        device: str | None = None,
        max_knobs: int | None = 3,
    ) -> None:
        self.space = space if space is not None else search_space(base_source, device=device)
        self.rng = random.Random(seed)
        self.max_knobs = max_knobs

    def _sample(self) -> dict[str, object]:
        specs = self.space
        if self.max_knobs is not None and len(specs) > self.max_knobs:
            specs = self.rng.sample(specs, self.rng.randint(1, self.max_knobs))
        return {s.name: s.sample(self.rng) for s in specs}

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        if not self.space:
            return batch
        wave_hashes: set[str] = set()
        for _ in range(k):
            for _ in range(MAX_TRIES):
                draft = knob_draft(context, self._sample(), "random")
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
