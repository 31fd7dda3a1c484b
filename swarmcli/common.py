"""Helpers shared by the `swarm` subcommands."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def _urls(nats_url: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in nats_url.split(",") if u.strip())


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _run_async(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop`` (the first one: a clean stop; a second
    Ctrl-C: the default, immediate KeyboardInterrupt)."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            if stop.is_set():
                loop.remove_signal_handler(sig)
                signal.raise_signal(sig)
            click.echo("\nstopping cleanly (again to abort)...", err=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    return asyncio.run(wrapper())


async def _connect(nats_url: str, name: str) -> Any:
    from bus import BusConfig, BusError, connect

    try:
        return await connect(BusConfig.from_env(_urls(nats_url), name=name), name=name, initial_wait=5.0)
    except BusError as e:
        _fail(f"{e}\nIs a swarm running? Start one with `swarm up`, or pass --nats / set SWARM_NATS_URL.")


def _check_agent_specs(specs: list[str]) -> None:
    from agents.errors import SpecError
    from agents.spec import parse_agent_spec

    for s in specs:
        try:
            parsed = parse_agent_spec(s)
        except SpecError as e:
            _fail(str(e))
        if parsed.kind == "claude" and not os.environ.get("ANTHROPIC_API_KEY") and not parsed.base_url:
            _fail(f"{s}: set ANTHROPIC_API_KEY (or use a base URL) to run a Claude agent")
        if parsed.kind == "openai" and not os.environ.get("OPENAI_API_KEY") and not parsed.base_url:
            _fail(f"{s}: set OPENAI_API_KEY, or give a local server: openai:<model>@http://host:port/v1")
