"""Paired comparisons (common random numbers) for budgets that make a run deterministic per seed.

With a ``tokens`` budget (the cpu profile) the same train.py on the same seed gives the same val_bpb to ~6
digits, while two seeds differ by σ ≈ 0.03 — more than the gains an agent finds. So a candidate is compared
with its reference *on the same seeds*, which removes the seed's share of the noise from the difference:

* baselines run on seeds ``0..R-1``; every screen hypothesis runs on the seed of its reference's first run
  (the baseline's seed 0, or its kept parent's screen seed — 0 again, by induction);
* Δ_s = candidate(s) − reference(s) on each seed ``s`` both ran on the same hardware class;
* one paired Δ < 0 is confirmed on another seed the reference has (a baseline seed, or the confirm seed its
  kept parent ran on); the candidate is **kept** when ``mean Δ < −k·σ_Δ/√n``;
* σ_Δ is estimated from the paired differences this run has observed: the within-hypothesis spread of Δ
  over seeds, pooled over every hypothesis with ≥ 2 paired seeds, shrunk toward a prior until the pooled
  degrees of freedom outnumber it. The prior is ``prior_frac`` × the baseline's σ across seeds (measured
  on this project's CPU harness: the paired Δ of a knob change varies ~4× less than a seed does), else
  ``fallback_frac`` × the reference. Selected candidates (the ones that improved on their screen seed)
  regress toward the mean on the next seed, which makes this estimate, and so the rule, conservative.

Wall-clock (``seconds``) budgets are not deterministic; they keep the σ-of-baselines rule
(:mod:`agents.policy`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from agents.tail import RunTail
from bus.events import BASELINE, BASELINE_TAG

DETERMINISTIC_UNITS = ("tokens",)  # budget units under which a run is a function of (train.py, seed)

PairedVerdict = Literal["keep", "discard", "confirm"]


def seed_runs(tail: RunTail, hid: str, cls: str) -> dict[int, float]:
    """{seed: val_bpb} of the ok runs of ``hid`` on class ``cls``: its own run and its confirming repeats;
    for ``"baseline"`` the baseline runs of the class."""
    out: dict[int, float] = {}
    if hid == BASELINE:
        for h, p in tail.proposals.items():
            if BASELINE_TAG in p.tags:
                v = tail.ok_val(h)
                if v is not None and tail.ran_on(h) == cls:
                    out.setdefault(p.seed, v)
        return out
    prop = tail.proposals.get(hid)
    if prop is None:
        return out
    v = tail.ok_val(hid)
    if v is not None and tail.ran_on(hid) == cls:
        out[prop.seed] = v
    for r in tail.repeats_of(hid):
        v = tail.ok_val(r)
        if v is not None and tail.ran_on(r) == cls:
            out.setdefault(tail.proposals[r].seed, v)
    return out


def planned_seeds(tail: RunTail, hid: str, cls: str) -> set[int]:
    """Seeds ``hid`` ran or will run on ``cls`` (finished or not, ok or not): a confirm never picks them."""
    p = tail.proposals.get(hid)
    seeds = {p.seed} if p is not None else set()
    seeds |= {tail.proposals[r].seed for r in tail.repeats_of(hid) if tail.ran_on(r) in (cls, "any", "")}
    return seeds


def first_seed(tail: RunTail, hid: str) -> int:
    """The seed of a reference's first run: 0 for the baseline, the screen seed of a hypothesis."""
    if hid == BASELINE:
        return 0
    p = tail.proposals.get(hid)
    return p.seed if p is not None else 0


def is_deterministic(tail: RunTail, hid: str) -> bool:
    """Whether ``hid``'s run used a budget that makes it deterministic per seed (the runner says so)."""
    f = tail.finished.get(hid)
    return f is not None and f.budget_unit in DETERMINISTIC_UNITS


def standing(tail: RunTail, hid: str) -> float | None:
    """The val_bpb a hypothesis stands at when others are compared with it or it is chosen to build on.
    Deterministic budget: its screen-seed run, the value every other screen run is paired with. Wall-clock
    budget: the mean of its ok runs on its class (its own and its confirming repeats, which are independent
    draws), not its first run alone: of sixteen screen runs the best is the luckiest, and one lucky run as
    the bar turned away a later change that was truly better (seen on the simulated h100 landscape)."""
    v = tail.ok_val(hid)
    if v is None or is_deterministic(tail, hid):
        return v
    return statistics.fmean(ok_runs(tail, hid, tail.ran_on(hid)))


def ok_runs(tail: RunTail, hid: str, cls: str) -> list[float]:
    """val_bpb of ``hid``'s ok runs on ``cls``: its own, then its confirming repeats, in the order proposed
    (what the σ rule decides on, and what a kept result stands at)."""
    runs = (tail.ok_val(h) for h in [hid, *tail.repeats_of(hid)] if tail.ran_on(h) == cls)
    return [v for v in runs if v is not None]


def paired_deltas(cand: Mapping[int, float], ref: Mapping[int, float]) -> dict[int, float]:
    """Δ_s = candidate − reference on every seed both have."""
    return {s: cand[s] - ref[s] for s in sorted(cand.keys() & ref.keys())}


@dataclass(frozen=True)
class PairedRule:
    """Keep when the mean paired Δ beats ``k``·σ_Δ/√n; confirm a single improving Δ on another seed."""

    k: float = 2.0
    prior_frac: float = 0.3  # prior σ_Δ = this × the baseline's σ across seeds (measured: see the module doc)
    prior_dof: float = 3.0  # weight of the prior, in degrees of freedom of observed paired differences
    fallback_frac: float = 0.002  # prior σ_Δ when the baseline's σ is unknown: this × the reference
    max_confirms: int = 2  # confirming seeds per candidate (at most the reference's other seeds)

    def sigma(self, pooled: tuple[float, int], baseline_sigma: float | None, reference: float) -> float:
        """σ_Δ: the pooled within-hypothesis variance (sum of squares, dof) shrunk toward the prior."""
        ss, dof = pooled
        prior = self.prior_frac * baseline_sigma if baseline_sigma else self.fallback_frac * abs(reference)
        return math.sqrt((self.prior_dof * prior**2 + ss) / (self.prior_dof + dof))

    def decide(self, deltas: Sequence[float], sigma: float, can_confirm: bool, ref_label: str,
               cand_mean: float, ref_mean: float) -> tuple[PairedVerdict, str]:  # fmt: skip
        """Verdict and the reasoning, for the paired differences ``deltas`` (screen seed first)."""
        n = len(deltas)
        if n == 0:
            return "discard", "no seed in common with its reference"
        mean = statistics.fmean(deltas)
        margin = self.k * sigma / math.sqrt(n)
        seeds = f"paired on {n} seed{'s' if n > 1 else ''} with {ref_label}"
        what = f"{cand_mean:.4f} vs {ref_mean:.4f}, mean Δ {mean:+.4f}"
        if mean >= 0:
            return "discard", f"{seeds}: {what}: not better"
        if n >= 2 and mean < -margin:
            return "keep", f"{seeds}: {what} beats {self.k:g}σ_Δ/√{n} = {margin:.4f} (σ_Δ {sigma:.4f})"
        if can_confirm and (n < 2 or n <= self.max_confirms):
            return "confirm", f"{seeds}: {what}; confirm on another seed (margin {margin:.4f}, σ_Δ {sigma:.4f})"
        if n == 1 and mean < -margin:
            return "keep", (f"{seeds}: {what} beats {self.k:g}σ_Δ = {margin:.4f} (σ_Δ {sigma:.4f}); the reference "
                            "has no other seed to confirm on")  # fmt: skip
        return "discard", f"{seeds}: {what} within {self.k:g}σ_Δ/√{n} = {margin:.4f} (σ_Δ {sigma:.4f}): noise"


def pooled_within(tail: RunTail, reference_of: Mapping[str, str]) -> tuple[float, int]:
    """(Σ (n−1)·s², Σ (n−1)) over hypotheses with ≥ 2 paired seeds against their references.

    ``reference_of``: hypothesis id -> the reference it was (or is being) compared with."""
    ss, dof = 0.0, 0
    for hid, ref in reference_of.items():
        cls = tail.ran_on(hid)
        d = list(paired_deltas(seed_runs(tail, hid, cls), seed_runs(tail, ref, cls)).values())
        if len(d) >= 2:
            ss += statistics.variance(d) * (len(d) - 1)
            dof += len(d) - 1
    return ss, dof
