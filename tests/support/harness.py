"""The real harness in tests: the repo's own train.py and prepare.py, offline data prepared once per session
(see the ``prepared_cache`` fixture in conftest.py), runner configs with budgets of a few steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner.config import RunnerConfig
from tests.support.bus import RUN

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "train.py"
BASELINE = TRAIN_PY.read_text()
TINY_BUDGET = 4096  # tokens: two optimizer steps of the cpu profile's 2048-token batch
EVAL_TOKENS = 2048


def prepare_cache(cache: Path) -> Path:
    """Prepare the cpu profile's offline data in ``cache`` exactly as a runner would (same fingerprint)."""
    import prepare

    old = {k: os.environ.pop(k, None) for k in list(os.environ) if k.startswith("SWARM_")}
    os.environ["SWARM_CACHE_DIR"] = str(cache)
    try:
        prepare.ensure_prepared("cpu")
    finally:
        os.environ.pop("SWARM_CACHE_DIR", None)
        os.environ.update({k: v for k, v in old.items() if v is not None})
    return cache


def edit(*replacements: tuple[str, str], source: str = BASELINE) -> str:
    """The baseline train.py with literal replacements (each must match exactly once)."""
    for old, new in replacements:
        assert source.count(old) == 1, f"{old!r} occurs {source.count(old)} times in train.py"
        source = source.replace(old, new)
    return source


def in_main(code: str) -> str:
    """The baseline with ``code`` run at the start of main() (indented by four spaces)."""
    body = "".join(f"    {line}\n" for line in code.strip("\n").splitlines())
    return edit(("def main():\n", "def main():\n" + body))


def real_config(tmp: Path, url: str, cache: Path, **kw: Any) -> RunnerConfig:
    """A runner on the real harness with a budget of a few steps (process executor, namespace sandbox)."""
    rid = kw.pop("runner_id", "r1")
    base: dict[str, Any] = dict(
        nats_urls=(url,), run=RUN, runner_id=rid, hw_class="cpu", executor="process", state_dir=tmp / f"state-{rid}",
        cache_dir=cache, calibrate=False, calibration_budget=TINY_BUDGET, ack_wait=30.0, fetch_timeout=0.3,
        burst=True, max_budget=TINY_BUDGET, eval_tokens=EVAL_TOKENS, threads=1, startup_seconds=90.0,
        eval_seconds=120.0, progress_interval=0.2,
    )
    base.update(kw)
    return RunnerConfig(**base)
