"""The keep/discard rule: an improvement counts only beyond the noise of its hardware class.

σ of val_bpb per class comes from repeated baseline runs (ClassStats). A result ``v`` against a reference
``ref`` (the lineage best on the same class) is

* **keep** when ``mean(v_1..v_n) < ref - k·σ/√n`` (n = the result plus its confirming repeats);
* **confirm** when it is better than ``ref`` but not by enough, it is a single screen run, and repeats are
  allowed: the loop re-runs it on the validate tier and decides on the mean;
* **discard** otherwise (including every failed run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["keep", "discard", "confirm"]


@dataclass(frozen=True)
class DecisionRule:
    k: float = 2.0  # how many σ an improvement must clear
    fallback_sigma_frac: float = 0.005  # σ when the class has < min_baselines baselines: this × reference
    min_baselines: int = 2
    confirm: bool = True  # ask for a repeat of ambiguous improvements (validate tier)
    max_repeats: int = 1

    def sigma(self, sigma: float | None, baseline_runs: int, reference: float) -> float:
        """σ of the class, or the fallback when it is unknown or from too few runs."""
        if sigma is not None and sigma > 0 and baseline_runs >= self.min_baselines:
            return sigma
        return abs(reference) * self.fallback_sigma_frac

    def decide(
        self, values: Sequence[float], reference: float | None, sigma: float
    ) -> tuple[Verdict, str]:
        """Verdict and a one-line reason for ok runs ``values`` of one train.py (first run first)."""
        if not values:
            return "discard", "no successful run"
        n = len(values)
        mean = sum(values) / n
        if reference is None:
            return "discard", f"{mean:.4f}: no baseline on this class to compare against yet"
        margin = self.k * sigma / math.sqrt(n)
        delta = mean - reference
        runs = f"mean of {n} runs " if n > 1 else ""
        if delta < -margin:
            return "keep", f"{runs}{mean:.4f} beats {reference:.4f} by {-delta:.4f} > {self.k:g}σ/√{n} = {margin:.4f}"
        if delta < 0 and self.confirm and n <= self.max_repeats:
            return "confirm", f"{mean:.4f} beats {reference:.4f} by {-delta:.4f}, within {margin:.4f}: repeat it"
        if delta < 0:
            return "discard", f"{runs}{mean:.4f} beats {reference:.4f} by only {-delta:.4f} ≤ {self.k:g}σ/√{n} = {margin:.4f} (noise)"
        return "discard", f"{runs}{mean:.4f} is not better than {reference:.4f}"
