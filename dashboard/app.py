"""The dashboard's web app (Starlette): one page, its static assets, and a read-only JSON/SSE API.

Routes (every one GET; anything else is 405, the dashboard never writes to the swarm):

    /                       the page (live: server-sent events, no reloads)
    /h/<hypothesis_id>      the same page, showing one hypothesis
    /static/...             CSS, JS, uPlot (vendored: works on an offline cluster)
    /api/state              the whole state as JSON (what the page starts from)
    /api/events             server-sent events: a ``state`` message, then every change
    /api/hypothesis/<id>    one hypothesis in full (the read API's ``hypothesis`` reply)
    /api/log/<id>/<attempt> the attempt's log as text: the log store, else the runner's file (same machine),
                            else the tail carried by the finish event; header ``X-Log-Source`` says which
    /healthz                ``ok``

With a token, every request must carry it: ``?token=`` once (it is then kept in a same-site, HTTP-only
cookie), the cookie, or ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from bus import logstore
from bus.readapi import LedgerError
from dashboard.live import LiveState

STATIC = Path(__file__).parent / "static"
COOKIE = "swarm_dashboard_token"
KEEPALIVE_SECONDS = 15.0
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_json = msgspec.json.Encoder()


def _sse(msg: dict[str, Any]) -> bytes:
    return b"data: " + _json.encode(msg) + b"\n\n"


class Guard:
    """ASGI middleware: read-only (GET/HEAD), the token when one is set, and security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await PlainTextResponse("the dashboard is read-only", status_code=405,
                                    headers={"Allow": "GET, HEAD"})(scope, receive, send)  # fmt: skip
            return
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode())
            given = (query.get("token") or [None])[0]
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                # keep it in a cookie and drop it from the address bar (and from what gets copied around)
                rest = {k: v for k, v in query.items() if k != "token"}
                location = scope["path"] + ("?" + urlencode(rest, doseq=True) if rest else "")
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                await Response(status_code=303, headers={"Location": location, "Set-Cookie": cookie})(
                    scope, receive, send
                )
                return
            if not self._authorised(scope):
                await PlainTextResponse(
                    "this dashboard needs its token: open the URL that `swarm dashboard` printed (it ends in "
                    "?token=...), or send `Authorization: Bearer <token>`",
                    status_code=401,
                )(scope, receive, send)
                return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _authorised(self, scope: Scope) -> bool:
        assert self.token is not None
        want = self.token.encode()
        for name, value in scope.get("headers", []):
            if (
                name == b"authorization"
                and value.startswith(b"Bearer ")
                and hmac.compare_digest(value[7:].strip(), want)
            ):
                return True
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header is simply not a token
                    continue
                morsel = jar.get(COOKIE)
                if morsel is not None and hmac.compare_digest(morsel.value.encode(), want):
                    return True
        return False


def build_app(state: LiveState, *, token: str | None = None) -> ASGIApp:
    """The ASGI app serving ``state`` (read-only; ``token``: required on every request when set)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_state(request: Request) -> Response:
        return Response(_json.encode(state.snapshot()), media_type="application/json")

    async def api_events(request: Request) -> Response:
        q = state.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n" + _sse(state.snapshot())
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if msg is None:  # shutdown, or this browser fell too far behind
                        return
                    yield _sse(msg)
            finally:
                state.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

    async def api_hypothesis(request: Request) -> Response:
        hid = request.path_params["hid"]
        try:
            reply = await state.client.hypothesis(hid)
        except TimeoutError:
            return JSONResponse({"error": "no ledger answered: is `swarm ledger` running?"}, status_code=503)
        except LedgerError as e:
            return JSONResponse({"error": str(e)}, status_code=502)
        if reply.item is None:
            return JSONResponse(
                {"error": f"no hypothesis {hid!r} in run {state.run_name!r} (yet): check the id"},
                status_code=404,
            )
        return Response(_json.encode(reply), media_type="application/json")

    async def api_log(request: Request) -> Response:
        hid, attempt = request.path_params["hid"], int(request.path_params["attempt"])
        try:
            reply = await state.client.hypothesis(hid)
        except (TimeoutError, LedgerError) as e:
            return PlainTextResponse(f"cannot ask the ledger for {hid}: {e!r}", status_code=503)
        finish = next(
            (a for a in reversed(reply.attempts) if a.kind == "finish" and a.attempt == attempt), None
        )
        text, source = await read_log(state, hid, attempt, finish)
        if text is None:
            return PlainTextResponse(f"no log of {hid} attempt {attempt} yet", status_code=404)
        header = source.encode("ascii", "replace").decode()  # header values are latin-1: paths may not be
        return PlainTextResponse(text, headers={"X-Log-Source": header, "Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/h/{hid:str}", page),
            Route("/api/state", api_state),
            Route("/api/events", api_events),
            Route("/api/hypothesis/{hid:str}", api_hypothesis),
            Route("/api/log/{hid:str}/{attempt:int}", api_log),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return Guard(app, token)


async def read_log(state: LiveState, hid: str, attempt: int, finish: Any) -> tuple[str | None, str]:
    """The fullest log there is of one attempt (see :func:`bus.logstore.fetch_log`), and where it came from."""
    if finish is None:
        return None, ""
    text, source = await logstore.fetch_log(
        state.nc.jetstream(), state.run_name, hid, attempt, log_ref=finish.log_ref, log_tail=finish.log_tail
    )
    return text or "(the runner sent no output)", source
