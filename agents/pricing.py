"""LLM prices (dollars per million tokens, input/output) and the cost of one call.

Rules, in order:

1. a price given by the user (``--price MODEL=IN,OUT`` or ``prices`` in an agent config file) for the
   exact model name, else for a dated variant of a name given (``claude-sonnet-4-5-20250929``);
2. when the API is the provider's own (no base URL, or the provider's host): its list price, exact name
   first, else a dated variant (``gpt-4o-2024-08-06`` -> ``gpt-4o``; ``o3-mini`` is *not* ``o3``);
3. otherwise $0: a local server or a proxy costs nothing unless told otherwise. A provider model with no
   list price also counts $0, with a warning, once per model.

List prices are those at the time of writing; override them when they change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from urllib.parse import urlparse

log = logging.getLogger("swarm.agents.pricing")

Price = tuple[float, float]

# provider -> model -> (input $/Mtok, output $/Mtok)
LIST_PRICES: dict[str, dict[str, Price]] = {
    "anthropic": {
        "claude-opus-4": (15.0, 75.0),
        "claude-opus-4-0": (15.0, 75.0),
        "claude-opus-4-1": (15.0, 75.0),
        "claude-opus-4-5": (5.0, 25.0),
        "claude-sonnet-4": (3.0, 15.0),
        "claude-sonnet-4-0": (3.0, 15.0),
        "claude-sonnet-4-5": (3.0, 15.0),
        "claude-3-7-sonnet": (3.0, 15.0),
        "claude-3-5-sonnet": (3.0, 15.0),
        "claude-haiku-4-5": (1.0, 5.0),
        "claude-3-5-haiku": (0.8, 4.0),
    },
    "openai": {
        "gpt-4o": (2.5, 10.0),
        "gpt-4o-mini": (0.15, 0.6),
        "gpt-4.1": (2.0, 8.0),
        "gpt-4.1-mini": (0.4, 1.6),
        "gpt-4.1-nano": (0.1, 0.4),
        "gpt-5": (1.25, 10.0),
        "gpt-5-mini": (0.25, 2.0),
        "gpt-5-nano": (0.05, 0.4),
        "o3": (2.0, 8.0),
        "o3-mini": (1.1, 4.4),
        "o4-mini": (1.1, 4.4),
    },
}

# the provider's own API hosts: only calls to these are charged list prices
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "anthropic": ("api.anthropic.com",),
    "openai": ("api.openai.com",),
}

# what may follow a priced name in a dated variant: -20250929, -2024-08-06, -latest
_VARIANT = re.compile(r"^-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def is_provider_api(provider: str, base_url: str | None) -> bool:
    """Whether ``base_url`` is the provider's own API (``None``: the SDK's default, which is)."""
    if not base_url:
        return provider in PROVIDER_HOSTS
    host = (urlparse(base_url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in PROVIDER_HOSTS.get(provider, ()))


def lookup(model: str, table: Mapping[str, Price]) -> Price | None:
    """The exact entry of ``model``, else the entry it is a dated variant of, else None."""
    if model in table:
        return table[model]
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name) and _VARIANT.match(model[len(name) :]):
            return table[name]
    return None


def parse_price(text: str) -> tuple[str, Price]:
    """``MODEL=IN,OUT`` (dollars per million tokens) -> (model, (in, out)); ValueError says what is wrong."""
    model, eq, rest = text.partition("=")
    parts = rest.split(",")
    try:
        if not eq or not model.strip() or len(parts) != 2:
            raise ValueError
        price = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise ValueError(
            f"bad price {text!r}: use MODEL=IN,OUT in dollars per million tokens, e.g. gpt-4o=2.5,10"
        ) from None
    if min(price) < 0:
        raise ValueError(f"bad price {text!r}: prices cannot be negative")
    return model.strip(), price


class Pricing:
    """Prices the calls of one agent: its provider, its base URL and the prices it was given."""

    def __init__(
        self,
        provider: str,
        base_url: str | None = None,
        prices: Mapping[str, Price] | None = None,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url
        self.prices = dict(prices or {})
        self.listed = is_provider_api(provider, base_url)
        self._warn = warn or log.warning
        self._warned: set[str] = set()

    def price(self, model: str) -> Price:
        """(input, output) dollars per million tokens of ``model`` (see the module docstring)."""
        given = lookup(model, self.prices)
        if given is not None:
            return given
        if not self.listed:
            return (0.0, 0.0)  # a local server or a proxy: free unless a price is given
        listed = lookup(model, LIST_PRICES.get(self.provider, {}))
        if listed is not None:
            return listed
        if model not in self._warned:
            self._warned.add(model)
            self._warn(
                f"no list price for {self.provider} model {model!r}: its calls count as $0; "
                f"give one with --price {model}=IN,OUT (dollars per million tokens)"
            )
        return (0.0, 0.0)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """Dollars of one call, rounded to a millionth of a cent (no float dust in sums and displays)."""
        p_in, p_out = self.price(model)
        return round((input_tokens * p_in + output_tokens * p_out) / 1e6, 8)


def price_of(
    model: str, prices: Mapping[str, Price] | None = None, *, provider: str | None = None
) -> Price:
    """Price of ``model`` at its provider's own API (provider guessed from the name when not given)."""
    provider = provider or ("anthropic" if model.startswith("claude") else "openai")
    return Pricing(provider, None, prices, warn=log.debug).price(model)


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, Price] | None = None
) -> float:
    """Dollars of one call at the provider's own API (see :class:`Pricing` for a base URL)."""
    p_in, p_out = price_of(model, prices)
    return round((input_tokens * p_in + output_tokens * p_out) / 1e6, 8)


def format_usd(x: float) -> str:
    """Dollars for people: ``$0.0010``, ``$1.23``."""
    return f"${x:.4f}" if abs(x) < 1 else f"${x:.2f}"
