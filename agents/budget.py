"""Budgets: how many hypotheses a wave may hold (free runners shared among agents, the agent's caps) and
when an agent's run is spent (experiments, waves, dollars, or its fair share of GPU-seconds)."""

from __future__ import annotations

import logging
import math

from agents.config import AgentConfig
from agents.report import AgentStats
from agents.tail import RunTail
from bus.events import ContextReply

log = logging.getLogger("swarm.agents.loop")


def gpu_seconds(tail: RunTail, agent: str) -> tuple[float, int, float]:
    """(GPU-seconds of ``agent``'s finished results, its hypotheses in flight, mean seconds per result)."""
    own = [h for h, p in tail.proposals.items() if p.agent == agent]
    done = [tail.finished[h].total_seconds for h in own if h in tail.finished]
    used = sum(done)
    return used, len(own) - len(done), (used / len(done) if done else 0.0)


def wave_size(cfg: AgentConfig, tail: RunTail, reply: ContextReply, stats: AgentStats) -> int:
    """Hypotheses the next wave may hold: the free runners shared among the agents (at least one, so an
    agent keeps a foot in the queue), within ``max_wave``, the experiments left and the fair share."""
    # the ledger's projection can lag the stream by a batch; the local view is current, so take the
    # larger of each (more runners seen, more work pending)
    local_pending = len(tail.unfinished)
    runners = max(reply.runners_online, len(tail.runners))
    pending = max(reply.pending, local_pending)
    free = runners - pending
    agents = max(1, len(tail.agents))
    k = max(1, math.ceil(free / agents)) if free > 0 else 1
    k = min(k, cfg.max_wave)
    log.info("%s: wave %d: %d runners, %d pending, %d agents -> k=%d", cfg.agent, stats.waves + 1,
             runners, pending, agents, k)  # fmt: skip
    if cfg.max_experiments is not None:
        k = min(k, cfg.max_experiments - stats.proposed)
    if cfg.max_gpu_seconds is not None:
        used, in_flight, mean = gpu_seconds(tail, cfg.agent)
        k = min(k, math.floor((cfg.max_gpu_seconds - used) / mean) - in_flight) if mean else min(k, 1)
    return max(0, k)


def budget_left(cfg: AgentConfig, tail: RunTail, stats: AgentStats) -> str | None:
    """Why the agent's run is spent, or None while it may go on."""
    if cfg.max_experiments is not None and stats.proposed >= cfg.max_experiments:
        return "max_experiments reached"
    if cfg.max_waves is not None and stats.waves >= cfg.max_waves:
        return "max_waves reached"
    if cfg.max_cost_usd is not None and stats.cost_usd >= cfg.max_cost_usd:
        return "max_cost_usd reached"
    if cfg.max_gpu_seconds is not None:
        used, in_flight, mean = gpu_seconds(tail, cfg.agent)
        if used + in_flight * mean >= cfg.max_gpu_seconds:
            return "max_gpu_seconds reached"
    return None
