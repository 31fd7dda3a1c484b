"""A loopback HTTP server speaking just enough of the Anthropic Messages API (``POST /v1/messages``) and
the OpenAI Chat Completions API (``POST /v1/chat/completions``) for the official SDK clients, scriptable
per test: tool calls, plain text, 429 with retry-after, 500, malformed bodies, slow responses.

Modes of the servers users point agents at: text-only answers (:func:`openai_completion` with
``content=``, :func:`anthropic_message` with a text block), a server that refuses a forced tool choice
(``refuse_tool_choice=True``, as some local servers do), a wrong base URL answering 200 with an HTML page
or empty JSON (:func:`html_page`, :func:`empty_json`, :func:`empty_body`), 5xx (:func:`server_error`),
slow (``Reply(delay=...)``) and dead (:func:`dead_url`: nothing listens there).

    with FakeLlmServer() as srv:
        srv.push(anthropic_tool_use([("propose_experiments", {...})]))
        client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="test")
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str/bytes -> sent as is (malformed bodies)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeLlmServer:
    """Answers each request with the next scripted :class:`Reply`; when the script is empty, with what
    ``responder`` makes of the request (a policy standing in for a model: tests/researcher_policy.py), else
    with ``default``."""

    def __init__(self, default: Reply | None = None, *, refuse_tool_choice: bool = False,
                 responder: Callable[[Recorded], Reply] | None = None, keep_requests: bool = True) -> None:  # fmt: skip
        self.script: deque[Reply] = deque()
        self.responder = responder
        self.keep_requests = keep_requests  # False: count them only (a long benchmark's prompts add up)
        self.count = 0
        self.default = default or Reply(500, {"type": "error", "error": {"type": "api_error", "message": "unscripted"}})
        # answer a forced tool choice ("required", {"type": "any"}) with a 400 that names it, like vLLM
        # without tool parsing, and leave the script for the request that follows
        self.refuse_tool_choice = refuse_tool_choice
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def wait_requests(self, n: int, timeout: float = 30.0) -> bool:
        """Block until ``n`` requests have arrived (False if ``timeout`` passes first)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.count >= n, timeout)

    def _next(self, rec: Recorded) -> Reply:
        with self._lock:
            self.count += 1
            if self.keep_requests:
                self.requests.append(rec)
            self._arrived.notify_all()
            if self.refuse_tool_choice and rec.body.get("tool_choice") in ("required", {"type": "any"}):
                return tool_choice_refused()
            if self.script:
                return self.script.popleft()
            responder = self.responder
        if responder is not None:  # outside the lock: concurrent agents are answered concurrently
            try:
                return responder(rec)
            except Exception as e:  # a policy bug is a 500 the agent reports, not a hung request
                return Reply(500, {"type": "error", "error": {"type": "api_error", "message": f"responder: {e!r}"}})
        return self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode(errors="replace")}
                reply = server._next(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if reply.delay and server._closing.wait(reply.delay):
                    return
                if isinstance(reply.body, dict | list):
                    data = json.dumps(reply.body).encode()
                elif isinstance(reply.body, str):
                    data = reply.body.encode()
                else:
                    data = reply.body or b""
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.headers.get("content-type", "application/json"))
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        if k != "content-type":
                            self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler


# --------------------------------------------------------------------------------------------------
# canned bodies


def anthropic_message(
    content: list[dict[str, Any]], *, input_tokens: int = 1000, output_tokens: int = 200, model: str = "claude-test"
) -> Reply:
    return Reply(
        200,
        {
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        },
    )


def anthropic_tool_use(calls: list[tuple[str, Any]], **kw: Any) -> Reply:
    return anthropic_message(
        [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": args} for i, (name, args) in enumerate(calls)],
        **kw,
    )


def openai_completion(
    calls: list[tuple[str, str]] | None = None,
    *,
    content: str | None = None,
    prompt_tokens: int = 1000,
    completion_tokens: int = 200,
    model: str = "gpt-test",
) -> Reply:
    """``calls``: (function name, arguments as a JSON *string*, possibly malformed)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    return Reply(
        200,
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def rate_limited(retry_after: str = "0") -> Reply:
    return Reply(
        429,
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        headers={"retry-after": retry_after},
    )


def server_error() -> Reply:
    return Reply(500, {"type": "error", "error": {"type": "api_error", "message": "boom"}})


def malformed() -> Reply:
    return Reply(200, "{this is not json", headers={"content-type": "application/json"})


def tool_choice_refused() -> Reply:
    return Reply(
        400,
        {"object": "error", "type": "BadRequestError", "code": 400,
         "message": "\"tool_choice\" must be \"auto\" or \"none\": 'required' is not supported by this server"},
    )  # fmt: skip


def html_page() -> Reply:
    """What a wrong base URL often answers: a web page, with 200."""
    return Reply(200, "<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>",
                 headers={"content-type": "text/html; charset=utf-8"})  # fmt: skip


def empty_json() -> Reply:
    return Reply(200, {})


def empty_body() -> Reply:
    return Reply(200, b"", headers={"content-type": "text/plain"})


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago: connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
