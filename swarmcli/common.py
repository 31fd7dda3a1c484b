"""Helpers shared by the `swarm` subcommands."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

nats_option = click.option(
    "--nats",
    "nats_url",
    envvar="SWARM_NATS_URL",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS server URL(s), comma-separated. Credentials: SWARM_NATS_USER/SWARM_NATS_PASSWORD.",
)
run_option = click.option(
    "--run",
    envvar="SWARM_RUN",
    default="default",
    show_default=True,
    help="Swarm run name (one subject token).",
)


def _urls(nats_url: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in nats_url.split(",") if u.strip())


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _run_async(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop`` (the first one: a clean stop). A second one
    aborts quietly: ``main`` is cancelled (its ``finally`` blocks get a few seconds), logging is silenced,
    and the process exits with 128 + the signal number; a third one exits on the spot."""
    aborted: list[int] = []

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(sig: int) -> None:
            if aborted:
                os._exit(128 + sig)
            if stop.is_set():
                aborted.append(sig)
                sys.stderr.write("\naborting\n")
                logging.disable(logging.CRITICAL)  # whatever was in flight dies quietly
                loop.call_later(5.0, os._exit, 128 + sig)  # the net under slow cleanups
                if task is not None:
                    task.cancel()
                return
            click.echo("\nstopping cleanly (again to abort)...", err=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    try:
        return asyncio.run(wrapper())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if not aborted:
            raise
        sys.stderr.flush()
        raise SystemExit(128 + aborted[0]) from None


async def _connect(nats_url: str, name: str) -> Any:
    from bus import BusConfig, BusError, connect

    try:
        return await connect(BusConfig.from_env(_urls(nats_url), name=name), name=name, initial_wait=5.0)
    except BusError as e:
        _fail(f"{e}\nIs a swarm running? Start one with `swarm up`, or pass --nats / set SWARM_NATS_URL.")


def _check_agent_specs(specs: list[str], api_key_envs: list[str | None] | None = None) -> None:
    from agents.errors import SpecError
    from agents.spec import parse_agent_spec

    for i, s in enumerate(specs):
        try:
            parsed = parse_agent_spec(s)
        except SpecError as e:
            _fail(str(e))
        if api_key_envs and api_key_envs[i]:
            continue  # the key comes from the variable the agent's config names (checked when it starts)
        has_url = parsed.base_url or os.environ.get(f"{'ANTHROPIC' if parsed.kind == 'claude' else 'OPENAI'}_BASE_URL")
        if parsed.kind == "claude" and not os.environ.get("ANTHROPIC_API_KEY") and not has_url:
            _fail(f"{s}: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL, or use a base URL) to run a Claude agent")
        if parsed.kind == "openai" and not os.environ.get("OPENAI_API_KEY") and not has_url:
            _fail(f"{s}: set OPENAI_API_KEY, or give a local server: openai:<model>@http://host:port/v1")
