"""What the dashboard knows about one run, kept current from the bus, and fanned out to browsers.

The state comes from the ledger's read API (``bus.readapi``): every ``poll`` seconds a ``timeline`` request
asks for the hypotheses changed since the last stream position it saw (cheap when nothing changed); when the
run moved, the overview, new notes, agents and (at most every ``compare_every`` seconds) the head-to-head
figures are asked for again. Runner progress comes from core NATS (``swarm.<run>.live.progress``). Each
change goes to every connected browser as one message (server-sent events), so pages update without reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from bus import events as ev
from bus import subjects
from bus.readapi import LedgerClient, LedgerError

log = logging.getLogger("swarm.dashboard")

PROGRESS_STALE_SECONDS = 30.0  # a runner silent this long is not shown as running anything
QUEUE_SIZE = 256  # messages a slow browser may lag behind before it is dropped (it reconnects and resyncs)
Message = dict[str, Any]


def _plain(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


class LiveState:
    """The dashboard's view of ``run``; :meth:`run` keeps it current until ``stop`` is set."""

    def __init__(
        self, nc: NATS, run: str, *, poll: float = 1.0, compare_every: float = 10.0, timeout: float = 5.0
    ) -> None:
        self.nc, self.run_name = nc, run
        self.client = LedgerClient(nc, run, timeout=timeout)
        self.poll, self.compare_every = poll, compare_every
        self.rows: dict[str, Message] = {}  # hypothesis_id -> TimelineRow as builtins
        self.cursor = 0  # last_seq of the timeline seen so far
        self.run_seq = -1
        self.overview: Message | None = None
        self.notes: list[Message] = []
        self.agents: list[Message] | None = None
        self.compare: Message | None = None
        self.progress: dict[str, Message] = {}
        self.error: str | None = None
        self.updated = 0.0
        self._notes_seen: set[str] = set()
        self._compare_at = 0.0
        self._compare_cost = 0.0
        self._compare_dirty = True
        self._progress_dirty = False
        self._subscribers: set[asyncio.Queue[Message | None]] = set()
        self._sub: Any = None
        self._wake = asyncio.Event()

    # ---------------------------------------------------------------------------------------------
    # browsers

    def snapshot(self) -> Message:
        """The whole state, the first message a browser gets."""
        return {
            "kind": "state", "run": self.run_name, "timeline": list(self.rows.values()),
            "overview": self.overview, "notes": self.notes, "agents": self.agents, "compare": self.compare,
            "progress": self._live_progress(), "error": self.error, "server_time": time.time(),
        }  # fmt: skip

    def subscribe(self) -> asyncio.Queue[Message | None]:
        q: asyncio.Queue[Message | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Message | None]) -> None:
        self._subscribers.discard(q)

    def _publish(self, msg: Message) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # too slow: end its stream; EventSource reconnects and gets a snapshot
                self._subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(None)

    def close(self) -> None:
        """End every browser's stream (shutdown)."""
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self._subscribers.clear()

    # ---------------------------------------------------------------------------------------------
    # the bus

    async def run(self, stop: asyncio.Event) -> None:
        """Follow runner progress and poll the ledger until ``stop`` is set."""
        self._sub = await self.nc.subscribe(subjects.progress(self.run_name), cb=self._on_progress)
        try:
            while not stop.is_set():
                await self.refresh()
                if self._progress_dirty:
                    self._progress_dirty = False
                    self._publish({"kind": "progress", "items": self._live_progress()})
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop.wait(), self._wake.wait()), self.poll)
        finally:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self.close()

    async def _on_progress(self, msg: Any) -> None:
        try:
            p = ev.progress_decoder.decode(msg.data)
        except msgspec.DecodeError:  # a cosmetic, lossy channel: what does not decode is skipped
            return
        self.progress[p.runner] = _plain(p)
        self._progress_dirty = True

    def _live_progress(self) -> dict[str, Message]:
        now = time.time()
        return {
            r: p for r, p in self.progress.items() if now - float(p.get("ts", 0.0)) < PROGRESS_STALE_SECONDS
        }

    async def refresh(self) -> bool:
        """One round of questions to the ledger; returns whether anything changed."""
        try:
            changed = await self._refresh()
        except TimeoutError as e:  # NoLedger says which request and what to do
            self._set_error(str(e) or f"no ledger answered for run {self.run_name!r}")
            return False
        except LedgerError as e:
            self._set_error(f"the ledger refused a request: {e}")
            return False
        except Exception as e:  # the bus itself (reconnecting, closed): say so on the page, keep polling
            log.warning("dashboard refresh failed: %r", e)
            self._set_error(f"cannot reach the swarm: {type(e).__name__}: {e}")
            return False
        if self.error is not None:
            self.error = None
            self._publish({"kind": "status", "error": None})
        return changed

    def _set_error(self, text: str) -> None:
        if text != self.error:
            self.error = text
            self._publish({"kind": "status", "error": text})

    async def _refresh(self) -> bool:
        items: list[Message] = []
        run_seq = self.run_seq
        for _ in range(100):  # bounded: 100 pages of 2,000 hypotheses
            tl = await self.client.timeline(
                after_seq=self.cursor, limit=10_000
            )  # the ledger bounds its bytes
            run_seq = tl.run_seq
            for row in tl.items:
                d = _plain(row)
                self.rows[row.hypothesis_id] = d
                items.append(d)
            self.cursor = tl.last_seq
            if not tl.more:
                break
        if items:
            self._publish({"kind": "timeline", "items": items})
        if run_seq == self.run_seq and not items:
            if self._compare_dirty and time.monotonic() - self._compare_at >= self._compare_interval():
                await self._refresh_compare()
            return False
        self.run_seq = run_seq
        self._compare_dirty = True
        self.overview = _plain(await self.client.overview())
        self._publish({"kind": "overview", "overview": self.overview})
        since = max((float(n["ts"]) for n in self.notes), default=0.0)
        fresh = [n for n in await self.client.notes(since_ts=max(0.0, since - 1.0), limit=1000)
                 if n.note_id not in self._notes_seen]  # fmt: skip
        if fresh:
            for n in fresh:
                self._notes_seen.add(n.note_id)
            new = [_plain(n) for n in fresh]
            self.notes.extend(new)
            self._publish({"kind": "notes", "items": new})
        try:
            self.agents = [_plain(a) for a in await self.client.agents()]
            self._publish({"kind": "agents", "items": self.agents})
        except LedgerError as e:  # an older ledger without the agents request: the panel says so
            self.agents = None
            log.debug("agents request failed: %s", e)
        if time.monotonic() - self._compare_at >= self._compare_interval():
            await self._refresh_compare()
        self.updated = time.time()
        return True

    def _compare_interval(self) -> float:
        # compare reads every result of the run (seconds at 100k experiments): an open dashboard may keep
        # the ledger busy with it a tenth of the time at most
        return max(self.compare_every, 10.0 * self._compare_cost)

    async def _refresh_compare(self) -> None:
        t0 = time.monotonic()
        self.compare = await self.client.compare()
        self._compare_at = time.monotonic()
        self._compare_cost = self._compare_at - t0
        self._compare_dirty = False
        self._publish({"kind": "compare", "compare": self.compare})

    def wake(self) -> None:
        """Poll now (a browser asked for fresh data)."""
        self._wake.set()


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
