"""Claude through the official ``anthropic`` SDK: the Messages API with tool use."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import anthropic

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
    parse_tool_input,
    system_prompt,
    usage_call,
    user_prompt,
)

TOOLS: list[dict[str, Any]] = [
    {"name": PROPOSE_TOOL, "description": PROPOSE_DESCRIPTION, "input_schema": PROPOSE_SCHEMA},
    {"name": NOTE_TOOL, "description": NOTE_DESCRIPTION, "input_schema": NOTE_SCHEMA},
]


def _retry_after(e: BaseException) -> float | None:
    if isinstance(e, anthropic.APIStatusError):
        return header_retry_after(e.response.headers)
    return None


class ClaudeProposer:
    """Asks Claude for a wave through the ``propose_experiments`` tool; notes through ``write_note``."""

    provider = "anthropic"
    strategy = "llm"
    writes_notes = True

    def __init__(self, settings: LlmSettings, *, client: anthropic.AsyncAnthropic | None = None) -> None:
        self.settings = settings
        self.model = settings.model
        self._client = client or anthropic.AsyncAnthropic(
            api_key=settings.api_key or os.environ.get("ANTHROPIC_API_KEY") or "missing",
            base_url=settings.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
            timeout=settings.timeout,
            max_retries=settings.sdk_max_retries,
        )
        # for redaction of error messages
        self.settings.api_key = self._client.api_key

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        kwargs: dict[str, Any] = dict(
            model=self.model,
            max_tokens=self.settings.max_tokens,
            system=system_prompt(context, k),
            messages=[{"role": "user", "content": user_prompt(context, k)}],
            tools=TOOLS,
            tool_choice={"type": "any"},
        )
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        start = time.monotonic()
        msg, failed = await call_with_retries(
            self.settings,
            self.provider,
            lambda: self._client.messages.create(**kwargs),
            retryable=(
                anthropic.RateLimitError,
                anthropic.InternalServerError,
                anthropic.APIConnectionError,  # includes APITimeoutError
                anthropic.APIResponseValidationError,
                ValueError,  # a body that is not JSON
            ),
            fatal=(anthropic.APIStatusError,),  # 400, 401, 403, 404: retrying will not help
            retry_after=_retry_after,
        )
        if msg is None:
            assert failed is not None
            batch.calls.append(failed)
            return batch
        usage = getattr(msg, "usage", None)
        batch.calls.append(
            usage_call(
                self.settings,
                self.provider,
                int(getattr(usage, "input_tokens", 0) or 0),
                int(getattr(usage, "output_tokens", 0) or 0),
                time.monotonic() - start,
            )
        )
        used_tool = False
        for block in getattr(msg, "content", None) or []:
            if getattr(block, "type", None) == "tool_use":
                used_tool = True
                parse_tool_input(block.name, block.input, batch)
        if not used_tool:
            text = " ".join(getattr(b, "text", "") for b in getattr(msg, "content", None) or [])
            batch.rejections.append(
                Rejection(f"no tool call: answer by calling {PROPOSE_TOOL}", excerpt=text[:200])
            )
        elif not batch.proposals and not batch.rejections:
            batch.rejections.append(Rejection(f"no experiments: call {PROPOSE_TOOL} with at least one"))
        return batch

    async def observe(self, results: Sequence[Result]) -> None:
        return None  # the loop puts results into the next context

    async def aclose(self) -> None:
        await self._client.close()
