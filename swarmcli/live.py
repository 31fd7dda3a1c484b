"""What `swarm status` prints and `swarm up` shows live: queue, running experiments with progress,
recent results, best so far per agent. Everything comes over the bus (the ledger's read API and the
runners' progress messages), so it works against a swarm on other machines too."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bus import events as ev
from bus import subjects
from bus.readapi import LedgerClient


@dataclass
class Snapshot:
    context: ev.ContextReply
    leaderboard: list[dict[str, Any]]
    counts: dict[str, int]
    progress: dict[str, ev.Progress] = field(default_factory=dict)
    agents: list[ev.AgentRow] = field(default_factory=list)  # state, counts and latest problems per agent


class LedgerView:
    """Polls the ledger and listens to runner progress for one run."""

    def __init__(self, nc: NATS, run: str, *, timeout: float = 5.0) -> None:
        self.nc, self.run = nc, run
        self.client = LedgerClient(nc, run, timeout=timeout)
        self.progress: dict[str, ev.Progress] = {}
        self._sub: Any = None

    async def follow_progress(self) -> None:
        async def on_msg(msg: Any) -> None:
            try:
                p = ev.progress_decoder.decode(msg.data)
            except Exception:  # cosmetic channel: ignore what does not decode
                return
            self.progress[p.runner] = p

        self._sub = await self.nc.subscribe(subjects.progress(self.run), cb=on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def snapshot(self, recent: int = 12, problems: int = 3) -> Snapshot:
        ctx = await self.client.context("_status", recent_limit=recent)
        try:
            agents = await self.client.agents(problems=problems)
        except RuntimeError:  # a ledger from before the agents request: show the rest
            agents = []
        board = await self.client.sql(
            f"SELECT agent, hw_class, best_val_bpb, experiments, keeps, crashes FROM leaderboard "
            f"WHERE run = '{self.run}' ORDER BY hw_class, rank",
            limit=50,
        )
        counts = await self.client.sql(
            f"SELECT count(*) FILTER (WHERE status IS NOT NULL), count(*) FILTER (WHERE status = 'ok'), "
            f"count(*) FROM experiments WHERE run = '{self.run}'",
            limit=1,
        )
        done, ok, total = counts.rows[0] if counts.rows else (0, 0, 0)
        # drop progress of runners that went quiet (finished, or gone)
        now = time.time()
        live = {r: p for r, p in self.progress.items() if now - p.ts < 30}
        return Snapshot(
            context=ctx,
            leaderboard=[dict(zip(board.columns, r, strict=True)) for r in board.rows],
            counts={"finished": int(done or 0), "ok": int(ok or 0), "proposed": int(total or 0)},
            progress=live,
            agents=agents,
        )


def _bpb(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ago(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else (f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago")


def render_agents(agents: list[ev.AgentRow], *, problems: bool = False) -> list[RenderableType]:
    """Each agent's state and last problem; with ``problems``, its recent rejections and LLM errors."""
    if not agents:
        return []
    t = Table(title="agents", title_justify="left")
    for col in ("agent", "model", "state", "proposed", "rejected", "LLM calls", "failed", "cost", "last problem"):
        t.add_column(col, overflow="ellipsis", no_wrap=col != "last problem",
                     max_width={"last problem": 70, "state": 44}.get(col, 28))  # fmt: skip
    for a in agents:
        # why it left, without the last problem (that has its own column)
        state = "active" if a.state == "active" else f"left: {a.reason.split('; last problem')[0]}" if a.reason else "left"
        last = a.problems[0] if a.problems else None
        style = "red" if a.proposed == 0 and a.problems else ""
        t.add_row(a.agent, a.model or "-", state, str(a.proposed), str(a.rejected), str(a.llm_calls), str(a.llm_errors),
                  f"${a.cost_usd:.4f}", f"{last.kind}: {last.text}" if last else "-", style=style)  # fmt: skip
    out: list[RenderableType] = [t]
    if problems and any(a.problems for a in agents):
        p = Table(title="recent problems (rejected proposals and failed LLM calls, newest first)", title_justify="left")
        for col in ("agent", "when", "kind", "what"):
            p.add_column(col, overflow="fold" if col == "what" else "ellipsis", max_width=100 if col == "what" else 28)
        for a in agents:
            for pr in a.problems:
                what = f"{pr.description}: {pr.text}" if pr.description else pr.text
                p.add_row(a.agent, _ago(pr.ts), pr.kind, " ".join(what.split())[:400])
        out.append(p)
    return out


def render_status(snap: Snapshot, run: str, *, header: str = "", problems: bool = False) -> RenderableType:
    ctx = snap.context
    parts: list[RenderableType] = []
    parts.append(
        Text.assemble(
            (f"run {run}", "bold"),
            f"   runners online {ctx.runners_online}   queue {ctx.pending}   "
            f"finished {snap.counts['finished']} ({snap.counts['ok']} ok) of {snap.counts['proposed']} proposed",
            (f"   {header}" if header else "", "dim"),
        )
    )
    if snap.progress:
        t = Table(title="running", title_justify="left", expand=False)
        for col in ("runner", "hypothesis", "phase", "progress", "step", "loss"):
            t.add_column(col)
        for p in sorted(snap.progress.values(), key=lambda p: p.runner):
            t.add_row(p.runner, p.hypothesis_id[:14], p.phase, ProgressBar(total=1.0, completed=p.progress, width=24),
                      str(p.step), "-" if p.loss is None else f"{p.loss:.3f}")  # fmt: skip
        parts.append(t)
    if ctx.stats:
        t = Table(title="baselines per hardware class", title_justify="left")
        for col in ("class", "runs", "mean val_bpb", "σ", "best", "by"):
            t.add_column(col)
        best = {b.hw_class: b for b in ctx.best}
        for s in ctx.stats:
            b = best.get(s.hw_class)
            t.add_row(s.hw_class, str(s.baseline_runs), _bpb(s.baseline_mean), _bpb(s.sigma),
                      _bpb(b.val_bpb if b else None), b.agent if b else "-")  # fmt: skip
        parts.append(t)
    if snap.leaderboard:
        t = Table(title="best so far per agent", title_justify="left")
        for col in ("class", "agent", "best val_bpb", "experiments", "keeps", "failed"):
            t.add_column(col)
        for r in snap.leaderboard:
            t.add_row(str(r["hw_class"]), str(r["agent"]), _bpb(r["best_val_bpb"]), str(r["experiments"]),
                      str(r["keeps"]), str(r["crashes"]))  # fmt: skip
        parts.append(t)
    parts.extend(render_agents(snap.agents, problems=problems))
    if ctx.recent:
        t = Table(title="recent results", title_justify="left")
        for col in ("hypothesis", "agent", "status", "val_bpb", "on", "decision", "description"):
            t.add_column(col, overflow="ellipsis", no_wrap=True, max_width=60 if col == "description" else 16)
        for e in ctx.recent:
            style = "green" if e.decision == "keep" else ("red" if e.status not in (None, "ok") else "")
            t.add_row(e.hypothesis_id[:14], e.agent, e.status or "pending", _bpb(e.val_bpb), e.ran_on or "-",
                      e.decision or "-", " ".join((e.description or "").split())[:120], style=style)  # fmt: skip
        parts.append(t)
    return Group(*parts)
