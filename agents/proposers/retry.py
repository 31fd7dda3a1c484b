"""The one retry policy of an LLM call, and what a failed call says.

The SDKs' own retries are switched off (``max_retries=0``): retries multiplied by retries turned a hung
server into 45 minutes per wave. This loop retries what may pass (429, 5xx, connection errors, timeouts,
bodies that are not the API's), honours the server's ``retry-after``, and never runs past the call's total
time cap nor the wave's deadline: every attempt's timeout is cut to what is left.

Every error is told in one line that names the URL and what came back, e.g.
``HTTP 400 from http://127.0.0.1:8000/v1/chat/completions: tool_choice 'required' is not supported``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("swarm.agents.llm")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may take: ``attempts`` tries within ``call_seconds`` in all."""

    attempts: int = 3
    backoff: float = 2.0  # seconds before the first retry, doubled per attempt, jittered ×0.5–1.5
    max_backoff: float = 60.0
    call_seconds: float = 600.0  # total cap of one call, retries and waits included


class BadResponse(ValueError):
    """A 200 whose body is not what the API returns (an HTML page, empty JSON): usually a wrong base URL.

    ``transient``: a JSON body cut short, which a retry may fix; a page or an empty answer it will not."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(e: BaseException) -> bool:
    """Whether a retry may help: 408, 409, 429 and 5xx (as the SDKs' own policies say), connection errors,
    timeouts and truncated bodies; not 400/401/403/404/422, nor a page that is not the API."""
    if isinstance(e, BadResponse):
        return e.transient
    status = getattr(e, "status_code", None)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return True


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text[:n] + ("…" if len(text) > n else "")


async def check_body(raw: Any, want: type, field: str, what: str) -> Any:
    """Parse an SDK raw response (``with_raw_response``) and check it is ``want`` with ``field`` set.

    Raises :class:`BadResponse` naming the URL and what came back otherwise.
    """
    http = raw.http_response
    url = str(http.url)
    ctype = http.headers.get("content-type", "") or "no content-type"
    try:
        obj = raw.parse()  # the anthropic SDK's async raw response parses in a coroutine, openai's does not
        if inspect.isawaitable(obj):
            obj = await obj
    except ValueError as e:  # not JSON at all
        obj = e
    if isinstance(obj, want) and getattr(obj, field, None) is not None:
        return obj
    body = http.text
    transient = False
    if not body.strip():
        got = "an empty body"
    elif isinstance(obj, want):
        got = f"JSON without {field!r}: {_short(body)!r}"
    else:
        got = f"{ctype}, not JSON: {_short(body)!r}"
        transient = "json" in ctype  # a JSON body cut short
    raise BadResponse(
        f"{url} answered HTTP {http.status_code} with {got}; that is not {what} "
        f"(is the base URL right? an OpenAI-compatible server's usually ends in /v1)",
        transient=transient,
    )


def describe_error(e: BaseException) -> str:
    """One line: what failed, the HTTP status and the URL when there was one."""
    if isinstance(e, BadResponse):
        return str(e)
    request = getattr(e, "request", None)
    url = str(getattr(request, "url", "") or "")
    status = getattr(e, "status_code", None)
    name = type(e).__name__
    if status is not None:
        body = getattr(e, "body", None)
        msg = ""
        if isinstance(body, Mapping):
            err = body.get("error")
            msg = str(err.get("message", "")) if isinstance(err, Mapping) else str(body.get("message", "") or "")
        msg = msg or str(getattr(e, "message", "") or e)
        return f"HTTP {status} from {url or 'the API'}: {_short(msg, 300)} ({name})"
    if "Timeout" in name:
        return f"no answer from {url or 'the API'} in time ({name})"
    if "Connection" in name:
        cause = e.__cause__ or e.__context__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        return f"cannot connect to {url or 'the API'}: {_short(why, 200)} ({name})"
    return f"{name}: {_short(str(e), 300)}"


def redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return text


def header_retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def retry_after_of(e: BaseException) -> float | None:
    """The server's retry-after (seconds) on an HTTP error of either SDK."""
    response = getattr(e, "response", None)
    return header_retry_after(getattr(response, "headers", None))


@dataclass(frozen=True)
class Failure:
    """A call that did not succeed: the last error, in one line, and how long it took."""

    error: str
    seconds: float


async def call_with_retries(
    policy: RetryPolicy,
    label: str,
    fn: Callable[[float], Awaitable[T]],
    *,
    timeout: float,
    errors: tuple[type[BaseException], ...],
    deadline: float | None = None,
    secret: str | None = None,
) -> T | Failure:
    """Call ``fn(attempt_timeout)`` until it returns, an error that is not :func:`is_transient`,
    ``policy.attempts`` tries, or the time cap (``policy.call_seconds`` from now, or the monotonic
    ``deadline`` if sooner). ``errors``: the exceptions that mean a failed call (the SDK's).

    Returns the result, or a :class:`Failure` with the last error (secrets redacted). Cancellation (a
    stop) is never swallowed.
    """
    start = time.monotonic()
    end = start + policy.call_seconds
    if deadline is not None:
        end = min(end, deadline)
    last = "no attempt made: the wave's time was already spent"
    for attempt in range(max(1, policy.attempts)):
        left = end - time.monotonic()
        if left <= 0:
            last += f" (gave up at the {end - start:.0f} s time cap)"
            break
        try:
            return await fn(min(timeout, left))
        except errors as e:
            last = describe_error(e)
            if not is_transient(e) or attempt + 1 >= policy.attempts:
                break
            delay = retry_after_of(e)
            if delay is None:
                delay = policy.backoff * 2**attempt * (0.5 + random.random())
            delay = min(max(delay, 0.0), policy.max_backoff)
            if time.monotonic() + delay >= end:
                last += f"; no time left to retry within {policy.call_seconds:g} s"
                break
            log.warning("%s: %s; retry %d in %.1f s", label, redact(last, secret), attempt + 1, delay)
            await asyncio.sleep(delay)
    err = redact(last, secret)[:1000]
    log.info("%s: giving up: %s", label, err)  # the agent's wave line says it to the user
    return Failure(err, time.monotonic() - start)
