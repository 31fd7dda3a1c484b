"""An agent's own view of one run's events: an ordered JetStream consumer over ``swarm.<run>.>``.

The ledger answers queries, but the stream is the truth and holds what a query reply leaves out: every
proposal's train.py (the source of any best), every result as it lands (so a wave waits on events, not on
polling), runners and their hardware classes (so baselines follow new classes). When the ledger does not
answer, :meth:`RunTail.local_context` builds the context from here.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js import api as jsapi

from agents.edits import SeenSet
from bus import subjects
from bus.client import retrying
from bus.events import (
    BASELINE_TAG,
    REPEAT_TAG,
    AgentJoined,
    AgentLeft,
    BestRow,
    ClassStats,
    ContextReply,
    EventDecodeError,
    ExperimentClaimed,
    ExperimentFinished,
    ExperimentRow,
    HypothesisDecided,
    HypothesisDemoted,
    HypothesisProposed,
    MemoryReply,
    MemoryRequest,
    NoteRow,
    NoteWritten,
    ProgramChanged,
    RunnerJoined,
    RunnerLeft,
    decode,
)
from bus.memory import DEMOTED, RERUN_TAGS, MemRow, build_memory
from bus.results import ResultFold, counts_on

log = logging.getLogger("swarm.agents.tail")


class RunTail:
    def __init__(self, js: JetStreamContext, run: str) -> None:
        self.js = js
        self.run = run
        self.proposals: dict[str, HypothesisProposed] = {}
        self.finished: dict[str, ExperimentFinished] = {}  # the result of each hypothesis (bus.results)
        self.unfinished: set[str] = set()  # proposed, no result yet (anyone's): the queue and the work in flight
        self.fold = ResultFold()
        self.decided: dict[str, HypothesisDecided] = {}
        self.demoted: dict[str, HypothesisDemoted] = {}
        self.claimed: dict[str, str] = {}  # hypothesis -> the runner of its latest claim
        self.repeats: dict[str, list[str]] = {}  # hypothesis -> its confirming repeats, in order
        self.runners: dict[str, RunnerJoined] = {}
        self.agents: dict[str, AgentJoined] = {}
        self.notes: list[NoteWritten] = []
        self.program_md: str | None = None
        self.seen = SeenSet()
        self.finish_order: list[str] = []
        self.caught_up = asyncio.Event()
        self._cond = asyncio.Condition()
        self._expected = 0
        self._count = 0
        self._sub: object | None = None

    async def start(self) -> None:
        """Subscribe from the first event of the run; ``caught_up`` is set once the backlog is read. Waits
        out a server pause (bus.client.retrying): an agent started while the server is away must not die."""
        info = await retrying(
            "reading the run's size",
            lambda: self.js.stream_info(subjects.STREAM, subjects_filter=subjects.run_all(self.run)),
        )
        self._expected = sum((info.state.subjects or {}).values())
        if self._expected == 0:
            self.caught_up.set()
        self._sub = await retrying("subscribing to the run", self._subscribe)

    async def _subscribe(self) -> object:
        return await self.js.subscribe(
            subjects.run_all(self.run),
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.ALL,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None

    async def _on_msg(self, msg: object) -> None:
        try:
            event = decode(msg.data)  # type: ignore[attr-defined]
        except EventDecodeError as e:
            log.warning("run %s: skipping an undecodable event: %s", self.run, e)
        else:
            if counts_on(event, msg.subject):  # type: ignore[attr-defined]
                self.apply(event)
            else:
                log.warning("run %s: skipping a %s on subject %s, where it does not belong", self.run,
                            type(event).__name__, msg.subject)  # type: ignore[attr-defined]
        self._count += 1
        if self._count >= self._expected:
            self.caught_up.set()
        async with self._cond:
            self._cond.notify_all()

    def apply(self, ev: object) -> None:
        match ev:
            case HypothesisProposed():
                if ev.hypothesis_id in self.proposals:
                    return
                self.proposals[ev.hypothesis_id] = ev
                if ev.hypothesis_id not in self.finished:
                    self.unfinished.add(ev.hypothesis_id)
                if REPEAT_TAG in ev.tags:
                    self.repeats.setdefault(ev.parent, []).append(ev.hypothesis_id)
                if BASELINE_TAG not in ev.tags and not any(t in ev.tags for t in RERUN_TAGS):
                    self.seen.add(ev.train_py_sha256, ev.ast_sha256)
            case ExperimentFinished():
                if self.fold.finish(ev) == "result":  # the one rule of what counts (bus.results)
                    self.finished[ev.hypothesis_id] = ev
                    self.unfinished.discard(ev.hypothesis_id)
                    self.finish_order.append(ev.hypothesis_id)
            case ExperimentClaimed():
                self.fold.claim(ev)
                self.claimed[ev.hypothesis_id] = ev.runner
            case HypothesisDecided():
                self.decided[ev.hypothesis_id] = ev
            case HypothesisDemoted():
                self.demoted[ev.hypothesis_id] = ev
            case RunnerJoined():
                self.runners[ev.runner] = ev
            case RunnerLeft():
                self.runners.pop(ev.runner, None)
            case AgentJoined():
                self.agents[ev.agent] = ev
            case AgentLeft():
                self.agents.pop(ev.agent, None)
            case NoteWritten():
                self.notes.append(ev)
            case ProgramChanged():
                self.program_md = ev.program_md

    async def poke(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``pred()`` holds (re-checked after every event or :meth:`poke`); False on timeout."""
        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(pred), timeout)
        except TimeoutError:
            return pred()
        return True

    # ----------------------------------------------------------------------------------------------
    # derived views

    def hw_classes(self) -> set[str]:
        return {r.hardware.hw_class for r in self.runners.values() if r.hardware.hw_class}

    def ran_on(self, hypothesis_id: str) -> str:
        f = self.finished.get(hypothesis_id)
        if f is not None and f.hw_class:
            return f.hw_class
        p = self.proposals.get(hypothesis_id)
        return p.hw_class if p is not None else ""

    def repeats_of(self, hypothesis_id: str) -> list[str]:
        """The confirming repeats of a hypothesis (REPEAT_TAG, parent = it), in the order proposed."""
        return self.repeats.get(hypothesis_id, [])

    def kept(self, hypothesis_id: str) -> bool:
        """Decided keep and not demoted by an audit since."""
        d = self.decided.get(hypothesis_id)
        return d is not None and d.decision == "keep" and hypothesis_id not in self.demoted

    def ok_val(self, hypothesis_id: str) -> float | None:
        f = self.finished.get(hypothesis_id)
        return f.val_bpb if f is not None and f.status == "ok" else None

    def baseline_stats(self) -> dict[str, ClassStats]:
        vals: dict[str, list[float]] = {}
        for hid, p in self.proposals.items():
            v = self.ok_val(hid)
            if BASELINE_TAG in p.tags and v is not None:
                vals.setdefault(self.ran_on(hid), []).append(v)
        online: dict[str, int] = {}
        for r in self.runners.values():
            online[r.hardware.hw_class] = online.get(r.hardware.hw_class, 0) + 1
        out = {}
        for cls in set(vals) | set(online):
            vs = vals.get(cls, [])
            out[cls] = ClassStats(
                hw_class=cls,
                baseline_runs=len(vs),
                baseline_mean=statistics.fmean(vs) if vs else None,
                sigma=statistics.stdev(vs) if len(vs) >= 2 else None,
                runners_online=online.get(cls, 0),
            )
        return out

    def row(self, hid: str) -> ExperimentRow:
        p = self.proposals.get(hid)
        f = self.finished.get(hid)
        d = self.decided.get(hid)
        return ExperimentRow(
            hypothesis_id=hid,
            agent=p.agent if p else "",
            model=p.model if p else "",
            parent=p.parent if p else "",
            description=p.description if p else "",
            tier=p.tier if p else "screen",
            hw_class=p.hw_class if p else "",
            proposed_ts=p.ts if p else 0.0,
            status=f.status if f else None,
            val_bpb=f.val_bpb if f else None,
            finished_ts=f.ts if f else None,
            runner=f.runner if f else None,
            ran_on=f.hw_class if f else None,
            attempt=f.attempt if f else None,
            reason=f.reason if f else "",
            log_tail=f.log_tail if f else "",
            decision=d.decision if d else None,
            train_py_sha256=p.train_py_sha256 if p else "",
            tags=list(p.tags) if p else [],
            knobs=dict(p.knobs) if p else {},
        )

    def best(self) -> dict[str, tuple[float, str]]:
        """hw class -> (best ok val_bpb, hypothesis id)."""
        best: dict[str, tuple[float, str]] = {}
        for hid in self.finish_order:
            v = self.ok_val(hid)
            if v is None or hid not in self.proposals:
                continue
            cls = self.ran_on(hid)
            if cls not in best or v < best[cls][0]:
                best[cls] = (v, hid)
        return best

    def local_context(self, agent: str, *, recent_limit: int = 30, notes_since_ts: float = 0.0) -> ContextReply:
        """The ContextReply the ledger would give, computed from the events (fallback when it is silent)."""
        best = [
            BestRow(
                hw_class=cls,
                val_bpb=v,
                hypothesis_id=hid,
                agent=self.proposals[hid].agent,
                description=self.proposals[hid].description,
                finished_ts=self.finished[hid].ts,
            )
            for cls, (v, hid) in sorted(self.best().items())
        ]
        recent = [self.row(h) for h in reversed(self.finish_order[-recent_limit:]) if h in self.proposals]
        lineage = [
            self.row(h)
            for h, d in self.decided.items()
            if d.decision == "keep" and h in self.proposals and self.proposals[h].agent == agent
        ]
        notes = [
            NoteRow(note_id=n.note_id, agent=n.agent, title=n.title, body=n.body, refs=list(n.refs), ts=n.ts)
            for n in self.notes
            if n.ts > notes_since_ts
        ]
        pending = len(self.unfinished)
        return ContextReply(
            best=best,
            recent=recent,
            lineage=lineage,
            notes=notes,
            stats=sorted(self.baseline_stats().values(), key=lambda s: s.hw_class),
            program_md=self.program_md,
            pending=pending,
            runners_online=len(self.runners),
        )

    def memory_rows(self) -> list[MemRow]:
        """Every hypothesis as :mod:`bus.memory` reads it."""
        rows = []
        order = {h: i for i, h in enumerate(self.finish_order)}
        for hid, p in self.proposals.items():
            f = self.finished.get(hid)
            d = self.decided.get(hid)
            decision = DEMOTED if hid in self.demoted else (d.decision if d else None)
            rows.append(MemRow(
                hypothesis_id=hid, agent=p.agent, parent=p.parent, description=p.description, tags=p.tags,
                knobs=p.knobs, hw_class=p.hw_class, tier=p.tier, seed=p.seed, proposed_ts=p.ts,
                status=f.status if f else None, val_bpb=f.val_bpb if f else None,
                ran_on=self.ran_on(hid) if f else "", decision=decision,
                runner=f.runner if f else self.claimed.get(hid, ""), order=float(order.get(hid, 0)), diff=p.diff,
            ))  # fmt: skip
        return rows

    def local_memory(self, req: MemoryRequest, window: int = 5_000) -> MemoryReply:
        """The MemoryReply the ledger would give, from the events (fallback when it is silent): every kept,
        in-flight and baseline hypothesis and the latest ``window`` finished ones, as the ledger reads."""
        recent = set(self.finish_order[-window:])
        rows = [r for r in self.memory_rows() if r.status is None or r.decision not in (None, "discard")
                or BASELINE_TAG in r.tags or r.hypothesis_id in recent]  # fmt: skip
        notes = [NoteRow(note_id=n.note_id, agent=n.agent, title=n.title, body=n.body, refs=list(n.refs), ts=n.ts)
                 for n in self.notes]  # fmt: skip
        return build_memory(rows, notes, req)
