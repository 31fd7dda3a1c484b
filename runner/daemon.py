"""The runner daemon: claim work, run it in a lab, publish a fenced result.

Loop (dramatiq-style: try / except / finally ack-or-nak)::

    acquire an item (runner.intake: class-specific consumers first, then ``any``) -> ExperimentClaimed
    check train.py (sha256, the contract, the tier) and lay out its job -> rejected
    run it in the lab (runner.lab: training under the runner's budget clock, the trusted evaluation),
      renewing the lease and publishing Progress; fetch + prepare the next item meanwhile
    ExperimentFinished (late=True if the lease was lost) -> ack (only if held)

Start: detect the hardware, prepare the node's data, calibrate (the unmodified train.py through the whole
pipeline: a runner whose calibration fails says why and never joins), then RunnerJoined.
Graceful stop (``stop`` set): stop claiming; finish the running experiment within ``stop_grace_seconds``
or kill it and give it back (nak); give back the item held ahead; RunnerLeft; the caller drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import logstore, subjects
from bus.client import connect, ensure_stream, publish
from bus.events import (
    Calibration,
    ExperimentFinished,
    Hardware,
    HypothesisProposed,
    Progress,
    RunnerJoined,
    RunnerLeft,
)
from bus.trainpy import sha256
from harness.feed import Budget
from runner import contract, hardware, node
from runner.config import RunnerConfig
from runner.deadletter import DeadLetters, lost_event_id
from runner.errors import CalibrationFailed, ContractViolation, DataMismatch, RunnerError
from runner.executors.base import Executor, Job, NodeData
from runner.executors.steps import LineCallback
from runner.intake import Intake, Item
from runner.jobs import Deadlines, keep_compile_cache, make_job, remove_job
from runner.outcome import Outcome

log = logging.getLogger("swarm.runner")

__all__ = ["Item", "Outcome", "Runner", "UnclaimedResult", "lost_event_id", "run_runner"]


class UnclaimedResult(RunnerError):
    """A result for an (hypothesis, attempt) this runner never claimed: refused, never published."""


class Lab(Protocol):
    """Runs one laid-out job to an Outcome: :class:`runner.lab.RealLab` or :class:`runner.simlab.SimulatedLab`."""

    name: str

    async def setup(self) -> None: ...
    def default_budget(self) -> Budget: ...
    def deadlines(self, budget: Budget) -> Deadlines: ...
    def eval_timeout(self) -> float: ...
    async def run(self, job: Job, on_line: LineCallback | None = None, on_phase: Any = None) -> Outcome: ...
    async def calibrate(self, job: Job) -> Outcome: ...
    async def close(self) -> None: ...


class Runner:
    """One runner. Pass the connected client and the config; :meth:`run` until ``stop`` is set.

    ``executor``: an executor of the simulated kind's interface (tests and the simulated fleet pass one).
    """

    def __init__(self, nc: NATS, config: RunnerConfig, *, executor: Executor | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config
        self.id = config.runner_id
        self._executor = executor
        self.hardware: Hardware | None = None
        self.node: NodeData | None = None
        self.lab: Lab | None = None
        self.intake: Intake | None = None
        self.dead = DeadLetters(nc, config.run, config.runner_id)
        self.calibration: Calibration | None = None
        self._finished: set[tuple[str, int]] = set()
        self.completed = 0  # experiments that ended with a published result
        self.published: list[ExperimentFinished] = []
        self.logs_to_store = True
        self.joined = False  # RunnerJoined published (and not taken back): shutdown then says RunnerLeft

    # -- setup ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        for d in ("jobs", "logs"):
            (cfg.state_dir / d).mkdir(parents=True, exist_ok=True)
        simulated = cfg.executor == "simulated" or self._executor is not None
        hw = await asyncio.to_thread(hardware.detect, None if simulated else cfg.gpu, cfg.hw_class, cfg.threads)
        if simulated and not cfg.hw_class:
            hw = msgspec.structs.replace(hw, hw_class="cpu", gpu_count=0, gpu_name="")
        self.hardware = hw
        classes = list(cfg.classes) or [hw.hw_class, "any"]
        if "any" not in classes and not cfg.classes:
            classes.append("any")
        await ensure_stream(self.js)
        self.intake = Intake(self.nc, cfg, self.id, hw, classes)
        await self.intake.subscribe(self.js)
        profile = cfg.profile or ("gpu" if hw.gpu_count else "cpu")
        lab = await self._make_lab(profile, hw, simulated)
        assert self.node is not None
        # on other data than the run's runners of its class, a runner does not join (before calibrating)
        self.lab = lab
        await node.check_run_data(self.js, cfg, hw.hw_class, self.node, self.run_budget())
        await self.lab.setup()
        await self.dead.watch(classes)
        if cfg.calibrate:
            self.calibration = await self._calibrate()
        ack = await publish(self.js, RunnerJoined(run=cfg.run, source=self.id, runner=self.id, hardware=hw, classes=classes,
                                                  executor=self.lab.name, calibration=self.calibration,
                                                  dataset=node.dataset_name(self.node),
                                                  dataset_fingerprint=self.node.dataset_fingerprint,
                                                  tokenizer_fingerprint=self.node.tokenizer_fingerprint,
                                                  budget=self.run_budget().amount, budget_unit=self.run_budget().unit))
        self.joined = True
        try:  # runners that checked at the same time: the stream's order says whose data is the run's
            await node.check_run_data(self.js, cfg, hw.hw_class, self.node, self.run_budget(), before_seq=ack.seq)
        except DataMismatch as e:
            await publish(self.js, RunnerLeft(run=cfg.run, source=self.id, runner=self.id, reason=str(e)[:2000]))
            with contextlib.suppress(Exception):
                await self.lab.close()
            self.lab, self.joined = None, False  # it left: shutdown announces nothing more
            raise
        log.info("runner %s up: classes %s, executor %s", self.id, classes, self.lab.name)

    async def _make_lab(self, profile: str, hw: Hardware, simulated: bool) -> Lab:
        cfg = self.config
        if simulated:
            from runner.executors.simulated import SimulatedExecutor
            from runner.simlab import SimulatedLab

            self.node = node.simulated_node(cfg, profile, hw.hw_class)
            return SimulatedLab(cfg, self._executor or SimulatedExecutor(cfg), self.node)
        from runner.lab import RealLab

        self.node = await node.prepare_node(cfg, profile, hw.hw_class)
        device = None
        if hw.gpu_count:
            devices = await asyncio.to_thread(hardware.list_devices)
            if devices:
                device = hardware.select_device(cfg.gpu, devices) if cfg.gpu is not None else devices[0]
        return RealLab(cfg, make_isolator(cfg), self.node, gpu=device.cuda_visible_devices if device else None,
                       peak_flops=hardware.peak_flops(hw.hw_class))

    async def _calibrate(self) -> Calibration:
        """The unmodified train.py through the whole pipeline. Raises :class:`CalibrationFailed`."""
        assert self.lab is not None and self.node is not None
        cfg = self.config
        path = Path(cfg.baseline_train_py)
        try:
            source = await asyncio.to_thread(path.read_text)
        except OSError as e:
            raise CalibrationFailed(f"no baseline train.py at {path} ({e}): pass --baseline-train-py") from e
        budget = self.run_budget()  # calibrate at what this runner gives an experiment
        if cfg.calibration_budget is not None:
            budget = Budget(budget.unit, cfg.calibration_budget)
        elif budget.unit == "seconds":
            budget = Budget("seconds", min(budget.amount, 20.0 * cfg.time_scale if cfg.executor == "simulated" else 20.0))
        job = make_job(cfg, self.node, "calibration", 0, source, budget, seed=0,
                       deadlines=self.lab.deadlines(budget), eval_timeout=self.lab.eval_timeout())
        try:
            out = await self.lab.calibrate(job)
            if out.status == "ok":
                await asyncio.to_thread(keep_compile_cache, cfg, job)
        finally:
            kept = cfg.state_dir / "logs" / "calibration.log"
            with contextlib.suppress(OSError):
                shutil.copyfile(job.log_path, kept)
            remove_job(job)
        if out.status != "ok":
            raise CalibrationFailed(
                f"runner {self.id}: the calibration run of the unmodified train.py ended {out.status}: {out.reason}. "
                f"Nothing this runner would run could succeed, so it does not join. Its log: {kept}")
        summary = contract.parse_summary(out.output)
        steps = summary.get("num_steps")
        secs = out.training_seconds or summary.get("training_seconds")
        return Calibration(steps_per_second=steps / secs if secs else 0.0,
                           tokens_per_second=out.tokens / secs if secs else 0.0, seconds=out.step_seconds,
                           train_py_sha256=sha256(source), val_bpb=out.val_bpb,
                           startup_seconds=round(out.extra.get("startup", 0.0), 3), training_seconds=round(secs, 3),
                           eval_seconds=round(out.eval_seconds, 3), budget=budget.amount, budget_unit=budget.unit)

    # -- preparing a job --------------------------------------------------------------------------------

    def run_budget(self) -> Budget:
        """What every experiment of this runner's class gets: ``--budget`` (max_budget), else the profile's.
        Runners of one class in a run must agree on it (checked at join), so results compare like with like."""
        assert self.lab is not None
        default = self.lab.default_budget()
        amount = self.config.max_budget if self.config.max_budget is not None else default.amount
        return Budget(default.unit, amount)

    def budget_for(self, hyp: HypothesisProposed) -> Budget | str:
        """The budget this hypothesis runs with, or why it will not run. An ask above the run's budget is
        capped (the result records what it got); one below it is refused: results at different budgets never
        compare, so a class trains at one budget (start a run with a smaller --budget to screen cheaply). An
        ask in another unit than this runner's profile (a hypothesis for class ``any``) gets the run's."""
        run = self.run_budget()
        want, unit = hyp.budget, hyp.budget_unit or run.unit
        if want is None and hyp.budget_seconds is not None:
            want, unit = hyp.budget_seconds, "seconds"
        if want is None or unit != run.unit or want >= run.amount:
            return run
        return (f"asks for a budget of {Budget(unit, want) if want > 0 else want}, but {self.hardware.hw_class if self.hardware else 'this class'} "
                f"runners of run {self.config.run} train every hypothesis at {run}: results at different budgets "
                "never compare (start a run with a smaller --budget to screen cheaply)")

    async def _prepare(self, item: Item) -> None:
        """Check the hypothesis and lay out its job (pipelined: may run while another job trains)."""
        assert self.lab is not None and self.node is not None and self.hardware is not None
        hyp = item.hyp
        if await asyncio.to_thread(sha256, hyp.train_py) != hyp.train_py_sha256:
            item.rejected = "train.py does not match its train_py_sha256 (corrupted or tampered in transit)"
            return
        if hyp.tier == "validate" and hyp.hw_class not in ("any", self.hardware.hw_class):
            item.rejected = (f"validate-tier work for class {hyp.hw_class!r} reached a {self.hardware.hw_class!r} "
                             "runner: it only counts on its own class")
            return
        try:  # parsing train.py (~10 ms each) stays off the event loop: a fleet claims hundreds at once
            await asyncio.to_thread(contract.check_module_level, hyp.train_py)
        except ContractViolation as e:
            item.rejected = str(e)
            return
        budget = self.budget_for(hyp)
        if isinstance(budget, str):
            item.rejected = budget
            return
        seed = self.config.seed if self.config.seed is not None else hyp.seed
        item.job = await asyncio.to_thread(make_job, self.config, self.node, hyp.hypothesis_id, item.attempt,
                                           hyp.train_py, budget, seed, self.lab.deadlines(budget),
                                           self.lab.eval_timeout())

    # -- running ----------------------------------------------------------------------------------------

    def _on_line(self, item: Item) -> LineCallback:
        def on_line(line: str) -> None:
            p = contract.parse_progress(line)
            if p is not None:
                item.progress = p

        return on_line

    async def _progress_loop(self, item: Item, start: float) -> None:
        last: Any = None
        while True:
            cur = (item.phase, item.progress)
            if cur != last:
                last = cur
                p = item.progress
                msg = Progress(run=self.config.run, runner=self.id, hypothesis_id=item.hyp.hypothesis_id,
                               attempt=item.attempt, phase=item.phase, progress=p.progress if p else 0.0,
                               step=p.step if p else 0, loss=p.loss if p else None, elapsed=time.monotonic() - start)
                with contextlib.suppress(Exception):  # cosmetic: never let it disturb the experiment
                    await self.nc.publish(subjects.progress(self.config.run), msgspec.msgpack.encode(msg))
            await asyncio.sleep(self.config.progress_interval)

    async def _execute(self, item: Item) -> Outcome:
        """Run the job in the lab. Cancellation kills whatever runs."""
        assert item.job is not None and self.lab is not None

        def on_phase(phase: str) -> None:
            item.phase = phase

        return await self.lab.run(item.job, self._on_line(item), on_phase)

    async def _log_ref(self, item: Item) -> str:
        """The full log: into the bus's log store (readable from any machine), a copy in state_dir/logs."""
        if item.job is None:
            return ""
        dst = self.config.state_dir / "logs" / f"{item.hyp.hypothesis_id}-a{item.attempt}.log"
        with contextlib.suppress(OSError):
            await asyncio.to_thread(shutil.copyfile, item.job.log_path, dst)
        if self.logs_to_store:
            try:
                return await logstore.put_log(self.js, self.config.run, item.hyp.hypothesis_id, item.attempt, dst)
            except Exception as e:  # the result matters more than its log: keep the local path
                log.warning("could not store the log of %s in the bus (%s): it stays at %s", item.hyp.hypothesis_id, e, dst)
        return str(dst) if dst.exists() else ""

    async def _finished_event(self, item: Item, out: Outcome, total: float, late: bool) -> ExperimentFinished:
        assert self.node is not None and self.hardware is not None
        hyp, job = item.hyp, item.job
        summary = contract.parse_summary(out.output)
        budget = Budget(job.budget_unit, job.budget_seconds) if job else self.run_budget()
        return ExperimentFinished(
            run=self.config.run, source=self.id, hypothesis_id=hyp.hypothesis_id, attempt=item.attempt,
            runner=self.id, status=out.status, val_bpb=out.val_bpb, reported_val_bpb=summary.values.get("val_bpb"),
            training_seconds=round(out.training_seconds, 3), total_seconds=round(total, 3),
            num_steps=int(summary.get("num_steps")), tokens=out.tokens,
            num_params=out.num_params or int(summary.get("num_params_M") * 1e6),
            peak_vram_mb=summary.get("peak_vram_mb"), mfu=summary.get("mfu_percent"), reason=out.reason,
            log_tail=out.log_tail, log_ref=await self._log_ref(item), hw_class=self.hardware.hw_class,
            train_py_sha256=hyp.train_py_sha256, dataset_fingerprint=self.node.dataset_fingerprint,
            tokenizer_fingerprint=self.node.tokenizer_fingerprint,
            budget_seconds=budget.amount if budget.unit == "seconds" else 0.0, late=late, budget=budget.amount,
            budget_unit=budget.unit, eval_seconds=round(out.eval_seconds, 3), profile=self.node.profile,
        )  # fmt: skip

    async def publish_result(self, item: Item, out: Outcome, total: float) -> ExperimentFinished:
        """The fence: publish once per claimed (hypothesis, attempt); late if the lease is gone; ack only
        when still held."""
        assert self.intake is not None
        key = (item.hyp.hypothesis_id, item.attempt)
        if key not in self.intake.claims:
            raise UnclaimedResult(
                f"refusing to publish a result for {key[0]} attempt {key[1]}: this runner ({self.id}) never claimed it")
        if key in self._finished:
            raise UnclaimedResult(f"a result for {key[0]} attempt {key[1]} was already published by {self.id}")
        if item.keeper is not None:
            item.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await item.keeper
        held = await item.lease.renew()
        event = await self._finished_event(item, out, total, late=not held)
        await publish(self.js, event)
        log.info("%s attempt %d: %s%s (training %.1f s, evaluation %.1f s, total %.1f s)%s", *key, out.status,
                 f" val_bpb {out.val_bpb:.4f}" if out.val_bpb is not None else "", out.training_seconds,
                 out.eval_seconds, total, " LATE" if event.late else "")
        if out.status != "ok":
            log.info("%s attempt %d: %s", *key, out.reason)
        self._finished.add(key)
        self.published.append(event)
        self.completed += 1
        if held:
            await self.intake.release(item, "ack")
        else:
            log.warning("lease of %s attempt %d was lost: result published as late, not acked", *key)
            item.lease.released = True
        return event

    async def _run_item(self, item: Item, stop: asyncio.Event) -> None:
        """Run one held item to a published result, or give it back on stop."""
        assert self.intake is not None
        start = time.monotonic()
        progress = asyncio.create_task(self._progress_loop(item, start))
        try:
            if item.job is None and not item.rejected:
                await self._prepare(item)
            if item.rejected:
                await self.publish_result(item, Outcome("rejected", item.rejected), time.monotonic() - start)
                return
            work = asyncio.create_task(self._execute(item))
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    # stop requested: finish within the grace period, else kill and give it back
                    done, _ = await asyncio.wait([work], timeout=self.config.stop_grace_seconds)
                    if not done:
                        work.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await work
                        await self.intake.drain()
                        log.info("stop: gave back %s attempt %d", item.hyp.hypothesis_id, item.attempt)
                        await self.intake.release(item, "nak")
                        return
            finally:
                stopper.cancel()
            try:
                out = work.result()
            except Exception as e:  # an executor bug or a vanished workdir: a crash, with the reason
                log.exception("executing %s failed", item.hyp.hypothesis_id)
                out = Outcome("crash", f"runner error: {type(e).__name__}: {e}")
            await self.publish_result(item, out, time.monotonic() - start)
        except asyncio.CancelledError:
            await self.intake.release(item, "nak")
            raise
        except Exception:
            log.exception("result of %s could not be published: giving it back", item.hyp.hypothesis_id)
            await self.intake.release(item, "nak")
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            if item.job is not None:
                await asyncio.to_thread(remove_job, item.job)

    async def _prefetch(self, halt: asyncio.Event, stop: asyncio.Event) -> None:
        """Fetch and prepare the next item while the current one runs (at most one ahead). ``halt`` is set
        when the current item is done (or on stop): fetching then goes back to the main loop."""
        assert self.intake is not None
        while not halt.is_set() and not stop.is_set() and not self.intake.buffer:
            item = await self.intake.acquire(halt, stop)
            if item is not None:
                self.intake.buffer.insert(0, item)
                break
        for it in list(self.intake.buffer):
            if it.job is None and not it.rejected:
                await self._prepare(it)

    # -- the loop ---------------------------------------------------------------------------------------

    def _done(self) -> bool:
        m = self.config.max_experiments
        return m is not None and self.completed >= m

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or burst / max_experiments ends it), then shut down cleanly."""
        reason = "stopped"
        try:
            await self.start()
            assert self.intake is not None
            while not stop.is_set() and not self._done():
                item = await self.intake.acquire(stop)
                if item is None:
                    if self.config.burst and not self.intake.fetching and await self.intake.queue_empty():
                        reason = "burst: queue empty"
                        break
                    continue
                prefetch: asyncio.Task[None] | None = None
                halt = asyncio.Event()
                m = self.config.max_experiments
                if self.config.prefetch and (m is None or self.completed + 1 < m):
                    prefetch = asyncio.create_task(self._prefetch(halt, stop))
                try:
                    await self._run_item(item, stop)
                finally:
                    halt.set()
                    if prefetch is not None:
                        try:
                            await prefetch
                        except Exception:
                            log.exception("prefetch failed")
            if self._done():
                reason = f"max_experiments={self.config.max_experiments} reached"
        except CalibrationFailed as e:
            reason = "calibration failed"
            log.error("%s", e)
            raise
        finally:
            await self.shutdown(reason)

    async def shutdown(self, reason: str) -> None:
        """Give back held items, stop fetching, announce leaving."""
        if self.intake is not None:
            await self.intake.drain()
            for it in self.intake.buffer:
                await self.intake.release(it, "nak")
                if it.job is not None:
                    remove_job(it.job)
            self.intake.buffer.clear()
            await self.intake.unsubscribe()
        await self.dead.close()
        if self.lab is not None:
            with contextlib.suppress(Exception):
                await self.lab.close()
        if self.joined and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await publish(self.js, RunnerLeft(run=self.config.run, source=self.id, runner=self.id, reason=reason))
        log.info("runner %s left: %s", self.id, reason)


def make_isolator(config: RunnerConfig) -> Any:
    """The isolating executor named by ``config.executor`` (process or docker)."""
    if config.executor == "docker":
        from runner.executors.docker import DockerExecutor

        return DockerExecutor(config.docker_image, extra_mounts=config.docker_mounts,
                              labels={"swarm.runner": config.runner_id})
    from runner.executors.process import ProcessExecutor

    return ProcessExecutor(config.isolation, config.state_dir / "sandbox-root")


async def run_runner(config: RunnerConfig, *, stop: asyncio.Event) -> None:
    """Connect, serve until ``stop`` is set (SIGTERM in the CLI) or burst/max_experiments ends it, drain."""
    nc = await connect(list(config.nats_urls), name=f"runner-{config.runner_id}")
    try:
        await Runner(nc, config).run(stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
