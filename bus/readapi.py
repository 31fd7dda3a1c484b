"""The one client of the ledger's read API (request/reply on ``swarm.<run>.api.<op>``).

The request and reply types live in :mod:`bus.events`; the ledger answers them (``ledger/api.py``). Every
package that reads the ledger (agents, the CLI, the dashboard) uses this client, so none imports the ledger.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from bus import events as ev
from bus import subjects

R = TypeVar("R", bound=ev.Reply)


class LedgerError(RuntimeError):
    """The ledger answered with an error (the message says what was wrong)."""


class NoLedger(TimeoutError):
    """No ledger answered: none is running for this run on this NATS server, or it is too busy."""


class LedgerClient:
    """Typed async calls to the read API of one run. Raises :class:`LedgerError` (a ``RuntimeError``) when
    the ledger answers with an error, :class:`NoLedger` (a ``TimeoutError``) when none answers."""

    def __init__(self, nc: NATS, run: str, *, timeout: float = 10.0) -> None:
        self.nc, self.run, self.timeout = nc, run, timeout

    async def call(self, req: ev.Request, want: type[R]) -> R:
        """Send one request and return its reply of type ``want``."""
        op = str(type(req).__struct_config__.tag)
        try:
            msg = await self.nc.request(subjects.api(self.run, op), ev.encode_msg(req), timeout=self.timeout)
        except (TimeoutError, NoRespondersError) as e:
            raise NoLedger(
                f"no ledger answered {op!r} for run {self.run!r} within {self.timeout:g}s: start one with "
                "`swarm ledger` (or `swarm up`), or check --nats and --run"
            ) from e
        reply = ev.reply_decoder.decode(msg.data)
        if isinstance(reply, ev.ErrorReply):
            raise LedgerError(f"ledger {op}: {reply.error}")
        if not isinstance(reply, want):
            raise LedgerError(f"ledger {op}: unexpected reply {type(reply).__name__}")
        return reply

    async def best(self, hw_class: str | None = None) -> list[ev.BestRow]:
        return (await self.call(ev.BestRequest(run=self.run, hw_class=hw_class), ev.BestReply)).items

    async def recent(
        self, limit: int = 20, agent: str | None = None, since_ts: float | None = None
    ) -> list[ev.ExperimentRow]:
        req = ev.RecentRequest(run=self.run, limit=limit, agent=agent, since_ts=since_ts)
        return (await self.call(req, ev.ExperimentsReply)).items

    async def notes(self, since_ts: float = 0.0, limit: int = 50) -> list[ev.NoteRow]:
        req = ev.NotesRequest(run=self.run, since_ts=since_ts, limit=limit)
        return (await self.call(req, ev.NotesReply)).items

    async def experiment(self, hypothesis_id: str) -> ev.ExperimentReply:
        return await self.call(
            ev.ExperimentRequest(run=self.run, hypothesis_id=hypothesis_id), ev.ExperimentReply
        )

    async def context(
        self, agent: str, recent_limit: int = 30, notes_since_ts: float = 0.0
    ) -> ev.ContextReply:
        req = ev.ContextRequest(
            run=self.run, agent=agent, recent_limit=recent_limit, notes_since_ts=notes_since_ts
        )
        return await self.call(req, ev.ContextReply)

    async def seen(self, sha256s: list[str]) -> list[str]:
        return (await self.call(ev.SeenRequest(run=self.run, sha256s=sha256s), ev.SeenReply)).seen

    async def sql(self, query: str, limit: int = 1000, timeout_seconds: float = 5.0) -> ev.SqlReply:
        req = ev.SqlRequest(run=self.run, sql=query, limit=limit, timeout_seconds=timeout_seconds)
        return await self.call(req, ev.SqlReply)

    async def agents(self, problems: int = 5) -> list[ev.AgentRow]:
        return (await self.call(ev.AgentsRequest(run=self.run, problems=problems), ev.AgentsReply)).items

    async def timeline(self, after_seq: int = 0, limit: int = 2000) -> ev.TimelineReply:
        return await self.call(
            ev.TimelineRequest(run=self.run, after_seq=after_seq, limit=limit), ev.TimelineReply
        )

    async def overview(self, queue_limit: int = 100) -> ev.OverviewReply:
        return await self.call(ev.OverviewRequest(run=self.run, queue_limit=queue_limit), ev.OverviewReply)

    async def hypothesis(self, hypothesis_id: str) -> ev.HypothesisReply:
        return await self.call(
            ev.HypothesisRequest(run=self.run, hypothesis_id=hypothesis_id), ev.HypothesisReply
        )

    async def memory(self, agent: str = "", **limits: Any) -> ev.MemoryReply:
        """The swarm's shared memory (:class:`bus.events.MemoryRequest`; ``limits`` are its caps)."""
        return await self.call(ev.MemoryRequest(run=self.run, agent=agent, **limits), ev.MemoryReply)

    async def compare(
        self, by: Literal["agent", "model"] = "agent", runs: list[str] | None = None
    ) -> dict[str, Any]:
        req = ev.CompareRequest(run=self.run, by=by, runs=list(runs or []))
        return (await self.call(req, ev.CompareReply)).result
