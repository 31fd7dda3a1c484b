"""Screen → validate across hardware: screen on the many (cheap) runners, validate on the fastest class.

A result kept on a screen class that beats that class's best by more than its σ is *promoted*: the same
train.py is proposed again on the validate class (validate tier, tag ``promotion``, parent = the original,
on the validate class's work subject, which runners of other classes refuse). It is judged there like any
result — against the best kept on the validate class and that class's own noise, confirmed on another
seed when ambiguous — and kept there only if it wins there too. Each outcome is written to the notebook;
a ranking that does not transfer ("won on h100, lost on h200") is said so in the promoted run's decision
(the report lists them from the ``promotion`` tag).

The validate class: the agent's ``validate_class``, else the fastest class present — the one whose
baselines trained the most tokens per second (else the runners' calibration). With one class there is no
promotion.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Awaitable
from typing import Protocol

from agents.config import AgentConfig
from agents.edits import Validated
from agents.judge import Judge
from agents.paired import standing
from agents.proposers.base import ProposalDraft
from agents.tail import RunTail
from bus.events import BASELINE_TAG, PROMOTION_TAG, HypothesisProposed


class Host(Protocol):
    cfg: AgentConfig
    tail: RunTail
    judge: Judge

    def proposed_event(self, hid: str, draft: ProposalDraft, v: Validated, parent: str, tags: list[str],
                       hw_class: str, tier: str, seed: int | None = None) -> HypothesisProposed: ...  # fmt: skip

    def publish_hypothesis(self, ev: HypothesisProposed) -> None: ...

    def note(self, title: str, body: str, refs: list[str]) -> Awaitable[None]: ...


def class_speeds(tail: RunTail) -> dict[str, float]:
    """Tokens per second of training per class: its ok baselines' figures, else its runners' calibration."""
    speeds: dict[str, list[float]] = {}
    for hid, p in tail.proposals.items():
        f = tail.finished.get(hid)
        if BASELINE_TAG in p.tags and f is not None and f.status == "ok" and f.tokens and f.training_seconds:
            speeds.setdefault(tail.ran_on(hid), []).append(f.tokens / f.training_seconds)
    out = {c: statistics.fmean(v) for c, v in speeds.items()}
    for r in tail.runners.values():
        cls = r.hardware.hw_class
        if cls and cls not in out and r.calibration is not None and r.calibration.tokens_per_second:
            out[cls] = r.calibration.tokens_per_second
    return out


def validate_class(cfg: AgentConfig, tail: RunTail) -> str | None:
    """The class promoted results are validated on (None: no promotion)."""
    classes = tail.hw_classes()
    if cfg.validate_class is not None:
        return cfg.validate_class or None
    if len(classes) < 2:
        return None
    speeds = class_speeds(tail)
    known = [c for c in classes if c in speeds]
    if len(known) < len(classes):
        return None  # not every class has measured its speed yet: decide once they have
    return max(known, key=lambda c: (speeds[c], c))


class Promotions:
    """One agent's promotions: queued when the judge keeps a clear win on a screen class, published with
    the next wave, noted when decided."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.queued: list[tuple[str, str]] = []  # (original, validate class)
        self.promoted: dict[str, str] = {}  # promoted run -> original

    def best_on(self, cls: str, but: str) -> float | None:
        """The best kept value on ``cls`` other than ``but``, else the class's baseline mean."""
        tail = self.host.tail
        vals = [v for h in tail.decided if h != but and tail.kept(h) and tail.ran_on(h) == cls
                and (v := standing(tail, h)) is not None]  # fmt: skip
        if vals:
            return min(vals)
        s = tail.baseline_stats().get(cls)
        return s.baseline_mean if s is not None else None

    def on_kept(self, hid: str, margin: float, sigma: float) -> None:
        """The judge kept ``hid``: promote it when it ran on a screen class and beats that class's best by
        more than its σ."""
        tail = self.host.tail
        vc = validate_class(self.host.cfg, tail)
        cls = tail.ran_on(hid)
        p = tail.proposals.get(hid)
        if vc is None or cls == vc or p is None or PROMOTION_TAG in p.tags:
            return
        best, v = self.best_on(cls, hid), standing(tail, hid)
        if best is None or v is None or not v < best - sigma:
            return
        self.queued.append((hid, vc))

    def publish(self, k: int) -> int:
        """Publish up to ``k`` queued promotions; how many."""
        n = 0
        while self.queued and n < k:
            orig, vc = self.queued.pop(0)
            p = self.host.tail.proposals[orig]
            hid = str(uuid.uuid4())
            v = Validated(p.train_py, p.train_py_sha256, p.ast_sha256, "")
            draft = ProposalDraft(description=f"promotion of {orig[:8]} to {vc}: {p.description}"[:500],
                                  rationale=f"won on {self.host.tail.ran_on(orig)}; validate on {vc}")  # fmt: skip
            ev = self.host.proposed_event(hid, draft, v, orig, [PROMOTION_TAG], vc, "validate")
            self.promoted[hid] = orig
            self.host.publish_hypothesis(ev)
            n += 1
        return n

    async def after_decision(self, hid: str) -> None:
        """A promoted run (or its confirmation) was decided: tell the notebook whether the ranking
        transferred."""
        tail = self.host.tail
        orig = self.promoted.get(hid)
        d = tail.decided.get(hid)
        if orig is None or d is None:
            return
        del self.promoted[hid]
        screen, vc = tail.ran_on(orig), tail.ran_on(hid)
        if d.decision == "keep":
            title = f"transfer confirmed: {orig[:8]} wins on {screen} and on {vc}"
        else:
            title = f"ranking does not transfer: {orig[:8]} won on {screen}, not on {vc}"
        body = (f"{tail.proposals[orig].description}\n\n- on {screen}: {tail.ok_val(orig)} (kept)\n- on {vc}: "
                f"{d.val_bpb} vs {d.reference_val_bpb} ({d.decision}: {d.reason})")  # fmt: skip
        await self.host.note(title, body, [orig, hid])
