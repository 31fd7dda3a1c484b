"""Paired comparisons for deterministic (tokens) budgets, against a real nats-server and a fake runner whose
results are a function of (train.py, seed): the seed moves val_bpb by ±0.035 (as on the CPU harness), a
change moves it by a few thousandths, the same train.py on the same seed gives the same value.

The σ-of-baselines rule keeps nothing here (every gain is inside 2σ of the seeds); the paired rule keeps
the real gains and discards the noise, with its reasoning in HypothesisDecided."""

from __future__ import annotations

import asyncio
import hashlib

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.loop import AgentConfig, run_agent
from agents.paired import PairedRule
from bus import publish
from bus.events import Hardware, HypothesisProposed, RunnerJoined
from tests.agents_support import STANDIN_TRAIN_PY, Scripted, depth, fake_runner
from tests.test_agents_loop import all_events

RUN = "t"
SEED_EFFECT = {0: 0.0, 1: 0.035, 2: -0.03, 3: 0.012}  # what a seed does to every train.py alike
TRUE = {4: 3.400, 5: 3.385, 6: 3.401, 7: 3.368}  # noise-free val_bpb by DEPTH


def deterministic(p: HypothesisProposed) -> float:
    """val_bpb of a train.py on a seed: its true value, the seed's effect, and a small change×seed term."""
    h = int(hashlib.sha256(f"{p.train_py_sha256}|{p.seed}".encode()).hexdigest()[:8], 16) / 2**32
    return TRUE[int(p.knobs["DEPTH"])] + SEED_EFFECT[p.seed] + 0.003 * (h - 0.5)


def config(**kw: object) -> AgentConfig:
    opts: dict[str, object] = dict(run=RUN, agent="a1", base_train_py=STANDIN_TRAIN_PY, hw_class="cpu",
                                   request_timeout=0.3, wave_timeout=20.0, audit_every=None)  # fmt: skip
    opts.update(kw)
    return AgentConfig(**opts)  # type: ignore[arg-type]


async def one_runner(js: JetStreamContext) -> None:
    await publish(js, RunnerJoined(run=RUN, source="r1", runner="r1", hardware=Hardware(hw_class="cpu"),
                                   classes=["cpu", "any"]))  # fmt: skip


async def test_paired_rule_keeps_real_gains_and_discards_noise(nc: NATS, js: JetStreamContext) -> None:
    await one_runner(js)
    proposer = Scripted([[depth(5)], [depth(6, frm=5)], [depth(7, frm=5)]])
    async with fake_runner(nc, RUN, deterministic, budget_unit="tokens") as ran:
        stats = await run_agent(nc, config(max_experiments=5), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    by_desc = {p.description: h for h, p in ev.proposals.items() if "repeat" not in p.tags}
    d5, d6, d7 = (by_desc[f"depth {d}"] for d in (5, 6, 7))
    # every screen run is on its reference's first seed (the baseline's 0), each confirm on a seed the
    # reference also ran
    assert [p.seed for p in ran if "baseline" in p.tags] == [0, 1, 2]
    assert ev.proposals[d5].seed == ev.proposals[d6].seed == ev.proposals[d7].seed == 0
    assert [ev.proposals[r].seed for r in ev.repeats_of(d5)] == [1]
    assert [ev.proposals[r].seed for r in ev.repeats_of(d7)] == [1]  # d5, its reference, ran seeds 0 and 1
    assert all(ev.proposals[r].hw_class == "cpu" for r in ev.repeats_of(d5))
    # depth 5: −0.015 on seeds 0 and 1, far below 2σ of the seeds (0.065) but beyond 2σ_Δ/√2
    k5 = ev.decided[d5]
    assert k5.decision == "keep", k5.reason
    assert "paired on 2 seeds with the baseline" in k5.reason and "σ_Δ" in k5.reason
    assert k5.sigma is not None and 0.002 < k5.sigma < 0.01
    assert k5.reference_val_bpb is not None and abs(k5.reference_val_bpb - (3.4 + 0.035 / 2)) < 0.003
    # depth 6 on top of depth 5: worse on the screen seed, no confirm
    assert ev.decided[d6].decision == "discard" and "not better" in ev.decided[d6].reason
    assert not ev.repeats_of(d6)
    # depth 7 on top of depth 5: compared with depth 5 on depth 5's seeds, kept
    k7 = ev.decided[d7]
    assert ev.proposals[d7].parent == d5
    assert k7.decision == "keep" and f"with {d5[:8]}" in k7.reason, k7.reason
    assert stats.kept == 2 and stats.proposed == 5


async def test_sigma_rule_on_the_same_numbers_keeps_nothing_for_wall_clock_budgets(
    nc: NATS, js: JetStreamContext
) -> None:
    await one_runner(js)
    proposer = Scripted([[depth(5)], [depth(7)]])
    async with fake_runner(nc, RUN, deterministic, budget_unit="seconds"):
        stats = await run_agent(nc, config(max_experiments=4), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    decided = [d for h, d in ev.decided.items() if ev.proposals[h].agent == "a1" and "repeat" not in ev.proposals[h].tags]
    assert len(decided) == 2 and stats.kept == 0
    assert all("paired" not in d.reason for d in decided)
    assert all(d.sigma is not None and d.sigma > 0.03 for d in decided)  # σ of the baselines across seeds


def test_paired_rule_reasoning_and_sigma() -> None:
    rule = PairedRule(k=2.0, prior_frac=0.25, prior_dof=3.0)
    # the prior alone: a quarter of the seeds' σ
    assert abs(rule.sigma((0.0, 0), 0.03, 3.4) - 0.0075) < 1e-12
    # observed paired spread pulls it toward the data as degrees of freedom accumulate
    assert rule.sigma((30 * 0.002**2, 30), 0.03, 3.4) < 0.0035
    v, why = rule.decide([-0.012], 0.0075, True, "the baseline", 3.388, 3.4)
    assert v == "confirm" and "confirm on another seed" in why
    v, why = rule.decide([-0.012, -0.011], 0.0075, False, "the baseline", 3.3885, 3.4)
    assert v == "keep" and "2σ_Δ/√2" in why
    v, why = rule.decide([-0.004, -0.003], 0.0075, False, "the baseline", 3.3965, 3.4)
    assert v == "discard" and "noise" in why
    v, _ = rule.decide([0.001], 0.0075, True, "the baseline", 3.401, 3.4)
    assert v == "discard"
    # no seed left to confirm on: one Δ beyond 2σ_Δ is kept, one within is not
    assert rule.decide([-0.02], 0.0075, False, "x", 3.38, 3.4)[0] == "keep"
    assert rule.decide([-0.01], 0.0075, False, "x", 3.39, 3.4)[0] == "discard"
