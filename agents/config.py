"""The settings of one agent: its run, its budgets, its waves, its judge, its model server's breaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.paired import PairedRule
from agents.policy import DecisionRule


@dataclass
class AgentConfig:
    """One agent. ``base_train_py`` is the unmodified train.py (baselines and the first parent)."""

    run: str
    agent: str
    base_train_py: str
    program_md: str = ""  # the default direction; a ProgramChanged event overrides it
    hw_class: str = "any"  # hardware request of screen-tier proposals
    # screen -> validate: a result that beats its screen class's best by more than σ is re-run on this class
    # and kept there only if it wins there too. None: the fastest class present (its baselines' tokens/s);
    # "" or the only class: no promotion
    validate_class: str | None = None
    max_wave: int = 16
    max_experiments: int | None = None
    max_waves: int | None = None
    max_cost_usd: float | None = None
    # fair share: stop when the GPU-seconds of this agent's results (plus what it has in flight, at its
    # mean duration) reach this; give every agent the same figure to give each the same compute
    max_gpu_seconds: float | None = None
    isolated: bool = False  # see only its own results and the baselines (no other agent's work)
    max_empty_waves: int = 5  # consecutive waves with nothing published before giving up
    max_bus_failures: int = 8  # consecutive waves that failed on the bus before giving up
    wave_timeout: float = 3600.0  # longest wait for one wave's results
    wave_llm_seconds: float = 900.0  # longest the proposer may take for one wave (every call and retry)
    # circuit breaker of the model server: after this many waves in a row whose LLM calls all failed,
    # pause breaker_cooldown seconds (doubled per trip, at most breaker_max_cooldown)
    breaker_failures: int = 3
    breaker_cooldown: float = 15.0
    breaker_max_cooldown: float = 300.0
    # fraction of the outstanding hypotheses that must finish before the next wave: 1.0 waits for the whole
    # wave (an LLM reads a factorial grid at once); 0.5 keeps runners busy (rolling waves, knob proposers)
    wave_quorum: float = 1.0
    request_timeout: float = 5.0  # ledger read API
    rule: DecisionRule = field(default_factory=DecisionRule)  # wall-clock budgets: σ of the baselines
    paired: bool = True  # deterministic (tokens) budgets: paired comparisons on common seeds
    paired_rule: PairedRule = field(default_factory=PairedRule)
    # champion audit: after this many keeps (by any agent) on a class since its last audit, re-run the
    # class's best and its ablations (one per kept step) and demote the steps whose gain does not survive.
    # None: never
    audit_every: int | None = 4
    # a result kept on one run, from a wave of at least this many, is run once more (σ rule): of many
    # screen runs the best is the luckiest draw, and the bar the next waves must clear should be a mean.
    # None: never
    remeasure_from: int | None = 4
    grid_max: int = 32  # the most experiments one proposed grid may expand to
    baselines: bool = True
    baseline_repeats: int = 3
    budget: float | None = None  # asked of the runners, in their profile's unit (None: the profile's budget)
    seed: int = 0
    write_notes: bool = True
    follow_global_best: bool = True  # build on the best of the class, whoever found it
    config_summary: dict[str, Any] = field(default_factory=dict)  # for AgentJoined (never secrets)
