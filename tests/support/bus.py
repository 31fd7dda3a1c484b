"""Bus helpers for tests: propose hypotheses, read every event of the stream, wait on the stream's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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


async def wait_for(js: JetStreamContext, pred: Callable[[list[AnyEvent]], bool], timeout: float = 30.0) -> list[AnyEvent]:
    """Wait until the stream's events satisfy ``pred`` (re-reads the stream's state until it does)."""
    deadline = time.monotonic() + timeout
    while True:
        evs = await all_events(js)
        if pred(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; events: {[type(e).__name__ for e in evs]}")
        await asyncio.sleep(0.05)
