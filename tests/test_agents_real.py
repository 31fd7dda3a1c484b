"""Paired comparisons on the real harness: the repo's train.py and prepare.py through a real runner (process
executor) on a tokens budget of a few steps. The same train.py on the same seed gives the same val_bpb to
six digits; the agent's hypothesis runs on its reference's first seed and is judged against it on the same
seeds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from agents.edits import Edit
from agents.loop import AgentConfig, run_agent
from agents.proposers.base import ProposalDraft
from bus import EmbeddedServer
from bus.events import REPEAT_TAG, ExperimentFinished
from runner.daemon import Runner
from tests.agents_support import Scripted
from tests.support.bus import RUN, all_events, propose, wait_for
from tests.support.harness import BASELINE, TINY_BUDGET, real_config


async def test_paired_comparison_on_the_real_harness(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    stop = asyncio.Event()
    runner = Runner(nc, real_config(tmp_path, nats_server.url, prepared_cache, burst=False))
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_for(js, lambda evs: any(type(e).__name__ == "RunnerJoined" for e in evs), 120)
        change = ProposalDraft(description="head learns faster", edits=[
            Edit("UNEMBEDDING_LR = 0.004 ", "UNEMBEDDING_LR = 0.04 ")])  # fmt: skip
        cfg = AgentConfig(run=RUN, agent="a1", base_train_py=BASELINE, hw_class="cpu", baseline_repeats=2,
                          budget=TINY_BUDGET, max_experiments=2, wave_timeout=600.0, request_timeout=0.3,
                          audit_every=None)  # fmt: skip
        stats = await run_agent(nc, cfg, Scripted([[change]]), stop=asyncio.Event())
        # the unmodified train.py again on seed 0: the same value to six digits
        again = await propose(js, BASELINE, agent="test", seed=0, tags=[REPEAT_TAG], parent="baseline-cpu-0",
                              budget=TINY_BUDGET)  # fmt: skip
        evs = await wait_for(js, lambda e: any(isinstance(x, ExperimentFinished) and x.hypothesis_id == again.hypothesis_id
                                               for x in e), 300)  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(task, 300)
    fin = {e.hypothesis_id: e for e in evs if isinstance(e, ExperimentFinished)}
    props = {e.hypothesis_id: e for e in await all_events(js) if type(e).__name__ == "HypothesisProposed"}
    assert all(f.status == "ok" and f.budget_unit == "tokens" for f in fin.values()), fin
    b0, b1 = fin["baseline-cpu-0"].val_bpb, fin["baseline-cpu-1"].val_bpb
    assert b0 is not None and b1 is not None and abs(fin[again.hypothesis_id].val_bpb - b0) < 1e-6  # type: ignore[operator]
    assert abs(b0 - b1) > 1e-4  # another seed is another run
    cand = next(h for h, p in props.items() if p.agent == "a1" and REPEAT_TAG not in p.tags)
    assert props[cand].seed == 0  # the seed of its reference's first run
    decided = [e for e in evs if type(e).__name__ == "HypothesisDecided" and e.hypothesis_id == cand]  # type: ignore[attr-defined]
    (d,) = decided
    delta0 = fin[cand].val_bpb - b0  # type: ignore[operator]
    assert d.reason.startswith("paired on"), d.reason  # type: ignore[attr-defined]
    if delta0 < 0:  # an improvement on seed 0 is confirmed on the baseline's other seed, on the same class
        (rep,) = [h for h, p in props.items() if REPEAT_TAG in p.tags and p.parent == cand]
        assert props[rep].seed == 1 and fin[rep].hw_class == "cpu"
        assert "paired on 2 seeds with the baseline" in d.reason  # type: ignore[attr-defined]
    else:
        assert "not better" in d.reason and stats.proposed == 1  # type: ignore[attr-defined]
