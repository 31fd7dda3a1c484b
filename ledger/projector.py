"""The projector: the ledger's durable pull consumer over the whole events stream, into DuckDB.

Loop (dramatiq's worker shape): fetch a batch, project it (:func:`ledger.projection.project`), write the
rows and the batch's last stream sequence in one transaction (:func:`ledger.projection.apply`), then ack
the batch's last message (the consumer acks ALL). The database, not the consumer, is the tracking
position: on start, and whenever a fetched batch skips sequences that the stream still holds (a fetch
lost by a crash or cancel leaves messages delivered but unprojected until ``ack_wait``), the consumer is
recreated and replays from the start, and everything at or below ``last_seq`` is acked without being
re-applied. Messages that do not decode or validate go to ``rejects`` and are acked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import duckdb
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from bus import subjects
from bus.client import ensure_consumer, ledger_consumer_config
from ledger.errors import ProjectorError
from ledger.projection import RawMessage, apply, last_seq, project

log = logging.getLogger("swarm.ledger.projector")


def raw_message(msg: Msg) -> RawMessage:
    """Stream sequence and time from a JetStream message's reply subject, without building metadata.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts_ns>.<pending>`` (9 tokens), or the v2
    form with domain and account hash after ``$JS.ACK`` (12 or more tokens).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        seq, ts_ns = tokens[5], tokens[7]
    elif len(tokens) >= 12:
        seq, ts_ns = tokens[7], tokens[9]
    else:
        raise ProjectorError(f"not a JetStream message (reply subject {msg.reply!r})")
    return RawMessage(int(seq), msg.subject, msg.data, int(ts_ns) / 1e9)


async def fetch_batch(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """``sub.fetch(batch, timeout)`` without nats-py's per-message ``wait_for`` (about 100 µs a message,
    the projector's largest cost at 20k events/s): the same pull requests (no_wait first, then one that
    waits up to ``timeout``), read straight from the subscription's queue. Returns at least one message
    or raises TimeoutError. Messages still due to a waiting request stay in the queue for the next call,
    in stream order. Falls back to ``sub.fetch`` if nats-py's internals are not as expected."""
    inner = getattr(sub, "_sub", None)
    queue: asyncio.Queue[Msg] | None = getattr(inner, "_pending_queue", None)
    nms, deliver, nc = getattr(sub, "_nms", None), getattr(sub, "_deliver", None), getattr(sub, "_nc", None)
    if inner is None or queue is None or not nms or not deliver or nc is None:
        return await sub.fetch(batch, timeout=timeout)
    msgs: list[Msg] = []

    def take(msg: Msg) -> str | None:
        """Keep a stream message; return the status code of a status message (skipped)."""
        inner._pending_size -= len(msg.data)
        status = JetStreamContext.is_status_msg(msg)
        if status is None:
            msgs.append(msg)
        return status

    def drain() -> None:
        while len(msgs) < batch and not queue.empty():
            take(queue.get_nowait())

    drain()
    if len(msgs) < batch:
        # what the server has now, without waiting: it ends a short answer with a 404/408 status
        await nc.publish(nms, json.dumps({"batch": batch - len(msgs), "no_wait": True}).encode(), deliver)
        deadline = time.monotonic() + timeout
        while len(msgs) < batch:
            try:
                msg = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            status = take(msg)
            if status in (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT):
                break
            drain()
    if msgs:
        return msgs
    # nothing yet: one request that waits for the next message; take what has arrived with it
    await nc.publish(nms, json.dumps({"batch": batch, "expires": int(timeout * 1e9)}).encode(), deliver)
    deadline = time.monotonic() + timeout
    while not msgs:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            take(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            raise TimeoutError from None
    await asyncio.sleep(0)  # let the messages sent with it reach the queue
    drain()
    return msgs


class Projector:
    """Projects the events stream into the DuckDB connection ``con`` (opened with
    :func:`ledger.schema.connect_db`). Only this object writes to ``con``; readers use cursors.

    ``before_ack`` is a test hook awaited after a batch is committed and before it is acked (raise in
    it to simulate a crash at the worst moment).
    """

    def __init__(
        self,
        js: JetStreamContext,
        con: duckdb.DuckDBPyConnection,
        *,
        consumer: str = subjects.LEDGER_CONSUMER,
        batch_size: int = 10_000,
        fetch_timeout: float = 0.5,
        before_ack: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.js = js
        self.con = con
        self.consumer = consumer
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.before_ack = before_ack
        self.last_seq = 0
        self.events_projected = 0
        self.rejected = 0
        self.recreated = 0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._progress = asyncio.Condition()

    # ---------------------------------------------------------------------------------------------
    # consumer lifecycle

    async def start(self) -> None:
        """Read the tracking position and bind the durable consumer, recreating it when it is ahead of
        the database (deleted or restored database file, or a batch fetched but never committed)."""
        self.last_seq = await asyncio.to_thread(last_seq, self.con, self.consumer)
        try:
            info = await self.js.consumer_info(subjects.STREAM, self.consumer)
        except NotFoundError:
            info = None
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

    async def _bind(self) -> None:
        self._sub = await self.js.pull_subscribe_bind(
            durable=self.consumer, stream=subjects.STREAM, pending_msgs_limit=4 * self.batch_size + 1000
        )

    async def _recreate(self) -> None:
        self.recreated += 1
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        try:
            await self.js.delete_consumer(subjects.STREAM, self.consumer)
        except NotFoundError:
            pass
        await ensure_consumer(self.js, ledger_consumer_config(self.consumer))
        await self._bind()

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as e:  # connection already closed: nothing to unsubscribe from
                log.debug("unsubscribe: %s", e)
            self._sub = None

    # ---------------------------------------------------------------------------------------------
    # the loop

    async def _holds_before(self, first: int) -> bool:
        msg = await self.js.get_msg(subjects.STREAM, seq=self.last_seq + 1, next=True)
        return msg.seq is not None and msg.seq < first

    async def step(self) -> int:
        """Fetch, project, commit and ack one batch. Returns how many messages it handled (0: idle)."""
        if self._sub is None:
            await self.start()
        assert self._sub is not None
        try:
            msgs = await fetch_batch(self._sub, self.batch_size, self.fetch_timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return 0
        raw = [raw_message(m) for m in msgs]
        fresh = [r for r in raw if r.seq > self.last_seq]
        if (
            fresh
            and min(r.seq for r in fresh) > self.last_seq + 1
            and await self._holds_before(min(r.seq for r in fresh))
        ):
            # Messages before this batch were delivered to a fetch that is gone; they would come back
            # only after ack_wait, behind newer ones. Replay instead of projecting out of order.
            log.warning("gap before seq %s (have %s): recreating consumer %s", fresh[0].seq, self.last_seq,
                        self.consumer)  # fmt: skip
            await self._recreate()
            return len(msgs)
        if fresh:
            rows = project(fresh, after_seq=self.last_seq)
            # A cancel must not leave the commit running in its thread behind our back (a restart
            # would read a position that is about to move): finish the write, then re-raise.
            write = asyncio.ensure_future(asyncio.to_thread(apply, self.con, rows, consumer=self.consumer))
            try:
                new = await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait([write])
                raise
            self.events_projected += new
            self.rejected += len(rows.rejects.get("seq", ()))
            self.last_seq = rows.last_seq
        if self.before_ack is not None:
            await self.before_ack()
        await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch
        async with self._progress:
            self._progress.notify_all()
        return len(msgs)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set; the batch in hand is always finished (committed and acked)."""
        if self._sub is None:
            await self.start()
        while not stop.is_set():
            try:
                await self.step()
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

    async def run_until_idle(self, *, timeout: float = 30.0) -> int:
        """Burst mode (like arq's burst workers): project until the consumer has nothing pending.
        Returns the stream sequence reached."""
        if self._sub is None:
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
