"""The research loop against a real nats-server, with a fake runner (and, where a test needs set numbers,
a fake ledger read API). The ledger and runner packages are not needed here: see test_agents_e2e.py."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.edits import Edit, ast_sha256, sha256
from agents.loop import AgentConfig, ensure_baselines, run_agent
from agents.policy import DecisionRule
from agents.proposers.base import ProposalDraft
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings
from agents.proposers.random_search import RandomProposer
from agents.tail import RunTail
from bus import publish
from bus.events import (
    AgentJoined,
    ClassStats,
    HypothesisProposed,
    ProgramChanged,
    RunnerJoined,
)
from bus.events import Hardware as Hw
from tests.agents_support import STANDIN_TRAIN_PY, Scripted, depth, fake_ledger, fake_runner
from tests.fake_llm_server import FakeLlmServer, anthropic_message, anthropic_tool_use, server_error

RUN = "t"


async def all_events(js: JetStreamContext, run: str = RUN) -> RunTail:
    tail = RunTail(js, run)
    await tail.start()
    await asyncio.wait_for(tail.caught_up.wait(), 10)
    await tail.stop()
    return tail


def config(**kw: object) -> AgentConfig:
    opts: dict[str, object] = dict(
        run=RUN, agent="a1", base_train_py=STANDIN_TRAIN_PY, program_md="PROGRAM-V1", hw_class="cpu",
        request_timeout=0.5, wave_timeout=20.0,
    )  # fmt: skip
    opts.update(kw)
    return AgentConfig(**opts)  # type: ignore[arg-type]


async def runner_joined(js: JetStreamContext, cls: str = "cpu", runner: str = "r1") -> None:
    await publish(js, RunnerJoined(run=RUN, source=runner, runner=runner, hardware=Hw(hw_class=cls), classes=[cls, "any"]))


async def test_random_agent_full_cycle_with_baselines(nc: NATS, js: JetStreamContext) -> None:
    await runner_joined(js)
    proposer = RandomProposer(STANDIN_TRAIN_PY, seed=1)
    async with fake_runner(nc, RUN) as ran:
        stats = await run_agent(nc, config(max_experiments=6, max_wave=3), proposer, stop=asyncio.Event())
    assert stats.proposed == 6 and stats.stopped_because == "max_experiments reached"
    ev = await all_events(js)
    baselines = sorted(h for h, p in ev.proposals.items() if "baseline" in p.tags)
    assert baselines == ["baseline-cpu-0", "baseline-cpu-1", "baseline-cpu-2"]
    assert all(ev.proposals[b].train_py == STANDIN_TRAIN_PY and ev.proposals[b].hw_class == "cpu" for b in baselines)
    own = [p for p in ev.proposals.values() if p.agent == "a1"]
    assert len(own) == 6 and len(ran) == 9
    for p in own:
        assert p.train_py_sha256 == sha256(p.train_py) and p.ast_sha256 == ast_sha256(p.train_py)
        assert p.knobs["DEPTH"] >= 1 and p.hw_class == "cpu"
        assert p.diff.startswith("--- a/train.py") or ("repeat" in p.tags and p.tier == "validate")
    assert all(ev.decided[p.hypothesis_id].by == "a1" for p in own)
    assert any(n.agent == "a1" for n in ev.notes)
    assert "a1" not in ev.agents  # AgentLeft


async def test_wave_size_follows_free_runners(nc: NATS, js: JetStreamContext) -> None:
    proposer = Scripted([])
    async with fake_ledger(nc, RUN, runners_online=7, pending=2):
        await run_agent(nc, config(max_waves=1, baselines=False), proposer, stop=asyncio.Event())
    assert proposer.asked[-1][1] == 5  # 7 runners, 2 busy, one agent
    await publish(js, AgentJoined(run=RUN, source="a2", agent="a2", provider="test"))
    proposer = Scripted([])
    async with fake_ledger(nc, RUN, runners_online=7, pending=2):
        await run_agent(nc, config(max_waves=1, baselines=False), proposer, stop=asyncio.Event())
    assert proposer.asked[-1][1] == 3  # two agents share 5 free runners: ceil(5/2)
    proposer = Scripted([])
    async with fake_ledger(nc, RUN, runners_online=2, pending=9):
        await run_agent(nc, config(max_waves=1, baselines=False, agent="a3"), proposer, stop=asyncio.Event())
    assert proposer.asked[-1][1] == 1  # none free: still one, so the agent keeps a foot in the queue
    proposer = Scripted([])
    async with fake_ledger(nc, RUN, runners_online=64, pending=0):
        await run_agent(nc, config(max_waves=1, baselines=False, max_wave=10), proposer, stop=asyncio.Event())
    assert proposer.asked[-1][1] == 10  # capped by the config


async def test_dedup_refuses_repeats_exact_ast_and_ledger(nc: NATS, js: JetStreamContext) -> None:
    cosmetic = ProposalDraft(description="depth 6 again, reformatted",
                             edits=[Edit("DEPTH = 4                 # transformer blocks", "DEPTH=6  # more blocks")])  # fmt: skip
    ledger_knows = ProposalDraft(description="seen by the ledger", edits=[Edit("DEPTH = 4 ", "DEPTH = 9 ")])
    seen_src = STANDIN_TRAIN_PY.replace("DEPTH = 4 ", "DEPTH = 9 ")
    proposer = Scripted([[depth(6)], [depth(6, "depth 6 again"), cosmetic, ledger_knows, depth(5)]])
    # the ledger's baseline (3.0) beats everything, so nothing is kept and every wave builds on train.py
    stats = [ClassStats(hw_class="cpu", baseline_runs=3, baseline_mean=3.0, sigma=0.01, runners_online=4)]
    async with fake_runner(nc, RUN), fake_ledger(nc, RUN, runners_online=4, seen={sha256(seen_src)}, stats=stats):
        await run_agent(nc, config(max_waves=2, baselines=False), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    own = sorted(p.description for p in ev.proposals.values() if p.agent == "a1")
    rejected = await _rejections(js)
    assert own == ["depth 5", "depth 6"], rejected
    rejected = await _rejections(js)
    assert any("exact train.py" in r for r in rejected)
    assert any("comments or formatting" in r for r in rejected)
    assert any("ledger says" in r for r in rejected)
    own_rejected = [r for r in proposer.observed if r.status == "rejected"]
    assert len(own_rejected) == 3


async def _rejections(js: JetStreamContext) -> list[str]:
    from bus.events import ProposalRejected, decode

    sub = await js.subscribe(f"swarm.{RUN}.evt.rejected", ordered_consumer=True)
    out = []
    info = await js.stream_info("SWARM_EVENTS", subjects_filter=f"swarm.{RUN}.evt.rejected")
    for _ in range(sum((info.state.subjects or {}).values())):
        msg = await sub.next_msg(timeout=5)
        ev = decode(msg.data)
        assert isinstance(ev, ProposalRejected)
        out.append(ev.reason)
    await sub.unsubscribe()
    return out


async def test_keep_below_sigma_is_not_taken_and_repeat_confirms(nc: NATS, js: JetStreamContext) -> None:
    await runner_joined(js)  # one runner: waves of one
    scores = {"baseline": [3.39, 3.40, 3.41], "depth 5": [3.395, 3.401], "depth 6": [3.33], "depth 7": [3.318, 3.316]}

    def score(p: HypothesisProposed) -> float:
        key = "baseline" if "baseline" in p.tags else p.description[-7:]
        return scores[key].pop(0)

    # σ = 0.01 from three baselines (mean 3.40), k = 2:
    # depth 5: 3.395 is 0.5σ better -> not kept on its own; repeated on the validate tier; mean 3.398 -> discard
    # depth 6: 3.33 is 7σ better -> kept; depth 7 builds on it: 3.318 then 3.316, mean 1.3σ better < 2σ/√2 -> discard
    proposer = Scripted([[depth(5)], [depth(6)], [depth(7, frm=6)]])
    rule = DecisionRule(k=2.0, confirm=True)
    async with fake_runner(nc, RUN, score):
        stats = await run_agent(nc, config(max_waves=5, wave_timeout=10.0, rule=rule), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    by_desc = {p.description: h for h, p in ev.proposals.items() if "repeat" not in p.tags}
    d5, d6, d7 = (ev.decided[by_desc[f"depth {d}"]] for d in (5, 6, 7))
    assert d5.decision == "discard" and "mean of 2 runs" in d5.reason
    assert d5.sigma is not None and abs(d5.sigma - 0.01) < 1e-9
    assert d6.decision == "keep" and d6.reference_val_bpb is not None
    assert abs(d6.reference_val_bpb - 3.40) < 1e-9  # the baseline mean (nothing kept before)
    assert d7.decision == "discard" and "mean of 2 runs" in d7.reason
    assert d7.reference_val_bpb is not None and abs(d7.reference_val_bpb - 3.33) < 1e-9  # its lineage best
    repeats = [p for p in ev.proposals.values() if "repeat" in p.tags]
    assert sorted(p.parent for p in repeats) == sorted([by_desc["depth 5"], by_desc["depth 7"]])
    assert all(p.tier == "validate" and p.train_py == ev.proposals[p.parent].train_py for p in repeats)
    assert all(ev.decided[p.hypothesis_id].decision == "discard" for p in repeats)
    assert stats.kept == 1 and not scores["depth 7"]
    # depth 7 was built on the kept depth 6: the agent follows its lineage
    assert ev.proposals[by_desc["depth 7"]].parent == by_desc["depth 6"]


async def test_the_lucky_best_of_a_wide_wave_is_measured_again(nc: NATS, js: JetStreamContext) -> None:
    """Of a wave of four, the best is kept on one run — and that run was lucky. Without a second run of it the
    next wave is measured against the lucky draw, and a change that truly beats it is turned away."""
    for r in range(7):
        await runner_joined(js, runner=f"r{r}")  # three run the baselines: a first wave of four
    scores = {"baseline": [3.39, 3.40, 3.41], "depth 5": [3.45], "depth 6": [3.30, 3.35], "depth 7": [3.45],
              "depth 8": [3.45], "depth 9": [3.30]}  # fmt: skip

    def score(p: HypothesisProposed) -> float:
        key = "baseline" if "baseline" in p.tags else p.description[-7:]
        return scores[key].pop(0)

    # σ = 0.01, k = 2. depth 6: 3.30 is 10σ better than the baselines -> kept on one run, then run again
    # (3.35): it stands at their mean, 3.325. depth 9, built on it: 3.30 beats 3.325 by 2.5σ -> kept
    # (against the lucky 3.30 alone it would not be better at all)
    proposer = Scripted([[depth(5), depth(6), depth(7), depth(8)], [depth(9, frm=6)]])
    async with fake_runner(nc, RUN, score):
        stats = await run_agent(nc, config(max_waves=3, rule=DecisionRule(k=2.0)), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    by_desc = {p.description: h for h, p in ev.proposals.items() if "repeat" not in p.tags}
    d6, d9 = ev.decided[by_desc["depth 6"]], ev.decided[by_desc["depth 9"]]
    assert d6.decision == "keep" and d6.val_bpb == 3.30
    again = [p for p in ev.proposals.values() if "repeat" in p.tags]
    assert [p.parent for p in again] == [by_desc["depth 6"]] and not scores["depth 6"]
    assert ev.decided[again[0].hypothesis_id].decision == "discard"  # a re-run is recorded, never kept itself
    assert again[0].description.startswith(f"re-measure of {by_desc['depth 6'][:8]}")  # not a confirmation
    assert ev.decided[again[0].hypothesis_id].reason.endswith("it stands at the mean of 2 runs, 3.3250")
    assert d9.decision == "keep", d9.reason
    assert d9.reference_val_bpb is not None and abs(d9.reference_val_bpb - 3.325) < 1e-9
    assert ev.proposals[by_desc["depth 9"]].parent == by_desc["depth 6"] and stats.kept == 2


async def test_a_wave_keeps_its_best_clear_win_whatever_the_order(nc: NATS, js: JetStreamContext) -> None:
    """Two results of one wave both beat the baseline clearly; the second listed is better than the first by
    less than the noise. Decided in the order listed, the weaker was kept and raised the bar: the better one
    then waited for a confirming run, and the next wave was built on the weaker. Decided best first, the
    better one is kept on its run and the next wave builds on it."""
    for r in range(5):
        await runner_joined(js, runner=f"r{r}")  # three run the baselines: a first wave of two
    scores = {"baseline": [3.39, 3.40, 3.41], "depth 5": [3.35], "depth 6": [3.34, 3.34], "depth 9": [3.20]}

    def score(p: HypothesisProposed) -> float:
        key = "baseline" if "baseline" in p.tags else p.description[-7:]
        return scores[key].pop(0)

    # σ = 0.01, k = 2: both beat 3.40 by more than 0.02; depth 6 beats depth 5 by only 0.01
    proposer = Scripted([[depth(5), depth(6)], [depth(9, frm=6)]])
    async with fake_runner(nc, RUN, score):
        stats = await run_agent(nc, config(max_waves=2, rule=DecisionRule(k=2.0)), proposer, stop=asyncio.Event())
    ev = await all_events(js)
    by_desc = {p.description: h for h, p in ev.proposals.items() if "repeat" not in p.tags}
    d5, d6 = ev.decided[by_desc["depth 5"]], ev.decided[by_desc["depth 6"]]
    assert d6.decision == "keep" and d6.val_bpb == 3.34 and d6.reference_val_bpb == 3.40, d6.reason
    assert d5.decision == "discard" and "not better than 3.34" in d5.reason, d5.reason
    assert not [p for p in ev.proposals.values() if "repeat" in p.tags]  # no wave spent confirming
    assert ev.proposals[by_desc["depth 9"]].parent == by_desc["depth 6"] and stats.rejected == 0


async def test_llm_agent_bad_output_crashes_and_program_change(nc: NATS, js: JetStreamContext) -> None:
    await publish(js, ProgramChanged(run=RUN, source="human", program_md="PROGRAM-V2: only touch learning rates"))
    for r in ("r1", "r2", "r3"):
        await runner_joined(js, runner=r)  # waves of three
    with FakeLlmServer() as srv:
        srv.push(
            anthropic_message([{"type": "text", "text": "no tools today"}]),
            anthropic_tool_use([("propose_experiments", {"experiments": [
                {"description": "crashy", "edits": [{"search": "MATRIX_LR = 0.04", "replace": "MATRIX_LR = 0.05"}]},
                {"description": "does not apply", "edits": [{"search": "NOPE", "replace": "x"}]},
                {"description": "side effect", "edits": [{"search": "\n\ndef main", "replace": "\nmain()\n\ndef main"}]},
            ]}), ("write_note", {"title": "wave 2", "body": "trying lr"})]),
            server_error(), server_error(),
            anthropic_tool_use([("propose_experiments", {"experiments": [
                {"description": "lower lr", "edits": [{"search": "MATRIX_LR = 0.04", "replace": "MATRIX_LR = 0.03"}]},
            ]})]),
        )
        s = LlmSettings(model="claude-test", base_url=srv.url, api_key="k", attempts=2, backoff=0.0)
        proposer = ClaudeProposer(s)
        crash = {"crashy"}
        async with fake_runner(nc, RUN, lambda p: None if p.description in crash else 3.4):
            stats = await run_agent(nc, config(max_waves=4, baselines=False), proposer, stop=asyncio.Event())
        await proposer.aclose()
        prompts = [r.body for r in srv.requests]
    assert stats.waves == 4 and stats.proposed == 2 and stats.llm_errors == 1
    assert all("PROGRAM-V2" in p["system"] for p in prompts)
    second, third = prompts[1]["messages"][0]["content"], prompts[2]["messages"][0]["content"]
    assert "no tool call" in second
    assert "search text not found" in third and "module level" in third and "Traceback: boom" in third
    ev = await all_events(js)
    assert [n.title for n in ev.notes] == ["wave 2"]
    from bus.events import LlmUsage, decode

    sub = await js.subscribe(f"swarm.{RUN}.evt.usage", ordered_consumer=True)
    usage = [decode((await sub.next_msg(timeout=5)).data) for _ in range(4)]
    await sub.unsubscribe()
    assert [u.ok for u in usage if isinstance(u, LlmUsage)] == [True, True, False, True]
    assert all(isinstance(u, LlmUsage) and u.provider == "anthropic" and u.error != "k" for u in usage)


async def test_ensure_baselines_is_idempotent_across_agents(nc: NATS, js: JetStreamContext) -> None:
    a = await ensure_baselines(js, RUN, "a1", {"cpu", "h100"}, STANDIN_TRAIN_PY, repeats=2)
    b = await ensure_baselines(js, RUN, "a2", {"cpu", "h100"}, STANDIN_TRAIN_PY, repeats=2)  # a racing agent
    assert len(a) == 4 and b == []
    ev = await all_events(js)
    assert sorted(ev.proposals) == ["baseline-cpu-0", "baseline-cpu-1", "baseline-h100-0", "baseline-h100-1"]
    c = await ensure_baselines(js, RUN, "a3", {"cpu", "h100", "h200"}, STANDIN_TRAIN_PY, repeats=2, known=set(ev.proposals))
    assert c == ["baseline-h200-0", "baseline-h200-1"]  # a new class joined


async def test_stop_event_ends_a_waiting_agent(nc: NATS, js: JetStreamContext) -> None:
    stop = asyncio.Event()
    proposer = Scripted([[depth(5)]])
    task = asyncio.create_task(run_agent(nc, config(baselines=False), proposer, stop=stop))
    ev_tail = RunTail(js, RUN)
    await ev_tail.start()
    await ev_tail.wait_until(lambda: any(p.agent == "a1" for p in ev_tail.proposals.values()), 10)
    stop.set()  # nobody runs it: the agent is waiting for its result
    stats = await asyncio.wait_for(task, 10)
    await ev_tail.wait_until(lambda: "a1" not in ev_tail.agents and len(ev_tail.agents) == 0, 10)
    await ev_tail.stop()
    assert stats.stopped_because == "stopped" and stats.proposed == 1


async def test_run_agent_spec_entry_point(nc: NATS, js: JetStreamContext) -> None:
    from agents.spec import run_agent_spec

    await runner_joined(js)
    async with fake_runner(nc, RUN):
        stats = await run_agent_spec(
            nc, "optuna", run=RUN, train_py=STANDIN_TRAIN_PY, stop=asyncio.Event(), program_md="P",
            max_experiments=3, hw_class="cpu", request_timeout=0.5,
        )  # fmt: skip
    assert stats.proposed == 3
    ev = await all_events(js)
    (joined,) = [p for p in ev.proposals.values() if p.agent == "optuna-tpe"][:1]
    assert joined.model == "tpe"


async def test_a_kept_result_stands_at_the_mean_it_was_kept_at(nc: NATS, js: JetStreamContext) -> None:
    """σ rule: a result kept on the mean of two runs is the bar at that mean, not at its first (luckier) run."""
    await runner_joined(js)  # one runner: waves of one
    scores = {"baseline": [3.39, 3.40, 3.41], "depth 6": [3.385, 3.375], "depth 7": [3.368, 3.366]}

    def score(p: HypothesisProposed) -> float:
        key = "baseline" if "baseline" in p.tags else p.description[-7:]
        return scores[key].pop(0)

    # σ = 0.01, k = 2. depth 6: 3.385 is 1.5σ better than 3.40 -> repeated; mean 3.38 beats it by 2σ > 2σ/√2 -> kept.
    # depth 7 on it: 3.368, 3.366 (mean 3.367). Against depth 6's first run (3.385) that is 0.018 > 2σ/√2 = 0.0141
    # and would be kept; against the mean depth 6 was kept at (3.38) it is 0.013 < 0.0141: within the noise.
    proposer = Scripted([[depth(6)], [depth(7, frm=6)]])
    async with fake_runner(nc, RUN, score):
        stats = await run_agent(nc, config(max_waves=4, wave_timeout=10.0, rule=DecisionRule(k=2.0)), proposer,
                                stop=asyncio.Event())  # fmt: skip
    ev = await all_events(js)
    by_desc = {p.description: h for h, p in ev.proposals.items() if "repeat" not in p.tags}
    d6, d7 = (ev.decided[by_desc[f"depth {d}"]] for d in (6, 7))
    assert d6.decision == "keep" and d6.val_bpb is not None and abs(d6.val_bpb - 3.38) < 1e-9
    assert d7.reference_val_bpb is not None and abs(d7.reference_val_bpb - 3.38) < 1e-9, d7.reason
    assert d7.decision == "discard" and "mean of 2 runs" in d7.reason
    assert stats.kept == 1 and not scores["depth 7"]
