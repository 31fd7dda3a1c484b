"""The runner daemon: claim work, execute it through an executor, evaluate it, publish a fenced result.

Loop (dramatiq-style: try / except / finally ack-or-nak)::

    acquire an item (class-specific consumers first, then ``any``) -> ExperimentClaimed(attempt = delivery count)
    check train.py (sha256, module-level rule) -> rejected
    while it trains: renew the lease every ack_wait/3, publish Progress, fetch + prepare the next item
    trusted evaluation (separate step, the only one that sees val) -> classify
    ExperimentFinished (late=True if the lease was lost) -> ack (only if held)

Graceful stop (``stop`` set): stop claiming; finish the running experiment within ``stop_grace_seconds`` or
kill it and give it back (nak); give back the item held ahead; RunnerLeft; the caller drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import subjects
from bus.client import connect, ensure_consumer, ensure_stream, publish, work_consumer_config
from bus.events import (
    Calibration,
    EventDecodeError,
    ExperimentClaimed,
    ExperimentFinished,
    Hardware,
    HypothesisProposed,
    Progress,
    RunnerJoined,
    RunnerLeft,
    Status,
    decode,
)
from bus.trainpy import sha256
from runner import contract, hardware, node
from runner.config import DEFAULT_BUDGET, EVAL_SECONDS, STARTUP_SECONDS, RunnerConfig
from runner.errors import ContractViolation, RunnerError
from runner.executors import EvalOutcome, Executor, Job, NodeData, TrainOutcome, make_executor
from runner.lease import Lease

log = logging.getLogger("swarm.runner")


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class UnclaimedResult(RunnerError):
    """A result for an (hypothesis, attempt) this runner never claimed: refused, never published."""


@dataclass
class Item:
    """A work item this runner holds (claimed, lease renewed until released)."""

    msg: Any
    hyp: HypothesisProposed
    attempt: int
    stream_seq: int
    lease: Lease
    cls: str
    fetched_at: float = field(default_factory=time.monotonic)
    keeper: asyncio.Task[None] | None = None
    job: Job | None = None
    rejected: str = ""  # why it will not run (contract violation), found while preparing
    progress: contract.ProgressLine | None = None
    phase: str = "preparing"


@dataclass
class Outcome:
    status: Status
    reason: str = ""
    val_bpb: float | None = None
    train: TrainOutcome | None = None
    evaluation: EvalOutcome | None = None
    log_tail: str = ""


def lost_event_id(consumer: str, stream_seq: int, proposed_ts: float) -> str:
    """A deterministic UUIDv7 for the dead-letter event of one exhausted item: every runner that sees the
    advisory computes the same id, so the server's Nats-Msg-Id dedup keeps one."""
    ms = int(proposed_ts * 1000) & ((1 << 48) - 1)
    h = int.from_bytes(hashlib.sha256(f"lost:{consumer}:{stream_seq}".encode()).digest()[:10], "big")
    rand_a, rand_b = h & 0xFFF, (h >> 12) & ((1 << 62) - 1)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


class Runner:
    """One runner. Pass the connected client and the config; :meth:`run` until ``stop`` is set."""

    def __init__(self, nc: NATS, config: RunnerConfig, *, executor: Executor | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config
        self.id = config.runner_id
        self.executor: Executor = executor or make_executor(config)
        self.hardware: Hardware | None = None
        self.classes: list[str] = []
        self.node: NodeData | None = None
        self.calibration: Calibration | None = None
        self.subs: list[tuple[str, Any]] = []
        self._fetches: dict[str, asyncio.Task[Any]] = {}
        self._buffer: list[Item] = []
        self._claims: set[tuple[str, int]] = set()
        self._finished: set[tuple[str, int]] = set()
        self._deadletter_subs: list[Any] = []
        self.completed = 0  # experiments that ended with a published result
        self.published: list[ExperimentFinished] = []

    # -- setup ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        (cfg.state_dir / "jobs").mkdir(exist_ok=True)
        (cfg.state_dir / "logs").mkdir(exist_ok=True)
        self.hardware = await asyncio.to_thread(hardware.detect, cfg.gpu, cfg.hw_class, cfg.threads)
        if cfg.executor == "simulated" and not cfg.hw_class:
            self.hardware = msgspec.structs.replace(self.hardware, hw_class="cpu")
        hw_class = self.hardware.hw_class
        set_cls = getattr(self.executor, "set_hw_class", None)
        if set_cls is not None:
            set_cls(hw_class)
        self.classes = list(cfg.classes) or [hw_class, "any"]
        if "any" not in self.classes and not cfg.classes:
            self.classes.append("any")
        await ensure_stream(self.js)
        for cls in self.classes:
            ccfg = work_consumer_config(cfg.run, cls, ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver)
            await ensure_consumer(self.js, ccfg)
            psub = await self.js.pull_subscribe_bind(
                durable=subjects.work_consumer(cfg.run, cls), stream=subjects.STREAM
            )
            self.subs.append((cls, psub))
        profile = cfg.profile or ("gpu" if self.hardware.gpu_count else "cpu")
        if cfg.executor == "simulated":
            self.node = node.simulated_node(cfg, profile)
        else:
            self.node = await node.prepare_node(cfg, profile)
        await self.executor.setup(self.node)
        await self._watch_dead_letters()
        if cfg.calibrate:
            self.calibration = await self._calibrate()
        await publish(
            self.js,
            RunnerJoined(
                run=cfg.run,
                source=self.id,
                runner=self.id,
                hardware=self.hardware,
                classes=self.classes,
                executor=self.executor.name,
                calibration=self.calibration,
            ),
        )
        log.info("runner %s up: classes %s, executor %s", self.id, self.classes, self.executor.name)

    # -- budgets --------------------------------------------------------------------------------------

    def _scale(self) -> float:
        return self.config.time_scale if self.executor.name == "simulated" else 1.0

    def _limits(self, budget: float) -> tuple[float, float]:
        assert self.node is not None
        cfg, p = self.config, self.node.profile
        startup = cfg.startup_seconds if cfg.startup_seconds is not None else STARTUP_SECONDS[p]
        evaluation = cfg.eval_seconds if cfg.eval_seconds is not None else EVAL_SECONDS[p]
        s = self._scale()
        return (budget + startup + cfg.grace_seconds) * s, (evaluation + cfg.grace_seconds) * s

    def _budget(self, hyp: HypothesisProposed | None) -> float:
        assert self.node is not None
        if self.config.budget_seconds is not None:
            return self.config.budget_seconds
        if hyp is not None and hyp.budget_seconds:
            return float(hyp.budget_seconds)
        return DEFAULT_BUDGET[self.node.profile]

    # -- calibration ----------------------------------------------------------------------------------

    async def _calibrate(self) -> Calibration | None:
        path = Path(self.config.baseline_train_py)
        source = _read_or_none(path)
        if source is None:
            log.warning("no baseline train.py at %s: calibration skipped", path)
            return None
        budget = self.config.calibration_budget
        train_timeout, eval_timeout = self._limits(budget)
        job = self._make_job("calibration", 0, source, budget, train_timeout, eval_timeout, seed=0)
        await self.executor.prepare(job)
        try:
            res = await self.executor.train(job, lambda line: None)
        finally:
            await self.executor.cleanup(job)
        summary = contract.parse_summary(res.output)
        steps, secs = summary.get("num_steps"), summary.get("training_seconds")
        shutil.rmtree(job.job_dir, ignore_errors=True)
        if res.exit_code != 0 or not steps or not secs:
            log.warning("calibration run failed (exit %s): %s", res.exit_code, res.output[-500:])
            return None
        return Calibration(
            steps_per_second=steps / secs,
            tokens_per_second=summary.get("total_tokens_M") * 1e6 / secs,
            seconds=res.seconds,
            train_py_sha256=sha256(source),
        )

    # -- acquiring work -------------------------------------------------------------------------------

    async def _fetch_one(self, psub: Any, timeout: float) -> Any:
        try:
            msgs = await psub.fetch(1, timeout=timeout)
        except TimeoutError:
            return None
        return msgs[0] if msgs else None

    def _fetch_timeout(self) -> float:
        return max(0.1, min(self.config.fetch_timeout, self.config.ack_wait / 4))

    async def _acquire(self, *stops: asyncio.Event) -> Item | None:
        """The best held item, or None once a whole fetch round (every consumer) found nothing, or on stop.

        Every consumer gets its own long-poll; whatever arrives is claimed and held (lease renewed), and
        the most specific class wins. Extra items stay in the buffer (at most one per consumer)."""
        started = False
        while not self._buffer and not any(e.is_set() for e in stops):
            if not started:
                for cls, psub in self.subs:
                    if cls not in self._fetches:
                        self._fetches[cls] = asyncio.create_task(self._fetch_one(psub, self._fetch_timeout()))
                started = True
            if not self._fetches:
                break  # a full round came back empty
            stoppers = [asyncio.create_task(e.wait()) for e in stops]
            try:
                await asyncio.wait([*self._fetches.values(), *stoppers], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in stoppers:
                    t.cancel()
            await self._collect()
        if self._buffer:
            await self._collect()
        if not self._buffer:
            return None
        order = {c: i for i, (c, _) in enumerate(self.subs)}
        self._buffer.sort(key=lambda it: (order.get(it.cls, 99), it.stream_seq))
        return self._buffer.pop(0)

    async def _collect(self) -> None:
        for cls in [c for c, t in self._fetches.items() if t.done()]:
            task = self._fetches.pop(cls)
            try:
                msg = task.result()
            except Exception as e:  # a failed fetch (reconnecting...) is retried next round
                log.warning("fetch on %s failed: %s", cls, e)
                continue
            if msg is not None:
                item = await self._claim(msg, cls)
                if item is not None:
                    self._buffer.append(item)

    async def _claim(self, msg: Any, cls: str) -> Item | None:
        lease = Lease(msg, self.nc, self.config.ack_wait)
        md = msg.metadata
        try:
            event = decode(msg.data)
        except EventDecodeError as e:
            log.error("work item %s is not an event (%s): terminated", md.sequence.stream, e)
            await lease.term()
            return None
        if not isinstance(event, HypothesisProposed):
            log.error(
                "work item %s is a %s, not a HypothesisProposed: terminated",
                md.sequence.stream,
                type(event).__name__,
            )
            await lease.term()
            return None
        item = Item(
            msg=msg, hyp=event, attempt=md.num_delivered, stream_seq=md.sequence.stream, lease=lease, cls=cls
        )
        item.keeper = asyncio.create_task(lease.keep())
        assert self.hardware is not None
        await publish(
            self.js,
            ExperimentClaimed(
                run=self.config.run,
                source=self.id,
                hypothesis_id=event.hypothesis_id,
                attempt=item.attempt,
                runner=self.id,
                hardware=self.hardware,
                stream_seq=item.stream_seq,
            ),
        )
        self._claims.add((event.hypothesis_id, item.attempt))
        return item

    async def _release(self, item: Item, how: str) -> None:
        if item.keeper is not None:
            item.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await item.keeper
        if item.lease.released:
            return
        try:
            if how == "ack":
                await item.lease.ack()
            elif how == "nak":
                await item.lease.nak()
        except Exception as e:  # the server will redeliver after ack_wait anyway
            log.warning("%s of %s failed: %s", how, item.hyp.hypothesis_id, e)
        item.lease.released = True

    # -- preparing a job ------------------------------------------------------------------------------

    def _make_job(
        self,
        hid: str,
        attempt: int,
        source: str,
        budget: float,
        train_timeout: float,
        eval_timeout: float,
        seed: int,
    ) -> Job:
        assert self.node is not None
        job_dir = self.config.state_dir / "jobs" / f"{hid}-a{attempt}-{uuid.uuid4().hex[:6]}"
        job = Job(
            hypothesis_id=hid,
            attempt=attempt,
            train_py=source,
            job_dir=job_dir,
            budget_seconds=budget,
            train_timeout=train_timeout,
            eval_timeout=eval_timeout,
            seed=seed,
            env=self._job_env(),
        )
        pristine = self.node.pristine_dir / "prepare.py"
        for d in (job.work_dir, job.eval_dir, job.out_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (job.work_dir, job.eval_dir):
            (d / "train.py").write_text(source)
            if pristine.is_file():
                shutil.copyfile(pristine, d / "prepare.py")
        job.log_path.touch()
        return job

    def _job_env(self) -> dict[str, str]:
        cfg = self.config
        env: dict[str, str] = {}
        if cfg.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(cfg.gpu)
        elif self.hardware is not None and not self.hardware.gpu_count:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if cfg.threads:
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS"):
                env[k] = str(cfg.threads)
        return env

    async def _prepare(self, item: Item) -> None:
        """Check the hypothesis and lay out its job (pipelined: may run while another job trains)."""
        hyp = item.hyp
        if sha256(hyp.train_py) != hyp.train_py_sha256:
            item.rejected = "train.py does not match its train_py_sha256 (corrupted or tampered in transit)"
            return
        try:
            contract.check_module_level(hyp.train_py)
        except ContractViolation as e:
            item.rejected = str(e)
            return
        budget = self._budget(hyp)
        train_timeout, eval_timeout = self._limits(budget)
        seed = self.config.seed if self.config.seed is not None else hyp.seed
        item.job = self._make_job(
            hyp.hypothesis_id, item.attempt, hyp.train_py, budget, train_timeout, eval_timeout, seed
        )
        await self.executor.prepare(item.job)

    # -- running --------------------------------------------------------------------------------------

    def _on_line(self, item: Item) -> Any:
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
                msg = Progress(
                    run=self.config.run,
                    runner=self.id,
                    hypothesis_id=item.hyp.hypothesis_id,
                    attempt=item.attempt,
                    phase=item.phase,
                    progress=p.progress if p else 0.0,
                    step=p.step if p else 0,
                    loss=p.loss if p else None,
                    elapsed=time.monotonic() - start,
                )
                with contextlib.suppress(Exception):  # cosmetic: never let it disturb the experiment
                    await self.nc.publish(subjects.progress(self.config.run), msgspec.msgpack.encode(msg))
            await asyncio.sleep(self.config.progress_interval)

    async def _execute(self, item: Item) -> Outcome:
        """Train, evaluate, classify. Cancellation kills whatever runs (the executors' finally blocks)."""
        job = item.job
        assert job is not None
        item.phase = "training"
        tr = await self.executor.train(job, self._on_line(item))
        tail_chars = self.config.log_tail_chars
        if tr.timed_out:
            return Outcome(
                "timeout",
                f"killed at the hard limit of {job.train_timeout:.0f} s",
                train=tr,
                log_tail=tr.output[-tail_chars:],
            )
        summary = contract.parse_summary(tr.output)
        if tr.exit_code != 0:
            tail = contract.traceback_tail(tr.output, tail_chars)
            if tr.oom_killed or contract.looks_like_oom(tr.output[-20000:]):
                return Outcome("oom", f"out of memory (exit {tr.exit_code})", train=tr, log_tail=tail)
            if tr.exit_code == 3 or summary.nan_step is not None:
                return Outcome("nan", f"nan loss at step {summary.nan_step}", train=tr, log_tail=tail)
            return Outcome("crash", f"train.py exited with {tr.exit_code}", train=tr, log_tail=tail)
        if summary.nan_step is not None:
            return Outcome(
                "nan", f"nan loss at step {summary.nan_step}", train=tr, log_tail=tr.output[-tail_chars:]
            )
        if not (job.out_dir / "model.pt").exists():
            return Outcome(
                "crash",
                "train.py exited 0 but saved no model.pt in SWARM_OUT_DIR",
                train=tr,
                log_tail=tr.output[-tail_chars:],
            )
        item.phase = "evaluating"
        ev = await self.executor.evaluate(job)
        if ev.status == "ok" and ev.val_bpb is not None:
            return Outcome(
                "ok", val_bpb=ev.val_bpb, train=tr, evaluation=ev, log_tail=tr.output[-tail_chars:]
            )
        if ev.status == "noncausal":
            return Outcome(
                "rejected",
                f"non-causal model: {ev.reason}",
                train=tr,
                evaluation=ev,
                log_tail=ev.output[-tail_chars:],
            )
        return Outcome(
            "crash",
            f"trusted evaluation failed: {ev.reason}",
            train=tr,
            evaluation=ev,
            log_tail=contract.traceback_tail(ev.output, tail_chars),
        )

    def _log_ref(self, item: Item) -> str:
        if item.job is None:
            return ""
        dst = self.config.state_dir / "logs" / f"{item.hyp.hypothesis_id}-a{item.attempt}.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(item.job.log_path, dst)
            return str(dst.resolve())
        return ""

    def _finished_event(self, item: Item, out: Outcome, total: float, late: bool) -> ExperimentFinished:
        assert self.node is not None and self.hardware is not None
        hyp = item.hyp
        summary = contract.parse_summary(out.train.output) if out.train else contract.Summary()
        ev = out.evaluation
        return ExperimentFinished(
            run=self.config.run,
            source=self.id,
            hypothesis_id=hyp.hypothesis_id,
            attempt=item.attempt,
            runner=self.id,
            status=out.status,
            val_bpb=out.val_bpb,
            reported_val_bpb=summary.values.get("val_bpb"),
            training_seconds=summary.get("training_seconds"),
            total_seconds=total,
            num_steps=int(summary.get("num_steps")),
            tokens=int(summary.get("total_tokens_M") * 1e6),
            num_params=(ev.num_params if ev and ev.num_params else int(summary.get("num_params_M") * 1e6)),
            peak_vram_mb=summary.get("peak_vram_mb"),
            mfu=summary.get("mfu_percent"),
            reason=out.reason,
            log_tail=out.log_tail,
            log_ref=self._log_ref(item),
            hw_class=self.hardware.hw_class,
            train_py_sha256=hyp.train_py_sha256,
            dataset_fingerprint=self.node.dataset_fingerprint,
            tokenizer_fingerprint=self.node.tokenizer_fingerprint,
            budget_seconds=item.job.budget_seconds if item.job else self._budget(hyp),
            late=late,
        )

    async def publish_result(self, item: Item, out: Outcome, total: float) -> ExperimentFinished:
        """The fence: publish once per claimed (hypothesis, attempt); late if the lease is gone; ack only
        when still held."""
        key = (item.hyp.hypothesis_id, item.attempt)
        if key not in self._claims:
            raise UnclaimedResult(
                f"refusing to publish a result for {key[0]} attempt {key[1]}: this runner ({self.id}) never claimed it"
            )
        if key in self._finished:
            raise UnclaimedResult(
                f"a result for {key[0]} attempt {key[1]} was already published by {self.id}"
            )
        if item.keeper is not None:
            item.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await item.keeper
        held = await item.lease.renew()
        event = self._finished_event(item, out, total, late=not held)
        await publish(self.js, event)
        tr, ev = out.train, out.evaluation
        log.info(
            "%s attempt %d: %s%s (train step %.1f s, evaluation %.1f s, total %.1f s)%s",
            *key, out.status, f" val_bpb {out.val_bpb:.4f}" if out.val_bpb is not None else "",
            tr.seconds if tr else 0.0, ev.seconds if ev else 0.0, total, " LATE" if event.late else "",
        )  # fmt: skip
        self._finished.add(key)
        self.published.append(event)
        self.completed += 1
        if held:
            await self._release(item, "ack")
        else:
            log.warning("lease of %s attempt %d was lost: result published as late, not acked", *key)
            item.lease.released = True
        return event

    async def _run_item(self, item: Item, stop: asyncio.Event) -> None:
        """Run one held item to a published result, or give it back on stop."""
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
                        await self._drain_fetches()
                        log.info("stop: gave back %s attempt %d", item.hyp.hypothesis_id, item.attempt)
                        await self._release(item, "nak")
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
            await self._release(item, "nak")
            raise
        except Exception:
            log.exception("result of %s could not be published: giving it back", item.hyp.hypothesis_id)
            await self._release(item, "nak")
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            if item.job is not None:
                with contextlib.suppress(Exception):
                    await self.executor.cleanup(item.job)
                shutil.rmtree(item.job.job_dir, ignore_errors=True)

    async def _drain_fetches(self) -> None:
        """Let in-flight fetches end (they expire within fetch_timeout) and give back what they got, so
        no pull request of ours is left open to swallow an item we are about to give back."""
        tasks = list(self._fetches.values())
        self._fetches.clear()
        for task in tasks:
            try:
                msg = await asyncio.wait_for(task, self._fetch_timeout() + 2.0)
            except Exception:  # timed out or failed: nothing to give back
                continue
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _prefetch(self, halt: asyncio.Event, stop: asyncio.Event) -> None:
        """Fetch and prepare the next item while the current one runs (at most one ahead). ``halt`` is set
        when the current item is done (or on stop): fetching then goes back to the main loop."""
        while not halt.is_set() and not stop.is_set() and not self._buffer:
            item = await self._acquire(halt, stop)
            if item is not None:
                self._buffer.insert(0, item)
                break
        for it in list(self._buffer):
            if it.job is None and not it.rejected:
                await self._prepare(it)

    # -- the loop -------------------------------------------------------------------------------------

    async def _queue_empty(self) -> bool:
        for cls, _ in self.subs:
            info = await self.js.consumer_info(subjects.STREAM, subjects.work_consumer(self.config.run, cls))
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    def _done(self) -> bool:
        m = self.config.max_experiments
        return m is not None and self.completed >= m

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or burst / max_experiments ends it), then shut down cleanly."""
        reason = "stopped"
        try:
            await self.start()
            while not stop.is_set() and not self._done():
                item = await self._acquire(stop)
                if item is None:
                    if self.config.burst and not self._fetches and await self._queue_empty():
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
        finally:
            await self.shutdown(reason)

    async def shutdown(self, reason: str) -> None:
        """Give back held items, stop fetching, announce leaving."""
        await self._drain_fetches()
        for it in self._buffer:
            await self._release(it, "nak")
            if it.job is not None:
                with contextlib.suppress(Exception):
                    await self.executor.cleanup(it.job)
                shutil.rmtree(it.job.job_dir, ignore_errors=True)
        self._buffer.clear()
        for sub in self._deadletter_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for _, psub in self.subs:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.executor.close()
        if self.hardware is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await publish(
                    self.js, RunnerLeft(run=self.config.run, source=self.id, runner=self.id, reason=reason)
                )
        log.info("runner %s left: %s", self.id, reason)

    # -- dead letters ---------------------------------------------------------------------------------

    async def _watch_dead_letters(self) -> None:
        """Items that exhausted max_deliver end as ExperimentFinished(status=lost). One runner of the queue
        group handles each advisory; the deterministic event id dedups the rare double."""
        for cls, _ in self.subs:
            consumer = subjects.work_consumer(self.config.run, cls)
            subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM}.{consumer}"
            sub = await self.nc.subscribe(subject, queue=f"deadletter_{consumer}", cb=self._on_dead_letter)
            self._deadletter_subs.append(sub)

    async def _on_dead_letter(self, msg: Any) -> None:
        try:
            adv = json.loads(msg.data)
            seq, consumer, deliveries = (
                int(adv["stream_seq"]),
                str(adv["consumer"]),
                int(adv.get("deliveries", 0)),
            )
            raw = await self.js.get_msg(subjects.STREAM, seq)
            event = decode(raw.data or b"")
            if not isinstance(event, HypothesisProposed):
                return
            lost = ExperimentFinished(
                event_id=lost_event_id(consumer, seq, event.ts),
                run=self.config.run,
                source=self.id,
                hypothesis_id=event.hypothesis_id,
                attempt=deliveries,
                runner=self.id,
                status="lost",
                reason=f"no runner finished it in {deliveries} deliveries (max_deliver): dead-lettered",
                hw_class=event.hw_class,
                train_py_sha256=event.train_py_sha256,
            )
            await publish(self.js, lost)
            self.published.append(lost)
        except Exception:  # an advisory we cannot act on must not kill the subscription
            log.exception("dead-letter advisory not handled: %r", msg.data[:300])


async def run_runner(config: RunnerConfig, *, stop: asyncio.Event) -> None:
    """Connect, serve until ``stop`` is set (SIGTERM in the CLI) or burst/max_experiments ends it, drain."""
    nc = await connect(list(config.nats_urls), name=f"runner-{config.runner_id}")
    try:
        await Runner(nc, config).run(stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
