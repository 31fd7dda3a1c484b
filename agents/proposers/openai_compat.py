"""OpenAI (or any OpenAI-compatible server: vLLM, Ollama, llama.cpp) through the official ``openai`` SDK:
chat completions with tool calling and a configurable ``base_url``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import openai

from agents.proposers.base import AgentContext, ProposalBatch, Rejection, Result
from agents.proposers.llm import (
    NOTE_DESCRIPTION,
    NOTE_SCHEMA,
    NOTE_TOOL,
    PROPOSE_DESCRIPTION,
    PROPOSE_SCHEMA,
    PROPOSE_TOOL,
    LlmSettings,
    call_with_retries,
    header_retry_after,
    parse_json_args,
    system_prompt,
    usage_call,
    user_prompt,
)

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": PROPOSE_TOOL, "description": PROPOSE_DESCRIPTION, "parameters": PROPOSE_SCHEMA}},
    {"type": "function", "function": {"name": NOTE_TOOL, "description": NOTE_DESCRIPTION, "parameters": NOTE_SCHEMA}},
]


def _retry_after(e: BaseException) -> float | None:
    if isinstance(e, openai.APIStatusError):
        return header_retry_after(e.response.headers)
    return None


class OpenAIProposer:
    """Asks an OpenAI-compatible chat model for a wave through tool calls."""

    provider = "openai"
    strategy = "llm"
    writes_notes = True

    def __init__(
        self, settings: LlmSettings, *, client: openai.AsyncOpenAI | None = None, tool_choice: str = "required"
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self.tool_choice = tool_choice  # "auto" for servers that do not support "required"
        self._client = client or openai.AsyncOpenAI(
            # a local server needs no key, but the SDK insists on one
            api_key=settings.api_key or os.environ.get("OPENAI_API_KEY") or "none",
            base_url=settings.base_url or os.environ.get("OPENAI_BASE_URL") or None,
            timeout=settings.timeout,
            max_retries=settings.sdk_max_retries,
        )
        self.settings.api_key = self._client.api_key

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=[
                {"role": "system", "content": system_prompt(context, k)},
                {"role": "user", "content": user_prompt(context, k)},
            ],
            tools=TOOLS,
            tool_choice=self.tool_choice,
            max_completion_tokens=self.settings.max_tokens,
        )
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        start = time.monotonic()
        resp, failed = await call_with_retries(
            self.settings,
            self.provider,
            lambda: self._client.chat.completions.create(**kwargs),
            retryable=(
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,  # includes APITimeoutError
                openai.APIResponseValidationError,
                ValueError,
            ),
            fatal=(openai.APIStatusError,),
            retry_after=_retry_after,
        )
        if resp is None:
            assert failed is not None
            batch.calls.append(failed)
            return batch
        usage = getattr(resp, "usage", None)
        batch.calls.append(
            usage_call(
                self.settings,
                self.provider,
                int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0),
                time.monotonic() - start,
            )
        )
        choices = getattr(resp, "choices", None) or []
        message = choices[0].message if choices else None
        calls = (getattr(message, "tool_calls", None) or []) if message is not None else []
        for call in calls:
            fn = getattr(call, "function", None)
            if fn is None:
                batch.rejections.append(Rejection("tool call without a function"))
                continue
            parse_json_args(fn.name, fn.arguments, batch)
        if not calls:
            text = (getattr(message, "content", None) or "") if message is not None else ""
            batch.rejections.append(Rejection(f"no tool call: answer by calling {PROPOSE_TOOL}", excerpt=text[:200]))
        elif not batch.proposals and not batch.rejections:
            batch.rejections.append(Rejection(f"no experiments: call {PROPOSE_TOOL} with at least one"))
        return batch

    async def observe(self, results: Sequence[Result]) -> None:
        return None

    async def aclose(self) -> None:
        await self._client.close()
