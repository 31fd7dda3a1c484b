"""Shared fixtures: a real nats-server per test (free loopback port, temp store dir), chained
server -> client -> JetStream (with the swarm's stream set up), like nats.py's own test suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import EmbeddedServer, connect, setup

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """A test that needs an engine that is missing skips on a laptop and fails in CI (CI=true)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be available in CI)")
    pytest.skip(reason)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "jetstream").start()
    try:
        yield server
    finally:
        server.kill() if server.paused else server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[NATS]:
    client = await connect(nats_server.url, name="test")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    ctx = nc.jetstream()
    await setup(ctx)
    return ctx


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu profile's offline data, prepared once per test session the way a runner prepares it (a few
    seconds), so every test of the real harness runs — in CI too — instead of skipping for want of data."""
    from tests.support.harness import prepare_cache

    return prepare_cache(tmp_path_factory.mktemp("swarm-cache"))
