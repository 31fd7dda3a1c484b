"""One contract suite, run against every Proposer: Claude and OpenAI (SDKs against the fake API server),
Optuna TPE and random search."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest

from agents.edits import apply_edits, sha256, validate_source
from agents.proposers.base import ProposalBatch, ProposalDraft, Proposer, Result
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings
from agents.proposers.openai_compat import OpenAIProposer
from agents.proposers.optuna_tpe import OptunaProposer
from agents.proposers.random_search import RandomProposer
from tests.agents_support import STANDIN_TRAIN_PY, make_context
from tests.fake_llm_server import FakeLlmServer, anthropic_tool_use, openai_completion, server_error

EXPERIMENTS = {
    "experiments": [
        {"description": f"depth {d}", "edits": [{"search": "DEPTH = 4 ", "replace": f"DEPTH = {d} "}]}
        for d in (2, 3, 5, 6, 7, 8)
    ]
}

Scripter = Callable[[FakeLlmServer, int], None]


def _claude_ok(srv: FakeLlmServer, k: int) -> None:
    srv.push(anthropic_tool_use([("propose_experiments", {"experiments": EXPERIMENTS["experiments"][:k]})]))


def _openai_ok(srv: FakeLlmServer, k: int) -> None:
    srv.push(openai_completion([("propose_experiments", json.dumps({"experiments": EXPERIMENTS["experiments"][:k]}))]))


class Case:
    def __init__(self, proposer: Proposer, server: FakeLlmServer | None, ok: Scripter | None) -> None:
        self.proposer, self.server, self.ok = proposer, server, ok

    def script_ok(self, k: int) -> None:
        if self.server is not None and self.ok is not None:
            self.ok(self.server, k)

    def script_failure(self) -> None:
        if self.server is not None:
            self.server.push(server_error(), server_error())


@pytest.fixture(params=["claude", "openai", "optuna", "random"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    kind = request.param
    if kind in ("optuna", "random"):
        cls = OptunaProposer if kind == "optuna" else RandomProposer
        p: Proposer = cls(STANDIN_TRAIN_PY, seed=3)
        yield Case(p, None, None)
        await p.aclose()
        return
    with FakeLlmServer() as srv:
        if kind == "claude":
            s = LlmSettings(model="claude-test", base_url=srv.url, api_key="k", attempts=2, backoff=0.0)
            p = ClaudeProposer(s)
            yield Case(p, srv, _claude_ok)
        else:
            s = LlmSettings(model="gpt-test", base_url=srv.url + "/v1", api_key="k", attempts=2, backoff=0.0)
            p = OpenAIProposer(s)
            yield Case(p, srv, _openai_ok)
        await p.aclose()


def _source(d: ProposalDraft) -> str:
    if d.source is not None:
        return d.source
    assert d.edits is not None
    return apply_edits(STANDIN_TRAIN_PY, d.edits)


async def test_identity(case: Case) -> None:
    p = case.proposer
    assert isinstance(p, Proposer)
    assert p.provider in ("anthropic", "openai", "optuna", "random") and p.model and p.strategy
    assert isinstance(p.writes_notes, bool)


async def test_proposes_at_most_k_valid_distinct_hypotheses(case: Case) -> None:
    case.script_ok(3)
    batch = await case.proposer.propose(make_context(), 3)
    assert isinstance(batch, ProposalBatch)
    assert 1 <= len(batch.proposals) <= 3
    assert len({d.hypothesis_id for d in batch.proposals}) == len(batch.proposals)
    sources = [_source(d) for d in batch.proposals]
    assert len(set(sources)) == len(sources)
    for d, src in zip(batch.proposals, sources, strict=True):
        assert d.description and d.tier in ("screen", "validate")
        validate_source(src, STANDIN_TRAIN_PY)


async def test_observes_any_result_and_keeps_proposing(case: Case) -> None:
    case.script_ok(2)
    first = await case.proposer.propose(make_context(), 2)
    results = [
        Result(d.hypothesis_id, "a1", "ok", 3.4 - 0.01 * i, "cpu", own=True) for i, d in enumerate(first.proposals)
    ]
    results += [
        Result("other-1", "other", "ok", 3.35, "cpu", knobs={"DEPTH": 6, "MATRIX_LR": 0.03}),
        Result("other-2", "other", "crash", None, "cpu", knobs={"DEPTH": 99}, log_tail="Traceback"),
        Result("other-3", "other", "ok", 3.5, "cpu", knobs={"NOT_A_KNOB": 1, "DEPTH": 1000}),
        Result("rej-1", "a1", "rejected", own=True),
    ]
    await case.proposer.observe(results)
    await case.proposer.observe(results)  # told twice: no harm
    case.script_ok(2)
    again = await case.proposer.propose(make_context(), 2)
    assert again.proposals


async def test_avoids_what_was_seen(case: Case) -> None:
    if case.server is not None:
        pytest.skip("an LLM may repeat itself; the loop's dedup refuses it (tests/test_agents_loop.py)")
    ctx = make_context()
    first = await case.proposer.propose(ctx, 4)
    for d in first.proposals:
        ctx.seen.add(sha256(_source(d)))
    second = await case.proposer.propose(ctx, 4)
    assert not {sha256(_source(d)) for d in second.proposals} & {sha256(_source(d)) for d in first.proposals}


async def test_failure_is_reported_not_raised(case: Case) -> None:
    case.script_failure()
    if case.server is None:
        ctx = make_context(source="import math\n\n\ndef f() -> int:\n    return 1\n", parent_source="x = 1\n")
        batch = await case.proposer.propose(ctx, 2)  # nothing to search over in this parent
        assert batch.proposals == [] or all(d.source for d in batch.proposals)
        return
    batch = await case.proposer.propose(make_context(), 2)
    assert batch.proposals == [] and batch.calls and not batch.calls[-1].ok and batch.calls[-1].error
