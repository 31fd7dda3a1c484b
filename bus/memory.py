"""The swarm's shared memory: what every agent reads before proposing, bounded whatever the run's length.

One pure function, :func:`build_memory`, from the run's hypotheses (:class:`MemRow`) and notes to a
:class:`bus.events.MemoryReply`. It lives on the ground floor because two readers build it from two
sources and must agree: the ledger (``ledger/queries.py``, from DuckDB, answering ``MemoryRequest``) and an
agent whose ledger does not answer (``agents/tail.py``, from the events it read).

What it holds (each list capped by the request):

* per hardware class, the current best — the best kept hypothesis not demoted, else the baseline — with its
  lineage back to the baseline and the diff of each kept step;
* the best results of all agents (the top of the run, and each agent's best);
* a per-knob effect table: each knob value tried, its Δ against the parent on the same class (single-knob
  changes: n, mean, σ; changes made together with other knobs counted apart), failures; and the
  two-knob interactions the data supports (a joint change with both single changes from the same parent);
* dead ends: changes (by normalised content: the knob values set, or the diff's changed lines without
  whitespace) that failed or lost, so nobody repeats them;
* the notebook as a living summary: each agent's latest note and the latest notes overall;
* what is in flight: hypotheses proposed and not finished (who, what change, claimed by which runner).

Δ of a result against its parent: against the parent's own first run on the same class, or for the
baseline against the baseline run of the same seed (the mean when that seed has none).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.events import (
    AUDIT_TAG,
    BASELINE,
    BASELINE_TAG,
    PROMOTION_TAG,
    REPEAT_TAG,
    ClassMemory,
    DeadEnd,
    InFlight,
    Interaction,
    KnobEffect,
    LineageStep,
    MemoryReply,
    MemoryRequest,
    NoteRow,
    TopResult,
)

FAILED = ("crash", "timeout", "oom", "nan", "rejected", "lost", "over_budget")
DEMOTED = "demote"  # the decisions value a HypothesisDemoted projects to (the latest decision wins)
# tags of runs that repeat another train.py (never a change of their own)
RERUN_TAGS = (REPEAT_TAG, PROMOTION_TAG, AUDIT_TAG)


@dataclass
class MemRow:
    """One hypothesis as memory reads it. ``status`` None: not finished (in flight)."""

    hypothesis_id: str
    agent: str
    parent: str = BASELINE
    description: str = ""
    tags: Sequence[str] = ()
    knobs: Mapping[str, Any] = field(default_factory=dict)
    hw_class: str = ""  # requested
    tier: str = "screen"
    seed: int = 0
    proposed_ts: float = 0.0
    status: str | None = None
    val_bpb: float | None = None
    ran_on: str = ""
    decision: str | None = None
    runner: str = ""  # the runner that claimed it (in flight) or ran it
    order: float = 0.0  # finish order (stream sequence or time)
    diff: str = ""  # may be empty: then ``diff_of`` is asked for the few that are shown


def fmt_value(v: Any) -> str:
    """A knob value as train.py would write it (short)."""
    if isinstance(v, float):
        s = f"{v:.6g}"
        return s if any(c in s for c in ".enai") else s + ".0"  # 5.0 stays a float
    if isinstance(v, list):
        v = tuple(v)
    return repr(v)


_KNOB_LINE = re.compile(r"^[+-]\s*[A-Z][A-Z0-9_]*\s*=")


def code_change(diff: str) -> str:
    """The changed lines of a diff that are not knob lines, whitespace removed: equal for edits that
    differ only in formatting or in their knob values."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")) or _KNOB_LINE.match(line):
            continue
        squeezed = "".join(line[1:].split())
        if squeezed and not squeezed.startswith("#"):
            out.append(line[0] + squeezed)
    return "\n".join(out)


def knob_changes(child: Mapping[str, Any], parent: Mapping[str, Any]) -> dict[str, Any]:
    """Knobs whose value differs from the parent's (new knobs included)."""
    out = {}
    for k, v in child.items():
        pv = parent.get(k, _MISSING)
        if pv is _MISSING or _norm(pv) != _norm(v):
            out[k] = v
    return out


_MISSING = object()


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def change_key(changes: Mapping[str, Any], code: str = "") -> str:
    """The normalised content of a change: its knob values, sorted, then a digest of its code change."""
    parts = [f"{k}={fmt_value(v)}" for k, v in sorted(changes.items())]
    if code:
        parts.append("code:" + _short_hash(code))
    return ", ".join(parts) if parts else "(no change)"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


class _Index:
    """The rows, indexed once: by id, the baseline per class, children, finished order."""

    def __init__(self, rows: Sequence[MemRow]) -> None:
        self.by_id = {r.hypothesis_id: r for r in rows}
        self.base_knobs: dict[str, Any] = {}
        self.base_by_seed: dict[tuple[str, int], float] = {}
        self.base_vals: dict[str, list[float]] = {}
        for r in rows:
            if BASELINE_TAG in r.tags:
                self.base_knobs = self.base_knobs or dict(r.knobs)
                if r.status == "ok" and r.val_bpb is not None:
                    self.base_by_seed.setdefault((r.ran_on, r.seed), r.val_bpb)
                    self.base_vals.setdefault(r.ran_on, []).append(r.val_bpb)

    def parent_knobs(self, r: MemRow) -> Mapping[str, Any] | None:
        if r.parent == BASELINE:
            return self.base_knobs or None
        p = self.by_id.get(r.parent)
        return p.knobs if p is not None else None

    def parent_val(self, r: MemRow) -> float | None:
        """The parent's value on the class ``r`` ran on (paired by seed for the baseline)."""
        if r.parent == BASELINE:
            v = self.base_by_seed.get((r.ran_on, r.seed))
            if v is not None:
                return v
            vals = self.base_vals.get(r.ran_on)
            return statistics.fmean(vals) if vals else None
        p = self.by_id.get(r.parent)
        if p is None or p.status != "ok" or p.ran_on != r.ran_on:
            return None
        return p.val_bpb

    def change(self, r: MemRow) -> tuple[dict[str, Any], str]:
        pk = self.parent_knobs(r)
        return (knob_changes(r.knobs, pk) if pk is not None else {}), code_change(r.diff)


def _own_change(r: MemRow) -> bool:
    return BASELINE_TAG not in r.tags and not any(t in r.tags for t in RERUN_TAGS)


def build_memory(rows: Sequence[MemRow], notes: Sequence[NoteRow], req: MemoryRequest,
                 diff_of: Callable[[str], str] | None = None) -> MemoryReply:  # fmt: skip
    """The memory of a run (see the module docstring). ``diff_of(id)``: the diff of a lineage step whose
    row carries none (the ledger fetches only those)."""
    ix = _Index(rows)
    finished = [r for r in rows if r.status is not None]
    finished.sort(key=lambda r: r.order)
    return MemoryReply(
        classes=_classes(ix, rows, req, diff_of),
        top=_top(finished, ix, req),
        knobs=(effects := _knob_effects(finished, ix))[0][: max(0, req.knob_rows)],
        interactions=effects[1][: max(0, req.interactions)],
        dead_ends=_dead_ends(finished, ix, req),
        notebook=_notebook(notes, req),
        in_flight=_in_flight(rows, ix, req),
        in_flight_total=sum(1 for r in rows if r.status is None and BASELINE_TAG not in r.tags),
        experiments=sum(1 for r in finished if BASELINE_TAG not in r.tags),
    )


def _kept(r: MemRow) -> bool:
    return r.decision == "keep" and r.status == "ok" and r.val_bpb is not None


def _classes(ix: _Index, rows: Sequence[MemRow], req: MemoryRequest,
             diff_of: Callable[[str], str] | None) -> list[ClassMemory]:  # fmt: skip
    classes = sorted({r.ran_on for r in rows if r.status == "ok" and r.ran_on} | set(ix.base_vals))
    if req.hw_class:
        classes = [c for c in classes if c == req.hw_class]
    out = []
    for cls in classes:
        kept = [r for r in rows if _kept(r) and r.ran_on == cls]
        base = ix.base_vals.get(cls)
        base_mean = statistics.fmean(base) if base else None
        if not kept:
            out.append(ClassMemory(hw_class=cls, best_val_bpb=base_mean, best_id=BASELINE, best_agent=BASELINE,
                                   description="the unmodified train.py (nothing kept yet)", baseline_val_bpb=base_mean,
                                   kept=0))  # fmt: skip
            continue
        best = min(kept, key=lambda r: (r.val_bpb or 0.0, r.order))
        steps: list[LineageStep] = []
        cur: MemRow | None = best
        seen: set[str] = set()
        while cur is not None and cur.hypothesis_id not in seen and len(steps) < max(1, req.lineage_steps):
            seen.add(cur.hypothesis_id)
            pv = ix.parent_val(cur)
            changes, code = ix.change(cur)
            diff = cur.diff or (diff_of(cur.hypothesis_id) if diff_of else "")
            steps.append(LineageStep(
                hypothesis_id=cur.hypothesis_id, agent=cur.agent, val_bpb=cur.val_bpb, parent=cur.parent,
                delta=(cur.val_bpb - pv) if cur.val_bpb is not None and pv is not None else None,
                description=cur.description[:300], change=change_key(changes, code),
                diff=_cut(diff, req.diff_chars), demoted=cur.decision == DEMOTED,
            ))  # fmt: skip
            cur = ix.by_id.get(cur.parent) if cur.parent != BASELINE else None
        steps.reverse()
        out.append(ClassMemory(hw_class=cls, best_val_bpb=best.val_bpb, best_id=best.hypothesis_id,
                               best_agent=best.agent, description=best.description[:300], baseline_val_bpb=base_mean,
                               kept=len(kept), lineage=steps))  # fmt: skip
    return out


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(0, n)] + "\n… (cut)"


def _top(finished: Sequence[MemRow], ix: _Index, req: MemoryRequest) -> list[TopResult]:
    ok = [r for r in finished if r.status == "ok" and r.val_bpb is not None and _own_change(r)]
    ok.sort(key=lambda r: (r.val_bpb or 0.0, r.order))
    chosen = ok[: max(0, req.top)]
    have = {r.hypothesis_id for r in chosen}
    best_of: dict[str, MemRow] = {}
    for r in ok:
        best_of.setdefault(r.agent, r)
    chosen += [r for a, r in sorted(best_of.items()) if r.hypothesis_id not in have][: max(0, req.top)]
    out = []
    for r in chosen:
        pv = ix.parent_val(r)
        changes, code = ix.change(r)
        out.append(TopResult(hypothesis_id=r.hypothesis_id, agent=r.agent, hw_class=r.ran_on, val_bpb=r.val_bpb or 0.0,
                             delta=(r.val_bpb - pv) if r.val_bpb is not None and pv is not None else None,
                             description=r.description[:200], decision=r.decision or "",
                             change=change_key(changes, code)))  # fmt: skip
    return out


def _knob_effects(finished: Sequence[MemRow], ix: _Index) -> tuple[list[KnobEffect], list[Interaction]]:
    single: dict[tuple[str, str], list[float]] = {}
    joint: dict[tuple[str, str], list[float]] = {}
    failed: dict[tuple[str, str], int] = {}
    # (parent, class) -> {frozenset of changes: [Δ]} for interactions
    by_parent: dict[tuple[str, str], dict[frozenset[tuple[str, str]], list[float]]] = {}
    for r in finished:
        if not _own_change(r):
            continue
        changes, code = ix.change(r)
        if not changes or code:
            continue  # a code edit's Δ is not a knob's
        items = frozenset((k, fmt_value(v)) for k, v in changes.items())
        if r.status != "ok":
            if r.status in FAILED:
                for it in items:
                    failed[it] = failed.get(it, 0) + 1
            continue
        pv = ix.parent_val(r)
        if r.val_bpb is None or pv is None:
            continue
        d = r.val_bpb - pv
        for it in items:
            (single if len(items) == 1 else joint).setdefault(it, []).append(d)
        by_parent.setdefault((r.parent, r.ran_on), {}).setdefault(items, []).append(d)
    effects = []
    for key in set(single) | set(joint) | set(failed):
        s, j = single.get(key, []), joint.get(key, [])
        effects.append(KnobEffect(
            knob=key[0], value=key[1], n=len(s), mean_delta=statistics.fmean(s) if s else None,
            sigma=statistics.stdev(s) if len(s) >= 2 else None, best_delta=min(s) if s else None,
            n_joint=len(j), joint_mean_delta=statistics.fmean(j) if j else None, failed=failed.get(key, 0),
        ))  # fmt: skip
    # the best-informed and most useful first: by knob, then most negative Δ
    effects.sort(key=lambda e: (e.knob, e.mean_delta if e.mean_delta is not None else math.inf, e.value))
    effects = _rank_knobs(effects)
    inter = []
    for (parent, cls), combos in by_parent.items():
        for items, ds in combos.items():
            if len(items) != 2:
                continue
            a, b = sorted(items)
            da, db = combos.get(frozenset([a])), combos.get(frozenset([b]))
            if not da or not db:
                continue
            dab, ma, mb = statistics.fmean(ds), statistics.fmean(da), statistics.fmean(db)
            inter.append(Interaction(a=f"{a[0]}={a[1]}", b=f"{b[0]}={b[1]}", hw_class=cls, parent=parent,
                                     n=min(len(ds), len(da), len(db)), delta_ab=dab, delta_a=ma, delta_b=mb,
                                     interaction=dab - ma - mb))  # fmt: skip
    inter.sort(key=lambda i: -abs(i.interaction))
    return effects, inter


def _rank_knobs(effects: list[KnobEffect]) -> list[KnobEffect]:
    """Knobs with the most evidence first (then each knob's values, best Δ first), so a cap keeps them."""
    by_knob: dict[str, list[KnobEffect]] = {}
    for e in effects:
        by_knob.setdefault(e.knob, []).append(e)
    order = sorted(by_knob, key=lambda k: (-sum(e.n + e.n_joint + e.failed for e in by_knob[k]), k))
    return [e for k in order for e in by_knob[k]]


def _dead_ends(finished: Sequence[MemRow], ix: _Index, req: MemoryRequest) -> list[DeadEnd]:
    groups: dict[str, list[tuple[MemRow, float | None]]] = {}
    for r in finished:
        if not _own_change(r):
            continue
        pv = ix.parent_val(r)
        d = (r.val_bpb - pv) if r.status == "ok" and r.val_bpb is not None and pv is not None else None
        if r.status == "ok" and (d is None or d <= 0):
            continue  # a success that did not lose is no dead end
        changes, code = ix.change(r)
        key = change_key(changes, code) if (changes or code) else f"{r.description[:120]}"
        groups.setdefault(key, []).append((r, d))
    out = []
    for key, items in groups.items():
        last, _ = items[-1]
        deltas = [d for _, d in items if d is not None]
        statuses = sorted({r.status or "" for r, _ in items})
        out.append(DeadEnd(change=key, status="/".join(statuses), n=len(items),
                           mean_delta=statistics.fmean(deltas) if deltas else None,
                           reason=(last.description if last.status == "ok" else f"{last.description}")[:200],
                           example_id=last.hypothesis_id, agent=last.agent))  # fmt: skip
    # failures first (they waste a run and teach nothing), then the biggest losses, most repeated first
    out.sort(key=lambda e: ("ok" in e.status, -(e.mean_delta or 0.0), -e.n))
    return out[: max(0, req.dead_ends)]


def _notebook(notes: Sequence[NoteRow], req: MemoryRequest) -> list[NoteRow]:
    latest: dict[str, NoteRow] = {}
    for n in notes:
        if n.agent not in latest or n.ts >= latest[n.agent].ts:
            latest[n.agent] = n
    recent = sorted(notes, key=lambda n: n.ts)[-max(0, req.notes):] if req.notes else []
    chosen = {n.note_id: n for n in [*latest.values(), *recent]}
    rows = sorted(chosen.values(), key=lambda n: n.ts)[-max(0, req.notes + len(latest)):]
    return [NoteRow(note_id=n.note_id, agent=n.agent, title=n.title[:200], body=_cut(n.body, req.note_chars),
                    refs=list(n.refs)[:20], ts=n.ts) for n in rows]  # fmt: skip


def _in_flight(rows: Sequence[MemRow], ix: _Index, req: MemoryRequest) -> list[InFlight]:
    pending = [r for r in rows if r.status is None and BASELINE_TAG not in r.tags]
    pending.sort(key=lambda r: -r.proposed_ts)
    out = []
    for r in pending[: max(0, req.in_flight)]:
        changes, code = ix.change(r)
        out.append(InFlight(hypothesis_id=r.hypothesis_id, agent=r.agent, description=r.description[:200],
                            change=change_key(changes, code), parent=r.parent, hw_class=r.hw_class, tier=r.tier,
                            runner=r.runner, proposed_ts=r.proposed_ts,
                            tags=[t for t in r.tags if t != BASELINE_TAG]))  # fmt: skip
    return out
