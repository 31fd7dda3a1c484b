"""Runners on the simulated executor, for the tests of mechanics (leases, fencing, faults) that do not care
what an experiment computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.config import RunnerConfig
from tests.support.bus import RUN

SIM_SOURCE = "X = 1\ndef build_model(c): ...\n"


def sim_config(tmp: Path, url: str, **kw: Any) -> RunnerConfig:
    rid = kw.pop("runner_id", "r1")
    base: dict[str, Any] = dict(nats_urls=(url,), run=RUN, runner_id=rid, hw_class="cpu", executor="simulated",
                                state_dir=tmp / f"state-{rid}", calibrate=False, ack_wait=10.0, fetch_timeout=0.3,
                                burst=True, max_budget=1.0, time_scale=0.5, progress_interval=0.1)
    base.update(kw)
    return RunnerConfig(**base)
