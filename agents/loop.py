"""The research loop of one agent: read the context, propose a wave, validate, publish, wait for results,
decide keep/discard against the noise of the hardware class, write a note, repeat.

``run_agent(nc, config, proposer, stop=...)`` is the whole agent; ``ensure_baselines`` publishes the
unmodified train.py R times per hardware class (idempotent across agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.breaker import CircuitBreaker
from agents.edits import Validated, apply_edits, ast_sha256, sha256, unified_diff, validate_source
from agents.errors import AgentError, ValidationError
from agents.knobs import knob_values
from agents.policy import DecisionRule
from agents.pricing import format_usd
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
from agents.tail import BASELINE_TAG, RunTail
from bus import BusError, publish, publish_many, subjects
from bus.events import (
    BASELINE,
    AgentJoined,
    AgentLeft,
    ContextReply,
    ContextRequest,
    HypothesisDecided,
    HypothesisProposed,
    LlmUsage,
    NoteWritten,
    ProposalRejected,
    SeenReply,
    SeenRequest,
    encode,
    encode_msg,
    new_event_id,
    reply_decoder,
)

log = logging.getLogger("swarm.agents.loop")

REPEAT_TAG = "repeat"


@dataclass
class AgentConfig:
    """One agent. ``base_train_py`` is the unmodified train.py (baselines and the first parent)."""

    run: str
    agent: str
    base_train_py: str
    program_md: str = ""  # the default direction; a ProgramChanged event overrides it
    hw_class: str = "any"  # hardware request of screen-tier proposals
    validate_class: str | None = None  # class of validate-tier repeats; None: the class it ran on
    max_wave: int = 16
    max_experiments: int | None = None
    max_waves: int | None = None
    max_cost_usd: float | None = None
    # fair share: stop when the GPU-seconds of this agent's results (plus what it has in flight, at its
    # mean duration) reach this; give every agent the same figure to give each the same compute
    max_gpu_seconds: float | None = None
    isolated: bool = False  # see only its own results and the baselines (no other agent's work)
    max_empty_waves: int = 5  # consecutive waves with nothing published before giving up
    max_bus_failures: int = 8  # consecutive waves that failed on the bus before giving up
    wave_timeout: float = 3600.0  # longest wait for one wave's results
    wave_llm_seconds: float = 900.0  # longest the proposer may take for one wave (every call and retry)
    # circuit breaker of the model server: after this many waves in a row whose LLM calls all failed,
    # pause breaker_cooldown seconds (doubled per trip, at most breaker_max_cooldown)
    breaker_failures: int = 3
    breaker_cooldown: float = 15.0
    breaker_max_cooldown: float = 300.0
    # fraction of the outstanding hypotheses that must finish before the next wave: 1.0 waits for the whole
    # wave (an LLM reads a factorial grid at once); 0.5 keeps runners busy (rolling waves, knob proposers)
    wave_quorum: float = 1.0
    request_timeout: float = 5.0  # ledger read API
    rule: DecisionRule = field(default_factory=DecisionRule)
    baselines: bool = True
    baseline_repeats: int = 3
    budget_seconds: float | None = None
    seed: int = 0
    write_notes: bool = True
    follow_global_best: bool = True  # build on the best of the class, whoever found it
    config_summary: dict[str, Any] = field(default_factory=dict)  # for AgentJoined (never secrets)


@dataclass
class AgentStats:
    """What one agent did in its run; ``stopped_because`` says why it ended ("stopped": asked to)."""

    agent: str = ""
    waves: int = 0
    proposed: int = 0  # hypotheses it published (repeats included)
    rejected: int = 0
    kept: int = 0
    discarded: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0
    llm_errors: int = 0
    stopped_because: str = ""
    last_problem: str = ""  # the latest rejection or LLM error, in one line

    @property
    def stopped_by_user(self) -> bool:
        return self.stopped_because == "stopped"

    @property
    def failed(self) -> bool:
        """It ended by itself without publishing anything: its run achieved nothing."""
        return self.proposed == 0 and not self.stopped_by_user

    def summary(self) -> str:
        """One line for people: what it did, what it cost, why it stopped (and what went wrong)."""
        llm = f", LLM calls {self.llm_calls} ({self.llm_errors} failed)" if self.llm_calls else ""
        line = (
            f"{self.agent}: {self.waves} waves, proposed {self.proposed}, rejected {self.rejected}, kept "
            f"{self.kept}, discarded {self.discarded}{llm}, cost {format_usd(self.cost_usd)}; "
            f"{self.stopped_because or 'running'}"
        )
        if self.proposed == 0 and self.last_problem:
            line += f"; last problem: {self.last_problem}"
        return line


def _one_line(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text[:n] + ("…" if len(text) > n else "")


@dataclass(frozen=True)
class WaveReport:
    """What one wave did, for the line an agent prints per wave."""

    agent: str
    wave: int
    proposed: int = 0
    repeats: int = 0
    rejected: int = 0
    first_rejection: str = ""
    llm_calls: int = 0
    llm_errors: tuple[str, ...] = ()
    cost_usd: float = 0.0
    paused: float | None = None  # the circuit breaker opened: seconds of pause
    stopped: bool = False  # a stop came during the wave: nothing of it was published

    def line(self) -> str:
        parts = [f"proposed {self.proposed}" + (f" (+{self.repeats} repeats)" if self.repeats else "")]
        if self.rejected:
            parts.append(f"rejected {self.rejected} (first: {_one_line(self.first_rejection, 160)})")
        if self.llm_errors:
            parts.append(f"LLM error: {_one_line(self.llm_errors[-1], 300)}")
        if self.cost_usd:
            parts.append(f"cost {format_usd(self.cost_usd)}")
        if self.paused is not None:
            parts.append(f"circuit open (the model server keeps failing): pausing {self.paused:.0f} s")
        if self.stopped:
            parts.append("stopped during the wave: nothing published")
        return f"{self.agent}: wave {self.wave}: " + "; ".join(parts)


WaveReporter = Callable[[WaveReport], None]


# --------------------------------------------------------------------------------------------------
# baselines


def baseline_id(hw_class: str, i: int) -> str:
    return f"baseline-{hw_class}-{i}"


async def ensure_baselines(
    js: JetStreamContext,
    run: str,
    source: str,
    classes: set[str],
    base_train_py: str,
    *,
    known: set[str] | None = None,
    repeats: int = 3,
) -> list[str]:
    """Publish the unmodified train.py ``repeats`` times on every class in ``classes`` that lacks them.

    Idempotent across agents: ids are deterministic (``baseline-<class>-<i>``), ids already in ``known``
    (the proposals read from the stream) are skipped, and the publish carries ``Nats-Msg-Id`` derived from
    the id, so two agents racing within the dedup window store one copy. Every id it publishes (stored or
    found a duplicate) is added to ``known``. Returns the ids this call stored.
    """
    published = []
    sha, ast_sha = sha256(base_train_py), ast_sha256(base_train_py)
    knobs = knob_values(base_train_py)
    for cls in sorted(classes):
        for i in range(repeats):
            hid = baseline_id(cls, i)
            if known is not None and hid in known:
                continue
            ev = HypothesisProposed(
                run=run,
                source=source,
                hypothesis_id=hid,
                agent=BASELINE,
                train_py=base_train_py,
                train_py_sha256=sha,
                ast_sha256=ast_sha,
                parent=BASELINE,
                description=f"baseline: unmodified train.py, run {i + 1}/{repeats} on {cls}",
                tier="validate",
                hw_class=cls,
                seed=i,
                tags=[BASELINE_TAG],
                knobs=knobs,
            )
            ack = await js.publish(
                subjects.event_subject(ev),
                encode(ev),
                stream=subjects.STREAM,
                headers={"Nats-Msg-Id": f"{run}.{hid}"},
            )
            if not ack.duplicate:
                published.append(hid)
            if known is not None:
                known.add(hid)
    return published


# --------------------------------------------------------------------------------------------------
# the loop


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
        self.stats = AgentStats(agent=config.agent)
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown, config.breaker_max_cooldown)
        self.outstanding: dict[str, HypothesisProposed] = {}  # own, not decided yet
        self.repeats_of: dict[str, str] = {}  # repeat id -> original id
        self.awaiting_repeat: set[str] = set()  # original ids waiting for their repeat
        self.to_repeat: list[str] = []  # original ids to re-run next wave
        self.rejections: list[Rejection] = []
        self.crashes: list[Result] = []
        self.decided_results: list[Result] = []
        self.observed: set[str] = set()
        self.notes_since = 0.0
        self.program_md = config.program_md
        self.baselines_known: set[str] = set()
        self._buffer: list[Any] = []

    # -- bus helpers --------------------------------------------------------------------------------

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

    async def request(self, op: str, req: Any) -> Any | None:
        try:
            msg = await self.nc.request(
                subjects.api(self.cfg.run, op), encode_msg(req), timeout=self.cfg.request_timeout
            )
            return reply_decoder.decode(msg.data)
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            msgspec.DecodeError,
            TimeoutError,
        ) as e:
            log.info(
                "%s: ledger %s request failed (%s); using the local view",
                self.cfg.agent,
                op,
                type(e).__name__,
            )
            return None

    async def context_reply(self) -> ContextReply:
        req = ContextRequest(run=self.cfg.run, agent=self.cfg.agent, notes_since_ts=self.notes_since)
        reply = await self.request("context", req)
        if isinstance(reply, ContextReply):
            return reply
        return self.tail.local_context(self.cfg.agent, notes_since_ts=self.notes_since)

    async def seen_by_ledger(self, vs: list[Validated]) -> set[str]:
        """Which of these hashes the ledger has seen (empty when it does not answer: the local view,
        read from the same stream, already checked them)."""
        if not vs:
            return set()
        hashes = [h for v in vs for h in (v.sha256, v.ast_sha256)]
        reply = await self.request("seen", SeenRequest(run=self.cfg.run, sha256s=hashes))
        return set(reply.seen) if isinstance(reply, SeenReply) else set()

    # -- one wave -----------------------------------------------------------------------------------

    def wave_size(self, reply: ContextReply) -> int:
        # the ledger's projection can lag the stream by a batch; the local view is current, so take the
        # larger of each (more runners seen, more work pending)
        local_pending = sum(1 for h in self.tail.proposals if h not in self.tail.finished)
        runners = max(reply.runners_online, len(self.tail.runners))
        pending = max(reply.pending, local_pending)
        free = runners - pending
        agents = max(1, len(self.tail.agents))
        k = max(1, math.ceil(free / agents)) if free > 0 else 1
        k = min(k, self.cfg.max_wave)
        log.info("%s: wave %d: %d runners, %d pending, %d agents -> k=%d", self.cfg.agent, self.stats.waves + 1,
                 runners, pending, agents, k)  # fmt: skip
        if self.cfg.max_experiments is not None:
            k = min(k, self.cfg.max_experiments - self.stats.proposed)
        if self.cfg.max_gpu_seconds is not None:
            used, in_flight, mean = self.gpu_seconds()
            k = (
                min(k, math.floor((self.cfg.max_gpu_seconds - used) / mean) - in_flight)
                if mean
                else min(k, 1)
            )
        return max(0, k)

    def gpu_seconds(self) -> tuple[float, int, float]:
        """(GPU-seconds of this agent's finished results, its hypotheses in flight, mean seconds per result)."""
        own = [h for h, p in self.tail.proposals.items() if p.agent == self.cfg.agent]
        done = [self.tail.finished[h].total_seconds for h in own if h in self.tail.finished]
        used = sum(done)
        return used, len(own) - len(done), (used / len(done) if done else 0.0)

    def sees(self, agent: str) -> bool:
        """Whether this agent may see results of ``agent`` (isolated agents see themselves and baselines)."""
        return not self.cfg.isolated or agent in (self.cfg.agent, BASELINE)

    def sigma_of(self, reply: ContextReply, cls: str, reference: float) -> float:
        for s in reply.stats:
            if s.hw_class == cls:
                return self.cfg.rule.sigma(s.sigma, s.baseline_runs, reference)
        local = self.tail.baseline_stats().get(cls)
        if local is not None:
            return self.cfg.rule.sigma(local.sigma, local.baseline_runs, reference)
        return self.cfg.rule.sigma(None, 0, reference)

    def parent(self) -> tuple[str, str, float | None]:
        """(id, source, val_bpb) to build on: the best kept on the requested class (own lineage, or anyone's
        when ``follow_global_best``), else the unmodified train.py."""
        candidates: list[tuple[float, str]] = []
        for hid, d in self.tail.decided.items():
            p = self.tail.proposals.get(hid)
            v = self.tail.ok_val(hid)
            if d.decision != "keep" or p is None or v is None:
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

    def reference(self, hid: str, cls: str, reply: ContextReply) -> float | None:
        """The lineage best on ``cls`` at the time of deciding: the parent and own kept hypotheses."""
        vals = []
        p = self.tail.proposals[hid]
        for cand, d in [(p.parent, None), *[(h, d) for h, d in self.tail.decided.items()]]:
            if cand == hid or cand not in self.tail.proposals:
                continue
            if d is not None and (d.decision != "keep" or self.tail.proposals[cand].agent != self.cfg.agent):
                continue
            v = self.tail.ok_val(cand)
            if v is not None and self.tail.ran_on(cand) == cls:
                vals.append(v)
        # never compare against less than the unmodified train.py: a kept hypothesis worse than the
        # baseline (kept before the baselines finished) must not lower the bar
        base = self.baseline_mean(cls, reply)
        if base is not None:
            vals.append(base)
        return min(vals) if vals else None

    def baseline_mean(self, cls: str, reply: ContextReply) -> float | None:
        for s in reply.stats:
            if s.hw_class == cls and s.baseline_mean is not None:
                return s.baseline_mean
        local = self.tail.baseline_stats().get(cls)
        return local.baseline_mean if local is not None else None

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

    async def publish_calls(self, batch: ProposalBatch, ids: list[str]) -> None:
        for c in batch.calls:
            self.stats.cost_usd += c.cost_usd
            self.stats.llm_calls += 1
            self.stats.llm_errors += 0 if c.ok else 1
            if not c.ok:
                self.stats.last_problem = f"LLM error: {_one_line(c.error, 300)}"
            await self.emit(
                LlmUsage(
                    run=self.cfg.run,
                    source=self.cfg.agent,
                    agent=self.cfg.agent,
                    provider=c.provider,
                    model=c.model,
                    input_tokens=c.input_tokens,
                    output_tokens=c.output_tokens,
                    cost_usd=c.cost_usd,
                    latency_seconds=c.latency_seconds,
                    ok=c.ok,
                    error=c.error,
                    hypothesis_ids=ids,
                )
            )

    async def reject(self, rej: Rejection, draft: ProposalDraft | None = None) -> None:
        self.stats.rejected += 1
        self.stats.last_problem = f"rejected: {_one_line(rej.reason, 300)}"
        self.rejections.append(rej)
        await self.emit(
            ProposalRejected(
                run=self.cfg.run,
                source=self.cfg.agent,
                agent=self.cfg.agent,
                reason=rej.reason[:2000],
                description=rej.description[:500],
                excerpt=rej.excerpt[:1000],
            )
        )
        if draft is not None:
            await self.proposer.observe(
                [
                    Result(
                        draft.hypothesis_id,
                        self.cfg.agent,
                        "rejected",
                        knobs=draft.knobs,
                        own=True,
                        reason=rej.reason,
                    )
                ]
            )

    def validate(self, draft: ProposalDraft, parent_source: str) -> Validated:
        if draft.source is not None:
            source = draft.source
        elif draft.edits is not None:
            source = apply_edits(parent_source, draft.edits)
        else:
            raise ValidationError("a proposal needs edits")
        v = validate_source(source, parent_source)
        self.tail.seen.check(v)
        return v

    def proposed_event(self, hid: str, draft: ProposalDraft, v: Validated, parent: str, tags: list[str],
                       hw_class: str, tier: str) -> HypothesisProposed:  # fmt: skip
        knobs = draft.knobs
        try:
            knobs = knob_values(v.source)
        except ValidationError:
            pass
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
            seed=self.cfg.seed * 100_003 + self.stats.proposed,
            budget_seconds=self.cfg.budget_seconds,
            tags=tags,
            knobs=knobs,
        )

    async def publish_hypothesis(self, ev: HypothesisProposed) -> None:
        self.buffer(ev)  # flushed at the end of the wave
        self.outstanding[ev.hypothesis_id] = ev
        self.stats.proposed += 1

    async def publish_repeats(self, k: int) -> int:
        n = 0
        while self.to_repeat and n < k:
            orig = self.to_repeat.pop(0)
            p = self.tail.proposals[orig]
            cls = self.cfg.validate_class or self.tail.ran_on(orig) or p.hw_class
            hid = str(uuid.uuid4())
            v = Validated(p.train_py, p.train_py_sha256, p.ast_sha256, unified_diff(p.train_py, p.train_py))
            draft = ProposalDraft(
                description=f"repeat of {orig[:8]}: {p.description}"[:500], rationale="confirm"
            )
            ev = self.proposed_event(hid, draft, v, orig, [REPEAT_TAG], cls, "validate")
            self.repeats_of[hid] = orig
            await self.publish_hypothesis(ev)
            n += 1
        return n

    async def queue_baselines(self, classes: set[str]) -> None:
        """Publish the baselines of ``classes`` that nobody has published yet (idempotent)."""
        cfg = self.cfg
        self.baselines_known.update(h for h, p in self.tail.proposals.items() if BASELINE_TAG in p.tags)
        await ensure_baselines(
            self.js, cfg.run, cfg.agent, classes, cfg.base_train_py,
            known=self.baselines_known, repeats=cfg.baseline_repeats,
        )  # fmt: skip

    async def wave(self) -> int:
        """One wave; returns how many hypotheses it published."""
        cfg = self.cfg
        if self.stop.is_set():
            return 0
        if cfg.baselines:
            await self.queue_baselines(self.tail.hw_classes())
        reply = await self.context_reply()
        self.program_md = reply.program_md or self.tail.program_md or self.program_md
        self.notes_since = max([self.notes_since, *(n.ts for n in reply.notes)])
        await self.observe_new()
        k = self.wave_size(reply)
        if k <= 0 or self.stop.is_set():
            return 0
        self.stats.waves += 1
        published = await self.publish_repeats(k)
        await self.flush()  # repeats were decided before this wave: out before the model is asked
        k -= published
        if k <= 0:
            self._report(WaveReport(cfg.agent, self.stats.waves, repeats=published))
            return published
        if cfg.isolated:
            reply = msgspec.structs.replace(
                reply,
                best=[b for b in reply.best if self.sees(b.agent)],
                recent=[r for r in reply.recent if self.sees(r.agent)],
                notes=[n for n in reply.notes if n.agent == cfg.agent],
            )
        parent_id, parent_source, parent_val = self.parent()
        sigma = {s.hw_class: self.sigma_of(reply, s.hw_class, s.baseline_mean or 1.0) for s in reply.stats}
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
            sigma=sigma,
            seen=self.tail.seen,
            deadline=time.monotonic() + cfg.wave_llm_seconds,
        )
        self.rejections, self.crashes, self.decided_results = [], [], []
        t_propose = time.monotonic()
        batch = await self.propose(ctx, k)
        if batch is None:  # stopped while the model was thinking: publish nothing of this wave
            self._report(WaveReport(cfg.agent, self.stats.waves, repeats=published, stopped=True))
            return published
        t_publish = time.monotonic()
        ids: list[str] = []
        rejected_before = self.stats.rejected
        first_rejection = ""
        for rej in batch.rejections:
            first_rejection = first_rejection or rej.reason
            await self.reject(rej)
        valid: list[tuple[ProposalDraft, Validated]] = []
        for draft in batch.proposals:
            if len(valid) >= k:
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
        for draft, v in valid:
            if v.sha256 in ledger_seen or v.ast_sha256 in ledger_seen:
                reason = "duplicate: the ledger says this train.py was already proposed"
                first_rejection = first_rejection or reason
                await self.reject(Rejection(reason, draft.description), draft)
                continue
            hw = cfg.validate_class if draft.tier == "validate" and cfg.validate_class else cfg.hw_class
            ev = self.proposed_event(draft.hypothesis_id, draft, v, parent_id, [], hw, draft.tier)
            await self.publish_hypothesis(ev)
            ids.append(ev.hypothesis_id)
        await self.flush()
        log.debug("%s: wave %d: proposed %d in %.2fs, published in %.2fs", cfg.agent, self.stats.waves, len(ids),
                  t_publish - t_propose, time.monotonic() - t_publish)  # fmt: skip
        await self.publish_calls(batch, ids)
        for note in batch.notes:
            await self.note(note.title, note.body, list(note.refs))
        failed = [c.error for c in batch.calls if not c.ok]
        pause = self.breaker.record(len(batch.calls), len(failed))
        self._report(
            WaveReport(
                cfg.agent, self.stats.waves, proposed=len(ids), repeats=published,
                rejected=self.stats.rejected - rejected_before, first_rejection=first_rejection,
                llm_calls=len(batch.calls), llm_errors=tuple(failed), cost_usd=sum(c.cost_usd for c in batch.calls),
                paused=pause,
            )
        )  # fmt: skip
        if pause is not None:
            await self.tail.wait_until(self.stop.is_set, pause)
        return published + len(ids)

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

    def _report(self, r: WaveReport) -> None:
        if self.report is not None:
            self.report(r)
        else:
            log.info("%s", r.line())

    async def note(self, title: str, body: str, refs: list[str]) -> None:
        if not self.cfg.write_notes:
            return
        await self.emit(
            NoteWritten(
                run=self.cfg.run, source=self.cfg.agent, note_id=new_event_id(), agent=self.cfg.agent,
                title=title, body=body, refs=refs,
            )
        )  # fmt: skip

    async def wait_results(self, quorum: float | None = None) -> None:
        ids = set(self.outstanding)
        if not ids:
            return
        need = max(1, math.ceil(len(ids) * (self.cfg.wave_quorum if quorum is None else quorum)))

        def enough() -> bool:
            return self.stop.is_set() or len(ids & self.tail.finished.keys()) >= need

        await self.tail.wait_until(enough, self.cfg.wave_timeout)

    async def decide_finished(self) -> None:
        reply: ContextReply | None = None
        done = [h for h in list(self.outstanding) if h in self.tail.finished]
        wave_results: list[Result] = []
        for hid in done:
            self.outstanding.pop(hid)
            r = self.result_of(hid)
            wave_results.append(r)
            if r.status != "ok":
                self.crashes.append(r)
            if hid in self.repeats_of:
                orig = self.repeats_of.pop(hid)
                self.awaiting_repeat.discard(orig)
                if reply is None:
                    reply = await self.context_reply()
                await self.decide(orig, reply, repeat=hid)
                await self.publish_decision(
                    hid, "discard", f"confirmation run of {orig} (decided there)", r.val_bpb
                )
                continue
            if reply is None:
                reply = await self.context_reply()
            await self.decide(hid, reply)
        await self.flush()
        self.decided_results.extend(wave_results)
        if wave_results and not self.proposer.writes_notes:
            note = summary_note(self.cfg.agent, self.proposer.strategy, wave_results)
            if note is not None:
                await self.note(note.title, note.body, list(note.refs))

    async def decide(self, hid: str, reply: ContextReply, repeat: str | None = None) -> None:
        cls = self.tail.ran_on(hid)
        values = [
            v for v in (self.tail.ok_val(hid), self.tail.ok_val(repeat) if repeat else None) if v is not None
        ]
        if repeat is not None and self.tail.ok_val(repeat) is None:
            values = []  # the confirmation failed
        if values and self.cfg.baselines and self.baseline_mean(cls, reply) is None:
            # a result that finished before any baseline of its class: wait for one rather than keep
            # whatever came first (bounded). The class may be new (its runner joined after this wave
            # began), so queue its baselines first.
            await self.queue_baselines({cls})
            await self.tail.wait_until(
                lambda: self.baseline_mean(cls, reply) is not None or self.stop.is_set(),
                self.cfg.wave_timeout,
            )
        ref = self.reference(hid, cls, reply)
        sigma = self.sigma_of(reply, cls, ref if ref is not None else (values[0] if values else 1.0))
        f = self.tail.finished[hid]
        if f.status != "ok" or not values:
            verdict, why = "discard", f"{f.status}: {f.reason or 'no val_bpb'}"[:500]
        else:
            verdict, why = self.cfg.rule.decide(values, ref, sigma)
        if verdict == "confirm":
            self.to_repeat.append(hid)
            self.awaiting_repeat.add(hid)
            return
        await self.publish_decision(
            hid, verdict, why, sum(values) / len(values) if values else None, ref, sigma
        )

    async def publish_decision(
        self, hid: str, decision: str, reason: str, val: float | None,
        ref: float | None = None, sigma: float | None = None,
    ) -> None:  # fmt: skip
        if decision == "keep":
            self.stats.kept += 1
        else:
            self.stats.discarded += 1
        self.buffer(
            HypothesisDecided(
                run=self.cfg.run, source=self.cfg.agent, hypothesis_id=hid,
                decision="keep" if decision == "keep" else "discard", by=self.cfg.agent, reason=reason,
                val_bpb=val, reference_val_bpb=ref, sigma=sigma,
            )
        )  # fmt: skip

    def budget_left(self) -> str | None:
        cfg = self.cfg
        if cfg.max_experiments is not None and self.stats.proposed >= cfg.max_experiments:
            return "max_experiments reached"
        if cfg.max_waves is not None and self.stats.waves >= cfg.max_waves:
            return "max_waves reached"
        if cfg.max_cost_usd is not None and self.stats.cost_usd >= cfg.max_cost_usd:
            return "max_cost_usd reached"
        if cfg.max_gpu_seconds is not None:
            used, in_flight, mean = self.gpu_seconds()
            if used + in_flight * mean >= cfg.max_gpu_seconds:
                return "max_gpu_seconds reached"
        return None

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
                why = self.budget_left()
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
            # ambiguous ones whose confirming repeat the budget no longer allows: not kept
            for orig in self.to_repeat:
                self.awaiting_repeat.discard(orig)
                await self.publish_decision(
                    orig, "discard", "better but within the noise; no budget left for a confirming repeat",
                    self.tail.ok_val(orig),
                )  # fmt: skip
            self.to_repeat.clear()
            await self.flush()
        finally:
            poke.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poke
            try:
                await self.flush()
                await publish(
                    self.js,
                    AgentLeft(
                        run=cfg.run,
                        source=cfg.agent,
                        agent=cfg.agent,
                        reason=self.left_reason(),
                    ),
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
