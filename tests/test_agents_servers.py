"""The model servers users point agents at, through the official anthropic and openai SDKs against the
loopback fake: text-only answers, a refused tool_choice, a wrong base URL answering 200 with a page or
empty JSON, 5xx, slow and dead servers; extra headers and sampling options; prices by base URL."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agents.edits import apply_edits, validate_source
from agents.proposers.chat import LlmProposer
from agents.proposers.claude import ClaudeProposer
from agents.proposers.llm import LlmSettings
from agents.proposers.openai_compat import OpenAIProposer
from tests.agents_support import STANDIN_TRAIN_PY, make_context
from tests.fake_llm_server import (
    FakeLlmServer,
    Reply,
    anthropic_message,
    anthropic_tool_use,
    dead_url,
    empty_body,
    empty_json,
    html_page,
    openai_completion,
    server_error,
)

EXPERIMENTS = {
    "experiments": [
        {"description": "deeper", "edits": [{"search": "DEPTH = 4 ", "replace": "DEPTH = 6 "}]},
        {"description": "lower lr", "edits": [{"search": "MATRIX_LR = 0.04", "replace": "MATRIX_LR = 0.02"}]},
    ]
}

DIFF_ANSWER = """I cannot call tools here, so here are two experiments as diffs.

### Deeper model
```diff
--- a/train.py
+++ b/train.py
@@ -9,3 +9,3 @@

-DEPTH = 4                 # transformer blocks
+DEPTH = 6                 # transformer blocks
 ASPECT_RATIO = 64         # model_dim = DEPTH * ASPECT_RATIO
```

### Halve the matrix learning rate
```diff
@@ -11 +11 @@
-MATRIX_LR = 0.04          # Muon lr
+MATRIX_LR = 0.02          # Muon lr
```
"""

JSON_ANSWER = "Here you go:\n```json\n" + json.dumps(EXPERIMENTS, indent=2) + "\n```\nGood luck!"

APIS = ["claude", "openai"]


@pytest.fixture
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as srv:
        yield srv


def make(api: str, url: str, **kw: Any) -> LlmProposer:
    opts: dict[str, Any] = dict(attempts=3, backoff=0.01, timeout=5.0)
    opts.update(kw)
    if api == "claude":
        return ClaudeProposer(LlmSettings(model="claude-test", base_url=url, api_key="k", **opts))
    return OpenAIProposer(LlmSettings(model="gpt-test", base_url=url + "/v1", api_key="k", **opts))


def tool_reply(api: str, args: Any = EXPERIMENTS) -> Reply:
    if api == "claude":
        return anthropic_tool_use([("propose_experiments", args)])
    return openai_completion([("propose_experiments", json.dumps(args))])


def text_reply(api: str, text: str) -> Reply:
    if api == "claude":
        return anthropic_message([{"type": "text", "text": text}])
    return openai_completion(content=text)


def path_of(api: str) -> str:
    return "/v1/messages" if api == "claude" else "/v1/chat/completions"


@pytest.mark.parametrize("api", APIS)
async def test_text_answers_with_diffs_or_json_become_proposals(server: FakeLlmServer, api: str) -> None:
    server.push(text_reply(api, DIFF_ANSWER), text_reply(api, JSON_ANSWER))
    p = make(api, server.url)
    from_diff = await p.propose(make_context(), 3)
    from_json = await p.propose(make_context(), 3)
    await p.aclose()
    assert [d.description for d in from_diff.proposals] == ["Deeper model", "Halve the matrix learning rate"]
    assert [d.description for d in from_json.proposals] == ["deeper", "lower lr"]
    for d in from_diff.proposals + from_json.proposals:
        assert d.edits is not None
        out = validate_source(apply_edits(STANDIN_TRAIN_PY, d.edits), STANDIN_TRAIN_PY)
        assert out.diff.count("\n-") == 1  # one line changed, as the model meant
    assert all(c.ok for c in from_diff.calls + from_json.calls)
    assert not from_diff.rejections and not from_json.rejections
    # the system prompt tells a model without tools how to answer
    assert "```diff" in json.dumps(server.requests[0].body)


@pytest.mark.parametrize("api", APIS)
async def test_plain_prose_is_a_rejection_the_model_reads(server: FakeLlmServer, api: str) -> None:
    server.push(text_reply(api, "I would try a deeper model with a lower learning rate."))
    p = make(api, server.url)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert not batch.proposals and batch.calls[0].ok
    (rej,) = batch.rejections
    assert "no tool call" in rej.reason and "```diff" in rej.reason and "deeper model" in rej.excerpt


@pytest.mark.parametrize("api", APIS)
async def test_refused_tool_choice_falls_back_to_auto_and_remembers(api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "swarm.agents.llm")
    with FakeLlmServer(refuse_tool_choice=True) as srv:
        srv.push(tool_reply(api), tool_reply(api))
        p = make(api, srv.url)
        first = await p.propose(make_context(), 2)
        second = await p.propose(make_context(), 2)
        await p.aclose()
        choices = [r.body["tool_choice"] for r in srv.requests]
    forced, auto = ("required", "auto") if api == "openai" else ({"type": "any"}, {"type": "auto"})
    assert choices == [forced, auto, auto]  # refused once, then asked with auto, and remembered
    assert len(first.proposals) == 2 and len(second.proposals) == 2
    assert [c.ok for c in first.calls + second.calls] == [True, True]
    (warning,) = [r.getMessage() for r in caplog.records if "refused tool_choice" in r.getMessage()]
    assert "using tool_choice=auto from now on" in warning and "HTTP 400" in warning


@pytest.mark.parametrize("api", APIS)
async def test_a_400_that_auto_does_not_fix_is_reported_not_retried(server: FakeLlmServer, api: str) -> None:
    bad = Reply(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "model not found"}})
    server.push(bad, bad, bad)
    p = make(api, server.url)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert len(server.requests) == 1 and p.tool_choice == "required"
    (call,) = batch.calls
    assert not call.ok and call.error.startswith(f"HTTP 400 from {server.url}{path_of(api)}: model not found")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "reply, says",
    [(html_page, "text/html; charset=utf-8, not JSON: '<!doctype html>"), (empty_json, "JSON without"),
     (empty_body, "an empty body")],
    ids=["html", "empty-json", "empty-body"],
)  # fmt: skip
async def test_a_wrong_base_url_answering_200_is_a_failed_call_naming_it(
    server: FakeLlmServer, api: str, reply: Any, says: str
) -> None:
    server.push(reply(), reply(), reply())
    p = make(api, server.url)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    assert not batch.proposals and not batch.rejections
    (call,) = batch.calls
    assert not call.ok and call.input_tokens == 0
    assert call.error.startswith(f"{server.url}{path_of(api)} answered HTTP 200 with ") and says in call.error
    assert "is the base URL right?" in call.error
    assert len(server.requests) == 1  # a page will not turn into an API by asking again


@pytest.mark.parametrize("api", APIS)
async def test_5xx_is_retried_within_the_policy_then_named(server: FakeLlmServer, api: str) -> None:
    server.push(server_error(), server_error(), server_error(), tool_reply(api))
    p = make(api, server.url, attempts=3)
    batch = await p.propose(make_context(), 2)
    assert len(server.requests) == 3 and not batch.proposals
    assert batch.calls[0].error == f"HTTP 500 from {server.url}{path_of(api)}: boom (InternalServerError)"
    batch = await p.propose(make_context(), 2)  # the server is back
    await p.aclose()
    assert len(batch.proposals) == 2


@pytest.mark.parametrize("api", APIS)
async def test_a_slow_server_is_cut_at_the_call_cap_and_the_wave_deadline(server: FakeLlmServer, api: str) -> None:
    server.push(*[Reply(200, {}, delay=60.0)] * 4)
    p = make(api, server.url, timeout=300.0, call_seconds=0.5)
    batch = await p.propose(make_context(), 2)
    assert len(server.requests) == 1  # no time left for a retry within the cap
    assert batch.calls[0].error.startswith(f"no answer from {server.url}{path_of(api)} in time")
    p2 = make(api, server.url, timeout=300.0, call_seconds=600.0)
    batch = await p2.propose(make_context(deadline=time.monotonic() + 0.5), 2)  # the wave's cap
    await p.aclose()
    await p2.aclose()
    assert not batch.calls[0].ok and "in time" in batch.calls[0].error and len(server.requests) == 2


@pytest.mark.parametrize("api", APIS)
async def test_a_dead_server_is_named(api: str) -> None:
    url = dead_url()
    p = make(api, url, attempts=2)
    batch = await p.propose(make_context(), 2)
    await p.aclose()
    (call,) = batch.calls
    assert not call.ok and call.error.startswith(f"cannot connect to {url}{path_of(api)}: ")


@pytest.mark.parametrize("api", APIS)
async def test_headers_and_sampling_options_reach_the_server(server: FakeLlmServer, api: str) -> None:
    server.push(tool_reply(api))
    p = make(api, server.url, headers={"X-Proxy-Key": "proxy-secret"}, temperature=0.25, max_tokens=1234,
             tool_choice="auto")  # fmt: skip
    await p.propose(make_context(), 2)
    await p.aclose()
    (req,) = server.requests
    assert req.headers["x-proxy-key"] == "proxy-secret"
    assert req.body["temperature"] == 0.25 and req.body["max_tokens"] == 1234
    assert req.body["tool_choice"] == ("auto" if api == "openai" else {"type": "auto"})


@pytest.mark.parametrize("api", APIS)
async def test_a_local_or_proxied_model_costs_nothing_unless_priced(server: FakeLlmServer, api: str) -> None:
    model = "claude-sonnet-4-5" if api == "claude" else "gpt-4o"  # names with list prices
    server.push(tool_reply(api), tool_reply(api))
    free = make(api, server.url)
    free.model = free.settings.model = model
    priced = make(api, server.url, prices={model: (1.0, 10.0)})
    priced.model = priced.settings.model = model
    a = await free.propose(make_context(), 2)
    b = await priced.propose(make_context(), 2)
    await free.aclose()
    await priced.aclose()
    assert a.calls[0].cost_usd == 0.0
    assert b.calls[0].cost_usd == pytest.approx((1000 * 1.0 + 200 * 10.0) / 1e6)
