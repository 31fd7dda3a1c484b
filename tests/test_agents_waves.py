"""What an agent says per wave and how it ends, against a real nats-server: wave lines (proposed, rejected
with the first reason, LLM errors with status and URL), the circuit breaker, a stop during a slow model
call (nothing published after it), and the reason an agent that published nothing leaves with."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.breaker import CircuitBreaker
from agents.loop import AgentConfig, WaveReport, run_agent
from agents.proposers.base import AgentContext, LlmCall, ProposalBatch, Result
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings
from agents.proposers.openai_compat import OpenAIProposer
from agents.tail import RunTail
from bus.events import AgentLeft, decode
from tests.agents_support import STANDIN_TRAIN_PY, Scripted, depth, fake_runner
from tests.fake_llm_server import FakeLlmServer, Reply, anthropic_message, anthropic_tool_use, html_page

RUN = "w"

BAD_DIFF = """### Deeper
```diff
@@ -1 +1 @@
-DEPTH = 5                 # transformer blocks
+DEPTH = 6                 # transformer blocks
```
"""


def config(**kw: object) -> AgentConfig:
    opts: dict[str, object] = dict(
        run=RUN, agent="a1", base_train_py=STANDIN_TRAIN_PY, hw_class="cpu", request_timeout=0.5,
        wave_timeout=20.0, baselines=False,
    )  # fmt: skip
    opts.update(kw)
    return AgentConfig(**opts)  # type: ignore[arg-type]


async def events(js: JetStreamContext) -> RunTail:
    tail = RunTail(js, RUN)
    await tail.start()
    await asyncio.wait_for(tail.caught_up.wait(), 10)
    await tail.stop()
    return tail


async def left_reason(js: JetStreamContext, agent: str) -> str:
    sub = await js.subscribe(f"swarm.{RUN}.evt.agent", ordered_consumer=True)
    try:
        while True:
            ev = decode((await sub.next_msg(timeout=5)).data)
            if isinstance(ev, AgentLeft) and ev.agent == agent:
                return ev.reason
    finally:
        await sub.unsubscribe()


async def test_wave_lines_say_what_happened(nc: NATS, js: JetStreamContext) -> None:
    lines: list[WaveReport] = []
    with FakeLlmServer() as srv:
        srv.push(
            anthropic_message([{"type": "text", "text": BAD_DIFF}]),  # a diff that does not apply
            html_page(),  # a wrong base URL
            anthropic_tool_use([("propose_experiments", {"experiments": [
                {"description": "deeper", "edits": [{"search": "DEPTH = 4 ", "replace": "DEPTH = 6 "}]}]})]),
        )  # fmt: skip
        p = ClaudeProposer(LlmSettings(model="claude-test", base_url=srv.url, api_key="k", attempts=1))
        async with fake_runner(nc, RUN):
            stats = await run_agent(nc, config(max_waves=3), p, stop=asyncio.Event(), report=lines.append)
        await p.aclose()
    text = [r.line() for r in lines]
    assert text[0].startswith("a1: wave 1: proposed 0; rejected 1 (first: edit 1: search text not found")
    assert text[1].startswith(f"a1: wave 2: proposed 0; LLM error: {srv.url}/v1/messages answered HTTP 200 with text/html")
    assert text[2] == "a1: wave 3: proposed 1"
    assert stats.proposed == 1 and stats.llm_calls == 3 and stats.llm_errors == 1 and stats.rejected == 1
    assert "proposed 1, rejected 1" in stats.summary() and "cost $0.0000" in stats.summary()


class Failing:
    """A proposer whose every call fails (a dead model server), counting its calls."""

    provider, model, strategy, writes_notes = "openai", "dead", "llm", True

    def __init__(self) -> None:
        self.calls = 0

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        self.calls += 1
        err = "cannot connect to http://127.0.0.1:9/v1/chat/completions: ConnectError: refused"
        return ProposalBatch(calls=[LlmCall("openai", "dead", ok=False, error=err)])

    async def observe(self, results: Sequence[Result]) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_failing_server_opens_the_breaker_and_the_agent_leaves_saying_why(nc: NATS, js: JetStreamContext) -> None:
    lines: list[WaveReport] = []
    proposer = Failing()
    cfg = config(max_empty_waves=4, breaker_failures=2, breaker_cooldown=0.01)
    stats = await run_agent(nc, cfg, proposer, stop=asyncio.Event(), report=lines.append)
    assert proposer.calls == 4 and stats.failed
    assert [r.paused for r in lines] == [None, 0.01, None, 0.02]  # after 2 failed waves; doubled next time
    assert "circuit open (the model server keeps failing): pausing 0 s" in lines[1].line()
    assert stats.stopped_because == "4 waves in a row published nothing"
    reason = await left_reason(js, "a1")
    assert reason.startswith("4 waves in a row published nothing; last problem: LLM error: cannot connect to")


def test_breaker_closes_on_a_good_call_and_ignores_waves_without_calls() -> None:
    b = CircuitBreaker(failures=2, cooldown=10.0, max_cooldown=25.0)
    assert [b.record(1, 1), b.record(1, 1), b.record(1, 1), b.record(1, 1)] == [None, 10.0, None, 20.0]
    assert [b.record(1, 1), b.record(1, 1)] == [None, 25.0]  # capped
    assert b.record(0, 0) is None and b.record(2, 1) is None  # one good call of two: closed again
    assert [b.record(1, 1), b.record(1, 1)] == [None, 10.0]


async def test_a_stop_during_a_slow_call_cancels_it_and_publishes_nothing(nc: NATS, js: JetStreamContext) -> None:
    lines: list[WaveReport] = []
    stop = asyncio.Event()
    valid = anthropic_tool_use([("propose_experiments", {"experiments": [
        {"description": "late", "edits": [{"search": "DEPTH = 4 ", "replace": "DEPTH = 7 "}]}]})])  # fmt: skip
    with FakeLlmServer() as srv:
        srv.push(Reply(valid.status, valid.body, delay=600.0))  # it would be a valid proposal, much later
        p = OpenAIProposer(LlmSettings(model="m", base_url=srv.url + "/v1", api_key="k"))
        task = asyncio.create_task(run_agent(nc, config(), p, stop=stop, report=lines.append))
        assert await asyncio.to_thread(srv.wait_requests, 1)
        stop.set()
        stats = await asyncio.wait_for(task, 30)  # the net: it returns at once, not after 600 s
        await p.aclose()
    assert stats.proposed == 0 and stats.stopped_because == "stopped" and not stats.failed
    assert [r.stopped for r in lines] == [True]
    assert "stopped during the wave: nothing published" in lines[0].line()
    ev = await events(js)
    assert not [h for h, x in ev.proposals.items() if x.agent == "a1"]
    assert await left_reason(js, "a1") == "stopped"


async def test_repeats_decided_before_a_stop_still_go_out_but_no_new_hypothesis(nc: NATS, js: JetStreamContext) -> None:
    """Scripted waves: the stop arrives while the agent waits for results; it proposes nothing after."""
    stop = asyncio.Event()
    proposer = Scripted([[depth(5)], [depth(6)]])
    task = asyncio.create_task(run_agent(nc, config(), proposer, stop=stop))
    tail = RunTail(js, RUN)
    await tail.start()
    await tail.wait_until(lambda: any(p.agent == "a1" for p in tail.proposals.values()), 10)
    stop.set()
    stats = await asyncio.wait_for(task, 30)
    await tail.wait_until(lambda: "a1" not in tail.agents, 10)
    await tail.stop()
    assert stats.proposed == 1 and len(proposer.asked) == 1
