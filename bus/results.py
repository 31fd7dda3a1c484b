"""What "the result" of a hypothesis is: one pure fold over the stream, used by the ledger's projector and by
every agent (which keeps or discards from it), so the two can never disagree.

Over the stream, in order, a finish (``ExperimentFinished``) of a hypothesis gets one disposition:

* ``unclaimed`` — no earlier claim by the same runner of the same attempt (a result nobody was allowed to
  publish: forged, or a runner bug). A dead-letter ``lost`` finish needs no claim.
* ``late`` — its runner knew it had lost the lease (``late=True``), or a later attempt had already been
  claimed when it arrived: someone else holds the work now.
* ``result`` — the first finish that is neither: *the* result of the hypothesis.
* ``duplicate`` — any further finish that is neither (a redelivered attempt finishing too).

Only ``result`` counts anywhere (bests, decisions, comparisons). Events count only on their own subject
(:func:`counts_on`): a payload published on another event's subject — say, an ExperimentFinished put on
the notes subject by someone allowed to publish notes but not results — is not an event of that kind.

:func:`comparison_key` is what makes two results comparable: the same hardware class, budget (unit and
amount), dataset and tokenizer. Rankings compare like with like only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from bus import subjects
from bus.events import AnyEvent, ExperimentClaimed, ExperimentFinished

Disposition: TypeAlias = Literal["result", "duplicate", "late", "unclaimed"]


def counts_on(event: AnyEvent, subject: str) -> bool:
    """Whether ``event`` arrived on the subject its kind is published on (anything else is not an event of
    that kind, whatever its payload says)."""
    return subjects.event_subject(event) == subject


def disposition(finish_attempt: int, finish_runner: str, status: str, late: bool, claims: list[tuple[int, str]],
                has_result: bool) -> Disposition:
    """The disposition of one finish, given the claims of its hypothesis seen before it (``(attempt,
    runner)`` in stream order) and whether the hypothesis already has its result."""
    claimed = status == "lost" or (finish_attempt, finish_runner) in claims
    if not claimed:
        return "unclaimed"
    if late or any(a > finish_attempt for a, _ in claims):
        return "late"
    return "duplicate" if has_result else "result"


@dataclass
class _Hypothesis:
    claims: list[tuple[int, str]] = field(default_factory=list)
    result: ExperimentFinished | None = None


class ResultFold:
    """The fold itself: feed it the run's claims and finishes in stream order."""

    def __init__(self) -> None:
        self._hyps: dict[str, _Hypothesis] = {}

    def claim(self, ev: ExperimentClaimed) -> None:
        self._hyps.setdefault(ev.hypothesis_id, _Hypothesis()).claims.append((ev.attempt, ev.runner))

    def finish(self, ev: ExperimentFinished) -> Disposition:
        h = self._hyps.setdefault(ev.hypothesis_id, _Hypothesis())
        d = disposition(ev.attempt, ev.runner, ev.status, ev.late, h.claims, h.result is not None)
        if d == "result":
            h.result = ev
        return d

    def apply(self, ev: AnyEvent) -> Disposition | None:
        """Claims and finishes change the fold; anything else is ignored. Returns a finish's disposition."""
        if isinstance(ev, ExperimentClaimed):
            self.claim(ev)
        elif isinstance(ev, ExperimentFinished):
            return self.finish(ev)
        return None

    def result(self, hypothesis_id: str) -> ExperimentFinished | None:
        h = self._hyps.get(hypothesis_id)
        return h.result if h is not None else None

    def results(self) -> dict[str, ExperimentFinished]:
        return {hid: h.result for hid, h in self._hyps.items() if h.result is not None}


ComparisonKey: TypeAlias = tuple[str, str, float, str, str]


def comparison_key(f: ExperimentFinished) -> ComparisonKey:
    """(hardware class, budget unit, budget, dataset fingerprint, tokenizer fingerprint): results compare
    only when these are equal. Results older than budget units read as a seconds budget."""
    unit = f.budget_unit or "seconds"
    amount = f.budget or f.budget_seconds
    return (f.hw_class, unit, float(amount), f.dataset_fingerprint, f.tokenizer_fingerprint)
