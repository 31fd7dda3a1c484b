"""The ledger process: the projector and the read API together, on one DuckDB connection."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nats.aio.client import Client as NATS

from bus import subjects
from bus.client import ensure_stream
from ledger.api import LedgerApi
from ledger.projector import Projector
from ledger.schema import connect_db

log = logging.getLogger("swarm.ledger")


async def run_ledger(
    nc: NATS,
    db_path: str | Path,
    *,
    stop: asyncio.Event,
    consumer: str = subjects.LEDGER_CONSUMER,
    batch_size: int = 10_000,
    ready: asyncio.Event | None = None,
    projector_out: list[Projector] | None = None,
) -> None:
    """Run the projector and the read API until ``stop`` is set, then drain: stop taking requests,
    finish the batch in hand (committed and acked), answer the requests in hand, close the database.

    ``ready`` is set once both are serving; ``projector_out`` (a list) receives the projector, so a
    caller can ``await projector.wait_for_seq(n)``.
    """
    js = nc.jetstream()
    await ensure_stream(js)
    con = await asyncio.to_thread(connect_db, str(db_path))
    projector = Projector(js, con, consumer=consumer, batch_size=batch_size)
    api = LedgerApi(nc, con)
    try:
        await projector.start()
        await api.start()
        if projector_out is not None:
            projector_out.append(projector)
        if ready is not None:
            ready.set()
        log.info("ledger serving %s from seq %s", db_path, projector.last_seq)
        await projector.run(stop)
    finally:
        await api.stop()
        await projector.close()
        await asyncio.to_thread(con.close)
