"""The champion audit: keeps you can trust over many decisions.

A swarm makes hundreds of keep decisions; at 2σ some are noise. Every ``audit_every`` keeps on a hardware
class (by any agent), an agent audits that class's champion — its best kept hypothesis — on a fresh seed:

* the champion again, and for each kept step of its lineage the champion *without that step* (an
  ablation: the step's knob values set back to its parent's, its code hunks reverted; a step a later step
  changed again, or whose hunks no longer apply, is not ablated);
* Δ_step = ablation − champion on the same seed (paired: the same seed for both, so on a deterministic
  budget only the change differs). A step whose Δ is below one σ of such a difference (σ_Δ on a
  deterministic budget, √2·σ of the baselines on a wall-clock one) — on a fresh seed its gain is not even
  one σ above nothing — did not keep its gain: it is **demoted** (a ``HypothesisDemoted`` event). No agent
  builds on a demoted hypothesis or compares against it any more. (A step kept by noise is demoted with
  probability ~0.84 per audit; an honest step whose gain was 2σ_Δ with probability ~0.16.)

Audit runs carry the ``audit`` tag and deterministic ids (champion, step, seed) published with a
``Nats-Msg-Id``, so two agents that decide to audit the same champion store one audit; the agent whose
publish was stored follows it to the end.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext

from agents.config import AgentConfig
from agents.edits import Edit, apply_edits, unified_diff, validate_source
from agents.errors import ValidationError
from agents.judge import Judge
from agents.knobs import apply_knobs
from agents.paired import planned_seeds, standing
from agents.proposers.textual import diff_edits
from agents.tail import RunTail
from bus import subjects
from bus.events import AUDIT_TAG, BASELINE, HypothesisDemoted, HypothesisProposed, encode
from bus.memory import knob_changes
from bus.trainpy import ast_sha256, knob_values, sha256

log = logging.getLogger("swarm.agents.audit")


class Host(Protocol):
    cfg: AgentConfig
    tail: RunTail
    judge: Judge
    js: JetStreamContext

    def buffer(self, ev: object) -> None: ...

    def sees(self, agent: str) -> bool: ...

    def note(self, title: str, body: str, refs: list[str]) -> Awaitable[None]: ...


@dataclass
class Audit:
    champion: str
    hw_class: str
    seed: int
    rerun: str  # id of the champion's re-run
    ablations: dict[str, str] = field(default_factory=dict)  # ablation run id -> the step it removes

    @property
    def runs(self) -> list[str]:
        return [self.rerun, *self.ablations]


def lineage_steps(tail: RunTail, champion: str) -> list[str]:
    """The kept hypotheses from the champion back to the baseline (the champion first)."""
    out: list[str] = []
    cur = champion
    while cur != BASELINE and cur in tail.proposals and cur not in out:
        if tail.kept(cur):
            out.append(cur)
        cur = tail.proposals[cur].parent
    return out


def ablate(tail: RunTail, base_train_py: str, champion_source: str, step: str, later: list[str]) -> str | None:
    """The champion's train.py without ``step``'s change: its knobs set back to its parent's values and its
    code hunks reverted (None when it cannot be taken out cleanly)."""
    p = tail.proposals[step]
    parent_source = tail.proposals[p.parent].train_py if p.parent in tail.proposals else base_train_py
    parent_knobs = knob_values(parent_source)
    changed = knob_changes(p.knobs, parent_knobs)
    for s in later:  # a later step set the same knob again: the step's own value is gone already
        q = tail.proposals[s]
        q_parent = tail.proposals[q.parent].train_py if q.parent in tail.proposals else base_train_py
        if set(knob_changes(q.knobs, knob_values(q_parent))) & set(changed):
            return None
    revert = {k: parent_knobs[k] for k in changed if k in parent_knobs}
    try:
        source = apply_knobs(champion_source, revert) if revert else champion_source
        code_only = apply_knobs(p.train_py, revert) if revert else p.train_py  # the step's code change alone
        if code_only != parent_source:
            hunks = diff_edits(unified_diff(parent_source, code_only))
            source = apply_edits(source, [Edit(h.replace, h.search) for h in hunks])
        validate_source(source, champion_source)
    except (ValidationError, ValueError):
        return None
    return source if source != champion_source else None


class Audits:
    """One agent's audits: when one is due, what it runs, and what it concludes."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.open: dict[str, Audit] = {}  # champion -> its audit in progress
        self.runs: set[str] = set()  # every audit run this agent published
        self.done: set[tuple[str, int]] = set()  # (champion, keeps on its class) audited
        self.audited_keeps: dict[str, int] = {}  # class -> keeps counted at its last audit

    def kept(self) -> list[str]:
        """The kept hypotheses this agent may build on (an isolated agent: its own only)."""
        tail = self.host.tail
        return [h for h in tail.decided if tail.kept(h) and (p := tail.proposals.get(h)) is not None
                and self.host.sees(p.agent)]  # fmt: skip

    def keeps_on(self, cls: str) -> int:
        tail = self.host.tail
        return sum(1 for h in self.kept() if tail.ran_on(h) == cls)

    def champion(self, cls: str) -> str | None:
        tail = self.host.tail
        kept = [(v, h) for h in self.kept() if tail.ran_on(h) == cls and (v := standing(tail, h)) is not None]
        return min(kept)[1] if kept else None

    def due(self) -> list[str]:
        """Classes whose champion an audit should look at now."""
        every = self.host.cfg.audit_every
        if not every:
            return []
        classes = {self.host.tail.ran_on(h) for h in self.kept()}
        out = []
        for cls in sorted(classes):
            n = self.keeps_on(cls)
            if n - self.audited_keeps.get(cls, 0) >= every and self.champion(cls) not in self.open:
                out.append(cls)
        return out

    async def start(self, cls: str) -> list[HypothesisProposed]:
        """Publish the audit of ``cls``'s champion (its re-run and ablations); the runs this agent follows
        (none when another agent already published the same audit)."""
        tail, cfg = self.host.tail, self.host.cfg
        self.audited_keeps[cls] = self.keeps_on(cls)
        champ = self.champion(cls)
        if champ is None:
            return []
        c = tail.proposals[champ]
        seed = max(planned_seeds(tail, champ, cls), default=0) + 1
        steps = lineage_steps(tail, champ)
        audit = Audit(champ, cls, seed, rerun=f"audit-{champ[:12]}-best-s{seed}")
        evs = [self._event(audit.rerun, c.train_py, champ, cls, seed, f"audit: {champ[:8]} again on seed {seed}")]
        for i, step in enumerate(steps):
            source = ablate(tail, cfg.base_train_py, c.train_py, step, steps[:i])
            if source is None:
                continue
            rid = f"audit-{champ[:12]}-{step[:12]}-s{seed}"
            audit.ablations[rid] = step
            evs.append(self._event(rid, source, champ, cls, seed,
                                   f"audit: {champ[:8]} without {step[:8]} ({tail.proposals[step].description[:200]})"))
        if not audit.ablations or any(ev.hypothesis_id in tail.proposals for ev in evs):
            return []  # nothing to take out, or this audit was published before (by anyone)
        stored = []
        for ev in evs:
            ack = await self.host.js.publish(subjects.event_subject(ev), encode(ev), stream=subjects.STREAM,
                                             headers={"Nats-Msg-Id": f"{cfg.run}.{ev.hypothesis_id}"})  # fmt: skip
            if not ack.duplicate:
                stored.append(ev)
            tail.apply(ev)
        if len(stored) < len(evs):
            log.info("%s: the audit of %s was already published by another agent", cfg.agent, champ[:8])
            return []
        self.open[champ] = audit
        self.runs.update(audit.runs)
        return stored

    def _event(self, hid: str, source: str, champ: str, cls: str, seed: int, desc: str) -> HypothesisProposed:
        cfg = self.host.cfg
        return HypothesisProposed(
            run=cfg.run, source=cfg.agent, hypothesis_id=hid, agent=cfg.agent, train_py=source,
            train_py_sha256=sha256(source), ast_sha256=ast_sha256(source), parent=champ, description=desc[:500],
            rationale="champion audit", tier="validate", hw_class=cls, seed=seed, budget=cfg.budget,
            tags=[AUDIT_TAG], knobs=knob_values(source),
        )  # fmt: skip

    def owns(self, hid: str) -> bool:
        return hid in self.runs

    async def finished(self, hid: str) -> None:
        """An audit run finished: when its audit is complete, demote the steps whose gain did not survive."""
        tail = self.host.tail
        for champ, a in list(self.open.items()):
            if hid not in a.runs or not all(r in tail.finished for r in a.runs):
                continue
            del self.open[champ]
            self.host.judge.record(a.rerun, "discard", f"audit run of {champ} (the champion again)",
                                   tail.ok_val(a.rerun))  # fmt: skip
            for r in a.ablations:
                self.host.judge.record(r, "discard", f"audit run of {champ} without {a.ablations[r]}", tail.ok_val(r))
            best = tail.ok_val(a.rerun)
            if best is None:
                await self.host.note(f"audit of {champ[:8]} on {a.hw_class}: the champion's re-run failed",
                                     "no conclusion", a.runs)  # fmt: skip
                return
            sigma = self.host.judge.delta_sigma(a.hw_class)
            lines = [f"Champion {champ[:8]} again on seed {a.seed}: {best:.4f}; a step's gain survives when the "
                     f"champion without it is worse by more than σ_Δ = {sigma:.4f}"]  # fmt: skip
            demoted: list[str] = []
            for r, step in a.ablations.items():
                v = tail.ok_val(r)
                if v is None:
                    lines.append(f"- without {step[:8]}: {tail.finished[r].status} (no conclusion)")
                    continue
                delta = v - best
                survived = delta > sigma
                lines.append(f"- without {step[:8]} ({tail.proposals[step].description[:100]}): {v:.4f}, "
                             f"Δ {delta:+.4f}: {'its gain survives' if survived else 'no gain left: demoted'}")  # fmt: skip
                if not survived:
                    demoted.append(step)
                    self.host.buffer(HypothesisDemoted(
                        run=self.host.cfg.run, source=self.host.cfg.agent, hypothesis_id=step, by=self.host.cfg.agent,
                        reason=(f"champion audit of {champ[:8]} on {a.hw_class}, seed {a.seed}: without this step "
                                f"{v:.4f}, with it {best:.4f} (Δ {delta:+.4f} ≤ σ_Δ {sigma:.4f}: its gain did not "
                                "survive)"),
                        champion=champ, delta=delta, sigma=sigma, audit=a.runs,
                    ))  # fmt: skip
            title = f"audit of {champ[:8]} on {a.hw_class}: " + (
                f"demoted {', '.join(s[:8] for s in demoted)}" if demoted else "every kept step holds")
            await self.host.note(title, "\n".join(lines), [champ, *a.runs])
