"""What an agent says: one report per wave (the line it prints) and the account of its run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agents.pricing import format_usd


@dataclass
class AgentStats:
    """What one agent did in its run; ``stopped_because`` says why it ended ("stopped": asked to)."""

    agent: str = ""
    waves: int = 0
    proposed: int = 0  # hypotheses it published (repeats included)
    rejected: int = 0
    kept: int = 0
    discarded: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0
    llm_errors: int = 0
    stopped_because: str = ""
    last_problem: str = ""  # the latest rejection or LLM error, in one line

    @property
    def stopped_by_user(self) -> bool:
        return self.stopped_because == "stopped"

    @property
    def failed(self) -> bool:
        """It ended by itself without publishing anything: its run achieved nothing."""
        return self.proposed == 0 and not self.stopped_by_user

    def summary(self) -> str:
        """One line for people: what it did, what it cost, why it stopped (and what went wrong)."""
        llm = f", LLM calls {self.llm_calls} ({self.llm_errors} failed)" if self.llm_calls else ""
        line = (
            f"{self.agent}: {self.waves} waves, proposed {self.proposed}, rejected {self.rejected}, kept "
            f"{self.kept}, discarded {self.discarded}{llm}, cost {format_usd(self.cost_usd)}; "
            f"{self.stopped_because or 'running'}"
        )
        if self.proposed == 0 and self.last_problem:
            line += f"; last problem: {self.last_problem}"
        return line


def one_line(text: str, n: int = 200) -> str:
    """``text`` on one line (whitespace folded), cut at ``n`` characters."""
    text = " ".join(text.split())
    return text[:n] + ("…" if len(text) > n else "")


@dataclass(frozen=True)
class WaveReport:
    """What one wave did, for the line an agent prints per wave."""

    agent: str
    wave: int
    proposed: int = 0
    repeats: int = 0
    rejected: int = 0
    first_rejection: str = ""
    llm_calls: int = 0
    llm_errors: tuple[str, ...] = ()
    cost_usd: float = 0.0
    paused: float | None = None  # the circuit breaker opened: seconds of pause
    stopped: bool = False  # a stop came during the wave: nothing of it was published

    def line(self) -> str:
        parts = [f"proposed {self.proposed}" + (f" (+{self.repeats} repeats)" if self.repeats else "")]
        if self.rejected:
            parts.append(f"rejected {self.rejected} (first: {one_line(self.first_rejection, 160)})")
        if self.llm_errors:
            parts.append(f"LLM error: {one_line(self.llm_errors[-1], 300)}")
        if self.cost_usd:
            parts.append(f"cost {format_usd(self.cost_usd)}")
        if self.paused is not None:
            parts.append(f"circuit open (the model server keeps failing): pausing {self.paused:.0f} s")
        if self.stopped:
            parts.append("stopped during the wave: nothing published")
        return f"{self.agent}: wave {self.wave}: " + "; ".join(parts)


WaveReporter = Callable[[WaveReport], None]
