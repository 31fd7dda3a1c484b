"""Bus helpers for tests: propose hypotheses, read every event of the stream, wait on the stream's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext

from bus import publish, subjects
from bus.events import AnyEvent, ExperimentFinished, HypothesisProposed, decode, new_event_id
from bus.trainpy import sha256

RUN = "t"


def hypothesis(source: str, hid: str | None = None, hw_class: str = "cpu", run: str = RUN, **kw: Any) -> HypothesisProposed:
    return HypothesisProposed(run=run, source="test", hypothesis_id=hid or new_event_id(), agent=kw.pop("agent", "test"),
                              train_py=source, train_py_sha256=kw.pop("sha", None) or sha256(source),
                              hw_class=hw_class, **kw)


async def propose(js: JetStreamContext, source: str, **kw: Any) -> HypothesisProposed:
    h = hypothesis(source, **kw)
    await publish(js, h)
    return h


async def all_events(js: JetStreamContext) -> list[AnyEvent]:
    info = await js.stream_info(subjects.STREAM)
    out: list[AnyEvent] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(subjects.STREAM, seq)
        except Exception:
            continue
        out.append(decode(raw.data or b""))
    return out


def finished(evs: list[AnyEvent], hid: str | None = None) -> list[ExperimentFinished]:
    return [e for e in evs if isinstance(e, ExperimentFinished) and (hid is None or e.hypothesis_id == hid)]


async def poll(what: str, check: Callable[[], Awaitable[Any]], *, timeout: float, every: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError):
    the one way tests wait, on state."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        await asyncio.sleep(every)


async def wait_for(js: JetStreamContext, pred: Callable[[list[AnyEvent]], bool], timeout: float = 30.0) -> list[AnyEvent]:
    """Wait until the stream's events satisfy ``pred``; returns them."""

    async def check() -> list[AnyEvent] | None:
        evs = await all_events(js)
        return evs if pred(evs) else None

    try:
        got: list[AnyEvent] = await poll("the stream's events", check, timeout=timeout)
    except AssertionError:
        evs = await all_events(js)
        raise AssertionError(f"condition not met in {timeout} s; events: {[type(e).__name__ for e in evs]}") from None
    return got
