"""The circuit breaker of an agent's model server: after ``failures`` waves in a row whose every LLM call
failed, pause (``cooldown`` seconds, doubled at each trip up to ``max_cooldown``) instead of hammering a
server that is down or still loading its model; one good call closes it again."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failures: int = 3
    cooldown: float = 15.0
    max_cooldown: float = 300.0
    streak: int = 0  # waves in a row whose calls all failed
    trips: int = 0  # times it opened since the last good call

    def record(self, calls: int, failed: int) -> float | None:
        """Record one wave's LLM calls; the pause in seconds when the breaker opens, else None.

        A wave without LLM calls (a knob proposer, or nothing asked) changes nothing."""
        if calls == 0:
            return None
        if failed < calls:
            self.streak = self.trips = 0
            return None
        self.streak += 1
        if self.failures <= 0 or self.streak < self.failures:
            return None
        self.streak = 0
        pause = min(self.max_cooldown, self.cooldown * 2**self.trips)
        self.trips += 1
        return pause
