"""The research loop of one agent: read the context, propose a wave, validate, publish, wait for results,
have them judged, write a note, repeat.

``run_agent(nc, config, proposer, stop=...)`` is the whole agent. Its parts, one idea each: the settings
(:mod:`agents.config`), what it reports (:mod:`agents.report`), the baselines (:mod:`agents.baselines`),
wave sizes and budgets (:mod:`agents.budget`), the keep/discard/confirm judge (:mod:`agents.judge`, paired
comparisons in :mod:`agents.paired`), the shared memory and waves (:mod:`agents.shared`,
:mod:`agents.waves`), screen → validate (:mod:`agents.promotion`), the champion audit (:mod:`agents.audit`),
the model server's circuit breaker (:mod:`agents.breaker`); the ledger is read through :mod:`bus.readapi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from agents.audit import Audits
from agents.baselines import Baselines, baseline_id, ensure_baselines
from agents.breaker import CircuitBreaker
from agents.budget import budget_left, wave_size
from agents.config import AgentConfig
from agents.edits import Validated, apply_edits, validate_source
from agents.errors import AgentError, ValidationError
from agents.judge import Judge, screen_seed
from agents.knobs import knob_values
from agents.paired import standing
from agents.promotion import Promotions, validate_class
from agents.proposers.base import (
    AgentContext,
    LlmCall,
    ProposalBatch,
    ProposalDraft,
    Proposer,
    Rejection,
    Result,
)
from agents.proposers.knob_search import summary_note
from agents.report import AgentStats, WaveReport, WaveReporter, one_line
from agents.shared import WaveBook, avoid_set, read_memory, tried_on
from agents.tail import RunTail
from agents.waves import expand
from bus import BusError, publish, publish_many
from bus.events import (
    BASELINE,
    REPEAT_TAG,
    AgentJoined,
    AgentLeft,
    ContextReply,
    HypothesisProposed,
    LlmUsage,
    NoteWritten,
    ProposalRejected,
    new_event_id,
)
from bus.readapi import LedgerClient, LedgerError, NoLedger
from bus.trainpy import profile_of_class

__all__ = ["AgentConfig", "AgentStats", "WaveReport", "WaveReporter", "baseline_id", "ensure_baselines", "run_agent"]

log = logging.getLogger("swarm.agents.loop")

T = TypeVar("T")


class Agent:
    """State of one running agent; :func:`run_agent` is the entry point."""

    def __init__(
        self, nc: NATS, config: AgentConfig, proposer: Proposer, stop: asyncio.Event,
        report: WaveReporter | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = config
        self.proposer = proposer
        self.stop = stop
        self.report = report
        self.tail = RunTail(self.js, config.run)
        self.ledger = LedgerClient(nc, config.run, timeout=config.request_timeout)
        self.stats = AgentStats(agent=config.agent)
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown, config.breaker_max_cooldown)
        self.baselines = Baselines(self.js, self.tail, run=config.run, agent=config.agent,
                                   base_train_py=config.base_train_py, repeats=config.baseline_repeats)  # fmt: skip
        self.judge = Judge(config, self.tail, stop, self.stats, self.buffer, self.baselines.queue)
        self.promotions = Promotions(self)
        self.judge.on_kept = self.promotions.on_kept
        self.audits = Audits(self)
        self.wavebook = WaveBook(config, self.tail)
        self.outstanding: dict[str, HypothesisProposed] = {}  # own, not decided yet
        self.rejections: list[Rejection] = []
        self.crashes: list[Result] = []
        self.decided_results: list[Result] = []
        self.observed: set[str] = set()
        self.notes_since = 0.0
        self.program_md = config.program_md
        self._buffer: list[Any] = []

    # -- the bus ------------------------------------------------------------------------------------

    async def emit(self, ev: Any) -> None:
        await publish(self.js, ev)
        self.tail.apply(ev)  # our own view is current even before the event comes back

    def buffer(self, ev: Any) -> None:
        """Queue an event for :meth:`flush` (pipelined publishing); the local view sees it at once."""
        self._buffer.append(ev)
        self.tail.apply(ev)

    async def flush(self) -> None:
        if self._buffer:
            evs, self._buffer = self._buffer, []
            await publish_many(self.js, evs)

    # -- the ledger (its read API; the local view of the stream when it does not answer) ------------

    async def ask(self, op: str, call: Awaitable[T]) -> T | None:
        try:
            return await call
        except (NoLedger, LedgerError, msgspec.DecodeError, TimeoutError) as e:
            log.info("%s: ledger %s request failed (%s); using the local view", self.cfg.agent, op, type(e).__name__)
            return None

    async def context_reply(self) -> ContextReply:
        reply = await self.ask("context", self.ledger.context(self.cfg.agent, notes_since_ts=self.notes_since))
        if reply is not None:
            return reply
        return self.tail.local_context(self.cfg.agent, notes_since_ts=self.notes_since)

    async def seen_by_ledger(self, vs: list[Validated]) -> set[str]:
        """Which of these hashes the ledger has seen (empty when it does not answer: the local view,
        read from the same stream, already checked them)."""
        if not vs:
            return set()
        seen = await self.ask("seen", self.ledger.seen([h for v in vs for h in (v.sha256, v.ast_sha256)]))
        return set(seen or ())

    # -- what the agent reads -----------------------------------------------------------------------

    def sees(self, agent: str) -> bool:
        """Whether this agent may see results of ``agent`` (isolated agents see themselves and baselines)."""
        return not self.cfg.isolated or agent in (self.cfg.agent, BASELINE)

    def parent(self) -> tuple[str, str, float | None]:
        """(id, source, val_bpb) to build on: the best kept on the requested class (own lineage, or anyone's
        when ``follow_global_best``), else the unmodified train.py."""
        candidates: list[tuple[float, str]] = []
        for hid in self.tail.decided:
            p = self.tail.proposals.get(hid)
            v = standing(self.tail, hid)
            if not self.tail.kept(hid) or p is None or v is None:
                continue
            if p.agent != self.cfg.agent and (self.cfg.isolated or not self.cfg.follow_global_best):
                continue
            if self.cfg.hw_class != "any" and self.tail.ran_on(hid) != self.cfg.hw_class:
                continue
            candidates.append((v, hid))
        if candidates:
            v, hid = min(candidates)
            return hid, self.tail.proposals[hid].train_py, v
        return BASELINE, self.cfg.base_train_py, None

    def result_of(self, hid: str) -> Result:
        p = self.tail.proposals[hid]
        f = self.tail.finished.get(hid)
        return Result(
            hypothesis_id=hid,
            agent=p.agent,
            status=f.status if f else "pending",
            val_bpb=f.val_bpb if f else None,
            hw_class=self.tail.ran_on(hid),
            knobs=dict(p.knobs),
            description=p.description,
            parent=p.parent,
            reason=f.reason if f else "",
            log_tail=f.log_tail if f else "",
            own=p.agent == self.cfg.agent,
            tags=tuple(p.tags),
        )

    async def observe_new(self) -> None:
        new = [
            h for h in self.tail.finish_order
            if h not in self.observed and h in self.tail.proposals and self.sees(self.tail.proposals[h].agent)
        ]  # fmt: skip
        self.observed.update(new)
        if new:
            await self.proposer.observe([self.result_of(h) for h in new])

    # -- what the agent publishes -------------------------------------------------------------------

    async def publish_calls(self, batch: ProposalBatch, ids: list[str]) -> None:
        for c in batch.calls:
            self.stats.cost_usd += c.cost_usd
            self.stats.llm_calls += 1
            self.stats.llm_errors += 0 if c.ok else 1
            if not c.ok:
                self.stats.last_problem = f"LLM error: {one_line(c.error, 300)}"
            await self.emit(
                LlmUsage(
                    run=self.cfg.run, source=self.cfg.agent, agent=self.cfg.agent, provider=c.provider,
                    model=c.model, input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                    cost_usd=c.cost_usd, latency_seconds=c.latency_seconds, ok=c.ok, error=c.error,
                    hypothesis_ids=ids,
                )
            )  # fmt: skip

    async def reject(self, rej: Rejection, draft: ProposalDraft | None = None) -> None:
        self.stats.rejected += 1
        self.stats.last_problem = f"rejected: {one_line(rej.reason, 300)}"
        self.rejections.append(rej)
        await self.emit(
            ProposalRejected(
                run=self.cfg.run, source=self.cfg.agent, agent=self.cfg.agent, reason=rej.reason[:2000],
                description=rej.description[:500], excerpt=rej.excerpt[:1000],
            )
        )  # fmt: skip
        if draft is not None:
            await self.proposer.observe(
                [Result(draft.hypothesis_id, self.cfg.agent, "rejected", knobs=draft.knobs, own=True, reason=rej.reason)]
            )

    def validate(self, draft: ProposalDraft, parent_source: str) -> Validated:
        if draft.source is not None:
            source = draft.source
        elif draft.edits is not None:
            source = apply_edits(parent_source, draft.edits)
        else:
            raise ValidationError("a proposal needs edits")
        # the parent is the baseline or a result that ran ok: a change of knob values alone is as runnable
        v = validate_source(source, parent_source, parent_runs=True)
        self.tail.seen.check(v)
        return v

    def proposed_event(self, hid: str, draft: ProposalDraft, v: Validated, parent: str, tags: list[str],
                       hw_class: str, tier: str, seed: int | None = None) -> HypothesisProposed:  # fmt: skip
        knobs = v.knobs if v.knobs is not None else knob_values(v.source)
        return HypothesisProposed(
            run=self.cfg.run,
            source=self.cfg.agent,
            hypothesis_id=hid,
            agent=self.cfg.agent,
            model=self.proposer.model,
            train_py=v.source,
            train_py_sha256=v.sha256,
            ast_sha256=v.ast_sha256,
            parent=parent,
            diff=v.diff,
            description=draft.description,
            rationale=draft.rationale,
            tier="validate" if tier == "validate" else "screen",
            hw_class=hw_class,
            # common random numbers: the seed of the reference's first run (agents.paired)
            seed=screen_seed(self.tail, parent) if seed is None else seed,
            budget=self.cfg.budget,
            tags=tags,
            knobs=knobs,
        )

    def publish_hypothesis(self, ev: HypothesisProposed) -> None:
        self.buffer(ev)  # flushed at the end of the wave
        self.outstanding[ev.hypothesis_id] = ev
        self.stats.proposed += 1

    def publish_repeats(self, k: int) -> int:
        """Queue up to ``k`` confirming repeats the judge asked for; how many."""
        n = 0
        while self.judge.to_repeat and n < k:
            c = self.judge.to_repeat.pop(0)
            p = self.tail.proposals[c.original]
            hid = str(uuid.uuid4())
            v = Validated(p.train_py, p.train_py_sha256, p.ast_sha256, "")
            what = "re-measure" if c.remeasure else "repeat"
            draft = ProposalDraft(description=f"{what} of {c.original[:8]} on seed {c.seed}: {p.description}"[:500],
                                  rationale="re-measure a keep" if c.remeasure else "confirm")  # fmt: skip
            # on the class it ran on: a paired difference only means something on one class
            ev = self.proposed_event(hid, draft, v, c.original, [REPEAT_TAG], c.hw_class or p.hw_class, "validate",
                                     seed=c.seed)  # fmt: skip
            self.judge.confirming[hid] = c
            self.publish_hypothesis(ev)
            n += 1
        return n

    async def note(self, title: str, body: str, refs: list[str]) -> None:
        if not self.cfg.write_notes:
            return
        await self.emit(
            NoteWritten(
                run=self.cfg.run, source=self.cfg.agent, note_id=new_event_id(), agent=self.cfg.agent,
                title=title, body=body, refs=refs,
            )
        )  # fmt: skip

    # -- one wave -----------------------------------------------------------------------------------

    async def wave(self) -> int:
        """One wave; returns how many hypotheses it published."""
        cfg = self.cfg
        if self.stop.is_set():
            return 0
        if cfg.baselines:
            await self.baselines.queue(self.tail.hw_classes())
        reply = await self.context_reply()
        self.program_md = reply.program_md or self.tail.program_md or self.program_md
        self.notes_since = max([self.notes_since, *(n.ts for n in reply.notes)])
        await self.observe_new()
        k = wave_size(cfg, self.tail, reply, self.stats)
        if k <= 0 or self.stop.is_set():
            return 0
        self.stats.waves += 1
        repeats = self.publish_repeats(k)
        repeats += self.promotions.publish(k - repeats)
        for cls in self.audits.due():  # audits take places of the wave (fair share counts them too)
            if k - repeats <= 0:
                break
            for ev in await self.audits.start(cls):
                self.outstanding[ev.hypothesis_id] = ev
                self.stats.proposed += 1
                repeats += 1
        await self.flush()  # repeats were decided before this wave: out before the model is asked
        k -= repeats
        if k <= 0:
            self._report(WaveReport(cfg.agent, self.stats.waves, repeats=repeats))
            return repeats
        if cfg.isolated:
            reply = msgspec.structs.replace(
                reply,
                best=[b for b in reply.best if self.sees(b.agent)],
                recent=[r for r in reply.recent if self.sees(r.agent)],
                notes=[n for n in reply.notes if n.agent == cfg.agent],
            )
        parent_id, parent_source, parent_val = self.parent()
        memory = await read_memory(cfg, self.tail, self.ledger, self.ask, self.sees)
        ctx = AgentContext(
            run=cfg.run,
            agent=cfg.agent,
            wave=self.stats.waves,
            program_md=self.program_md,
            reply=reply,
            parent_id=parent_id,
            parent_source=parent_source,
            parent_val_bpb=parent_val,
            hw_class=cfg.hw_class,
            best_sources={
                b.hw_class: self.tail.proposals[b.hypothesis_id].train_py
                for b in reply.best
                if b.hypothesis_id in self.tail.proposals
            },
            rejections=self.rejections,
            crashes=self.crashes,
            results=self.decided_results,
            sigma={s.hw_class: self.judge.sigma_of(reply, s.hw_class, s.baseline_mean or 1.0) for s in reply.stats},
            seen=self.tail.seen,
            deadline=time.monotonic() + cfg.wave_llm_seconds,
            memory=memory,
            avoid=avoid_set(memory, self.tail, parent_id),
            tried=tried_on(self.tail, parent_id, parent_source),
        )
        self.rejections, self.crashes, self.decided_results = [], [], []
        t_propose = time.monotonic()
        batch = await self.propose(ctx, k)
        if batch is None:  # stopped while the model was thinking: publish nothing of this wave
            self._report(WaveReport(cfg.agent, self.stats.waves, repeats=repeats, stopped=True))
            return repeats
        t_publish = time.monotonic()
        rejected_before = self.stats.rejected
        ids, first_rejection = await self.publish_batch(batch, k, parent_id, parent_source)
        log.debug("%s: wave %d: proposed %d in %.2fs, published in %.2fs", cfg.agent, self.stats.waves, len(ids),
                  t_publish - t_propose, time.monotonic() - t_publish)  # fmt: skip
        await self.publish_calls(batch, ids)
        for note in batch.notes:
            await self.note(note.title, note.body, list(note.refs))
        failed = [c.error for c in batch.calls if not c.ok]
        pause = self.breaker.record(len(batch.calls), len(failed))
        self._report(
            WaveReport(
                cfg.agent, self.stats.waves, proposed=len(ids), repeats=repeats,
                rejected=self.stats.rejected - rejected_before, first_rejection=first_rejection,
                llm_calls=len(batch.calls), llm_errors=tuple(failed), cost_usd=sum(c.cost_usd for c in batch.calls),
                paused=pause,
            )
        )  # fmt: skip
        if pause is not None:
            await self.tail.wait_until(self.stop.is_set, pause)
        return repeats + len(ids)

    async def propose(self, ctx: AgentContext, k: int) -> ProposalBatch | None:
        """Ask the proposer, bounded by the wave's LLM time and cancelled by a stop (then None)."""
        call = asyncio.ensure_future(self.proposer.propose(ctx, k))
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            # the proposer bounds itself by ctx.deadline; this is the net for one that does not
            await asyncio.wait({call, stopped}, timeout=self.cfg.wave_llm_seconds + 5.0,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            stopped.cancel()
        if not call.done():
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            if self.stop.is_set():
                return None
            why = f"the proposer took longer than the wave's {self.cfg.wave_llm_seconds:g} s"
            return ProposalBatch(calls=[LlmCall(self.proposer.provider, self.proposer.model, ok=False, error=why)])
        try:
            return call.result()
        except Exception as e:  # a proposer bug must not end the research run
            log.exception("%s: proposer failed", self.cfg.agent)
            return ProposalBatch(rejections=[Rejection(f"proposer error: {type(e).__name__}: {e}")])

    async def publish_batch(
        self, batch: ProposalBatch, k: int, parent_id: str, parent_source: str
    ) -> tuple[list[str], str]:
        """Validate the proposer's drafts (apply, compile, module-level rule, dedup against the stream, the
        wave and the ledger), publish the good ones, reject the rest; (ids published, first rejection)."""
        cfg = self.cfg
        ids: list[str] = []
        first_rejection = ""
        drafts = list(batch.proposals)
        factors: list[str] = []
        for grid in batch.grids:  # a grid is a whole wave: expanded here, deduplicated below
            expanded, rejected = expand(grid, parent_source, limit=max(k, cfg.grid_max),
                                        device=profile_of_class(cfg.hw_class))  # fmt: skip
            batch.rejections.extend(rejected)
            drafts.extend(expanded)
            factors += [f for f in grid.factors if f not in factors]
        for rej in batch.rejections:
            first_rejection = first_rejection or rej.reason
            await self.reject(rej)
        valid: list[tuple[ProposalDraft, Validated]] = []
        for draft in drafts:
            if len(valid) >= k:
                first_rejection = first_rejection or f"over the wave size {k}"
                await self.reject(Rejection(f"over the wave size {k}", draft.description), draft)
                continue
            try:
                v = self.validate(draft, parent_source)
                if any(v.sha256 == w.sha256 or v.ast_sha256 == w.ast_sha256 for _, w in valid):
                    raise ValidationError("duplicate: the same train.py twice in one wave")
            except ValidationError as e:
                first_rejection = first_rejection or str(e)
                await self.reject(Rejection(str(e), draft.description, (draft.source or "")[:200]), draft)
                continue
            valid.append((draft, v))
        ledger_seen = await self.seen_by_ledger([v for _, v in valid])  # one round trip per wave
        fresh = [(d, v) for d, v in valid if v.sha256 not in ledger_seen and v.ast_sha256 not in ledger_seen]
        wave = self.wavebook.start(parent_id, batch.grids[0].description if batch.grids else "", factors) \
            if len(fresh) >= 2 else None  # fmt: skip
        vc = validate_class(cfg, self.tail)
        for draft, v in valid:
            if (draft, v) not in fresh:
                reason = "duplicate: the ledger says this train.py was already proposed"
                first_rejection = first_rejection or reason
                await self.reject(Rejection(reason, draft.description), draft)
                continue
            # validate-tier work goes to the validate class's work subject (runners of other classes refuse it)
            hw = vc if draft.tier == "validate" and vc else cfg.hw_class
            tags = [self.wavebook.tag(wave)] if wave is not None else []
            ev = self.proposed_event(draft.hypothesis_id, draft, v, parent_id, tags, hw, draft.tier)
            self.publish_hypothesis(ev)
            if wave is not None:
                self.wavebook.add(wave, ev)
            ids.append(ev.hypothesis_id)
        await self.flush()
        return ids, first_rejection

    def _report(self, r: WaveReport) -> None:
        if self.report is not None:
            self.report(r)
        else:
            log.info("%s", r.line())

    # -- results ------------------------------------------------------------------------------------

    async def wait_results(self, quorum: float | None = None) -> None:
        ids = set(self.outstanding)
        if not ids:
            return
        q = self.cfg.wave_quorum if quorum is None else quorum
        need = max(1, math.ceil(len(ids) * q))

        def enough() -> bool:
            if self.stop.is_set():
                return True
            done = len(ids & self.tail.finished.keys())
            # rolling waves (quorum < 1) also refill a runner that waits with nothing queued as soon as one
            # of ours finished: with many runners, waiting for a quorum left a third of the fleet idle
            return done >= need or (q < 1.0 and done > 0 and self.idle_runners() > 0)

        await self.tail.wait_until(enough, self.cfg.wave_timeout)

    def idle_runners(self) -> int:
        """Runners this agent sees online less the hypotheses (anyone's) not finished yet."""
        return len(self.tail.runners) - len(self.tail.unfinished)

    async def decide_finished(self) -> None:
        """Have the judge decide every own hypothesis that finished; summarise the wave for knob agents."""
        reply: ContextReply | None = None
        wave_results: list[Result] = []
        # best first: what a wave keeps is its best clear win, whatever order the proposer listed it in or the
        # runners finished it in (a weaker sibling kept first raised the bar, and the better one waited a wave
        # for its confirming run while the next wave was built on the weaker)
        def best_first(hid: str) -> tuple[bool, float]:
            v = self.tail.ok_val(hid)
            return v is None, v if v is not None else 0.0

        for hid in sorted((h for h in self.outstanding if h in self.tail.finished), key=best_first):
            self.outstanding.pop(hid)
            if self.audits.owns(hid):
                await self.audits.finished(hid)
                continue
            r = self.result_of(hid)
            wave_results.append(r)
            if r.status != "ok":
                self.crashes.append(r)
            if reply is None:
                reply = await self.context_reply()
            await self.judge.judge(hid, reply)
            for promoted in list(self.promotions.promoted):
                await self.promotions.after_decision(promoted)
        await self.flush()
        self.decided_results.extend(wave_results)
        analysed = False
        for _, note in self.wavebook.completed(lambda cls: self.judge.sigma_for_notes(cls)):
            if note is not None:
                analysed = True
                await self.note(note.title, note.body, list(note.refs))
        if wave_results and not self.proposer.writes_notes and not analysed:
            note = summary_note(self.cfg.agent, self.proposer.strategy, wave_results)
            if note is not None:
                await self.note(note.title, note.body, list(note.refs))

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> AgentStats:
        cfg = self.cfg
        await self.tail.start()
        poke = asyncio.create_task(self._poke_on_stop())
        try:
            await self.tail.wait_until(lambda: self.tail.caught_up.is_set() or self.stop.is_set(), 30.0)
            await self.emit(
                AgentJoined(
                    run=cfg.run, source=cfg.agent, agent=cfg.agent, provider=self.proposer.provider,
                    model=self.proposer.model, strategy=self.proposer.strategy, config=cfg.config_summary,
                )
            )  # fmt: skip
            empty = failures = 0
            while not self.stop.is_set():
                why = budget_left(cfg, self.tail, self.stats)
                if why:
                    self.stats.stopped_because = why
                    break
                try:
                    n = await self.wave()
                except (BusError, nats.errors.Error, TimeoutError) as e:
                    # the bus hiccuped (server restart, leader election): wait and try the wave again
                    failures += 1
                    if failures > cfg.max_bus_failures:
                        raise AgentError(f"{cfg.agent}: {failures} bus failures in a row, last: {e!r}") from e
                    log.warning("%s: wave failed on the bus (%r); retrying", cfg.agent, e)
                    await self.tail.wait_until(self.stop.is_set, min(30.0, 0.5 * 2**failures))
                    continue
                failures = 0
                empty = 0 if n else empty + 1
                if empty >= cfg.max_empty_waves and not self.outstanding and not self.stop.is_set():
                    self.stats.stopped_because = f"{empty} waves in a row published nothing"
                    break
                await self.wait_results()
                await self.decide_finished()
            if not self.stats.stopped_because:
                self.stats.stopped_because = "stopped"
            # what is still out when the budget is spent: wait for it (bounded), so decisions land
            if self.outstanding and not self.stop.is_set():
                await self.wait_results(quorum=1.0)
                await self.decide_finished()
            self.judge.give_up_unconfirmed()
            await self.flush()
        finally:
            poke.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poke
            try:
                await self.flush()
                await publish(
                    self.js, AgentLeft(run=cfg.run, source=cfg.agent, agent=cfg.agent, reason=self.left_reason())
                )
            finally:
                await self.tail.stop()
        return self.stats

    def left_reason(self) -> str:
        why = self.stats.stopped_because or "error"
        if self.stats.failed and self.stats.last_problem:
            why += f"; last problem: {self.stats.last_problem}"
        return why[:1000]

    async def _poke_on_stop(self) -> None:
        await self.stop.wait()
        await self.tail.poke()


async def run_agent(
    nc: NATS, config: AgentConfig, proposer: Proposer, *, stop: asyncio.Event, report: WaveReporter | None = None
) -> AgentStats:
    """Run one agent until ``stop`` is set or its budget (experiments, waves, dollars) is spent.

    Announces itself (AgentJoined), runs waves, and always says goodbye (AgentLeft). A stop cancels the
    model call in flight and publishes nothing of that wave. ``report`` gets one :class:`WaveReport` per
    wave (default: logged at INFO). The caller owns ``nc`` and ``proposer`` (``await proposer.aclose()``).
    """
    return await Agent(nc, config, proposer, stop, report).run()
