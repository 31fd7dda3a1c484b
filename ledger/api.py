"""The ledger's read API over NATS request/reply (``swarm.<run>.api.<op>``, queue group ``ledger``).

Its client is :class:`bus.readapi.LedgerClient` (re-exported here for old imports): every package reads the
ledger through that one client, on the ground floor.

The service runs in the projector's process, on cursors of its DuckDB connection, each query in a
worker thread: it answers from the last committed snapshot while the projector ingests. A bad request
gets an :class:`bus.events.ErrorReply` saying what was wrong; the service never dies of one.
"""

from __future__ import annotations

import asyncio
import logging

import duckdb
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import events as ev
from bus import subjects
from bus.readapi import LedgerClient
from ledger import queries as q
from ledger import watch
from ledger.errors import QueryError

log = logging.getLogger("swarm.ledger.api")

__all__ = ["LedgerApi", "LedgerClient", "answer"]

QUEUE_GROUP = "ledger"


def answer(con: duckdb.DuckDBPyConnection, req: ev.AnyRequest) -> ev.AnyReply:
    """Answer one decoded request on a fresh cursor of ``con`` (blocking: call it in a thread)."""
    cur = con.cursor()
    try:
        match req:
            case ev.BestRequest():
                return ev.BestReply(items=q.best(cur, req.run, req.hw_class))
            case ev.RecentRequest():
                return ev.ExperimentsReply(items=q.recent(cur, req.run, req.limit, req.agent, req.since_ts))
            case ev.NotesRequest():
                return ev.NotesReply(items=q.notes(cur, req.run, req.since_ts, req.limit))
            case ev.ExperimentRequest():
                item, attempts = q.experiment(cur, req.run, req.hypothesis_id)
                return ev.ExperimentReply(
                    item=item, attempts=[{k: q._plain(v) for k, v in a.items()} for a in attempts]
                )
            case ev.ContextRequest():
                return q.context(cur, req)
            case ev.SeenRequest():
                return ev.SeenReply(seen=q.seen(cur, req.run, req.sha256s))
            case ev.SqlRequest():
                return q.sql(cur, req.sql, req.limit, req.timeout_seconds)
            case ev.AgentsRequest():
                return ev.AgentsReply(items=q.agents(cur, req.run, req.problems))
            case ev.TimelineRequest():
                return watch.timeline(cur, req)
            case ev.OverviewRequest():
                return watch.overview(cur, req)
            case ev.HypothesisRequest():
                return watch.hypothesis(cur, req.run, req.hypothesis_id)
            case ev.CompareRequest():
                return watch.compare(cur, req)
            case ev.MemoryRequest():
                return q.memory(cur, req)
        raise QueryError(f"unhandled request {type(req).__name__}")  # pragma: no cover
    finally:
        cur.close()


class LedgerApi:
    """Serves the read API for every run from ``con`` until :meth:`stop`."""

    def __init__(self, nc: NATS, con: duckdb.DuckDBPyConnection, *, max_concurrency: int = 4) -> None:
        self.nc = nc
        self.con = con
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_concurrency)
        self.served = 0
        self.errors = 0

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.API_ALL_RUNS, queue=QUEUE_GROUP, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        # handle concurrently so one slow SQL query does not hold up everyone's context request
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        reply: ev.AnyReply
        try:
            req = ev.request_decoder.decode(msg.data)
            run = msg.subject.split(".")[1]
            op = msg.subject.split(".")[3]
            tag = type(req).__struct_config__.tag
            if req.run != run or op != tag:
                raise QueryError(f"a {tag!r} request for run {req.run!r} sent on {msg.subject!r}; "
                                 f"send it on {subjects.api(req.run, str(tag))!r}")  # fmt: skip
            async with self._slots:
                reply = await asyncio.to_thread(answer, self.con, req)
        except msgspec.DecodeError as e:
            reply = ev.ErrorReply(error=f"bad request: {e}")
        except (QueryError, ValueError) as e:
            reply = ev.ErrorReply(error=str(e))
        except duckdb.Error as e:
            log.exception("query failed: %s", msg.subject)
            reply = ev.ErrorReply(error=f"query failed: {type(e).__name__}: {e}")
        if isinstance(reply, ev.ErrorReply):
            self.errors += 1
        self.served += 1
        if msg.reply:
            try:
                await msg.respond(ev.encode_msg(reply))
            except Exception as e:  # a reply we cannot send (connection closing) must not kill the service
                log.warning("could not reply on %s: %r", msg.subject, e)

    async def stop(self) -> None:
        """Stop taking requests, then finish the ones in hand."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
