"""OpenAI (or any OpenAI-compatible server: vLLM, Ollama, llama.cpp's server, a proxy) through the
official ``openai`` SDK: chat completions with tool calling and a configurable ``base_url``."""

from __future__ import annotations

import os
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from agents.pricing import is_provider_api
from agents.proposers.base import AgentContext, ProposalBatch, Rejection
from agents.proposers.chat import LlmProposer
from agents.proposers.llm import (
    GRID_DESCRIPTION,
    GRID_SCHEMA,
    GRID_TOOL,
    NOTE_DESCRIPTION,
    NOTE_SCHEMA,
    NOTE_TOOL,
    PROPOSE_DESCRIPTION,
    PROPOSE_SCHEMA,
    PROPOSE_TOOL,
    LlmSettings,
    parse_json_args,
    system_prompt,
    user_prompt,
)
from agents.proposers.retry import check_body

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": PROPOSE_TOOL, "description": PROPOSE_DESCRIPTION, "parameters": PROPOSE_SCHEMA}},
    {"type": "function", "function": {"name": GRID_TOOL, "description": GRID_DESCRIPTION, "parameters": GRID_SCHEMA}},
    {"type": "function", "function": {"name": NOTE_TOOL, "description": NOTE_DESCRIPTION, "parameters": NOTE_SCHEMA}},
]


class OpenAIProposer(LlmProposer):
    """Asks an OpenAI-compatible chat model for a wave through tool calls (or, failing that, its text)."""

    provider = "openai"
    errors = (openai.APIError, ValueError)
    status_error = openai.APIStatusError

    def __init__(self, settings: LlmSettings, *, client: openai.AsyncOpenAI | None = None) -> None:
        base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
        super().__init__(settings, base_url)
        self._client = client or openai.AsyncOpenAI(
            # a local server needs no key, but the SDK insists on one
            api_key=settings.api_key or os.environ.get("OPENAI_API_KEY") or "none",
            base_url=base_url,
            timeout=settings.timeout,
            max_retries=0,  # one retry policy: ours (agents/proposers/retry.py)
            default_headers=settings.headers or None,
        )
        self.settings.api_key = self._client.api_key
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens); local
        # servers (llama.cpp, Ollama, older vLLM) know max_tokens
        self._max_tokens_key = "max_completion_tokens" if is_provider_api("openai", base_url) else "max_tokens"

    def request(self, context: AgentContext, k: int, tool_choice: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=[
                {"role": "system", "content": system_prompt(context, k)},
                {"role": "user", "content": user_prompt(context, k)},
            ],
            tools=TOOLS,
            tool_choice=tool_choice,
        )
        kwargs[self._max_tokens_key] = self.settings.max_tokens
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        return kwargs

    async def send(self, kwargs: dict[str, Any], timeout: float) -> ChatCompletion:
        raw = await self._client.chat.completions.with_raw_response.create(**kwargs, timeout=timeout)
        reply: ChatCompletion = await check_body(raw, ChatCompletion, "choices", "an OpenAI chat completion")
        return reply

    def usage(self, reply: ChatCompletion) -> tuple[int, int]:
        usage = getattr(reply, "usage", None)
        return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)

    def read(self, reply: ChatCompletion, batch: ProposalBatch) -> tuple[bool, str]:
        message = reply.choices[0].message if reply.choices else None
        if message is None:
            return False, ""
        calls = getattr(message, "tool_calls", None) or []
        for call in calls:
            fn = getattr(call, "function", None)
            if fn is None:
                batch.rejections.append(Rejection("tool call without a function"))
                continue
            parse_json_args(fn.name, fn.arguments, batch)
        return bool(calls), getattr(message, "content", None) or ""

    async def aclose(self) -> None:
        await self._client.close()
