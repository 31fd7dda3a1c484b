"""A fleet of simulated runners in one process: the GPUs of ``swarm simulate``.

Each runner is a whole :class:`runner.daemon.Runner` (its own pull requests on the work consumers, its own
claims, leases renewed with ``in_progress()``, fenced results, RunnerJoined/Left) on the simulated executor;
only the NATS connection is shared, by groups of ``per_connection`` runners (a socket and a read loop per
runner would cost more than the runners), and one :class:`Landscape` (pure, so its cache serves them all).
Runner ids are deterministic (``<prefix>-<class>-<n>``): a fleet restarted after a crash comes back as the
same machines, as a restarted GPU node would.

``python -m runner.fleet --nats URL --run R --classes h100:13,h200:3 --time-scale 0.05 --state-dir D``;
SIGTERM/SIGINT stop it like ``swarm runner``: stop claiming, finish or give back, leave, drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS

from bus.client import connect, ensure_consumer, ensure_stream, work_consumer_config
from bus.events import check_token
from runner.config import REPO_ROOT, RunnerConfig
from runner.daemon import Runner
from runner.executors.landscape import Landscape
from runner.executors.simulated import SimulatedExecutor, reference_source

log = logging.getLogger("swarm.fleet")


def parse_classes(spec: str) -> list[tuple[str, int]]:
    """``"h100:13,h200:3"`` → ``[("h100", 13), ("h200", 3)]``; a bare class counts one."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, count = part.partition(":")
        try:
            n = int(count) if count else 1
            check_token("hardware class", name)
        except ValueError as e:
            raise ValueError(f"bad --classes entry {part!r}: use class:count, e.g. h100:13,h200:3 ({e})") from e
        if n < 0:
            raise ValueError(f"bad --classes entry {part!r}: the count must be ≥ 0")
        out.append((name, n))
    if not out or sum(n for _, n in out) == 0:
        raise ValueError(f"--classes {spec!r} names no runner: use class:count, e.g. h100:13,h200:3")
    return out


def scaled_classes(total: int, mix: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``total`` runners split in the proportions of ``mix`` (largest remainders; every class ≥ 1 if it can)."""
    weight = sum(n for _, n in mix)
    exact = [total * n / weight for _, n in mix]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(mix)), key=lambda i: exact[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return [(c, n) for (c, _), n in zip(mix, counts, strict=True) if n > 0]


@dataclass
class FleetConfig:
    """What every runner of the fleet shares; ``classes`` says how many of each hardware class."""

    nats_urls: tuple[str, ...]
    run: str
    classes: list[tuple[str, int]]
    state_dir: Path
    time_scale: float = 0.05
    budget_seconds: float = 300.0  # simulated seconds of training per experiment
    ack_wait: float = 30.0  # wall seconds (the lease); renewed every third of it
    max_deliver: int = 5
    fetch_timeout: float = 7.5  # an idle runner re-asks every min(this, ack_wait / 4) s, per class
    per_connection: int = 64
    prefetch: bool = False  # one item ahead per runner: idles others when the queue is short
    progress_interval: float = 5.0  # cosmetic (live views); a thousand runners send them
    stop_grace_seconds: float = 600.0
    start_stagger: float = 0.02  # seconds between two runners' starts (1,000 runners: 20 s)
    id_prefix: str = "sim"
    baseline_train_py: Path = field(default_factory=lambda: REPO_ROOT / "train.py")

    @property
    def size(self) -> int:
        return sum(n for _, n in self.classes)

    def runner_ids(self) -> list[tuple[str, str]]:
        """(runner id, class) of every runner, in a stable order."""
        return [(f"{self.id_prefix}-{cls}-{i:04d}", cls) for cls, n in self.classes for i in range(n)]

    def runner_config(self, runner_id: str, cls: str) -> RunnerConfig:
        return RunnerConfig(
            nats_urls=self.nats_urls, run=self.run, runner_id=runner_id, hw_class=cls, executor="simulated",
            profile="cpu" if cls == "cpu" else "gpu", state_dir=self.state_dir / runner_id,
            max_budget=self.budget_seconds, time_scale=self.time_scale, ack_wait=self.ack_wait,
            max_deliver=self.max_deliver, fetch_timeout=self.fetch_timeout, prefetch=self.prefetch,
            calibrate=False, progress_interval=self.progress_interval,
            stop_grace_seconds=self.stop_grace_seconds, baseline_train_py=self.baseline_train_py,
        )  # fmt: skip


@dataclass
class FleetStats:
    runners: int = 0
    connections: int = 0
    completed: int = 0
    restarts: int = 0  # runners that raised and were started again
    failed_runners: list[str] = field(default_factory=list)  # gave up on after MAX_RESTARTS
    seconds: float = 0.0


async def _prepare_consumers(nc: NATS, cfg: FleetConfig) -> None:
    """The work consumers once, before a thousand runners ask for them at the same moment. Every idle runner
    keeps a pull request waiting on each of its classes' consumers, and JetStream refuses more than
    ``max_waiting`` (default 512) with a 409 that nats-py reports as a timeout: the refused runners would
    spin, re-asking. So the fleet sizes it to the fleet."""
    js = nc.jetstream()
    await ensure_stream(js)
    for cls in sorted({c for c, _ in cfg.classes} | {"any"}):
        await ensure_consumer(js, work_consumer_config(cfg.run, cls, ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver,
                                                       max_waiting=max(4096, 2 * cfg.size)))


MAX_RESTARTS = 10  # per runner: a supervisor gives up on a runner that keeps dying


async def run_fleet(cfg: FleetConfig, stop: asyncio.Event) -> FleetStats:
    """Run every runner of ``cfg`` until ``stop`` is set, then stop them (each finishes or gives back what
    it holds) and drain the connections.

    The fleet is each runner's supervisor, as systemd or Kubernetes is a real runner's: a runner whose
    ``run`` raises is logged with its traceback and started again under the same id (at most
    :data:`MAX_RESTARTS` times); ``FleetStats.restarts`` counts them, so a daemon bug shows in the figures
    instead of silently shrinking the fleet."""
    t0 = time.monotonic()
    stats = FleetStats(runners=cfg.size)
    landscape = Landscape(reference_source(cfg.runner_config("x", "h100")))
    n_conn = max(1, math.ceil(cfg.size / max(1, cfg.per_connection)))
    conns = [await connect(list(cfg.nats_urls), name=f"fleet-{cfg.id_prefix}-{i}") for i in range(n_conn)]
    stats.connections = n_conn
    done: list[Runner] = []

    async def supervise(i: int, rid: str, cls: str) -> None:
        rc = cfg.runner_config(rid, cls)
        # machines come up over a while, not in the same millisecond: a thousand runners starting at once
        # would each ask the server for the run's state at the same moment
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), i * cfg.start_stagger)
        for attempt in range(MAX_RESTARTS + 1):
            runner = Runner(conns[i // cfg.per_connection], rc, executor=SimulatedExecutor(rc, landscape=landscape))
            done.append(runner)
            try:
                await runner.run(stop)
                return
            except Exception as e:  # what would end a `swarm runner` process: its supervisor restarts it
                log.error("runner %s ended with %r (restart %d of %d)", rid, e, attempt + 1, MAX_RESTARTS,
                          exc_info=e)  # fmt: skip
                stats.restarts += 1
                if stop.is_set():
                    return
                backoff = min(30.0, 1.5**attempt) * (0.5 + random.random())  # jittered: not all at once again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)  # back off, unless stopping
                if stop.is_set():
                    return
        stats.failed_runners.append(rid)

    try:
        await _prepare_consumers(conns[0], cfg)
        log.warning("fleet %s: %d runners on %d connections", cfg.id_prefix, cfg.size, n_conn)
        await asyncio.gather(*(supervise(i, rid, cls) for i, (rid, cls) in enumerate(cfg.runner_ids())))
    finally:
        for nc in conns:
            with contextlib.suppress(Exception):
                await nc.drain()
    stats.completed = sum(r.completed for r in done)
    stats.seconds = time.monotonic() - t0
    return stats


def parse_args(argv: list[str] | None = None) -> FleetConfig:
    p = argparse.ArgumentParser(prog="python -m runner.fleet", description="a fleet of simulated runners")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="comma-separated server URLs")
    p.add_argument("--run", default="default")
    p.add_argument("--classes", required=True, help="hardware classes and counts, e.g. h100:13,h200:3")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--time-scale", type=float, default=0.05, help="wall seconds per simulated second")
    p.add_argument("--budget", type=float, default=300.0, help="simulated seconds of training")
    p.add_argument("--ack-wait", type=float, default=30.0)
    p.add_argument("--max-deliver", type=int, default=5)
    p.add_argument("--fetch-timeout", type=float, default=7.5)
    p.add_argument("--per-connection", type=int, default=64)
    p.add_argument("--prefetch", action="store_true")
    p.add_argument("--progress-interval", type=float, default=5.0)
    p.add_argument("--stop-grace", type=float, default=600.0)
    p.add_argument("--start-stagger", type=float, default=0.02, help="seconds between two runners' starts")
    p.add_argument("--id-prefix", default="sim")
    p.add_argument("--baseline-train-py", default=str(REPO_ROOT / "train.py"))
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        classes = parse_classes(a.classes)
        check_token("runner id prefix", a.id_prefix)
    except ValueError as e:
        p.error(str(e))
    if a.time_scale <= 0 or a.per_connection < 1:
        p.error("--time-scale must be > 0 and --per-connection ≥ 1")
    return FleetConfig(
        nats_urls=tuple(u.strip() for u in a.nats.split(",") if u.strip()), run=a.run, classes=classes,
        state_dir=Path(a.state_dir), time_scale=a.time_scale, budget_seconds=a.budget, ack_wait=a.ack_wait,
        max_deliver=a.max_deliver, fetch_timeout=a.fetch_timeout, per_connection=a.per_connection,
        prefetch=a.prefetch, progress_interval=a.progress_interval, stop_grace_seconds=a.stop_grace,
        start_stagger=a.start_stagger,
        id_prefix=a.id_prefix, baseline_train_py=Path(a.baseline_train_py),
    )  # fmt: skip


def _await_chain(task: asyncio.Task[object]) -> str:
    """file:line of every coroutine in the task's await chain, outermost first."""
    out: list[str] = []
    obj: object = task.get_coro()
    for _ in range(40):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        out.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
        if obj is None:
            break
    return " > ".join(out)


def dump_tasks() -> None:
    """Log where every task of the fleet waits (SIGUSR1), grouped: with a thousand runners in one process,
    this is how to see which ones hang, and on what."""
    import collections

    chains = collections.Counter(_await_chain(t) for t in asyncio.all_tasks())
    for chain, n in chains.most_common():
        log.warning("tasks waiting (%d): %s", n, chain)


async def _main(cfg: FleetConfig) -> FleetStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    return await run_fleet(cfg, stop)


def main(argv: list[str] | None = None) -> None:
    stats = asyncio.run(_main(parse_args(argv)))
    print(json.dumps({"fleet": stats.__dict__}), flush=True)
    sys.exit(1 if stats.failed_runners else 0)


if __name__ == "__main__":
    main()
