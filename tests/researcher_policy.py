"""A scripted researcher standing in for an LLM: it answers the agent's real prompt (sent through the official
anthropic SDK to :class:`tests.fake_llm_server.FakeLlmServer`) with tool calls, reading only what the prompt
says — the parent train.py and its knobs, the shared memory's knob effects, dead ends and work in flight —
like a careful person doing coordinate descent:

* moves: each tunable knob of the parent, one at a time, to a neighbouring value (×0.5, ×0.7, ×1.4, ×2 for
  a positive float, a small step from zero, ±20 %/±40 % for a size, ±1/±2 or ×2/÷2 for a small or
  power-of-two int, the other value of a bool); sizes, learning rates and the schedule first, as any
  researcher would;
* ranks them: a value the effect table says helped (most negative mean Δ first), then a move in a
  direction that helped this knob, then knobs nobody tried (in an order that rotates with the wave), and
  last the directions that hurt; drops dead ends, what is in flight, and what was tried on this parent;
* combines first: the moves that helped alone, all together in one experiment (and, with room, each left
  out in turn) — what parallel capacity buys a researcher who reads the knob table;
* proposes the best ``k`` (at most two per knob while other knobs remain), as ``propose_experiments`` with
  search/replace edits of the knob lines; with room for eight or more and two knobs that helped, a 2×2
  ``propose_grid`` of them as well (their interaction);
* writes a one-line note of the moves that helped so far.

Deterministic for a given prompt. Used by bench/bench_speedup.py (the speed-up at 16 runners with an LLM
agent's whole path) and the agents' tests.
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

from bus.trainpy import parse_knobs
from tests.fake_llm_server import Recorded, Reply, anthropic_tool_use, openai_completion

FIRST = ("ASPECT_RATIO", "DEPTH", "MATRIX_LR", "EMBEDDING_LR", "TOTAL_BATCH_SIZE", "WARMDOWN_RATIO", "FINAL_LR_FRAC",
         "WEIGHT_DECAY", "HEAD_DIM", "WARMUP_RATIO")
SKIP = {"SEED", "COMPILE", "LOG_INTERVAL", "LOSS_EXPLODE", "EVAL_TOKENS", "MAX_SEQ_LEN", "TIME_BUDGET", "NS_STEPS"}
_SOURCE = re.compile(r"## Parent train.py \((\S+), val_bpb [^)]*\); your edits apply to this\n```python\n(.*?)\n```", re.S)
_WAVE = re.compile(r"# Wave (\d+): propose up to (\d+) experiments")
_EFFECT = re.compile(r"^\| ([A-Z][A-Z0-9_]*) \| (.+?) \| (\d+) \| ([-+]?\d*\.?\d+|—) \|", re.M)
_BRACKETS = re.compile(r"\[([^\]\n]+)\]")


def _section(prompt: str, title: str) -> str:
    i = prompt.find(title)
    if i < 0:
        return ""
    j = prompt.find("\n## ", i + len(title))
    return prompt[i: j if j > 0 else len(prompt)]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _neighbours(name: str, v: Any, ring: int = 0) -> list[Any]:
    """Values next to ``v``; ``ring`` 1: the next ones out and in (when the first ring is used up)."""
    if ring:
        if isinstance(v, bool) or not isinstance(v, int | float) or v == 0:
            return []
        if isinstance(v, int) and v < 16:
            return [x for x in (v - 3, v + 3) if x >= 1]
        ratio = isinstance(v, float) and any(s in name for s in ("RATIO", "FRAC", "DECAY", "CLIP", "DROPOUT"))
        out = [round(v * f, 6) if isinstance(v, float) else max(1, round(v * f)) for f in (0.85, 1.2, 0.35, 3.0)]
        return [x for x in out if x != v and (not ratio or x <= 1.0)]
    if isinstance(v, bool):
        return [not v]
    if isinstance(v, int):
        if v >= 8 and v & (v - 1) == 0:
            return [v // 2, v * 2]
        if v >= 16:  # a size: relative steps (a step of one would change nothing that matters)
            return sorted({max(1, round(v * f)) for f in (1.2, 0.8, 1.4, 0.6)} - {v}, key=lambda x: abs(x / v - 1.1))
        return [x for x in (v - 1, v + 1, v - 2, v + 2) if x >= 1]
    if isinstance(v, float):
        ratio = any(s in name for s in ("RATIO", "FRAC", "DECAY", "CLIP", "DROPOUT"))
        if v == 0.0:
            return [0.05, 0.1, 0.02] if ratio else []
        out = [round(v * f, 6) for f in (0.5, 1.4, 0.7, 2.0)]
        if "BETA" in name or "MOMENTUM" in name:
            out = [round(min(0.999, v + d), 4) for d in (0.02, -0.05, 0.04)]
        return [x for x in out if not ratio or x <= 1.0]
    return []


def _fmt(v: Any) -> str:
    """A value as the shared memory writes it (bus.memory.fmt_value)."""
    from bus.memory import fmt_value

    return fmt_value(v)


def plan(prompt: str, who: str = "") -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """(experiments, a grid or None, a note) for one prompt; ``who`` (the agent's name, from the system
    prompt) varies the order in which untried knobs are explored, as two researchers' tastes differ."""
    m = _SOURCE.search(prompt)
    w = _WAVE.search(prompt)
    if m is None or w is None:
        return [], None, ""
    parent, source = m.group(1), m.group(2)
    wave, k = int(w.group(1)), int(w.group(2))
    knobs = parse_knobs(source)
    classes = _section(prompt, "## Hardware classes")
    other = "GPU_" if re.search(r"^- cpu:", classes, re.M) else "CPU_"
    effects: dict[tuple[str, str], float] = {}
    for name, value, n, mean in _EFFECT.findall(_section(prompt, "## Knob effects")):
        if int(n) > 0 and mean != "—":
            effects[(name, value.strip())] = float(mean)
    avoid: set[str] = set()
    for title in ("## Dead ends", "## In flight", "## Already tried on your parent"):
        avoid |= set(_BRACKETS.findall(_section(prompt, title)))
    lines = source.splitlines(keepends=True)
    scored: list[tuple[float, str, Any]] = []
    for name, knob in knobs.items():
        if name in SKIP or name.startswith(other) or isinstance(knob.value, str | tuple):
            continue
        helped_up = [d for (kn, val), d in effects.items() if kn == name and d < 0 and _gt(_literal(val), knob.value)]
        helped_down = [d for (kn, val), d in effects.items() if kn == name and d < 0 and _gt(knob.value, _literal(val))]
        hurt = [d for (kn, _), d in effects.items() if kn == name and d > 0]
        # what any researcher tries first (size, learning rates, schedule), in an order of its own taste
        prior = next((i for i, p in enumerate(FIRST) if p in name), len(FIRST)) / len(FIRST)
        rot = 0.5 * prior + 0.5 * int(hashlib.sha256(f"{who}|{name}|{wave // 3}".encode()).hexdigest()[:6], 16) / 2**24
        first = _neighbours(name, knob.value)
        fresh = [v for v in first if f"{name}={_fmt(v)}" not in avoid and effects.get((name, _fmt(v))) is None]
        for v in first + (_neighbours(name, knob.value, ring=1) if not fresh else []):
            key = f"{name}={_fmt(v)}"
            if key in avoid or v == knob.value:
                continue
            known = effects.get((name, _fmt(v)))
            here = effects.get((name, _fmt(knob.value)))  # the parent's own value, when a change made it
            if known is not None:
                if known >= 0 or (here is not None and known >= here):
                    continue  # tried, and did not help, or less than the value the parent has now
                score = known * 10
            elif (helped_up and _gt(v, knob.value)) or (helped_down and _gt(knob.value, v)):
                score = -0.5 * max(abs(d) for d in helped_up + helped_down)
            elif hurt and not (helped_up or helped_down):
                score = 0.5 + rot
            else:
                score = rot  # explore
            scored.append((score, name, v))
    scored.sort(key=lambda t: (t[0], t[1], str(t[2])))
    # combine: the moves that helped on their own, all together (and leaving each out when there is room),
    # before trying more single moves — parallel capacity spent on what the knob table already says
    helpful: dict[str, Any] = {}
    for (name, value), d in sorted(effects.items(), key=lambda kv: kv[1]):
        cur = knobs.get(name)
        here = effects.get((name, _fmt(cur.value))) if cur is not None else None
        if cur is None or name.startswith(other) or name in SKIP or d >= 0 or name in helpful:
            continue
        v = _literal(value)
        if isinstance(v, str) or v == cur.value or (here is not None and d >= here):
            continue
        helpful[name] = v
    combos: list[dict[str, Any]] = []
    if len(helpful) >= 2:
        combos.append(dict(helpful))
        if k >= len(helpful) + 2:
            combos += [{n: v for n, v in helpful.items() if n != out} for out in helpful]
    combos = [c for c in combos if len(c) >= 2 and _key(c) not in avoid][: max(1, k // 3)]
    chosen: list[tuple[str, Any]] = []
    per_knob: dict[str, int] = {}
    for _, name, v in scored:
        cap = 2 if len({n for _, n, _ in scored}) > k else k
        if per_knob.get(name, 0) >= cap:
            continue
        chosen.append((name, v))
        per_knob[name] = per_knob.get(name, 0) + 1
        if len(chosen) >= k - len(combos):
            break
    experiments = []
    for combo in combos:
        edits = []
        for name, v in combo.items():
            knob = knobs[name]
            line = lines[knob.lineno - 1]
            edits.append({"search": line, "replace": line[: knob.col_offset] + _literal_text(v) + line[knob.end_col_offset:]})
        experiments.append({"description": "together: " + ", ".join(f"{n}={_literal_text(v)}" for n, v in combo.items()),
                            "rationale": "each helped alone", "edits": edits})  # fmt: skip
    for name, v in chosen:
        knob = knobs[name]
        line = lines[knob.lineno - 1]
        new = line[: knob.col_offset] + _literal_text(v) + line[knob.end_col_offset:]
        experiments.append({"description": f"{name} {knob.source_text} -> {_literal_text(v)}",
                            "rationale": "coordinate descent on the knob table",
                            "edits": [{"search": line, "replace": new}]})  # fmt: skip
    grid = None
    good = sorted({n for (n, _), d in effects.items() if d < 0 and n in knobs and not n.startswith(other)})
    if k >= 8 and len(good) >= 2:
        a, b = good[:2]
        va = _best_value(effects, a, knobs[a].value)
        vb = _best_value(effects, b, knobs[b].value)
        if va is not None and vb is not None:
            grid = {"description": f"{a} x {b}", "rationale": "both helped alone: do they add up?",
                    "factors": [{"knob": a, "values": [knobs[a].value, va]}, {"knob": b, "values": [knobs[b].value, vb]}]}
            experiments = experiments[: max(0, k - 3)]
    helped = sorted(((d, f"{n}={v}") for (n, v), d in effects.items() if d < 0))[:5]
    note = f"wave {wave} on {parent[:8]}: " + (", ".join(f"{c} ({d:+.4f})" for d, c in helped) or "nothing helped yet")
    return experiments, grid, note


def _key(changes: dict[str, Any]) -> str:
    """The change key the shared memory uses (bus.memory.change_key)."""
    from bus.memory import change_key

    return change_key(changes)


def _gt(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:
        return False


def _best_value(effects: dict[tuple[str, str], float], name: str, current: Any) -> Any:
    vals = sorted((d, v) for (n, v), d in effects.items() if n == name and d < 0)
    for _, v in vals:
        lit = _literal(v)
        if lit != current and not isinstance(lit, str):
            return lit
    return None


def _literal_text(v: Any) -> str:
    from agents.knobs import format_value

    return format_value(v)


_WHO = re.compile(r"You are (\S+), one researcher")


def respond(rec: Recorded) -> Reply:
    """The policy's answer to one request of either API."""
    if rec.path.endswith("/messages"):
        content = rec.body["messages"][-1]["content"]
        prompt = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
        who = _WHO.search(str(rec.body.get("system", "")))
        experiments, grid, note = plan(prompt, who.group(1) if who else "")
        calls: list[tuple[str, Any]] = []
        if experiments:
            calls.append(("propose_experiments", {"experiments": experiments}))
        if grid:
            calls.append(("propose_grid", grid))
        if note:
            calls.append(("write_note", {"title": "what helped so far", "body": note}))
        return anthropic_tool_use(calls or [("write_note", {"title": "nothing left", "body": "no move left"})],
                                  input_tokens=len(prompt) // 4, output_tokens=200)  # fmt: skip
    import json

    prompt = rec.body["messages"][-1]["content"]
    who = _WHO.search(str(rec.body["messages"][0].get("content", "")))
    experiments, grid, note = plan(prompt, who.group(1) if who else "")
    calls_oa = [("propose_experiments", json.dumps({"experiments": experiments}))] if experiments else []
    if grid:
        calls_oa.append(("propose_grid", json.dumps(grid)))
    return openai_completion(calls_oa or None, content=None if calls_oa else note or "nothing left",
                             prompt_tokens=len(prompt) // 4)  # fmt: skip
