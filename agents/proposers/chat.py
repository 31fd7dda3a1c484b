"""One wave's request cycle, shared by the Claude and OpenAI-compatible proposers.

Build the request, send it under the one retry policy (:mod:`agents.proposers.retry`), account for it
(priced by provider, model and base URL: :mod:`agents.pricing`), then read the answer: tool calls first,
else edits written in the text (:mod:`agents.proposers.textual`), else a rejection the model reads next
turn. A server that refuses the forced tool choice is asked again with ``auto``, and remembered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from agents.pricing import Pricing
from agents.proposers.base import AgentContext, LlmCall, ProposalBatch, Rejection, Result
from agents.proposers.llm import PROPOSE_TOOL, LlmSettings
from agents.proposers.retry import Failure, call_with_retries, describe_error
from agents.proposers.textual import parse_text_answer

log = logging.getLogger("swarm.agents.llm")


def refuses_tool_choice(e: BaseException) -> bool:
    """Whether an HTTP error says the server does not support the forced tool choice."""
    status = getattr(e, "status_code", None)
    if status not in (400, 422, 500, 501):
        return False
    text = str(getattr(e, "body", "") or "") + " " + str(getattr(e, "message", "") or e)
    text = text.lower()
    return "tool_choice" in text or "tool choice" in text or ("required" in text and "tool" in text)


class LlmProposer:
    """The shared part of an LLM proposer; a subclass says how to talk to its API."""

    provider = "llm"
    strategy = "llm"
    writes_notes = True
    errors: tuple[type[BaseException], ...] = ()  # the SDK's exceptions that mean a failed call
    status_error: type[BaseException] = Exception  # the SDK's HTTP status error

    def __init__(self, settings: LlmSettings, base_url: str | None) -> None:
        self.settings = settings
        self.model = settings.model
        self.base_url = base_url
        self.tool_choice = settings.tool_choice
        self.pricing = Pricing(self.provider, base_url, settings.prices)

    # -- what a subclass provides -------------------------------------------------------------------

    def request(self, context: AgentContext, k: int, tool_choice: str) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, kwargs: dict[str, Any], timeout: float) -> Any:
        """One HTTP request; returns the parsed reply (checked with :func:`retry.check_body`)."""
        raise NotImplementedError

    def usage(self, reply: Any) -> tuple[int, int]:
        raise NotImplementedError

    def read(self, reply: Any, batch: ProposalBatch) -> tuple[bool, str]:
        """Parse the reply's tool calls into ``batch``: (whether it called a tool, its text)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the SDK client."""
        raise NotImplementedError

    # -- the cycle ----------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.provider} {self.model}" + (f" at {self.base_url}" if self.base_url else "")

    async def _send_with_fallback(self, context: AgentContext, k: int, timeout: float) -> Any:
        try:
            return await self.send(self.request(context, k, self.tool_choice), timeout)
        except self.status_error as e:
            if self.tool_choice == "auto" or not refuses_tool_choice(e):
                raise
            try:
                reply = await self.send(self.request(context, k, "auto"), timeout)
            except self.status_error:
                raise e from None  # "auto" did not help either: the first error is the one to tell
            log.warning("%s refused tool_choice=%s (%s); using tool_choice=auto from now on",
                        self.label, self.tool_choice, describe_error(e))  # fmt: skip
            self.tool_choice = "auto"
            return reply

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        start = time.monotonic()
        reply = await call_with_retries(
            self.settings.policy,
            self.label,
            lambda timeout: self._send_with_fallback(context, k, timeout),
            timeout=self.settings.timeout,
            errors=self.errors,
            deadline=context.deadline,
            secret=self.settings.api_key,
        )
        if isinstance(reply, Failure):
            batch.calls.append(
                LlmCall(self.provider, self.model, latency_seconds=reply.seconds, ok=False, error=reply.error)
            )
            return batch
        tokens_in, tokens_out = self.usage(reply)
        batch.calls.append(
            LlmCall(
                self.provider, self.model, input_tokens=tokens_in, output_tokens=tokens_out,
                cost_usd=self.pricing.cost(self.model, tokens_in, tokens_out),
                latency_seconds=time.monotonic() - start,
            )
        )  # fmt: skip
        used_tool, text = self.read(reply, batch)
        if not used_tool:
            if not parse_text_answer(text, batch, propose_tool=PROPOSE_TOOL):
                batch.rejections.append(
                    Rejection(
                        f"no tool call and no ```json or ```diff block in the answer: call {PROPOSE_TOOL}",
                        excerpt=text[:200],
                    )
                )
            elif not batch.proposals and not batch.grids and not batch.rejections:
                batch.rejections.append(Rejection("no experiments in the text answer", excerpt=text[:200]))
        elif not batch.proposals and not batch.grids and not batch.rejections:
            batch.rejections.append(Rejection(f"no experiments: call {PROPOSE_TOOL} with at least one"))
        return batch

    async def observe(self, results: Sequence[Result]) -> None:
        return None  # the loop puts results into the next context
