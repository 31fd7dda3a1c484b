"""The swarm's shared memory (:class:`bus.events.MemoryReply`) as prompt sections, bounded in size: what an
LLM agent reads of the other agents' work before proposing."""

from __future__ import annotations

from bus.events import MemoryReply

MAX_DIFF_TOTAL = 6000  # characters of lineage diffs in one prompt (newest steps first)


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def memory_sections(mem: MemoryReply, agent: str) -> list[str]:
    """Markdown sections: bests with lineage and diffs, top results, knob effects, interactions, dead
    ends, what is in flight, the notebook."""
    out: list[str] = []
    if mem.classes:
        out.append("\n## Current best per hardware class, and the kept steps that led there (Δ vs parent)")
        budget = MAX_DIFF_TOTAL
        for c in mem.classes:
            out.append(f"### {c.hw_class}: {_f(c.best_val_bpb)} by {c.best_agent} ({c.best_id[:8]}), baseline "
                       f"{_f(c.baseline_val_bpb)}, {c.kept} kept: {c.description}")  # fmt: skip
            for i, s in enumerate(c.lineage, 1):
                demoted = " — DEMOTED by an audit (its gain did not survive)" if s.demoted else ""
                out.append(f"{i}. {s.hypothesis_id[:8]} by {s.agent}: {_f(s.val_bpb)} (Δ {_f(s.delta, True)}) "
                           f"{s.description} [{s.change}]{demoted}")  # fmt: skip
            for s in reversed(c.lineage):  # the newest steps' diffs first, within the budget
                if s.diff and len(s.diff) <= budget:
                    budget -= len(s.diff)
                    out.append(f"diff of {s.hypothesis_id[:8]}:\n```diff\n{s.diff.rstrip()}\n```")
    if mem.top:
        out.append("\n## Best results of all agents")
        out.append("| id | agent | class | val_bpb | Δ parent | decision | change |\n|---|---|---|---|---|---|---|")
        for t in mem.top:
            out.append(f"| {t.hypothesis_id[:8]} | {t.agent}{' (you)' if t.agent == agent else ''} | {t.hw_class} | "
                       f"{t.val_bpb:.4f} | {_f(t.delta, True)} | {t.decision} | {t.change[:120]} |")  # fmt: skip
    if mem.knobs:
        out.append("\n## Knob effects (Δ val_bpb vs the parent, same class; negative is better). "
                   "n/mean/σ/best: the knob changed alone; joint: changed with other knobs")  # fmt: skip
        out.append("| knob | value | n | mean Δ | σ | best Δ | n joint | joint mean Δ | failed |\n"
                   "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
        for e in mem.knobs:
            out.append(f"| {e.knob} | {e.value} | {e.n} | {_f(e.mean_delta, True)} | {_f(e.sigma)} | "
                       f"{_f(e.best_delta, True)} | {e.n_joint} | {_f(e.joint_mean_delta, True)} | {e.failed} |")  # fmt: skip
    if mem.interactions:
        out.append("\n## Interactions the data supports (both changes alone and together, from one parent)")
        for x in mem.interactions:
            out.append(f"- {x.a} with {x.b} on {x.hw_class}: together {x.delta_ab:+.4f}, alone {x.delta_a:+.4f} "
                       f"and {x.delta_b:+.4f}: interaction {x.interaction:+.4f}")  # fmt: skip
    if mem.dead_ends:
        out.append("\n## Dead ends: changes that failed or lost (do not repeat them)")
        for d in mem.dead_ends:
            out.append(f"- [{d.change[:160]}] {d.status} ×{d.n}, mean Δ {_f(d.mean_delta, True)}: {d.reason[:120]} "
                       f"({d.agent}, {d.example_id[:8]})")  # fmt: skip
    out.append(f"\n## In flight now ({mem.in_flight_total} proposed, not finished): being tested, do not duplicate")
    for f in mem.in_flight:
        where = f"running on {f.runner}" if f.runner else "queued"
        out.append(f"- {f.hypothesis_id[:8]} by {f.agent}{' (you)' if f.agent == agent else ''}, {where} "
                   f"({f.tier}, {f.hw_class}): {f.description[:120]} [{f.change[:120]}]")  # fmt: skip
    if mem.notebook:
        out.append("\n## Notebook (each agent's latest note and the latest notes overall)")
        for n in mem.notebook:
            out.append(f"### {n.title} ({n.agent})\n{n.body}")
    return out
