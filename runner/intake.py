"""Taking work: pull from the durable consumers of the classes a runner serves (class-specific first, then
``any``), claim what arrives (ExperimentClaimed with the attempt = delivery count), hold it under a lease
renewed with ``in_progress()``, and give it back (nak) or finish it (ack).

Every consumer gets its own long-poll while the runner waits for work; the first item to arrive is claimed
(the most specific class when several arrive at once). An item that arrives when the runner already has
one (another consumer's long-poll was still open) is given back at once (nak, no delay), so an idle runner
takes it instead of it waiting a whole experiment here; only an item that could not be redelivered again
(one delivery short of ``max_deliver``) is claimed and held instead, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import subjects
from bus.client import ensure_consumer, publish, work_consumer_config
from bus.events import EventDecodeError, ExperimentClaimed, Hardware, HypothesisProposed, decode
from runner.config import RunnerConfig
from runner.executors.base import Job
from runner.lease import Lease

log = logging.getLogger("swarm.runner.intake")


@dataclass
class Item:
    """A work item this runner holds (claimed, lease renewed until released)."""

    msg: Any
    hyp: HypothesisProposed
    attempt: int
    stream_seq: int
    lease: Lease
    cls: str
    fetched_at: float = field(default_factory=time.monotonic)
    keeper: asyncio.Task[None] | None = None
    job: Job | None = None
    rejected: str = ""  # why it will not run (contract violation, wrong tier...), found while preparing
    progress: Any = None
    phase: str = "preparing"


class Intake:
    """The runner's side of the work consumers. ``claims`` holds every (hypothesis, attempt) it claimed: the
    fence in :mod:`runner.results` refuses to publish for anything else."""

    def __init__(self, nc: NATS, config: RunnerConfig, runner_id: str, hardware: Hardware, classes: list[str]) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.config, self.id, self.hardware, self.classes = config, runner_id, hardware, classes
        self.subs: list[tuple[str, Any]] = []
        self.buffer: list[Item] = []
        self.claims: set[tuple[str, int]] = set()
        self._fetches: dict[str, asyncio.Task[Any]] = {}
        self._pending_claims: set[asyncio.Task[None]] = set()
        self._waiting = False  # inside acquire(): an arriving item is wanted
        self._claiming = 0  # claims being published (their items are not in the buffer yet)
        self.given_back = 0  # items that arrived while this runner had one, handed back to the queue
        self._rank = {c: i for i, c in enumerate(classes)}  # the most specific class first

    async def subscribe(self, js: JetStreamContext) -> None:
        cfg = self.config
        for cls in self.classes:
            ccfg = work_consumer_config(cfg.run, cls, ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver)
            await ensure_consumer(js, ccfg)
            psub = await js.pull_subscribe_bind(durable=subjects.work_consumer(cfg.run, cls), stream=subjects.STREAM)
            self.subs.append((cls, psub))

    @property
    def fetching(self) -> bool:
        return bool(self._fetches)

    async def _fetch_one(self, psub: Any, timeout: float) -> Any:
        try:
            msgs = await psub.fetch(1, timeout=timeout)
        except TimeoutError:
            return None
        return msgs[0] if msgs else None

    def _fetch_timeout(self) -> float:
        return max(0.1, min(self.config.fetch_timeout, self.config.ack_wait / 4))

    async def acquire(self, *stops: asyncio.Event) -> Item | None:
        """The best held item, or None once a whole fetch round (every consumer) found nothing, or on stop."""
        self._waiting = True
        try:
            return await self._acquire(stops)
        finally:
            self._waiting = False

    async def _acquire(self, stops: tuple[asyncio.Event, ...]) -> Item | None:
        started = False
        while not self.buffer and not any(e.is_set() for e in stops):
            if not started:
                for cls, psub in self.subs:
                    if cls not in self._fetches:
                        task = asyncio.create_task(self._fetch_one(psub, self._fetch_timeout()))
                        # an item a fetch delivers after this runner got one (the other consumers' long-polls
                        # stay open) is handled at once: given back, never left unclaimed to lapse
                        task.add_done_callback(self._claim_soon)
                        self._fetches[cls] = task
                started = True
            if not self._fetches and not self._pending_claims:
                break  # a full round came back empty
            stoppers = [asyncio.create_task(e.wait()) for e in stops]
            try:
                # a fetch's own callback may be claiming what it delivered: wait for that claim too (waiting
                # only for the other consumers' long-polls held a claimed item here for a whole fetch timeout)
                await asyncio.wait([*self._fetches.values(), *self._pending_claims, *stoppers],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in stoppers:
                    t.cancel()
            await self._collect()
        if self.buffer:
            await self._collect()
        if not self.buffer:
            return None
        self.buffer.sort(key=lambda it: (self._rank.get(it.cls, 99), it.stream_seq))
        return self.buffer.pop(0)

    def _claim_soon(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None and task.result() is not None:
            self._pending_claims.add(t := asyncio.create_task(self._collect()))
            t.add_done_callback(self._pending_claims.discard)

    async def _collect(self) -> None:
        for cls in sorted((c for c, t in self._fetches.items() if t.done()), key=lambda c: self._rank.get(c, 99)):
            # another _collect (a fetch's own callback, or acquire) may have taken this class's fetch while this
            # one awaited a nak or a claim below, and acquire may have started a new one since: take only a
            # finished fetch that is still there (a KeyError here ended runners under load)
            task = self._fetches.get(cls)
            if task is None or not task.done():
                continue
            del self._fetches[cls]
            try:
                msg = task.result()
            except Exception as e:  # a failed fetch (reconnecting...) is retried next round
                log.warning("fetch on %s failed: %s", cls, e)
                continue
            if msg is None:
                continue
            limit = self.config.max_deliver
            wanted = self._waiting and not self.buffer and not self._claiming
            if not wanted and (limit <= 0 or msg.metadata.num_delivered < limit - 1):
                try:
                    await msg.nak()
                    self.given_back += 1
                    continue
                except Exception as e:  # not given back: claim and hold it rather than let it lapse
                    log.warning("giving back an item that arrived while busy failed: %s", e)
            self._claiming += 1
            try:
                item = await self._claim(msg, cls)
            finally:
                self._claiming -= 1
            if item is not None:
                self.buffer.append(item)

    async def _claim(self, msg: Any, cls: str) -> Item | None:
        lease = Lease(msg, self.nc, self.config.ack_wait)
        md = msg.metadata
        try:
            event = decode(msg.data)
        except EventDecodeError as e:
            log.error("work item %s is not an event (%s): terminated", md.sequence.stream, e)
            await lease.term()
            return None
        if not isinstance(event, HypothesisProposed):
            log.error("work item %s is a %s, not a HypothesisProposed: terminated", md.sequence.stream,
                      type(event).__name__)
            await lease.term()
            return None
        item = Item(msg=msg, hyp=event, attempt=md.num_delivered, stream_seq=md.sequence.stream, lease=lease, cls=cls)
        item.keeper = asyncio.create_task(lease.keep())
        await publish(self.js, ExperimentClaimed(run=self.config.run, source=self.id, hypothesis_id=event.hypothesis_id,
                                                 attempt=item.attempt, runner=self.id, hardware=self.hardware,
                                                 stream_seq=item.stream_seq))
        self.claims.add((event.hypothesis_id, item.attempt))
        return item

    async def release(self, item: Item, how: str) -> None:
        """``ack`` (finished), ``nak`` (given back) or ``keep`` (stop renewing only)."""
        if item.keeper is not None:
            item.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await item.keeper
        if item.lease.released:
            return
        try:
            if how == "ack":
                await item.lease.ack()
            elif how == "nak":
                await item.lease.nak()
        except Exception as e:  # the server will redeliver after ack_wait anyway
            log.warning("%s of %s failed: %s", how, item.hyp.hypothesis_id, e)
        item.lease.released = True

    async def drain(self) -> None:
        """Let in-flight fetches end (they expire within fetch_timeout) and give back what they got, so no
        pull request of ours is left open to swallow an item we are about to give back."""
        if self._pending_claims:  # claims under way land in the buffer, which the caller gives back
            await asyncio.gather(*self._pending_claims, return_exceptions=True)
        tasks = list(self._fetches.values())
        self._fetches.clear()
        for task in tasks:
            try:
                msg = await asyncio.wait_for(task, self._fetch_timeout() + 2.0)
            except Exception:  # timed out or failed: nothing to give back
                continue
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def queue_empty(self) -> bool:
        for cls, _ in self.subs:
            info = await self.js.consumer_info(subjects.STREAM, subjects.work_consumer(self.config.run, cls))
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def unsubscribe(self) -> None:
        for _, psub in self.subs:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
