"""The Claude and OpenAI proposers through the official SDK clients against a loopback fake API server:
tool calls, accounting, 429 with retry-after, 500, malformed bodies, timeouts, no tool call, bad JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agents.edits import apply_edits, validate_source
from agents.proposers.base import Rejection, Result
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings
from agents.proposers.openai_compat import OpenAIProposer
from tests.agents_support import STANDIN_TRAIN_PY, make_context
from tests.fake_llm_server import (
    FakeLlmServer,
    Reply,
    anthropic_message,
    anthropic_tool_use,
    malformed,
    openai_completion,
    rate_limited,
    server_error,
)

SECRET = "sk-test-SECRET-do-not-leak"

EXPERIMENTS = {
    "experiments": [
        {
            "description": "deeper",
            "rationale": "more capacity",
            "edits": [{"search": "DEPTH = 4 ", "replace": "DEPTH = 6 "}],
            "tier": "screen",
        },
        {
            "description": "lower matrix lr",
            "edits": [{"search": "MATRIX_LR = 0.04", "replace": "MATRIX_LR = 0.02"}],
        },
    ]
}
NOTE = {"title": "depth helps", "body": "DEPTH 6 beat 4 by 2σ"}


@pytest.fixture
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as srv:
        yield srv


def settings(server: FakeLlmServer, model: str, **kw: Any) -> LlmSettings:
    base = server.url if model.startswith("claude") else server.url + "/v1"
    opts: dict[str, Any] = dict(attempts=3, backoff=0.01, timeout=5.0, prices={"claude-test": (3.0, 15.0)})
    opts.update(kw)
    return LlmSettings(model=model, base_url=base, api_key=SECRET, **opts)


def claude(server: FakeLlmServer, **kw: Any) -> ClaudeProposer:
    return ClaudeProposer(settings(server, "claude-test", **kw))


def gpt(server: FakeLlmServer, **kw: Any) -> OpenAIProposer:
    return OpenAIProposer(settings(server, "gpt-4o", **kw))


async def test_claude_tool_use_gives_proposals_notes_and_cost(server: FakeLlmServer) -> None:
    server.push(anthropic_tool_use([("propose_experiments", EXPERIMENTS), ("write_note", NOTE)],
                                   input_tokens=10_000, output_tokens=2_000))  # fmt: skip
    p = claude(server)
    ctx = make_context(
        rejections=[Rejection("edit 1: search text not found", "wider model")],
        crashes=[Result("h-crash", "a1", "crash", description="bad idea", log_tail="RuntimeError: CUDA OOM", own=True)],
    )
    batch = await p.propose(ctx, 4)
    await p.aclose()
    assert [d.description for d in batch.proposals] == ["deeper", "lower matrix lr"]
    for d in batch.proposals:
        assert d.edits is not None
        validate_source(apply_edits(STANDIN_TRAIN_PY, d.edits), STANDIN_TRAIN_PY)
    assert batch.notes[0].title == "depth helps"
    (call,) = batch.calls
    assert call.ok and (call.input_tokens, call.output_tokens) == (10_000, 2_000)
    assert call.cost_usd == pytest.approx(0.03 + 0.03)  # $3/Mtok in, $15/Mtok out
    (req,) = server.requests
    assert req.path == "/v1/messages"
    body = req.body
    assert {t["name"] for t in body["tools"]} == {"propose_experiments", "propose_grid", "write_note"}
    assert body["tool_choice"] == {"type": "any"}
    assert "PROGRAM-MARKER" in body["system"]
    prompt = body["messages"][0]["content"]
    assert "search text not found" in prompt and "CUDA OOM" in prompt and "DEPTH = 4" in prompt
    assert "σ 0.0100" in prompt


async def test_claude_retries_429_500_malformed_and_timeouts(server: FakeLlmServer) -> None:
    server.push(
        rate_limited("0"),
        server_error(),
        anthropic_tool_use([("propose_experiments", EXPERIMENTS)]),
    )
    p = claude(server)
    batch = await p.propose(make_context(), 2)
    assert len(batch.proposals) == 2 and [c.ok for c in batch.calls] == [True]
    assert len(server.requests) == 3

    server.push(malformed(), anthropic_tool_use([("propose_experiments", EXPERIMENTS)]))
    batch = await p.propose(make_context(), 2)
    assert len(batch.proposals) == 2

    await p.aclose()
    slow = claude(server, timeout=0.3)
    server.push(Reply(200, {}, delay=3.0), anthropic_tool_use([("propose_experiments", EXPERIMENTS)]))
    batch = await slow.propose(make_context(), 2)
    assert len(batch.proposals) == 2
    await slow.aclose()


async def test_claude_gives_up_after_bounded_retries_without_leaking_the_key(server: FakeLlmServer) -> None:
    server.push(server_error(), server_error(), server_error())
    p = claude(server)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert not batch.proposals
    (call,) = batch.calls
    assert not call.ok and "InternalServerError" in call.error and SECRET not in call.error
    assert len(server.requests) == 3
    hdrs = server.requests[0].headers
    assert SECRET in hdrs.get("x-api-key", "") + hdrs.get("authorization", "")  # it went to the API only


async def test_claude_auth_error_is_not_retried(server: FakeLlmServer) -> None:
    server.push(Reply(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}))
    p = claude(server)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert len(server.requests) == 1 and not batch.calls[0].ok and "AuthenticationError" in batch.calls[0].error


async def test_retry_honours_retry_after(server: FakeLlmServer) -> None:
    # our own backoff would be 1000 s, past the 30 s cap: only the server's retry-after lets it retry
    server.push(rate_limited("0.01"), anthropic_tool_use([("propose_experiments", EXPERIMENTS)]))
    p = claude(server, attempts=2, backoff=1000.0, max_backoff=1000.0, call_seconds=30.0)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert len(batch.proposals) == 2 and len(server.requests) == 2


async def test_claude_bad_output_becomes_rejections(server: FakeLlmServer) -> None:
    server.push(
        anthropic_message([{"type": "text", "text": "I think we should try a deeper model."}]),
        anthropic_tool_use([("propose_experiments", {"experiments": "deeper please"})]),
        anthropic_tool_use([("propose_experiments", {"experiments": [{"description": "x", "edits": []}]})]),
    )
    p = claude(server)
    reasons = []
    for _ in range(3):
        batch = await p.propose(make_context(), 2)
        assert not batch.proposals and batch.calls[0].ok
        reasons.append(batch.rejections[0].reason)
    await p.aclose()
    assert "no tool call" in reasons[0]
    assert "list field 'experiments'" in reasons[1]
    assert "non-empty list" in reasons[2]


async def test_openai_tool_calls_usage_and_bad_json(server: FakeLlmServer) -> None:
    server.push(
        openai_completion([("propose_experiments", json.dumps(EXPERIMENTS)), ("write_note", json.dumps(NOTE))],
                          prompt_tokens=1_000_000, completion_tokens=100_000),
        openai_completion([("propose_experiments", '{"experiments": [')]),
        openai_completion(content="Sure! Here are some ideas."),
    )
    p = gpt(server)
    batch = await p.propose(make_context(), 3)
    assert len(batch.proposals) == 2 and batch.notes[0].body == NOTE["body"]
    assert batch.calls[0].cost_usd == 0.0  # not OpenAI's own API, and no price given: free
    req = server.requests[0]
    assert req.path == "/v1/chat/completions" and req.body["tool_choice"] == "required"
    assert req.body["max_tokens"] == 8192  # what local servers know (OpenAI's API gets max_completion_tokens)
    assert req.body["messages"][0]["role"] == "system" and "PROGRAM-MARKER" in req.body["messages"][0]["content"]
    assert req.headers["authorization"] == f"Bearer {SECRET}"

    batch = await p.propose(make_context(), 3)
    assert not batch.proposals and "not valid JSON" in batch.rejections[0].reason
    batch = await p.propose(make_context(), 3)
    assert not batch.proposals and "no tool call" in batch.rejections[0].reason
    await p.aclose()


async def test_openai_retries_then_reports_failure(server: FakeLlmServer) -> None:
    server.push(rate_limited("0"), malformed(), openai_completion([("propose_experiments", json.dumps(EXPERIMENTS))]))
    p = gpt(server)
    batch = await p.propose(make_context(), 2)
    assert len(batch.proposals) == 2 and len(server.requests) == 3
    server.push(server_error(), server_error(), server_error())
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert not batch.proposals and not batch.calls[0].ok and SECRET not in batch.calls[0].error
