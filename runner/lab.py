"""One experiment from a laid-out job to its :class:`~runner.outcome.Outcome`: the real pipeline.

1. **Training.** The runner serves the training data itself (:class:`harness.feed.FeedServer` on the job's
   socket) and starts train.py as an isolated step. A watchdog holds the step to its :class:`Deadlines`:
   it must ask for data within the start-up allowance, finish its declared warm-up within the warm-up
   allowance, and end within the budget's window (the budget in seconds, or the wall cap of a tokens
   budget) plus the tolerance, counted from its first counted batch — else it is killed and ends
   ``over_budget`` (or ``timeout`` if it never asked for data). The same rules are checked again on the
   clocks after a normal exit. train.py's own clock is advisory.
2. **Evaluation.** The runner listens on the job's eval socket with a :class:`harness.evaluation.
   TrustedEvaluator` (validation slice, scoring; no agent code, no torch) and starts the model process as
   another isolated step that sees the weights and nothing of the validation data.

Calibration runs the unmodified train.py through the same pipeline once per runner and tightens the
start-up and warm-up allowances and the tokens budget's wall cap to what this machine actually needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import prepare
from bus.events import Status
from harness.evaluation import EvalResult, EvaluationFailed, TrustedEvaluator, listen
from harness.feed import Budget, FeedServer
from runner.config import EVAL_SECONDS, STARTUP_SECONDS, WARMUP_SECONDS, RunnerConfig
from runner.executors.base import Job, NodeData
from runner.executors.steps import Isolator, LineCallback, Step, StepResult
from runner.jobs import Deadlines, model_step, train_step
from runner.outcome import Outcome, classify_evaluation, classify_training, training_window

log = logging.getLogger("swarm.runner.lab")

WATCH_INTERVAL = 0.25
MIN_TOKENS_PER_SECOND = {"cpu": 200.0, "gpu": 20_000.0}  # wall cap of a tokens budget before calibration
MAX_WARMUP_BATCHES = 64  # most batches a train.py may declare as warm-up (gpu profile only)


@dataclass(frozen=True)
class Measured:
    """What calibration measured of the unmodified train.py on this runner."""

    startup: float  # process start -> first batch
    warmup: float  # first batch -> first counted batch
    window: float  # first counted batch -> end
    budget: Budget
    eval_seconds: float
    tokens: int
    val_bpb: float | None


class RealLab:
    """Runs experiments through an isolating executor (process or docker)."""

    def __init__(self, config: RunnerConfig, executor: Isolator, node: NodeData, *, gpu: str | None = None,
                 peak_flops: float | None = None) -> None:
        self.config, self.executor, self.node = config, executor, node
        self.name = executor.name
        self.gpu, self.peak_flops = gpu, peak_flops
        self.spec = prepare.PROFILES[node.profile]
        self.measured: Measured | None = None
        self.tokens: np.ndarray | None = None

    async def setup(self) -> None:
        await self.executor.setup()
        shards = sorted(self.node.train_dir.glob("shard_*.bin"))
        if not shards:
            raise FileNotFoundError(f"no training shards in {self.node.train_dir}: prepare the data first")
        arrays = [np.memmap(s, dtype=np.uint16, mode="r") for s in shards]
        self.tokens = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    async def close(self) -> None:
        await self.executor.close()

    # -- budgets ----------------------------------------------------------------------------------------

    def default_budget(self) -> Budget:
        return Budget(self.spec.budget_unit, self.spec.budget)

    def deadlines(self, budget: Budget) -> Deadlines:
        """The allowances of a training step with ``budget`` on this runner (see the module docstring)."""
        cfg, p, m = self.config, self.node.profile, self.measured
        startup = cfg.startup_seconds if cfg.startup_seconds is not None else STARTUP_SECONDS[p]
        warmup = WARMUP_SECONDS[p]
        if m is not None and cfg.startup_seconds is None:
            startup = min(startup, 3 * m.startup + 15)
            warmup = min(warmup, 3 * m.warmup + 30) if warmup else 0.0
        if budget.unit == "seconds":
            window = budget.amount
        elif m is not None and m.budget.unit == "tokens" and m.window > 0:
            window = self.spec.wall_factor * m.window * budget.amount / m.budget.amount
        else:
            window = budget.amount / MIN_TOKENS_PER_SECOND[p]
        tolerance = cfg.grace_seconds + 0.05 * window
        return Deadlines(startup=startup, warmup=warmup, window=window, tolerance=tolerance)

    def eval_timeout(self) -> float:
        cfg = self.config
        base = cfg.eval_seconds if cfg.eval_seconds is not None else EVAL_SECONDS[self.node.profile]
        return base + cfg.grace_seconds

    # -- one experiment ---------------------------------------------------------------------------------

    async def run(self, job: Job, on_line: LineCallback | None = None,
                  on_phase: Callable[[str], None] | None = None) -> Outcome:
        deadlines = self.deadlines(Budget(job.budget_unit, job.budget_seconds))
        if on_phase:
            on_phase("training")
        trained = await self._train(job, deadlines, on_line)
        if trained.status != "ok":
            return trained
        if on_phase:
            on_phase("evaluating")
        result = await self._evaluate(job)
        return classify_evaluation(trained, result, self.config.log_tail_chars)

    async def _train(self, job: Job, deadlines: Deadlines, on_line: LineCallback | None) -> Outcome:
        assert self.tokens is not None, "setup() first"
        step = train_step(self.config, self.node, job, gpu=self.gpu, peak_flops=self.peak_flops)
        feed = FeedServer(job.sock_dir / "feed.sock", self.tokens, self.node.bos_id,
                          budget=Budget(job.budget_unit, job.budget_seconds), seed=job.seed,
                          max_seq_len=self.spec.max_seq_len,
                          max_warmup_batches=MAX_WARMUP_BATCHES if self.spec.excluded_warmup_steps else 0,
                          tolerance=deadlines.tolerance)
        killed: list[tuple[Status, str]] = []
        with feed:
            started = time.monotonic()
            task = asyncio.create_task(self.executor.run(step, on_line))
            while not task.done():
                await asyncio.wait([task], timeout=WATCH_INTERVAL)
                if not task.done() and (why := self._overdue(feed, deadlines, started)) is not None:
                    killed.append(why)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    break
            if killed:
                res = _killed_result(step, started)
                with contextlib.suppress(OSError), step.log_path.open("a") as f:
                    f.write(f"\n[runner] killed: {killed[0][1]}\n")
            else:
                res = task.result()
        saved = (job.work_dir / "out" / "model.pt").is_file()
        out = classify_training(res, feed.stats, deadlines, killed=killed[0] if killed else None,
                                model_saved=saved, tail_chars=self.config.log_tail_chars)
        if out is None:
            out = Outcome("ok", training_seconds=training_window(res, feed.stats), tokens=feed.stats.counted_tokens,
                          step_seconds=res.seconds, output=res.output)
        out.extra.update(startup=(feed.stats.first_request or res.ended) - started,
                         warmup=(feed.stats.counted_start or 0) - (feed.stats.first_request or 0))
        return out

    @staticmethod
    def _overdue(feed: FeedServer, dl: Deadlines, started: float) -> tuple[Status, str] | None:
        now, st = time.monotonic(), feed.stats
        if st.first_request is None:
            if now - started > dl.startup:
                return "timeout", f"asked for no training data within {dl.startup:.0f} s of starting"
        elif st.counted_start is None:
            if now - st.first_request > dl.warmup:
                return "over_budget", f"warm-up took longer than the {dl.warmup:.0f} s allowed"
        elif now - st.counted_start > dl.window + dl.tolerance:
            return "over_budget", (f"still training {now - st.counted_start:.0f} s after its first counted batch: "
                                   f"over the budget's {dl.window:.1f} s + {dl.tolerance:.1f} s tolerance")
        return None

    async def _evaluate(self, job: Job) -> EvalResult:
        cfg, spec = self.config, self.spec
        t0 = time.monotonic()
        trusted = await asyncio.to_thread(
            TrustedEvaluator, self.node.val_dir, seq_len=spec.max_seq_len,
            eval_tokens=cfg.eval_tokens or spec.eval_tokens, batch_size=spec.eval_batch_size,
            seed=int.from_bytes(os.urandom(4), "big"), device="cuda" if self.gpu is not None else "cpu")
        paths = [job.sock_dir / f"eval-{k}.sock" for k in range(trusted.shards)]
        servers = [listen(p) for p in paths]
        steps = [model_step(cfg, self.node, job, k, gpu=self.gpu) for k in range(trusted.shards)]
        models = [asyncio.create_task(self.executor.run(step)) for step in steps]
        try:
            result = await self._score(servers, trusted, models, job.eval_timeout)
        finally:
            for server, path in zip(servers, paths, strict=True):
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            ends: list[StepResult | None] = []
            for model in models:
                try:
                    ends.append(await asyncio.wait_for(asyncio.shield(model), 30))
                except TimeoutError:
                    model.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await model
                    ends.append(None)
        if result.status == "error":
            for res, step in zip(ends, steps, strict=True):
                if res is not None and res.exit_code not in (0, None):
                    tail = res.output.strip()[-1500:]
                    result.reason += f" ({step.name} process exit {res.exit_code}{': ' + tail if tail else ''})"
                    break
                if res is not None and res.timed_out:
                    result.reason += f" ({step.name} process killed at its {step.timeout:.0f} s limit)"
                    break
        result.eval_seconds = round(time.monotonic() - t0, 3)
        return result

    async def _score(self, servers: list[socket.socket], trusted: TrustedEvaluator,
                     models: list[asyncio.Task[StepResult]], timeout: float) -> EvalResult:
        accepts = [asyncio.create_task(asyncio.to_thread(_accept, srv, timeout)) for srv in servers]
        waiting: set[asyncio.Task[Any]] = set(accepts)
        while any(not a.done() for a in accepts):  # a model process that ends before it connects never will
            await asyncio.wait(waiting | {m for m in models if not m.done()}, return_when=asyncio.FIRST_COMPLETED)
            waiting = {a for a in accepts if not a.done()}
            if waiting and any(m.done() for m in models):
                for srv in servers:
                    srv.close()
                break
        conns: list[socket.socket] = []
        try:
            for a in accepts:
                try:
                    conns.append(await a)
                except (EvaluationFailed, OSError) as e:
                    return EvalResult(None, False, "error", f"a model process never connected ({e})", 0, 0.0, 0)
            return await asyncio.to_thread(trusted.run, conns, timeout)
        finally:
            for c in conns:
                c.close()

    # -- calibration ------------------------------------------------------------------------------------

    async def calibrate(self, job: Job) -> Outcome:
        """The unmodified train.py through the whole pipeline; on success the allowances are tightened."""
        out = await self.run(job)
        if out.status == "ok":
            self.measured = Measured(startup=out.extra.get("startup", 0.0), warmup=max(0.0, out.extra.get("warmup", 0.0)),
                                     window=out.training_seconds, budget=Budget(job.budget_unit, job.budget_seconds),
                                     eval_seconds=out.eval_seconds, tokens=out.tokens, val_bpb=out.val_bpb)
        return out


def _accept(server: socket.socket, timeout: float) -> socket.socket:
    server.settimeout(timeout)
    try:
        conn, _ = server.accept()
    except TimeoutError as e:
        raise EvaluationFailed(f"no connection within {timeout:.0f} s") from e
    conn.settimeout(timeout)
    return conn


def _killed_result(step: Step, started: float) -> StepResult:
    output = ""
    with contextlib.suppress(OSError):
        output = Path(step.log_path).read_text(errors="replace")[-20000:]
    return StepResult(None, started, time.monotonic(), timed_out=False, output=output)

