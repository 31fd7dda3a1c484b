"""Agent specs as the CLI gives them, and the entry point that runs one agent.

Specs: ``optuna``, ``random``, ``claude:<model>``, ``openai:<model>``, ``openai:<model>@<base_url>``
(``claude:<model>@<base_url>`` works too, e.g. for a proxy).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from agents.errors import SpecError
from agents.loop import AgentConfig, AgentStats, WaveReporter, run_agent
from agents.options import AgentOptions, llm_kwargs, loop_kwargs, summary
from agents.proposers.base import Proposer
from agents.proposers.llm import LlmSettings
from bus.trainpy import profile_of_class

DEFAULT_PROGRAM = Path(__file__).resolve().parent.parent / "program.md"


@dataclass(frozen=True)
class AgentSpec:
    kind: str  # optuna, random, claude, openai
    model: str = ""
    base_url: str | None = None

    @property
    def name(self) -> str:
        """A subject-token-safe default agent id, e.g. ``claude-sonnet-4-5``."""
        label = self.kind if not self.model else f"{self.kind}-{self.model}"
        return re.sub(r"[^A-Za-z0-9_-]", "-", label)[:64]


def parse_agent_spec(spec: str) -> AgentSpec:
    """Parse ``optuna`` | ``random`` | ``claude:<model>[@url]`` | ``openai:<model>[@url]``."""
    s = spec.strip()
    if s in ("optuna", "tpe", "optuna:tpe"):
        return AgentSpec("optuna", "tpe")
    if s == "random":
        return AgentSpec("random", "random")
    kind, sep, rest = s.partition(":")
    if not sep or kind not in ("claude", "anthropic", "openai") or not rest:
        raise SpecError(
            f"bad agent spec {spec!r}: use optuna, random, claude:<model>, openai:<model> or "
            "openai:<model>@<base_url> (e.g. openai:qwen2.5-coder@http://localhost:8000/v1)"
        )
    model, at, url = rest.partition("@")
    if not model or (at and not url.startswith(("http://", "https://"))):
        raise SpecError(f"bad agent spec {spec!r}: the model is empty or the base URL is not http(s)://...")
    return AgentSpec("claude" if kind in ("claude", "anthropic") else "openai", model, url or None)


def make_proposer(
    spec: AgentSpec | str,
    base_train_py: str,
    *,
    seed: int = 0,
    api_key: str | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    device: str | None = None,
    llm: Mapping[str, Any] | None = None,
) -> Proposer:
    """The proposer a spec names. ``llm``: :class:`LlmSettings` fields (timeout, max_tokens, tool_choice,
    headers, ...). API keys come from ``api_key`` or the environment (ANTHROPIC_API_KEY / OPENAI_API_KEY)
    and are never logged."""
    if isinstance(spec, str):
        spec = parse_agent_spec(spec)
    if spec.kind == "optuna":
        from agents.proposers.optuna_tpe import OptunaProposer

        return OptunaProposer(base_train_py, seed=seed, device=device)
    if spec.kind == "random":
        from agents.proposers.random_search import RandomProposer

        return RandomProposer(base_train_py, seed=seed, device=device)
    opts = dict(llm or {})
    opts["prices"] = {**(prices or {}), **opts.get("prices", {})}
    opts.setdefault("api_key", api_key)
    try:
        settings = LlmSettings(model=spec.model, base_url=spec.base_url, **opts)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{spec.kind}:{spec.model}: {e}") from e
    if spec.kind == "claude":
        from agents.proposers.claude import ClaudeProposer

        return ClaudeProposer(settings)
    from agents.proposers.openai_compat import OpenAIProposer

    return OpenAIProposer(settings)


def _text(x: str | Path) -> str:
    """A Path's contents (a missing default program.md reads as empty), or the string itself."""
    if isinstance(x, Path):
        return x.read_text() if x.exists() or x != DEFAULT_PROGRAM else ""
    return x


async def run_agent_spec(
    nc: NATS,
    spec: str,
    *,
    run: str,
    train_py: str | Path,
    stop: asyncio.Event,
    agent: str | None = None,
    program_md: str | Path | None = None,
    seed: int = 0,
    api_key: str | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    options: AgentOptions | None = None,
    report: WaveReporter | None = None,
    **config: object,
) -> AgentStats:
    """What ``swarm agent <spec>`` calls: build the proposer, run the loop, close the proposer.

    Extra keyword arguments are :class:`AgentConfig` fields (``max_experiments``, ``hw_class``, ...);
    ``options`` (flags or a config file: :mod:`agents.options`) override them for this agent. ``report``
    gets one line's worth per wave (:class:`agents.loop.WaveReport`).
    """
    parsed = parse_agent_spec(spec)
    opts = options or AgentOptions()
    config.update(loop_kwargs(opts))
    if opts.seed is not None:
        seed = opts.seed
    base = _text(train_py)
    program = _text(program_md if program_md is not None else DEFAULT_PROGRAM)
    hw = str(config.get("hw_class", "any"))
    device = profile_of_class(hw)  # which half of the CPU_/GPU_ knobs its runners read (None: either)
    proposer = make_proposer(parsed, base, seed=seed, api_key=api_key, prices=prices, device=device,
                             llm=llm_kwargs(opts))  # fmt: skip
    if parsed.kind in ("optuna", "random"):
        config.setdefault("wave_quorum", 0.5)  # rolling waves keep the runners busy
    try:
        cfg = AgentConfig(
            run=run,
            agent=opts.name or agent or parsed.name,
            base_train_py=base,
            program_md=program,
            seed=seed,
            config_summary={"spec": f"{parsed.kind}:{parsed.model}", "base_url": parsed.base_url or "", **summary(opts)},
            **config,  # type: ignore[arg-type]
        )
        return await run_agent(nc, cfg, proposer, stop=stop, report=report)
    finally:
        await proposer.aclose()
