"""Waves as a first-class idea: a proposer's grid expanded into one wave, and every wave analysed when it
completes.

* :func:`expand` turns a :class:`~agents.proposers.base.Grid` (knobs × values, optionally × code variants)
  into drafts on the parent: the full factorial, capped, without the point equal to the parent. The loop
  then validates them like any proposal, which drops what the ledger has seen and what is in flight.
* Every published batch of two or more hypotheses is a wave (tag ``wave:<id>``). When all of its members
  have finished, :func:`analyse` computes, from the members that ran ok on one class:

  - for a grid: each factor's main effect (level means against the wave's mean, on common seeds) and every
    two-factor interaction whose cells are all present (the cell mean minus what the two main effects
    predict; the largest deviation is reported);
  - for any other batch (Optuna's, a random search's, an LLM's list): for each knob that varies, its level
    means when it takes few values, else the mean of the upper half of its values minus the lower half —
    marginal, confounded with whatever else varied, and said to be so.

  The analysis is written to the notebook as a note every agent reads.
"""

from __future__ import annotations

import itertools
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.edits import apply_edits
from agents.errors import ValidationError
from agents.knobs import apply_knobs, base_name, parse_knobs
from agents.proposers.base import Grid, NoteDraft, ProposalDraft, Rejection
from bus.memory import fmt_value

WAVE_TAG = "wave:"  # + the wave's id: the tag of every member of one wave


def new_wave_id() -> str:
    return uuid.uuid4().hex[:10]


def resolve_knob(name: str, knobs: Mapping[str, Any], device: str | None) -> str | None:
    """The knob of the parent a grid names: itself, or its twin of this profile (``DEPTH`` -> ``CPU_DEPTH``)."""
    if name in knobs:
        return name
    twins = [k for k in knobs if base_name(k) == name and (device is None or k.startswith(device.upper() + "_"))]
    return twins[0] if len(twins) == 1 else None


def expand(grid: Grid, parent_source: str, *, limit: int, device: str | None = None
           ) -> tuple[list[ProposalDraft], list[Rejection]]:  # fmt: skip
    """Every combination of the grid's factors and variants as a draft on ``parent_source`` (the parent
    itself left out), at most ``limit`` of them."""
    rejections: list[Rejection] = []
    try:
        knobs = parse_knobs(parent_source)
    except ValidationError as e:
        return [], [Rejection(str(e), grid.description)]
    factors: dict[str, list[Any]] = {}
    for name, values in grid.factors.items():
        knob = resolve_knob(name, knobs, device)
        if knob is None:
            rejections.append(Rejection(f"grid factor {name!r} is not a knob of the parent train.py; knobs are "
                                        f"{', '.join(knobs)}", grid.description))  # fmt: skip
            return [], rejections
        factors[knob] = list(dict.fromkeys(_hashable(v) for v in values))
    variants: list[tuple[str, list[Any] | None]] = [("", None)]
    if grid.variants:
        variants = [(label, edits) for label, edits in grid.variants]
    size = len(variants) * _product(len(v) for v in factors.values())
    if size > limit:
        rejections.append(Rejection(f"the grid has {size} combinations; at most {limit} fit this wave: fewer "
                                    "values or factors", grid.description))  # fmt: skip
        return [], rejections
    drafts: list[ProposalDraft] = []
    names = list(factors)
    for label, edits in variants:
        try:
            base = apply_edits(parent_source, edits) if edits else parent_source
        except ValidationError as e:
            rejections.append(Rejection(f"variant {label!r}: {e}", grid.description))
            continue
        for combo in itertools.product(*(factors[n] for n in names)):
            setting = dict(zip(names, combo, strict=True))
            try:
                source = apply_knobs(base, setting)
            except ValidationError as e:
                rejections.append(Rejection(str(e), grid.description))
                return [], rejections
            if source == parent_source:
                continue  # the parent itself: it is the reference, already run
            parts = [f"{k}={fmt_value(v)}" for k, v in setting.items() if knobs[k].value != v]
            desc = ", ".join(([label] if label else []) + parts) or label or "parent"
            drafts.append(ProposalDraft(description=f"grid {grid.description[:200]}: {desc}"[:500],
                                        rationale=grid.rationale[:2000], source=source, knobs=setting))  # fmt: skip
    return drafts, rejections


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _product(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@dataclass
class Wave:
    """One published wave: its members, its parent and, for a grid, its factors."""

    wave_id: str
    agent: str
    parent: str
    members: list[str] = field(default_factory=list)
    factors: list[str] = field(default_factory=list)  # knob names of a grid ([] for any other batch)
    description: str = ""


@dataclass(frozen=True)
class Member:
    """A finished member of a wave, as the analysis needs it."""

    hypothesis_id: str
    val_bpb: float | None  # None: not ok
    knobs: Mapping[str, Any]
    variant: str = ""


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs)


def analyse(wave: Wave, members: Sequence[Member], *, sigma: float | None = None) -> NoteDraft | None:
    """Main effects and interactions of a completed wave, as a note (None: fewer than two ok members)."""
    ok = [m for m in members if m.val_bpb is not None]
    if len(ok) < 2:
        return None
    vals = [m.val_bpb for m in ok if m.val_bpb is not None]
    grand = _mean(vals)
    best = min(ok, key=lambda m: m.val_bpb or 0.0)
    lines = [f"Wave {wave.wave_id} by {wave.agent} on {wave.parent[:8]}: {len(ok)} of {len(members)} ok, "
             f"mean {grand:.4f}, best {best.val_bpb:.4f} ({best.hypothesis_id[:8]})"
             + (f"; noise σ {sigma:.4f}" if sigma else "")]  # fmt: skip
    grid = bool(wave.factors)
    varying = wave.factors if grid else [k for k in sorted({k for m in ok for k in m.knobs})
                                         if len({_key(m.knobs.get(k)) for m in ok}) > 1]  # fmt: skip
    if not varying:
        lines.append("No knob varied within the wave: results ranked only.")
    effects: dict[str, dict[str, float]] = {}
    for k in varying:
        levels: dict[str, list[float]] = {}
        for m in ok:
            levels.setdefault(_key(m.knobs.get(k)), []).append(m.val_bpb or 0.0)
        if len(levels) < 2:
            continue
        if len(levels) <= 4 or grid:
            means = {lv: _mean(v) for lv, v in levels.items()}
            effects[k] = means
            spread = max(means.values()) - min(means.values())
            cells = ", ".join(f"{lv}: {mu - grand:+.4f} (n={len(levels[lv])})" for lv, mu in sorted(means.items()))
            flag = " (beyond noise)" if sigma and spread > 2 * sigma else ""
            lines.append(f"- main effect of {k}: {cells}; best {min(means, key=means.__getitem__)}, "
                         f"spread {spread:.4f}{flag}")  # fmt: skip
        else:
            xs = sorted(ok, key=lambda m: _num(m.knobs.get(k)))
            half = len(xs) // 2
            lo, hi = [m.val_bpb or 0.0 for m in xs[:half]], [m.val_bpb or 0.0 for m in xs[-half:]]
            lines.append(f"- {k}: upper half of its values {_mean(hi) - _mean(lo):+.4f} vs the lower half "
                         f"(marginal: confounded with the other knobs that varied)")  # fmt: skip
    if grid:
        for a, b in itertools.combinations([k for k in varying if k in effects], 2):
            pairs: dict[tuple[str, str], list[float]] = {}
            for m in ok:
                pairs.setdefault((_key(m.knobs.get(a)), _key(m.knobs.get(b))), []).append(m.val_bpb or 0.0)
            if len(pairs) < len(effects[a]) * len(effects[b]):
                continue  # a cell is missing (failed or deduplicated): no estimate
            dev = {c: _mean(v) - effects[a][c[0]] - effects[b][c[1]] + grand for c, v in pairs.items()}
            worst = max(dev, key=lambda c: abs(dev[c]))
            flag = " (beyond noise)" if sigma and abs(dev[worst]) > 2 * sigma else ""
            lines.append(f"- interaction {a} × {b}: largest cell deviation {dev[worst]:+.4f} at {a}={worst[0]}, "
                         f"{b}={worst[1]}{flag}")  # fmt: skip
    ranked = sorted(ok, key=lambda m: m.val_bpb or 0.0)
    lines.append("Ranked: " + "; ".join(f"{m.hypothesis_id[:8]} {m.val_bpb:.4f}" for m in ranked[:8]))
    failed = [m for m in members if m.val_bpb is None]
    if failed:
        lines.append(f"Failed: {', '.join(m.hypothesis_id[:8] for m in failed)}")
    title = f"wave analysis: {wave.description[:120] or wave.wave_id}"
    return NoteDraft(title, "\n".join(lines), tuple(m.hypothesis_id for m in members))


def _key(v: Any) -> str:
    return fmt_value(v) if v is not None else "—"


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0
