"""The simulated executor behind the same lab interface as the real pipeline (:mod:`runner.lab`).

The simulated executor (:mod:`runner.executors.simulated`) answers a train step and an evaluation from its
landscape in compressed time; this adapter classifies what it returns the way the real pipeline does, so
the daemon, the ledger and the agents see simulated results exactly as they see real ones.
"""

from __future__ import annotations

from collections.abc import Callable

from bus.trainpy import NAN_EXIT_CODE
from harness.feed import Budget
from runner import contract
from runner.config import EVAL_SECONDS, STARTUP_SECONDS, RunnerConfig
from runner.executors.base import Executor, Job, NodeData
from runner.executors.steps import LineCallback
from runner.jobs import Deadlines
from runner.outcome import Outcome

SIMULATED_BUDGET = {"cpu": Budget("seconds", 45.0), "gpu": Budget("seconds", 300.0)}


class SimulatedLab:
    def __init__(self, config: RunnerConfig, executor: Executor, node: NodeData) -> None:
        self.config, self.executor, self.node = config, executor, node
        self.name = executor.name
        self.scale = config.time_scale

    async def setup(self) -> None:
        await self.executor.setup(self.node)

    async def close(self) -> None:
        await self.executor.close()

    def default_budget(self) -> Budget:
        return SIMULATED_BUDGET[self.node.profile]

    def deadlines(self, budget: Budget) -> Deadlines:
        p, s = self.node.profile, self.scale
        return Deadlines(startup=STARTUP_SECONDS[p] * s, warmup=0.0, window=budget.amount * s,
                         tolerance=self.config.grace_seconds * s)

    def eval_timeout(self) -> float:
        return (EVAL_SECONDS[self.node.profile] + self.config.grace_seconds) * self.scale

    async def calibrate(self, job: Job) -> Outcome:
        return await self.run(job)

    async def run(self, job: Job, on_line: LineCallback | None = None,
                  on_phase: Callable[[str], None] | None = None) -> Outcome:
        tail_chars = self.config.log_tail_chars
        await self.executor.prepare(job)
        try:
            if on_phase:
                on_phase("training")
            tr = await self.executor.train(job, on_line or (lambda line: None))
            summary = contract.parse_summary(tr.output)
            secs = summary.get("training_seconds")
            base = dict(training_seconds=secs, tokens=int(summary.get("total_tokens_M") * 1e6),
                        step_seconds=tr.seconds, output=tr.output)
            if tr.timed_out:
                return Outcome("timeout", f"killed at the hard limit of {job.train_timeout:.0f} s", **base)  # type: ignore[arg-type]
            if tr.exit_code != 0:
                tail = contract.traceback_tail(tr.output, tail_chars)
                if tr.oom_killed or contract.looks_like_oom(tr.output[-20000:]):
                    return Outcome("oom", f"out of memory (exit {tr.exit_code})", log_tail=tail, **base)  # type: ignore[arg-type]
                if tr.exit_code == NAN_EXIT_CODE or summary.nan_step is not None:
                    return Outcome("nan", f"nan loss at step {summary.nan_step}", log_tail=tail, **base)  # type: ignore[arg-type]
                return Outcome("crash", f"train.py exited with {tr.exit_code}", log_tail=tail, **base)  # type: ignore[arg-type]
            if on_phase:
                on_phase("evaluating")
            ev = await self.executor.evaluate(job)
            if ev.status == "ok" and ev.val_bpb is not None:
                return Outcome("ok", val_bpb=ev.val_bpb, eval_seconds=ev.seconds, num_params=ev.num_params,
                               log_tail=tr.output[-tail_chars:], **base)  # type: ignore[arg-type]
            return Outcome("crash", f"trusted evaluation failed: {ev.reason}", eval_seconds=ev.seconds, **base)  # type: ignore[arg-type]
        finally:
            await self.executor.cleanup(job)
