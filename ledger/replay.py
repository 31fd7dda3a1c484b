"""Replay: build a fresh ledger database from the stream (from the start or from a time) or from a
Parquet archive made by :func:`ledger.export.export_parquet`. Both go through the same projection code
as the live projector (:mod:`ledger.projection`), so their tables equal the live ones.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import duckdb
import nats.errors
import pyarrow.parquet as pq
from nats.js import JetStreamContext
from nats.js import api as jsapi

from bus import subjects
from ledger.errors import ArchiveError, ProjectorError
from ledger.projection import RawMessage, apply, project
from ledger.projector import fetch_batch, raw_message

REPLAY_CONSUMER = "replay"  # the projector_state key of a replayed database


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
    order; a sequence going backwards is an error) that the server removes when idle.
    """
    info = await js.stream_info(subjects.STREAM)
    target = info.state.last_seq or 0
    if target == 0:
        return 0
    cfg = jsapi.ConsumerConfig(
        ack_policy=jsapi.AckPolicy.NONE,
        deliver_policy=jsapi.DeliverPolicy.ALL if start_time is None else jsapi.DeliverPolicy.BY_START_TIME,
        opt_start_time=None if start_time is None else datetime.datetime.fromtimestamp(start_time, datetime.UTC),
        inactive_threshold=30.0,
        max_deliver=1,
        mem_storage=True,
    )  # fmt: skip
    sub = await js.pull_subscribe(">", stream=subjects.STREAM, config=cfg, pending_msgs_limit=4 * batch_size + 40_000)
    last = 0
    pending: list[RawMessage] = []
    loop = asyncio.get_running_loop()
    write: asyncio.Future[int] | None = None
    try:
        while last < target:
            try:
                msgs = await fetch_batch(sub, min(batch_size, 10_000), fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # nothing more at or after start_time (or the tail was deleted)
            for m in msgs:
                raw = raw_message(m)
                if raw.seq <= last:
                    raise ProjectorError(f"replay got seq {raw.seq} after {last}: stream order broken")
                last = raw.seq
                pending.append(raw)
            if len(pending) >= batch_size or last >= target:
                rows = project(pending)
                pending = []
                # overlap: write this batch in a thread while the next one is fetched
                if write is not None:
                    await write
                write = loop.run_in_executor(None, lambda r=rows: apply(con, r, consumer=consumer))  # type: ignore[misc]
        if pending:
            if write is not None:
                await write
            write = loop.run_in_executor(None, lambda r=project(pending): apply(con, r, consumer=consumer))  # type: ignore[misc]
        if write is not None:
            await write
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:
            pass
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
    """Re-project the raw events (and rejects) of an exported archive into ``con``. Returns the last seq."""
    msgs = read_archive(archive_dir)
    last = 0
    for i in range(0, len(msgs), batch_size):
        rows = project(msgs[i : i + batch_size], after_seq=last)
        apply(con, rows, consumer=consumer)
        last = max(last, rows.last_seq)
    return last
