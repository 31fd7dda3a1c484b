"""The judge: keep, discard, or ask for a confirming repeat, for each finished hypothesis of one agent.

A result is compared with the lineage best on the class it ran on (never with less than the class's
baseline mean), against the σ of that class (:mod:`agents.policy`). An ambiguous improvement is re-run on
the validate tier (a ``repeat``) and decided on the mean of both runs; the repeat itself is recorded as
discarded ("decided there"). A result that finished before any baseline of its class waits for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from agents.config import AgentConfig
from agents.report import AgentStats
from agents.tail import RunTail
from bus.events import ContextReply, HypothesisDecided


class Judge:
    """Decisions of one agent. ``buffer`` queues an event for publishing; ``queue_baselines`` publishes
    the baselines of a class nobody has covered yet."""

    def __init__(
        self,
        cfg: AgentConfig,
        tail: RunTail,
        stop: asyncio.Event,
        stats: AgentStats,
        buffer: Callable[[Any], None],
        queue_baselines: Callable[[set[str]], Awaitable[None]],
    ) -> None:
        self.cfg, self.tail, self.stop, self.stats = cfg, tail, stop, stats
        self.buffer = buffer
        self.queue_baselines = queue_baselines
        self.to_repeat: list[str] = []  # original ids to re-run next wave
        self.repeats_of: dict[str, str] = {}  # repeat id -> original id

    # -- the numbers a decision needs ---------------------------------------------------------------

    def sigma_of(self, reply: ContextReply, cls: str, reference: float) -> float:
        """σ of ``cls``: the ledger's, else the one from the events, else the rule's fallback."""
        for s in reply.stats:
            if s.hw_class == cls:
                return self.cfg.rule.sigma(s.sigma, s.baseline_runs, reference)
        local = self.tail.baseline_stats().get(cls)
        if local is not None:
            return self.cfg.rule.sigma(local.sigma, local.baseline_runs, reference)
        return self.cfg.rule.sigma(None, 0, reference)

    def baseline_mean(self, cls: str, reply: ContextReply) -> float | None:
        for s in reply.stats:
            if s.hw_class == cls and s.baseline_mean is not None:
                return s.baseline_mean
        local = self.tail.baseline_stats().get(cls)
        return local.baseline_mean if local is not None else None

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

    # -- deciding -----------------------------------------------------------------------------------

    async def judge(self, hid: str, reply: ContextReply) -> None:
        """Decide a finished hypothesis of this agent (a repeat decides its original)."""
        if hid in self.repeats_of:
            orig = self.repeats_of.pop(hid)
            await self.decide(orig, reply, repeat=hid)
            self.record(hid, "discard", f"confirmation run of {orig} (decided there)", self.tail.finished[hid].val_bpb)
            return
        await self.decide(hid, reply)

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
            return
        self.record(hid, verdict, why, sum(values) / len(values) if values else None, ref, sigma)

    def record(
        self, hid: str, decision: str, reason: str, val: float | None,
        ref: float | None = None, sigma: float | None = None,
    ) -> None:  # fmt: skip
        """Queue the HypothesisDecided event (published with the next flush) and count it."""
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

    def give_up_unconfirmed(self) -> None:
        """End of the run: ambiguous improvements whose confirming repeat the budget no longer allows are
        not kept."""
        for orig in self.to_repeat:
            self.record(orig, "discard", "better but within the noise; no budget left for a confirming repeat",
                        self.tail.ok_val(orig))  # fmt: skip
        self.to_repeat.clear()
