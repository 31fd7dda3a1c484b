"""Claude through the official ``anthropic`` SDK: the Messages API with tool use (also any server or proxy
speaking that API, via ``base_url`` or ANTHROPIC_BASE_URL)."""

from __future__ import annotations

import os
from typing import Any

import anthropic
from anthropic.types import Message

from agents.proposers.base import AgentContext, ProposalBatch
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
    parse_tool_input,
    system_prompt,
    user_prompt,
)
from agents.proposers.retry import check_body

TOOLS: list[dict[str, Any]] = [
    {"name": PROPOSE_TOOL, "description": PROPOSE_DESCRIPTION, "input_schema": PROPOSE_SCHEMA},
    {"name": GRID_TOOL, "description": GRID_DESCRIPTION, "input_schema": GRID_SCHEMA},
    {"name": NOTE_TOOL, "description": NOTE_DESCRIPTION, "input_schema": NOTE_SCHEMA},
]
# our tool_choice names -> the Messages API's
_TOOL_CHOICE = {"required": {"type": "any"}, "auto": {"type": "auto"}}


class ClaudeProposer(LlmProposer):
    """Asks Claude for a wave through the ``propose_experiments`` tool; notes through ``write_note``."""

    provider = "anthropic"
    errors = (anthropic.APIError, ValueError)
    status_error = anthropic.APIStatusError

    def __init__(self, settings: LlmSettings, *, client: anthropic.AsyncAnthropic | None = None) -> None:
        base_url = settings.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        super().__init__(settings, base_url)
        self._client = client or anthropic.AsyncAnthropic(
            api_key=settings.api_key or os.environ.get("ANTHROPIC_API_KEY") or "missing",
            base_url=base_url,
            timeout=settings.timeout,
            max_retries=0,  # one retry policy: ours (agents/proposers/retry.py)
            default_headers=settings.headers or None,
        )
        self.settings.api_key = self._client.api_key  # for redaction of error messages

    def request(self, context: AgentContext, k: int, tool_choice: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            model=self.model,
            max_tokens=self.settings.max_tokens,
            system=system_prompt(context, k),
            messages=[{"role": "user", "content": user_prompt(context, k)}],
            tools=TOOLS,
            tool_choice=_TOOL_CHOICE[tool_choice],
        )
        if self.settings.temperature is not None:
            # this SDK's create() no longer names temperature; the Messages API (and proxies) still read it
            kwargs["extra_body"] = {"temperature": self.settings.temperature}
        return kwargs

    async def send(self, kwargs: dict[str, Any], timeout: float) -> Message:
        raw = await self._client.messages.with_raw_response.create(**kwargs, timeout=timeout)
        reply: Message = await check_body(raw, Message, "content", "an Anthropic Messages API reply")
        return reply

    def usage(self, reply: Message) -> tuple[int, int]:
        usage = getattr(reply, "usage", None)
        return int(getattr(usage, "input_tokens", 0) or 0), int(getattr(usage, "output_tokens", 0) or 0)

    def read(self, reply: Message, batch: ProposalBatch) -> tuple[bool, str]:
        used_tool = False
        texts = []
        for block in reply.content or []:
            kind = getattr(block, "type", None)
            if kind == "tool_use":
                used_tool = True
                parse_tool_input(block.name, block.input, batch)  # type: ignore[union-attr]
            elif kind == "text":
                texts.append(getattr(block, "text", "") or "")
        return used_tool, "\n".join(texts)

    async def aclose(self) -> None:
        await self._client.close()
