"""The projector: the ledger's durable pull consumer over the whole events stream, into DuckDB.

Loop (dramatiq's worker shape): fetch a batch, project it (:func:`ledger.projection.project_columns`),
write the rows and the batch's last stream sequence in one transaction (:func:`ledger.projection.apply`),
then ack the batch's last message (the consumer acks ALL). :meth:`Projector.run` overlaps the stages:
while one batch is written (DuckDB, in a worker thread) the next is fetched and projected; writes stay
one at a time and in stream order, and a batch is acked only after its commit.

The database, not the consumer, is the tracking position: on start, and whenever a fetched batch skips
sequences that the stream still holds (a fetch lost by a crash, cancel or reconnect leaves messages
delivered but unprojected until ``ack_wait``), the consumer is recreated and replays from the start, and
everything at or below ``last_seq`` is acked without being re-applied. Messages that do not decode or
validate go to ``rejects`` and are acked. Messages are read as raw frames (:mod:`ledger.fetch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.client import ensure_consumer, ledger_consumer_config, retrying
from ledger.errors import ProjectorError
from ledger.fetch import Batch, PullFeed
from ledger.gcpause import gc_paused
from ledger.projection import Rows, apply, last_seq, project_columns

log = logging.getLogger("swarm.ledger.projector")


@dataclass
class _Staged:
    """Messages fetched and projected but not yet written: they become one transaction."""

    rows: Rows | None = None
    last_reply: bytes = b""  # acks every message up to it (AckPolicy.ALL)
    count: int = 0
    seen: set[str] = field(default_factory=set)  # event_ids in ``rows``: a batch keeps the first

    def add(self, batch: Batch, rows: Rows | None) -> _Staged:
        if rows is not None:
            if self.rows is None:
                self.rows = rows
            else:
                self.rows.extend(rows)
        self.last_reply = batch.last_reply or self.last_reply
        self.count += len(batch)
        return self


@dataclass
class _Writing:
    """A batch being written (``future``: its commit in a worker thread; None: nothing to write)."""

    future: asyncio.Future[int] | None
    rows: Rows | None
    last_reply: bytes


class Projector:
    """Projects the events stream into the DuckDB connection ``con`` (opened with
    :func:`ledger.schema.connect_db`). Only this object writes to ``con``; readers use cursors.

    ``batch_size`` bounds the messages in one transaction; ``window`` how many are requested ahead of
    the one in hand. ``before_ack`` is a test hook awaited after a batch is committed and before it is
    acked (raise in it to simulate a crash at the worst moment).
    """

    def __init__(
        self,
        js: JetStreamContext,
        con: duckdb.DuckDBPyConnection,
        *,
        consumer: str = subjects.LEDGER_CONSUMER,
        batch_size: int = 10_000,
        fetch_timeout: float = 0.5,
        window: int | None = None,
        before_ack: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.js = js
        self.con = con
        self.consumer = consumer
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        # the consumer's max_ack_pending (50k) bounds delivered-but-unacked messages: the batch being
        # written, the one being projected and the window requested ahead must fit under it
        self.window = window if window is not None else min(2 * batch_size, 25_000)
        self.before_ack = before_ack
        self.last_seq = 0
        self.events_projected = 0
        self.rejected = 0
        self.recreated = 0
        self._feed: PullFeed | None = None
        self._progress = asyncio.Condition()

    # ---------------------------------------------------------------------------------------------
    # consumer lifecycle

    async def start(self) -> None:
        """Read the tracking position and bind the durable consumer, recreating it when it is ahead of
        the database (deleted or restored database file, or a batch fetched but never committed)."""
        self.last_seq = await asyncio.to_thread(last_seq, self.con, self.consumer)
        info = await retrying(f"reading consumer {self.consumer}", self._consumer_info)
        if info is not None:
            delivered = info.delivered.stream_seq if info.delivered else 0
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            if max(delivered or 0, floor or 0) > self.last_seq:
                log.warning(
                    "consumer %s delivered up to seq %s but the database holds up to %s: recreating it "
                    "to replay the stream", self.consumer, delivered, self.last_seq,
                )  # fmt: skip
                await self._recreate()
                return
        await ensure_consumer(self.js, ledger_consumer_config(self.consumer))
        await self._bind()

    async def _consumer_info(self) -> Any:
        try:
            return await self.js.consumer_info(subjects.STREAM, self.consumer)
        except NotFoundError:
            return None

    async def _bind(self) -> None:
        self._feed = PullFeed(
            self.js._nc, subjects.STREAM, self.consumer,
            request=max(1, min(self.batch_size, self.window // 2)), window=self.window,
        )  # fmt: skip
        await self._feed.start()

    async def _recreate(self) -> None:
        self.recreated += 1
        await self.close()
        await retrying(f"deleting consumer {self.consumer}", self._delete_consumer)
        await ensure_consumer(self.js, ledger_consumer_config(self.consumer))
        await self._bind()

    async def _delete_consumer(self) -> None:
        try:
            await self.js.delete_consumer(subjects.STREAM, self.consumer)
        except NotFoundError:
            pass

    async def close(self) -> None:
        if self._feed is not None:
            feed, self._feed = self._feed, None
            try:
                await feed.close()
            except nats.errors.Error as e:  # connection already closed: nothing to unsubscribe from
                log.debug("unsubscribe: %s", e)

    # ---------------------------------------------------------------------------------------------
    # the stages: fetch and project, write, ack

    async def _holds_before(self, first: int, after: int) -> bool:
        msg = await self.js.get_msg(subjects.STREAM, seq=after + 1, next=True)
        return msg.seq is not None and msg.seq < first

    async def _fetch(
        self, after: int, *, max_msgs: int, wake: asyncio.Future[Any] | None = None, seen: set[str] | None = None
    ) -> tuple[Batch, Rows | None, bool]:
        """The next messages, their rows (None: nothing new in them, only ack them) and whether they start
        after a gap (then the caller recreates the consumer). ``after`` is the last sequence the
        database will hold once what is already in hand is written. An empty batch: idle."""
        if self._feed is None:
            await self.start()
        assert self._feed is not None
        batch = await self._feed.fetch(max_msgs, self.fetch_timeout, wake=wake)
        if not batch:
            return batch, None, False
        seqs = batch.seqs
        first = next((s for s in seqs if s > after), None)
        if first is None:
            return batch, None, False  # a redelivery of what is already projected: ack it
        if first > after + 1 and await self._holds_before(first, after):
            # Messages before this batch were delivered to a fetch that is gone; they would come back
            # only after ack_wait, behind newer ones. Replay instead of projecting out of order.
            log.warning("gap before seq %s (have %s): recreating consumer %s", first, after, self.consumer)
            return batch, None, True
        with gc_paused():
            rows = project_columns(seqs, batch.subjects, batch.datas, batch.tss, after_seq=after, seen=seen)
        return batch, rows, False

    def _write(self, rows: Rows) -> int:
        with gc_paused():
            return apply(self.con, rows, consumer=self.consumer)

    def _start_write(self, staged: _Staged) -> _Writing:
        rows = staged.rows
        future = None
        if rows is not None and rows.last_seq:
            future = asyncio.ensure_future(asyncio.to_thread(self._write, rows))
        return _Writing(future, rows, staged.last_reply)

    async def _finish(self, w: _Writing) -> None:
        """Wait for a write's commit (a cancel waits for it too: a restart must not read a position that
        is about to move), then ack what it holds and wake the waiters."""
        if w.future is not None:
            try:
                new = await asyncio.shield(w.future)
            except asyncio.CancelledError:
                await asyncio.wait([w.future])
                raise
            assert w.rows is not None
            self.events_projected += new
            self.rejected += len(w.rows.rejects.get("seq", ()))
            self.last_seq = w.rows.last_seq
        if self.before_ack is not None:
            await self.before_ack()
        assert self._feed is not None
        await self._feed.ack_reply(w.last_reply)
        async with self._progress:
            self._progress.notify_all()

    async def _drain(self, writing: _Writing | None, staged: _Staged) -> tuple[None, _Staged]:
        """Finish the write in flight, then write and finish what is staged (one write at a time)."""
        if writing is not None:
            await self._finish(writing)
        if staged.count:
            await self._finish(self._start_write(staged))
        return None, _Staged()

    async def step(self) -> int:
        """Fetch, project, commit and ack one batch. Returns how many messages it handled (0: idle)."""
        batch, rows, gap = await self._fetch(self.last_seq, max_msgs=self.batch_size)
        if gap:
            await self._recreate()
        elif batch:
            await self._finish(self._start_write(_Staged().add(batch, rows)))
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set; what is in hand is always finished (committed and acked).

        While one batch is written (in a worker thread), the messages that arrive are fetched and
        projected as they come; when the write commits, all of them become the next batch. So a busy
        stream gets large batches (DuckDB's cost per transaction, about a dozen statements and a WAL
        sync, is paid once for many events) and a quiet one gets its events written at once.
        """
        if self._feed is None:
            await self.start()
        writing: _Writing | None = None
        staged = _Staged()
        try:
            while not stop.is_set():
                try:
                    if staged.rows is not None:
                        after = staged.rows.last_seq
                    else:
                        after = writing.rows.last_seq if writing is not None and writing.rows else self.last_seq
                    room = self.batch_size - staged.count
                    batch, rows, gap = Batch(), None, False
                    if room > 0:
                        wake = writing.future if writing is not None else None
                        batch, rows, gap = await self._fetch(after, max_msgs=room, wake=wake, seen=staged.seen)
                    if gap:  # write what is in hand, then read the stream again from the database's position
                        writing, staged = await self._drain(writing, staged)
                        await self._recreate()
                        continue
                    if batch:
                        staged.add(batch, rows)
                    if writing is not None and (writing.future is None or writing.future.done() or room <= 0):
                        done, writing = writing, None
                        await self._finish(done)
                    if writing is None and staged.count:
                        writing, staged = self._start_write(staged), _Staged()
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    if stop.is_set():
                        break
                    raise
                except ProjectorError:
                    raise
                except (nats.errors.Error, OSError) as e:
                    # a broken fetch (reconnect in progress): the messages come back, so just retry
                    log.warning("fetch failed, retrying: %r", e)
                    await asyncio.sleep(0.2)
            writing, staged = await self._drain(writing, staged)
        finally:
            if writing is not None and writing.future is not None:
                await asyncio.wait([writing.future])  # never leave a commit running behind the caller's back

    async def run_until_idle(self, *, timeout: float = 30.0) -> int:
        """Burst mode (like arq's burst workers): project until the consumer has nothing pending.
        Returns the stream sequence reached."""
        if self._feed is None:
            await self.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            handled = await self.step()
            if handled == 0:
                info = await self.js.stream_info(subjects.STREAM)
                if (info.state.last_seq or 0) <= self.last_seq:
                    return self.last_seq
        raise ProjectorError(f"projector not idle after {timeout}s (at seq {self.last_seq})")

    async def wait_for_seq(self, seq: int, *, timeout: float = 10.0) -> None:
        """Wait until the projection includes stream sequence ``seq`` (the projector runs elsewhere)."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.last_seq >= seq), timeout)
            except TimeoutError as e:
                raise ProjectorError(
                    f"projector at seq {self.last_seq} did not reach {seq} within {timeout}s"
                ) from e

    async def wait_for_stream(self, *, timeout: float = 10.0) -> int:
        """Wait until the projection has caught up with the stream's last sequence now."""
        info = await self.js.stream_info(subjects.STREAM)
        target = info.state.last_seq or 0
        await self.wait_for_seq(target, timeout=timeout)
        return target
