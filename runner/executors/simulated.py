"""The simulated executor: no training. :mod:`runner.executors.landscape` says what a train.py does on this
runner's hardware class (score, steps, memory, how it fails, how long each step takes); this executor plays
it out in compressed time — every simulated second lasts ``config.time_scale`` wall seconds — printing what
the real train.py prints (the start line, ``step … | progress … | loss …`` lines, ``FAIL: nan loss``, a
CUDA OOM traceback, the ``---`` summary), so the daemon classifies, renews leases and publishes exactly as
for a real run. Used by ``swarm simulate`` (a fleet of hundreds of runners on one machine), the agents'
and CLI's scale tests and the benchmarks.

The hardware class comes from the node the runner hands to :meth:`SimulatedExecutor.setup`
(``NodeData.hw_class``); until the daemon fills it, the config's ``hw_class`` (else ``cpu``, the daemon's
own default for a simulated runner). One :class:`Landscape` may be shared by every executor of a process
(a fleet): it is pure, and its cache then serves them all.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

from runner.config import RunnerConfig
from runner.executors.base import EvalOutcome, Job, LineCallback, NodeData, TrainOutcome
from runner.executors.landscape import Landscape, Run

TICKS = 10  # progress lines per training run
PEAK_FLOPS = 989e12  # H100 bf16 dense, for the MFU line (scaled by the class's speed)


def reference_source(config: RunnerConfig) -> str | None:
    """The runner's baseline train.py (unknown edits are measured against it), or None if it has none."""
    path = Path(config.baseline_train_py)
    try:
        return path.read_text() if path.is_file() else None
    except OSError:
        return None


class SimulatedExecutor:
    """Implements :class:`runner.executors.base.Executor` on the landscape, time-compressed."""

    name = "simulated"

    def __init__(self, config: RunnerConfig, *, landscape: Landscape | None = None) -> None:
        self.config = config
        self.scale = config.time_scale
        self.landscape = landscape if landscape is not None else Landscape(reference_source(config))
        self.hw_class = config.hw_class or "cpu"

    async def setup(self, node: NodeData) -> None:
        self.hw_class = node.hw_class or self.config.hw_class or "cpu"

    async def prepare(self, job: Job) -> None:
        job.out_dir.mkdir(parents=True, exist_ok=True)

    def plan(self, job: Job) -> Run:
        """What this job will do (pure; cached by the landscape)."""
        return self.landscape.run(job.train_py, self.hw_class, job.budget_seconds)

    async def train(self, job: Job, on_line: LineCallback) -> TrainOutcome:
        start = time.monotonic()
        run = self.plan(job)
        lines: list[str] = []

        def emit(line: str) -> None:
            lines.append(line + "\n")
            on_line(line)

        def outcome(code: int | None, *, timed_out: bool = False) -> TrainOutcome:
            with job.log_path.open("a") as logf:
                logf.writelines(lines)
            return TrainOutcome(code, time.monotonic() - start, timed_out=timed_out, output="".join(lines))

        s = self.scale
        if (run.startup_seconds + run.train_seconds) * s > job.train_timeout:
            await asyncio.sleep(job.train_timeout)
            return outcome(None, timed_out=True)
        await asyncio.sleep(run.startup_seconds * s)
        if run.status == "crash":
            emit('Traceback (most recent call last):\n  File "train.py", line 1, in <module>')
            emit(run.reason)
            return outcome(1)
        emit(f"profile: simulated | params: {run.params / 1e6:.2f}M | class {self.hw_class} | "
             f"budget {job.budget_seconds:.0f}s")  # fmt: skip
        if run.status == "oom":
            await asyncio.sleep(run.train_seconds * s)
            emit('Traceback (most recent call last):\n  File "train.py", in main')
            emit(run.reason)
            return outcome(1)
        final = run.val_bpb if run.val_bpb is not None else 3.0
        tok_s = int(run.tokens / max(run.train_seconds, 1e-9)) if run.tokens else 0
        ticks = TICKS if run.status == "ok" else max(1, int(TICKS * run.train_seconds / job.budget_seconds))
        for i in range(1, ticks + 1):
            await asyncio.sleep(run.train_seconds * s / ticks)
            progress = i / TICKS
            loss = (final + 2.0 * math.exp(-4 * progress)) * math.log(2) * 4
            emit(f"step {run.steps * i // TICKS} | progress {progress:.4f} | loss {loss:.4f} | tok/s {tok_s}")
        if run.status == "nan":
            emit(run.reason if run.reason.startswith("FAIL") else f"FAIL: nan loss at step {ticks} ({run.reason})")
            return outcome(3)
        (job.out_dir / "model.pt").write_text(json.dumps({"simulated": True}))
        (job.out_dir / "config.json").write_text(json.dumps({"hw_class": self.hw_class}))
        speed = run.tokens / run.train_seconds if run.train_seconds else 0.0
        summary = {
            "training_seconds": run.train_seconds,
            "total_seconds": run.startup_seconds + run.train_seconds,
            "peak_vram_mb": round(run.peak_vram_mb, 1),
            "mfu_percent": round(100 * 6 * run.params * speed / PEAK_FLOPS, 2),
            "total_tokens_M": run.tokens / 1e6,
            "num_steps": run.steps,
            "num_params_M": run.params / 1e6,
        }
        emit("---")
        for k, v in summary.items():
            emit(f"{k}: {v}")
        return outcome(0)

    async def evaluate(self, job: Job) -> EvalOutcome:
        start = time.monotonic()
        run = self.plan(job)
        await asyncio.sleep(run.eval_seconds * self.scale)
        val = self.landscape.val_bpb(job.train_py, self.hw_class, job.budget_seconds, job.seed)
        with job.log_path.open("a") as logf:
            logf.write(f"[runner] simulated evaluation on {self.hw_class}: val_bpb {val}\n")
        if val is None:
            return EvalOutcome("error", reason=f"simulated run ended {run.status}", seconds=time.monotonic() - start)
        return EvalOutcome("ok", val_bpb=val, seconds=time.monotonic() - start, num_params=run.params)

    async def cleanup(self, job: Job) -> None:
        return None

    async def close(self) -> None:
        return None
