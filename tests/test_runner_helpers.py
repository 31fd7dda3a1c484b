"""Shared helpers of the runner tests (no tests here): configs, proposing work, reading the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from bus import publish, subjects
from bus.events import AnyEvent, HypothesisProposed, decode, new_event_id
from bus.trainpy import sha256
from runner.config import RunnerConfig
from runner.testing import FAKE_PREPARE_PY

RUN = "t"


def harness(tmp: Path) -> Path:
    d = tmp / "harness"
    d.mkdir(parents=True, exist_ok=True)
    p = d / "prepare.py"
    p.write_text(FAKE_PREPARE_PY)
    return p


def config(tmp: Path, url: str, **kw: Any) -> RunnerConfig:
    base: dict[str, Any] = dict(
        nats_urls=(url,),
        run=RUN,
        runner_id=kw.pop("runner_id", "r1"),
        hw_class="cpu",
        executor="process",
        state_dir=tmp / f"state-{kw.get('runner_id', 'r1')}",
        cache_dir=tmp / "cache",
        prepare_py=harness(tmp),
        baseline_train_py=tmp / "no-baseline.py",
        calibrate=False,
        ack_wait=10.0,
        fetch_timeout=0.3,
        burst=True,
        budget_seconds=0.3,
        startup_seconds=10.0,
        eval_seconds=20.0,
        grace_seconds=1.0,
        progress_interval=0.1,
    )
    base.update(kw)
    return RunnerConfig(**base)


def hypothesis(source: str, hid: str | None = None, hw_class: str = "cpu", **kw: Any) -> HypothesisProposed:
    return HypothesisProposed(
        run=RUN,
        source="test",
        hypothesis_id=hid or new_event_id(),
        agent="test",
        train_py=source,
        train_py_sha256=kw.pop("sha", None) or sha256(source),
        hw_class=hw_class,
        **kw,
    )


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


async def wait_for(
    js: JetStreamContext, pred: Callable[[list[AnyEvent]], bool], timeout: float = 30.0
) -> list[AnyEvent]:
    """Wait until the stream's events satisfy ``pred`` (waits on state, polling the stream)."""
    deadline = time.monotonic() + timeout
    while True:
        evs = await all_events(js)
        if pred(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met in {timeout} s; events: {[type(e).__name__ for e in evs]}"
            )
        await asyncio.sleep(0.05)
