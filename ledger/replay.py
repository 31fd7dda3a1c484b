"""Replay: build a fresh ledger database from the stream (from the start or from a time) or from a
Parquet archive made by :func:`ledger.export.export_parquet`. Both go through the same projection code
as the live projector (:mod:`ledger.projection`), so their tables equal the live ones.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path

import duckdb
import nats.errors
import pyarrow.parquet as pq
from nats.js import JetStreamContext
from nats.js import api as jsapi

from bus import subjects
from ledger.errors import ArchiveError, ProjectorError
from ledger.fetch import Batch, PullFeed
from ledger.gcpause import gc_paused
from ledger.projection import RawMessage, Rows, apply, derive_experiments, project, project_columns

log = logging.getLogger("swarm.ledger.replay")

REPLAY_CONSUMER = "replay"  # the projector_state key of a replayed database


def _apply_bulk(con: duckdb.DuckDBPyConnection, rows: Rows, consumer: str) -> int:
    with gc_paused():
        return apply(con, rows, consumer=consumer, derive=False)


async def replay_stream(
    js: JetStreamContext,
    con: duckdb.DuckDBPyConnection,
    *,
    start_time: float | None = None,
    batch_size: int = 50_000,
    consumer: str = REPLAY_CONSUMER,
    fetch_timeout: float = 2.0,
) -> int:
    """Project the stream as it is now into ``con`` (a fresh database from :func:`connect_db`),
    from the start or from ``start_time`` (unix seconds). Returns the last stream sequence projected.

    Uses an ephemeral pull consumer with no acks (nothing is redelivered, messages arrive in stream
    order; a sequence going backwards is an error), removed at the end (or by the server when idle).
    Each ``batch_size`` messages are one transaction, written in a worker thread while the next batch
    is fetched and projected, in the projection's bulk mode (:func:`ledger.projection.apply` with
    ``derive=False``): ``experiment_state`` is derived once at the end, so it is complete only when this
    returns.
    """
    info = await js.stream_info(subjects.STREAM)
    target = info.state.last_seq or 0
    if target == 0:
        return 0
    request = max(1, min(batch_size, 10_000))
    nc = js._nc

    async def open_feed(from_seq: int | None) -> tuple[str, PullFeed, int]:
        """An ephemeral consumer from ``start_time`` (or the start), or from sequence ``from_seq``, and
        the sequence before its first message (the server resolves a start time when it makes it)."""
        cfg = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.NONE, deliver_policy=jsapi.DeliverPolicy.ALL, inactive_threshold=30.0,
            max_deliver=1, mem_storage=True,
        )  # fmt: skip
        if from_seq is not None:
            cfg.deliver_policy, cfg.opt_start_seq = jsapi.DeliverPolicy.BY_START_SEQUENCE, from_seq
        elif start_time is not None:
            cfg.deliver_policy = jsapi.DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = datetime.datetime.fromtimestamp(start_time, datetime.UTC)
        cinfo = await js.add_consumer(subjects.STREAM, cfg)
        feed = PullFeed(nc, subjects.STREAM, cinfo.name, request=request, window=4 * request)
        await feed.start()
        return cinfo.name, feed, (cinfo.delivered.stream_seq or 0) if cinfo.delivered else 0

    async def close_feed(name: str, feed: PullFeed) -> None:
        try:
            await feed.close()
            await js.delete_consumer(subjects.STREAM, name)
        except (nats.errors.Error, nats.js.errors.NotFoundError):
            pass  # the server removes it when idle anyway

    async def next_held(after: int) -> int | None:
        """The first sequence after ``after`` that the stream holds (None: none)."""
        try:
            msg = await js.get_msg(subjects.STREAM, seq=after + 1, next=True)
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq

    last = 0
    pending = Batch()
    write: asyncio.Future[int] | None = None
    loop = asyncio.get_running_loop()

    async def flush(batch: Batch) -> None:
        nonlocal write
        with gc_paused():
            rows = project_columns(batch.seqs, batch.subjects, batch.datas, batch.tss)
        if write is not None:
            await write  # one write at a time, in stream order
        write = loop.run_in_executor(None, _apply_bulk, con, rows, consumer)

    name, feed, floor = await open_feed(None)
    reopened = 0
    try:
        while last < target:
            got = await feed.fetch(min(batch_size - len(pending), request), fetch_timeout)
            before = last or floor  # the sequence the next message must follow
            lost = False
            if not got:
                # idle: the end (nothing at or after start_time, or the tail was deleted), or messages
                # lost on the way (a reconnect: this consumer does not redeliver)
                lost = (await next_held(before) or target + 1) <= target
                if not lost:
                    break
            elif got.seqs[0] > before + 1:
                lost = (await next_held(before) or got.seqs[0]) < got.seqs[0]
            if lost:
                reopened += 1
                if reopened > 20:
                    raise ProjectorError(f"replay keeps losing messages after seq {before}; giving up")
                log.warning("replay lost messages after seq %s: reading again from there", before)
                await close_feed(name, feed)
                name, feed, floor = await open_feed(before + 1)
                continue
            if got.seqs[0] <= last or any(b <= a for a, b in zip(got.seqs, got.seqs[1:], strict=False)):
                raise ProjectorError(f"replay got seq {got.seqs[0]} after {last}: stream order broken")
            last = got.seqs[-1]
            pending.extend(got)
            if len(pending) >= batch_size or last >= target:
                batch, pending = pending, Batch()
                await flush(batch)
        if pending:
            await flush(pending)
        if write is not None:
            await write
        await asyncio.to_thread(derive_experiments, con)
    finally:
        if write is not None and not write.done():
            await asyncio.wait([write])  # never leave a commit running behind the caller's back
        await close_feed(name, feed)
    return last


def read_archive(archive_dir: str | Path) -> list[RawMessage]:
    """The raw messages of an archive: every event and every reject, in stream order."""
    root = Path(archive_dir)
    events_file, rejects_file = root / "events.parquet", root / "rejects.parquet"
    if not events_file.exists():
        raise ArchiveError(
            f"{root} has no events.parquet: not a ledger export (make one with export_parquet)"
        )
    ev_t = pq.read_table(events_file, columns=["seq", "subject", "data", "ts"])
    msgs = [RawMessage(s, sub, d, 0.0) for s, sub, d in zip(
        ev_t.column("seq").to_pylist(), ev_t.column("subject").to_pylist(), ev_t.column("data").to_pylist(),
        strict=True)]  # fmt: skip
    if rejects_file.exists():
        rj = pq.read_table(rejects_file, columns=["seq", "subject", "data", "ts"]).to_pydict()
        msgs += [RawMessage(s, sub, d, t) for s, sub, d, t in
                 zip(rj["seq"], rj["subject"], rj["data"], rj["ts"], strict=True)]  # fmt: skip
    msgs.sort(key=lambda m: m.seq)
    return msgs


def replay_archive(
    archive_dir: str | Path, con: duckdb.DuckDBPyConnection, *, consumer: str = REPLAY_CONSUMER,
    batch_size: int = 20_000,
) -> int:  # fmt: skip
    """Re-project the raw events (and rejects) of an exported archive into ``con``, in the projection's
    bulk mode like :func:`replay_stream`. Returns the last seq."""
    msgs = read_archive(archive_dir)
    last = 0
    for i in range(0, len(msgs), batch_size):
        rows = project(msgs[i : i + batch_size], after_seq=last)
        _apply_bulk(con, rows, consumer)
        last = max(last, rows.last_seq)
    derive_experiments(con)
    return last
