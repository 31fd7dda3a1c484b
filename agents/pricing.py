"""LLM prices (dollars per million tokens, input/output) and the cost of one call.

Defaults are list prices at the time of writing; override with ``AgentConfig.prices`` (or the CLI) when
they change or for a local model (which costs 0 unless told otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping

# model (or model prefix) -> (input $/Mtok, output $/Mtok)
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "o3": (2.0, 8.0),
    "o4-mini": (1.1, 4.4),
}


def price_of(model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """Price of ``model``: an exact entry, else the longest prefix entry, else (0, 0) (a local model)."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    if model in table:
        return table[model]
    best = max((k for k in table if model.startswith(k)), key=len, default=None)
    return table[best] if best else (0.0, 0.0)


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, tuple[float, float]] | None = None
) -> float:
    p_in, p_out = price_of(model, prices)
    return (input_tokens * p_in + output_tokens * p_out) / 1e6
