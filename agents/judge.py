"""The judge: keep, discard, or ask for a confirming repeat, for each finished hypothesis of one agent.

Two rules, chosen by the budget the result ran under (the runner records its unit):

* **tokens** (a run is deterministic per seed): paired comparisons (:mod:`agents.paired`). The candidate
  ran on its reference's first seed; Δ against the reference on the same seeds; an improvement is
  confirmed on another seed the reference has, and kept when the mean paired Δ beats k·σ_Δ/√n.
* **seconds** (wall clock: not deterministic): the σ-of-baselines rule (:mod:`agents.policy`). A result is
  compared with the lineage best on the class it ran on (never with less than the class's baseline mean),
  against the σ of that class's repeated baselines; an ambiguous improvement is repeated and decided on
  the mean.

Confirming repeats run on the class the original ran on (a paired difference only means something on one
class); each is recorded as discarded ("decided there"). A result that finished before the baseline run
it is compared with waits for it (bounded).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents.config import AgentConfig
from agents.paired import (
    first_seed,
    is_deterministic,
    ok_runs,
    paired_deltas,
    planned_seeds,
    pooled_within,
    seed_runs,
    standing,
)
from agents.report import AgentStats
from agents.tail import RunTail
from agents.waves import WAVE_TAG
from bus.events import BASELINE, PROMOTION_TAG, ContextReply, HypothesisDecided


@dataclass(frozen=True)
class Confirm:
    """A confirming re-run the judge asks for: ``original`` again on ``seed``, on class ``hw_class``."""

    original: str
    seed: int
    hw_class: str
    remeasure: bool = False  # of a result already kept: its standing becomes the mean, nothing is re-decided


def wave_width(tail: RunTail, hid: str) -> int:
    """How many hypotheses were published in the wave ``hid`` belongs to (1 when it had no wave tag)."""
    tags = [t for t in tail.proposals[hid].tags if t.startswith(WAVE_TAG)]
    if not tags:
        return 1
    return sum(1 for p in tail.proposals.values() if tags[0] in p.tags)


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
        self.to_repeat: list[Confirm] = []  # re-runs to publish next wave
        self.confirming: dict[str, Confirm] = {}  # repeat id -> the re-run it is
        self.reference_of: dict[str, str] = {}  # own hypothesis -> the reference it was paired with
        self.on_kept: Callable[[str, float, float], None] | None = None  # (id, margin won by, σ): promotion

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

    def baseline_sigma(self, cls: str, reply: ContextReply) -> float | None:
        """The σ across seeds of the class's baselines (None from fewer than two)."""
        for s in reply.stats:
            if s.hw_class == cls and s.sigma is not None and s.baseline_runs >= 2:
                return s.sigma
        local = self.tail.baseline_stats().get(cls)
        return local.sigma if local is not None and local.baseline_runs >= 2 else None

    def delta_sigma(self, cls: str) -> float:
        """σ of the difference of two runs on ``cls`` on one seed: σ_Δ on a deterministic budget, else √2 ×
        the σ of the class's baselines (two independent noisy runs)."""
        local = self.tail.baseline_stats().get(cls)
        base = local.sigma if local is not None and local.baseline_runs >= 2 else None
        ref = local.baseline_mean if local is not None and local.baseline_mean is not None else 1.0
        deterministic = any(f.budget_unit == "tokens" for h, f in self.tail.finished.items() if self.tail.ran_on(h) == cls)
        if self.cfg.paired and deterministic:
            return self.cfg.paired_rule.sigma(self.pooled(), base, ref)
        return 2**0.5 * self.cfg.rule.sigma(base, local.baseline_runs if local else 0, ref)

    def sigma_for_notes(self, cls: str) -> float | None:
        """The noise a wave analysis compares effects with: σ_Δ on a deterministic budget (effects there
        are paired by seed), else the σ of the class's baselines."""
        local = self.tail.baseline_stats().get(cls)
        base = local.sigma if local is not None and local.baseline_runs >= 2 else None
        deterministic = any(f.budget_unit == "tokens" for h, f in self.tail.finished.items() if self.tail.ran_on(h) == cls)
        if self.cfg.paired and deterministic:
            ref = local.baseline_mean if local is not None and local.baseline_mean is not None else 1.0
            return self.cfg.paired_rule.sigma(self.pooled(), base, ref)
        return base

    def baseline_mean(self, cls: str, reply: ContextReply) -> float | None:
        for s in reply.stats:
            if s.hw_class == cls and s.baseline_mean is not None:
                return s.baseline_mean
        local = self.tail.baseline_stats().get(cls)
        return local.baseline_mean if local is not None else None

    def lineage(self, hid: str) -> list[str]:
        """What ``hid`` may be compared with: its parent and this agent's kept hypotheses (not demoted); a
        promoted run is compared with the best kept on its class by anyone (it must win there)."""
        p = self.tail.proposals[hid]
        anyone = PROMOTION_TAG in p.tags
        out = [p.parent] if p.parent != hid else []
        for cand in self.tail.decided:
            if cand != hid and cand not in out and self.tail.kept(cand) and cand in self.tail.proposals \
                    and (anyone or self.tail.proposals[cand].agent == self.cfg.agent):  # fmt: skip
                out.append(cand)
        return [c for c in out if c == BASELINE or (c in self.tail.proposals and c not in self.tail.demoted)]

    def reference(self, hid: str, cls: str, reply: ContextReply) -> float | None:
        """σ rule: the lineage best on ``cls`` at the time of deciding (each at the mean it was kept at), never
        below the baseline mean."""
        vals = []
        for cand in self.lineage(hid):
            v = standing(self.tail, cand) if cand != BASELINE else None
            if v is not None and self.tail.ran_on(cand) == cls:
                vals.append(v)
        # never compare against less than the unmodified train.py: a kept hypothesis worse than the
        # baseline (kept before the baselines finished) must not lower the bar
        base = self.baseline_mean(cls, reply)
        if base is not None:
            vals.append(base)
        return min(vals) if vals else None

    def paired_reference(self, hid: str, cls: str) -> tuple[str, dict[int, float]] | None:
        """Paired rule: the best of the lineage (and the baseline) on the candidate's screen seed, among
        those that ran that seed on ``cls``: (its id, its runs by seed)."""
        seed = self.tail.proposals[hid].seed
        best: tuple[float, str, dict[int, float]] | None = None
        for cand in [*self.lineage(hid), BASELINE]:
            runs = seed_runs(self.tail, cand, cls)
            if seed in runs and (best is None or runs[seed] < best[0]):
                best = (runs[seed], cand, runs)
        return (best[1], best[2]) if best is not None else None

    def pooled(self) -> tuple[float, int]:
        """Within-hypothesis paired spread observed in the run: own references, else each one's parent."""
        refs = {h: self.reference_of.get(h, self.tail.proposals[h].parent)
                for h in self.tail.repeats if h in self.tail.proposals}  # fmt: skip
        return pooled_within(self.tail, refs)

    def confirm_seed(self, hid: str, cls: str, ref_runs: dict[int, float] | None) -> int | None:
        """A seed to confirm ``hid`` on: one the reference ran and ``hid`` did not, else (σ rule) a new one."""
        planned = planned_seeds(self.tail, hid, cls)
        if ref_runs is not None:
            free = [s for s in sorted(ref_runs) if s not in planned]
            return free[0] if free else None
        return max(planned, default=0) + 1

    # -- deciding -----------------------------------------------------------------------------------

    async def judge(self, hid: str, reply: ContextReply) -> None:
        """Decide a finished hypothesis of this agent (a repeat decides its original)."""
        if hid in self.confirming:
            c = self.confirming.pop(hid)
            orig = c.original
            if c.remeasure:  # of a keep: decided already; its standing is now the mean
                runs = ok_runs(self.tail, orig, self.tail.ran_on(orig))
                now = f": it stands at the mean of {len(runs)} runs, {statistics.fmean(runs):.4f}" if runs else ""
                self.record(hid, "discard", f"re-measure of {orig}, kept on one run of a wide wave{now}",
                            self.tail.ok_val(hid))  # fmt: skip
                return
            self.record(hid, "discard", f"confirmation run of {orig} (decided there)", self.tail.ok_val(hid))
            if orig not in self.tail.decided:
                await self.decide(orig, reply)
            return
        await self.decide(hid, reply)

    async def wait_for(self, pred: Callable[[], bool], cls: str) -> None:
        """Wait (bounded) for a result the decision needs; queue the class's baselines first (the class may
        be new: its runner joined after this wave began)."""
        if pred():
            return
        await self.queue_baselines({cls})
        await self.tail.wait_until(lambda: pred() or self.stop.is_set(), self.cfg.wave_timeout)

    async def decide(self, hid: str, reply: ContextReply) -> None:
        cls = self.tail.ran_on(hid)
        f = self.tail.finished[hid]
        if f.status != "ok" or f.val_bpb is None:
            self.record(hid, "discard", f"{f.status}: {f.reason or 'no val_bpb'}"[:500], None)
            return
        if self.cfg.paired and is_deterministic(self.tail, hid):
            await self.decide_paired(hid, cls, reply)
        else:
            await self.decide_sigma(hid, cls, reply)

    async def decide_paired(self, hid: str, cls: str, reply: ContextReply) -> None:
        seed = self.tail.proposals[hid].seed
        if self.cfg.baselines:  # the baseline run of the same seed, when the baseline is the reference
            await self.wait_for(lambda: seed in seed_runs(self.tail, BASELINE, cls), cls)
        found = self.paired_reference(hid, cls)
        if found is None:  # nothing ran this seed on this class (a seed no reference has): fall back
            await self.decide_sigma(hid, cls, reply)
            return
        ref_id, ref_runs = found
        self.reference_of[hid] = ref_id
        cand = seed_runs(self.tail, hid, cls)
        deltas = paired_deltas(cand, ref_runs)
        repeats = self.tail.repeats_of(hid)
        if repeats and self.tail.ok_val(repeats[-1]) is None:
            self.record(hid, "discard", "its confirming run failed", cand.get(seed), ref_runs.get(seed))
            return
        ref_mean = statistics.fmean(ref_runs[s] for s in deltas)
        sigma = self.cfg.paired_rule.sigma(self.pooled(), self.baseline_sigma(cls, reply), ref_mean)
        nxt = self.confirm_seed(hid, cls, ref_runs)
        can_confirm = nxt is not None and len(repeats) < self.cfg.paired_rule.max_confirms
        label = "the baseline" if ref_id == BASELINE else ref_id[:8]
        cand_mean = statistics.fmean(cand[s] for s in deltas)
        verdict, why = self.cfg.paired_rule.decide(list(deltas.values()), sigma, can_confirm, label, cand_mean,
                                                   ref_mean)  # fmt: skip
        if verdict == "confirm" and nxt is not None:
            self.to_repeat.append(Confirm(hid, nxt, cls))
            return
        self.record(hid, verdict, why, cand_mean, ref_mean, sigma)
        if verdict == "keep" and self.on_kept is not None:
            self.on_kept(hid, ref_mean - cand_mean, sigma)

    async def decide_sigma(self, hid: str, cls: str, reply: ContextReply) -> None:
        runs = [hid, *self.tail.repeats_of(hid)]
        values = ok_runs(self.tail, hid, cls)
        if len(runs) > 1 and self.tail.ok_val(runs[-1]) is None:
            self.record(hid, "discard", "its confirming run failed", self.tail.ok_val(hid))
            return
        if self.cfg.baselines:
            await self.wait_for(lambda: self.baseline_mean(cls, reply) is not None, cls)
        ref = self.reference(hid, cls, reply)
        sigma = self.sigma_of(reply, cls, ref if ref is not None else values[0])
        verdict, why = self.cfg.rule.decide(values, ref, sigma)
        if verdict == "confirm":
            nxt = self.confirm_seed(hid, cls, None)
            if nxt is not None:
                self.to_repeat.append(Confirm(hid, nxt, cls))
                return
            verdict, why = "discard", why + " (no seed left to confirm on)"
        mean = sum(values) / len(values) if values else None
        self.record(hid, verdict, why, mean, ref, sigma)
        if verdict == "keep" and len(values) == 1 and self.cfg.remeasure_from is not None \
                and wave_width(self.tail, hid) >= self.cfg.remeasure_from:  # fmt: skip
            # the best of a wide wave is also its luckiest draw: one more run, so the bar the next waves
            # must clear is a mean, not that draw
            nxt = self.confirm_seed(hid, cls, None)
            if nxt is not None:
                self.to_repeat.append(Confirm(hid, nxt, cls, remeasure=True))
        if verdict == "keep" and self.on_kept is not None and ref is not None and mean is not None:
            self.on_kept(hid, ref - mean, sigma)

    def record(
        self, hid: str, decision: str, reason: str, val: float | None,
        ref: float | None = None, sigma: float | None = None,
    ) -> None:  # fmt: skip
        """Queue the HypothesisDecided event (published with the next flush) and count it."""
        if decision == "keep":
            self.stats.kept += 1
        else:
            self.stats.discarded += 1
        p = self.tail.proposals.get(hid)
        if p is not None and PROMOTION_TAG in p.tags:  # the promoted run of a screen-class win
            where = f"promotion of {p.parent[:8]} from {self.tail.ran_on(p.parent)} to {self.tail.ran_on(hid)}"
            reason = f"{where}: {'wins there too' if decision == 'keep' else 'ranking does not transfer'}: {reason}"
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
        for c in self.to_repeat:
            if c.remeasure:  # kept already; the re-measure only refines its standing
                continue
            self.record(c.original, "discard",
                        "better but within the noise; no budget left for a confirming repeat",
                        self.tail.ok_val(c.original))  # fmt: skip
        self.to_repeat.clear()


def screen_seed(tail: RunTail, parent: str) -> int:
    """The seed a new hypothesis built on ``parent`` runs on: its reference's first seed (common random
    numbers; harmless for wall-clock budgets, the point for deterministic ones)."""
    return first_seed(tail, parent)
