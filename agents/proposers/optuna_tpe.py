"""Optuna TPE over train.py's knob space, told every result in the ledger (other agents' included).

Its startup trials are local: the parent's knob values with one or two of them changed (queued with
Optuna's ``enqueue_trial``), not TPE's default of every knob at random at once — with twenty knobs, a point
that changes all of them is almost always far worse and teaches little. They last until ``n_startup_trials``
results are *in*, not merely asked: a parallel wave asked at the start (16 runners) is 16 local moves. When
the swarm's shared memory shows two or more knob values that helped on their own, a wave also queues their
combination on the parent (once). A wave is one batch of ``ask`` with the constant liar (pending trials count as mediocre), Optuna's
own batch mechanism."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from agents.knobs import KnobSpec, knob_values, search_space
from agents.proposers.base import AgentContext, ProposalBatch, Result
from agents.proposers.knob_search import in_space, knob_draft
from bus.trainpy import literal

MAX_TRIES = 30


def distribution(spec: KnobSpec) -> BaseDistribution:
    if spec.kind == "choice":
        return CategoricalDistribution(list(spec.choices))
    if spec.kind == "int":
        if spec.log:
            return IntDistribution(int(spec.low), int(spec.high), log=True)
        return IntDistribution(int(spec.low), int(spec.high), step=spec.step or 1)
    return FloatDistribution(spec.low, spec.high, log=spec.log)


class OptunaProposer:
    provider = "optuna"
    model = "tpe"
    strategy = "optuna TPE over knobs"
    writes_notes = False

    def __init__(
        self,
        base_source: str,
        *,
        seed: int = 0,
        space: list[KnobSpec] | None = None,
        device: str | None = None,
        n_startup_trials: int = 8,
        local_startup: bool = True,
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space if space is not None else search_space(base_source, device=device)
        self.dists: dict[str, BaseDistribution] = {s.name: distribution(s) for s in self.space}
        with warnings.catch_warnings():  # constant_liar is "experimental"
            warnings.simplefilter("ignore")
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, constant_liar=True)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self._trials: dict[str, optuna.trial.Trial] = {}  # own hypothesis id -> trial
        self._told: set[str] = set()
        self.n_startup = n_startup_trials if local_startup else 0
        self.rng = random.Random(seed)
        self._combined: set[str] = set()

    def _local(self, parent: dict[str, Any]) -> dict[str, Any]:
        """The parent's values (those inside the space) with one or two knobs sampled anew."""
        params = {s.name: parent[s.name] for s in self.space if s.name in parent and _fits(s, parent[s.name])}
        for s in self.rng.sample(self.space, min(len(self.space), self.rng.choice((1, 1, 2)))):
            params[s.name] = s.sample(self.rng)
        return params

    def _combination(self, context: AgentContext, parent: dict[str, Any]) -> dict[str, Any] | None:
        """The parent with every knob value the shared memory says helped on its own (the best value of each
        knob, mean Δ < 0 over single-knob changes), when that is at least two changes not tried before."""
        if context.memory is None:
            return None
        best: dict[str, tuple[float, Any]] = {}
        specs = {s.name: s for s in self.space}
        for e in context.memory.knobs:
            spec = specs.get(e.knob)
            if spec is None or e.mean_delta is None or e.mean_delta >= 0 or e.n < 1:
                continue
            try:
                value = literal(e.value)
            except (ValueError, SyntaxError):
                continue
            if _fits(spec, value) and value != parent.get(e.knob) and e.mean_delta < best.get(e.knob, (0.0, None))[0]:
                best[e.knob] = (e.mean_delta, value)
        if len(best) < 2:
            return None
        params = {s.name: parent[s.name] for s in self.space if s.name in parent and _fits(s, parent[s.name])}
        params.update({n: v for n, (_, v) in best.items()})
        key = repr(sorted(params.items()))
        if key in self._combined:
            return None
        self._combined.add(key)
        return params

    async def propose(self, context: AgentContext, k: int) -> ProposalBatch:
        batch = ProposalBatch()
        if not self.dists:
            return batch
        wave: set[str] = set()
        parent = knob_values(context.parent_source)
        combination = self._combination(context, parent)
        if combination is not None:  # exploit what the swarm learned, through Optuna's own queue
            self.study.enqueue_trial(combination)
        for _ in range(k):
            for _ in range(MAX_TRIES):
                # startup until n_startup results are *in*: TPE asked with nothing back yet (a parallel
                # wave's first asks) samples every knob at random at once, far from anything good
                done = sum(1 for t in self.study.trials if t.state == TrialState.COMPLETE)
                waiting = any(t.state == TrialState.WAITING for t in self.study.trials)
                if done < self.n_startup and not waiting:
                    self.study.enqueue_trial(self._local(parent))
                trial = self.study.ask(self.dists)
                draft = knob_draft(context, trial.params, f"tpe#{trial.number}")
                if draft is None or draft.source in wave:
                    # an already-run point: tell TPE it failed, so it moves on instead of asking again
                    self.study.tell(trial, state=TrialState.FAIL)
                    continue
                assert draft.source is not None
                wave.add(draft.source)
                self._trials[draft.hypothesis_id] = trial
                batch.proposals.append(draft)
                break
        return batch

    async def observe(self, results: Sequence[Result]) -> None:
        for r in results:
            if r.hypothesis_id in self._told:
                continue
            self._told.add(r.hypothesis_id)
            trial = self._trials.pop(r.hypothesis_id, None)
            ok = r.status == "ok" and r.val_bpb is not None
            if trial is not None:
                if ok:
                    self.study.tell(trial, r.val_bpb)
                else:
                    self.study.tell(trial, state=TrialState.FAIL)
                continue
            if not ok:
                continue
            params: dict[str, Any] = in_space(self.space, r.knobs)
            if not params:
                continue
            dists = {n: self.dists[n] for n in params}
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=r.val_bpb))

    async def aclose(self) -> None:
        return None


def _fits(spec: KnobSpec, value: Any) -> bool:
    """Whether Optuna takes ``value`` as a fixed parameter of ``spec``'s distribution (on its step grid)."""
    if not spec.contains(value):
        return False
    return not (spec.kind == "int" and spec.step and not spec.log and (value - int(spec.low)) % spec.step)
