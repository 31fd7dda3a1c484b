"""Serving the dashboard: uvicorn inside the caller's event loop, next to its NATS connection.

Binding: loopback (127.0.0.1, ::1, localhost) by default, token optional. Binding beyond loopback needs a
token: the one given (``--token`` / ``SWARM_DASHBOARD_TOKEN``), else a random one, printed in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from nats.aio.client import Client as NATS

from dashboard.app import build_app
from dashboard.live import LiveState


class DashboardError(Exception):
    """The dashboard cannot start as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class DashboardConfig:
    run: str = "default"
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    token: str | None = None
    poll: float = 1.0  # seconds between questions to the ledger
    compare_every: float = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the dashboard will require: ``token``; or, beyond loopback without one, a fresh random one."""
    if token is not None and len(token) < 16:
        raise DashboardError("a dashboard token must be at least 16 characters (try: openssl rand -hex 16)")
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def url_of(host: str, port: int, token: str | None) -> str:
    """The address to open (with the token when one is required)."""
    # on every address: the machine's name is what another machine can open
    shown = socket.gethostname() if host in ("0.0.0.0", "", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller's stop event ends it (``swarm up`` owns Ctrl-C)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from e
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_dashboard(
    nc: NATS,
    cfg: DashboardConfig,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of ``cfg.run`` until ``stop`` is set. ``on_ready`` gets the URL to open."""
    token = resolve_token(cfg.host, cfg.token)
    state = LiveState(nc, cfg.run, poll=cfg.poll, compare_every=cfg.compare_every)
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(state, token=token), log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=3, ws="none",
    )  # fmt: skip
    server = _Server(config)
    follow = asyncio.create_task(state.run(stop))
    serve = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait([ready, serve], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not server.ready.is_set():
            serve.result()  # raises what stopped it
            raise DashboardError("the web server stopped during startup")
        if on_ready is not None:
            on_ready(url_of(cfg.host, port, token))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, serve, follow], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for t in (serve, follow):
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        state.close()  # end the browsers' event streams, so uvicorn's shutdown does not wait on them
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve, 10)
        follow.cancel()
        with contextlib.suppress(BaseException):
            await follow
        sock.close()
