"""The swarm's shared memory: served by the real ledger (MemoryRequest), read by an agent before each wave, put
into the LLM prompt (through the official SDK, against the loopback server) and used by the knob proposers.

Another agent's result, its note and what it is testing right now (claimed by a runner) must reach the prompt;
dead ends by normalised content; the effect table with Δ against the parent; the same memory from the events
when the ledger does not answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.edits import unified_diff
from agents.knobs import KnobSpec, apply_knobs
from agents.loop import AgentConfig, run_agent
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings, user_prompt
from agents.proposers.random_search import RandomProposer
from agents.tail import RunTail
from bus import publish_many
from bus.events import (
    ExperimentClaimed,
    ExperimentFinished,
    Hardware,
    HypothesisDecided,
    HypothesisProposed,
    MemoryRequest,
    NoteWritten,
    RunnerJoined,
)
from bus.memory import code_change
from bus.readapi import LedgerClient
from bus.trainpy import ast_sha256, knob_values, sha256
from tests.agents_support import STANDIN_TRAIN_PY, fake_runner, make_context
from tests.fake_llm_server import FakeLlmServer, anthropic_tool_use

RUN = "mem"
HW = Hardware(hw_class="cpu")


def prop(hid: str, agent: str, source: str, *, parent: str = "baseline", desc: str = "", tags: list[str] | None = None,
         seed: int = 0, parent_source: str = STANDIN_TRAIN_PY) -> HypothesisProposed:  # fmt: skip
    return HypothesisProposed(run=RUN, source=agent, hypothesis_id=hid, agent=agent, train_py=source,
                              diff=unified_diff(parent_source, source),
                              train_py_sha256=sha256(source), ast_sha256=ast_sha256(source), parent=parent,
                              description=desc, hw_class="cpu", seed=seed, tags=tags or [],
                              knobs=knob_values(source))  # fmt: skip


def ran(hid: str, val: float | None, runner: str = "r1") -> list[Any]:
    return [ExperimentClaimed(run=RUN, source=runner, hypothesis_id=hid, attempt=1, runner=runner, hardware=HW),
            ExperimentFinished(run=RUN, source=runner, hypothesis_id=hid, attempt=1, runner=runner,
                               status="ok" if val is not None else "crash", val_bpb=val, hw_class="cpu",
                               reason="" if val is not None else "exit 1: RuntimeError: boom", budget_unit="tokens")]  # fmt: skip


def bobs_work() -> list[Any]:
    """Another agent's run: baselines, a kept knob change, a crash, a note, and one claimed but not finished."""
    lr = apply_knobs(STANDIN_TRAIN_PY, {"MATRIX_LR": 0.03})
    boom = apply_knobs(STANDIN_TRAIN_PY, {"EMBEDDING_LR": 5.0})
    flight = apply_knobs(lr, {"WARMDOWN_RATIO": 0.7})
    evs: list[Any] = [RunnerJoined(run=RUN, source="r1", runner="r1", hardware=HW, classes=["cpu", "any"])]
    for i, v in enumerate((3.40, 3.43, 3.37)):
        evs += [prop(f"baseline-cpu-{i}", "baseline", STANDIN_TRAIN_PY, tags=["baseline"], seed=i), *ran(f"baseline-cpu-{i}", v)]
    evs += [prop("bob-lr-0001", "bob", lr, desc="bob: lower MATRIX_LR"), *ran("bob-lr-0001", 3.385),
            HypothesisDecided(run=RUN, source="bob", hypothesis_id="bob-lr-0001", decision="keep", by="bob"),
            prop("bob-boom-01", "bob", boom, desc="bob: EMBEDDING_LR way up"), *ran("bob-boom-01", None),
            NoteWritten(run=RUN, source="bob", note_id="n-bob", agent="bob", title="BOB-NOTE: LR matters",
                        body="lowering MATRIX_LR to 0.03 helped by 0.015", refs=["bob-lr-0001"]),
            prop("bob-flight1", "bob", flight, parent="bob-lr-0001", desc="bob tests WARMDOWN 0.7 on his best",
                 parent_source=lr),
            ExperimentClaimed(run=RUN, source="gpu-7", hypothesis_id="bob-flight1", attempt=1, runner="gpu-7",
                              hardware=HW)]  # fmt: skip
    return evs


@contextlib.asynccontextmanager
async def ledger(tmp: Path, nc: NATS) -> AsyncIterator[Any]:
    from ledger.service import run_ledger

    stop, ready = asyncio.Event(), asyncio.Event()
    projectors: list[Any] = []
    task = asyncio.create_task(run_ledger(nc, tmp / "ledger.duckdb", stop=stop, ready=ready, projector_out=projectors))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield projectors[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_another_agents_result_note_and_claim_reach_the_prompt(tmp_path: Path, nc: NATS, js: JetStreamContext) -> None:
    async with ledger(tmp_path, nc) as projector:
        acks = await publish_many(js, bobs_work())
        await projector.wait_for_seq(acks[-1].seq, timeout=30)
        mem = await LedgerClient(nc, RUN).memory("me")
        # the ledger's memory
        (cpu,) = mem.classes
        assert cpu.best_id == "bob-lr-0001" and cpu.best_agent == "bob" and [s.hypothesis_id for s in cpu.lineage] == ["bob-lr-0001"]
        step = cpu.lineage[0]
        assert step.change == "MATRIX_LR=0.03" and step.delta is not None and abs(step.delta - (3.385 - 3.40)) < 1e-9
        assert "-MATRIX_LR = 0.04" in step.diff and "+MATRIX_LR = 0.03" in step.diff
        assert [t.hypothesis_id for t in mem.top] == ["bob-lr-0001"]
        lr = next(e for e in mem.knobs if e.knob == "MATRIX_LR")
        assert lr.value == "0.03" and lr.n == 1 and lr.mean_delta is not None and abs(lr.mean_delta + 0.015) < 1e-9
        assert next(e for e in mem.knobs if e.knob == "EMBEDDING_LR").failed == 1
        assert [(d.change, d.status) for d in mem.dead_ends] == [("EMBEDDING_LR=5.0", "crash")]
        assert [(f.hypothesis_id, f.runner, f.change) for f in mem.in_flight] == [("bob-flight1", "gpu-7", "WARMDOWN_RATIO=0.7")]
        assert [n.title for n in mem.notebook] == ["BOB-NOTE: LR matters"]
        # the same memory from the events (an agent whose ledger does not answer)
        tail = RunTail(js, RUN)
        await tail.start()
        await asyncio.wait_for(tail.caught_up.wait(), 10)
        await tail.stop()
        assert tail.local_memory(MemoryRequest(run=RUN, agent="me")) == mem

        with FakeLlmServer() as srv:
            srv.push(anthropic_tool_use([("propose_experiments", {"experiments": [
                {"description": "deeper", "edits": [{"search": "DEPTH = 4 ", "replace": "DEPTH = 5 "}]}]})]))  # fmt: skip
            p = ClaudeProposer(LlmSettings(model="claude-test", base_url=srv.url, api_key="k", attempts=1))
            cfg = AgentConfig(run=RUN, agent="me", base_train_py=STANDIN_TRAIN_PY, hw_class="cpu", max_waves=1,
                              wave_timeout=20.0, request_timeout=5.0, audit_every=None)  # fmt: skip
            async with fake_runner(nc, RUN, lambda e: 3.38, budget_unit="tokens"):
                stats = await run_agent(nc, cfg, p, stop=asyncio.Event())
            await p.aclose()
        prompt = srv.requests[0].body["messages"][0]["content"]
    assert stats.proposed == 1
    # another agent's result, its note, and what it is testing right now, claimed by a runner
    assert "bob-lr-0 by bob: 3.3850 (Δ -0.0150) bob: lower MATRIX_LR [MATRIX_LR=0.03]" in prompt
    assert "| bob-lr-0 | bob | cpu | 3.3850 | -0.0150 | keep | MATRIX_LR=0.03 |" in prompt
    assert "### BOB-NOTE: LR matters (bob)\nlowering MATRIX_LR to 0.03 helped by 0.015" in prompt
    assert "- bob-flig by bob, running on gpu-7 (screen, cpu): bob tests WARMDOWN 0.7 on his best [WARMDOWN_RATIO=0.7]" in prompt
    assert "- [EMBEDDING_LR=5.0] crash ×1" in prompt
    assert "| MATRIX_LR | 0.03 | 1 | -0.0150 |" in prompt
    # the agent built on the best, whoever found it
    assert "## Parent train.py (bob-lr-0001" in prompt


def test_knob_proposers_skip_dead_ends_and_what_is_in_flight_on_their_parent() -> None:
    space = [KnobSpec("DEPTH", "int", low=4, high=6)]
    ctx = make_context(avoid={"DEPTH=5"})
    got: set[object] = set()
    for seed in range(5):
        batch = asyncio.run(RandomProposer(STANDIN_TRAIN_PY, seed=seed, space=space).propose(ctx, 3))
        got |= {d.knobs["DEPTH"] for d in batch.proposals}
    assert got == {6}


def test_prompt_is_bounded_whatever_the_run_length() -> None:
    """A thousand results, notes and in-flight hypotheses: the memory's caps hold the prompt's size."""
    from bus.events import NoteRow
    from bus.memory import MemRow, build_memory

    rows = [MemRow(f"b{i}", "baseline", tags=["baseline"], knobs=knob_values(STANDIN_TRAIN_PY), status="ok",
                   val_bpb=3.4, ran_on="cpu", seed=i) for i in range(3)]  # fmt: skip
    for i in range(1000):
        src = apply_knobs(STANDIN_TRAIN_PY, {"MATRIX_LR": round(0.01 + i * 1e-4, 6), "DEPTH": 2 + i % 7})
        rows.append(MemRow(f"h{i:04d}", f"agent{i % 9}", knobs=knob_values(src), status=None if i % 10 == 0 else "ok",
                           val_bpb=3.4 - (i % 13) * 1e-3, ran_on="cpu", decision="keep" if i % 97 == 0 else "discard",
                           order=i, description=f"experiment number {i} " * 5))  # fmt: skip
    notes = [NoteRow(note_id=f"n{i}", agent=f"agent{i % 9}", title=f"note {i}", body="x" * 5000, refs=[], ts=i)
             for i in range(500)]  # fmt: skip
    mem = build_memory(rows, notes, MemoryRequest(run=RUN))
    prompt = user_prompt(make_context(memory=mem), 4)
    assert len(mem.in_flight) == 30 and mem.in_flight_total == 100 and len(mem.knobs) == 60
    assert len(prompt) < 40_000, len(prompt)


def test_code_change_ignores_formatting_and_knob_lines() -> None:
    a = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-x = f(a,b)\n+x = g(a, b)\n-DEPTH = 4\n+DEPTH = 5\n"
    b = "--- a/train.py\n+++ b/train.py\n@@ -3 +3 @@\n-x = f(a, b)  \n+x = g(a,b)\n"
    assert code_change(a) == code_change(b) == "-x=f(a,b)\n+x=g(a,b)"


async def test_an_isolated_agent_remembers_only_its_own_work_and_the_baselines() -> None:
    from agents.shared import read_memory

    tail = RunTail(None, RUN)  # type: ignore[arg-type]
    for e in bobs_work():
        tail.apply(e)
    cfg = AgentConfig(run=RUN, agent="me", base_train_py=STANDIN_TRAIN_PY, isolated=True)

    async def never(op: str, call: Any) -> Any:
        raise AssertionError("an isolated agent does not ask the ledger for the memory")

    mem = await read_memory(cfg, tail, None, never, lambda agent: agent in ("me", "baseline"))  # type: ignore[arg-type]
    assert not mem.top and not mem.in_flight and not mem.notebook and not mem.dead_ends
    assert [c.best_id for c in mem.classes] == ["baseline"]  # bob's keep is not its to see
