"""An agent's side of the swarm's shared memory and of its waves.

* :func:`read_memory` asks the ledger for the memory (:class:`bus.events.MemoryRequest`) and, when it does
  not answer (or the agent is isolated), builds the same thing from the events it read;
* :func:`avoid_set` is what a knob proposer must not propose on a parent: changes that failed (dead ends,
  by normalised content) and what any agent is testing on the same parent right now;
* :class:`WaveBook` remembers the agent's published waves and writes each one's analysis to the notebook
  when its last member finishes (:mod:`agents.waves`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agents.config import AgentConfig
from agents.errors import ValidationError
from agents.knobs import format_value, parse_knobs
from agents.tail import RunTail
from agents.waves import WAVE_TAG, Member, Wave, analyse, new_wave_id
from bus.events import BASELINE, BASELINE_TAG, HypothesisProposed, MemoryReply, MemoryRequest, NoteRow
from bus.memory import RERUN_TAGS, build_memory, change_key, code_change, knob_changes
from bus.readapi import LedgerClient
from bus.trainpy import sha256


async def read_memory(cfg: AgentConfig, tail: RunTail, ledger: LedgerClient,
                      ask: Callable[[str, Awaitable[Any]], Awaitable[Any]],
                      sees: Callable[[str], bool]) -> MemoryReply:  # fmt: skip
    """The shared memory for this agent's next wave."""
    if cfg.isolated:  # only its own work and the baselines, built from the events
        rows = [r for r in tail.memory_rows() if sees(r.agent)]
        notes = [NoteRow(note_id=n.note_id, agent=n.agent, title=n.title, body=n.body, refs=list(n.refs), ts=n.ts)
                 for n in tail.notes if n.agent == cfg.agent]  # fmt: skip
        return build_memory(rows, notes, MemoryRequest(run=cfg.run, agent=cfg.agent))
    reply = await ask("memory", ledger.memory(cfg.agent))
    if isinstance(reply, MemoryReply):
        return reply
    return tail.local_memory(MemoryRequest(run=cfg.run, agent=cfg.agent))


def tried_on(tail: RunTail, parent: str, parent_source: str, limit: int = 60, scan: int = 400) -> list[str]:
    """The changes (normalised) from ``parent`` whose train.py was already proposed, by anyone, finished or
    not, newest first: what building on this parent must not repeat. Besides the proposals built on it,
    any proposal whose train.py is the parent with a few knob values changed (a combination tried from an
    older parent, a step taken back), among the latest ``scan``."""
    try:
        knobs = parse_knobs(parent_source)
    except ValidationError:
        return []
    values = {k: v.value for k, v in knobs.items()}
    lines = parent_source.splitlines(keepends=True)
    out: list[str] = []
    for i, p in enumerate(reversed(list(tail.proposals.values()))):
        if BASELINE_TAG in p.tags or any(t in p.tags for t in RERUN_TAGS):
            continue
        changes = knob_changes(p.knobs, values)
        key = ""
        if p.parent == parent:
            key = change_key(changes, code_change(p.diff))
        elif i < scan and 0 < len(changes) <= 4 and all(k in knobs for k in changes):
            edited = list(lines)  # the parent with these values, written as the agents write them
            for k, v in changes.items():
                kn = knobs[k]
                edited[kn.lineno - 1] = (edited[kn.lineno - 1][: kn.col_offset] + format_value(v)
                                         + edited[kn.lineno - 1][kn.end_col_offset :])  # fmt: skip
            if sha256("".join(edited)) == p.train_py_sha256:
                key = change_key(changes)
        if key and key not in out:
            out.append(key)
            if len(out) >= limit:
                break
    return out


def avoid_set(memory: MemoryReply, tail: RunTail, parent: str) -> set[str]:
    """Normalised changes not to propose on ``parent``: failed dead ends, and changes in flight on it."""
    out = {d.change for d in memory.dead_ends if "ok" not in d.status.split("/")}
    for hid, p in tail.proposals.items():
        if hid in tail.finished or p.parent != parent or BASELINE_TAG in p.tags:
            continue
        parent_knobs = tail.proposals[parent].knobs if parent in tail.proposals else _base_knobs(tail)
        if parent_knobs:
            out.add(change_key(knob_changes(p.knobs, parent_knobs)))
    return out


def _base_knobs(tail: RunTail) -> dict[str, Any]:
    for p in tail.proposals.values():
        if BASELINE_TAG in p.tags:
            return dict(p.knobs)
    return {}


class WaveBook:
    """The agent's waves: tag the members of a batch, analyse a wave when it completes."""

    def __init__(self, cfg: AgentConfig, tail: RunTail) -> None:
        self.cfg, self.tail = cfg, tail
        self.open: dict[str, Wave] = {}

    def start(self, parent: str, description: str, factors: list[str]) -> Wave:
        w = Wave(new_wave_id(), self.cfg.agent, parent, factors=factors, description=description)
        self.open[w.wave_id] = w
        return w

    def tag(self, w: Wave) -> str:
        return WAVE_TAG + w.wave_id

    def add(self, w: Wave, ev: HypothesisProposed) -> None:
        w.members.append(ev.hypothesis_id)

    def completed(self, sigma: Callable[[str], float | None]) -> list[tuple[Wave, Any]]:
        """Waves whose members have all finished: (wave, its analysis note or None); forgotten after."""
        out = []
        for wid, w in list(self.open.items()):
            if not w.members:
                del self.open[wid]
                continue
            if not all(h in self.tail.finished for h in w.members):
                continue
            del self.open[wid]
            if len(w.members) < 2:
                continue
            # one class only: the one most members ran on (a difference means something on one class)
            classes = [self.tail.ran_on(h) for h in w.members]
            cls = max(set(classes), key=classes.count)
            members = [Member(h, self.tail.ok_val(h), self.tail.proposals[h].knobs) for h in w.members
                       if self.tail.ran_on(h) == cls]  # fmt: skip
            parent = self._parent_member(w, cls)
            if parent is not None:
                members.append(parent)
            out.append((w, analyse(w, members, sigma=sigma(cls))))
        return out

    def _parent_member(self, w: Wave, cls: str) -> Member | None:
        """The wave's parent as a point of its design, when it ran on the members' class and seed."""
        if not w.members:
            return None
        seed = self.tail.proposals[w.members[0]].seed
        if w.parent == BASELINE:
            for h, p in self.tail.proposals.items():
                if BASELINE_TAG in p.tags and p.seed == seed and self.tail.ran_on(h) == cls:
                    v = self.tail.ok_val(h)
                    return Member(h, v, p.knobs) if v is not None else None
            return None
        par = self.tail.proposals.get(w.parent)
        v = self.tail.ok_val(w.parent)
        if par is None or v is None or par.seed != seed or self.tail.ran_on(w.parent) != cls:
            return None
        return Member(w.parent, v, par.knobs)
