"""A whole swarm in compressed time on this machine — the real nats-server (embedded), the real ledger (a
``swarm ledger`` process), the real agents (one ``python -m swarmcli.simulate agents`` process running
``run_agent_spec`` for each spec) and N simulated runners hosted by one or a few ``python -m runner.fleet``
processes, each runner a real bus client with its own pull requests, claims, leases and fenced results, on
the landscape of :mod:`runner.executors.landscape` (one simulated second lasts ``time_scale`` wall seconds).

:func:`run_simulation` is what ``swarm simulate`` (:mod:`swarmcli.simulate`) runs; :class:`SimulatedSwarm`
is the same thing in steps, for the kill drills (``tests/test_simulate_drills.py``): kill the fleet, the
ledger, restart the server, in between.

Shutdown order (nothing lost): agents stop proposing; the runners finish what was proposed (the work
consumers drain); the fleet stops; the ledger projects to the end of the stream; the server stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from swarmcli.common import REPO_ROOT

DEFAULT_MIX = [("h100", 13), ("h200", 3)]  # the seed's cluster


@dataclass
class SimConfig:
    """One simulated run. ``classes``: (hardware class, runners); ``experiments`` or ``sim_hours`` ends it."""

    run: str
    state_dir: Path
    classes: list[tuple[str, int]]
    agents: list[str] = field(default_factory=lambda: ["optuna", "random"])
    experiments: int | None = None
    sim_hours: float | None = None
    time_scale: float = 0.05
    seed: int = 0
    budget: float = 300.0
    fleet_procs: int = 1
    per_connection: int = 64
    max_wave: int | None = None  # None: the fleet's size (one wave may fill it)
    wave_quorum: float | None = None  # None: the agents' default for their kind
    ack_wait: float = 30.0
    max_deliver: int = 5
    agent_class: str = "any"
    port: int | None = None
    baseline_repeats: int = 3
    verify_replay: bool = True
    quiet: bool = False
    verbose_fleet: bool = False  # every runner's INFO lines in fleet<i>.log (drills, debugging)

    @property
    def runners(self) -> int:
        return sum(n for _, n in self.classes)

    @property
    def run_dir(self) -> Path:
        return self.state_dir / self.run


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory (VmHWM) of a live process, in MiB (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class SimulatedSwarm:
    """The processes of one simulated run and the probes that measure it, step by step."""

    def __init__(self, cfg: SimConfig) -> None:
        from bus import EmbeddedServer
        from swarmcli.simfigures import Samples

        self.cfg = cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.server = EmbeddedServer(cfg.state_dir / "nats", port=cfg.port, log_file=cfg.run_dir / "nats.log")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.samples = Samples()
        self.nc: Any = None
        self.js: Any = None
        self.t_agents: float | None = None  # wall time the agents started / were told to stop
        self.t_stop: float | None = None
        self.t_first: float | None = None  # when the first hypothesis was seen in the stream
        self._probes: list[asyncio.Task[None]] = []
        self._expected_exit: set[str] = set()

    @property
    def db(self) -> Path:
        return self.cfg.state_dir / "ledger.duckdb"

    # -- processes ----------------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with (self.cfg.run_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.procs[name] = proc
        self._expected_exit.discard(name)
        return proc

    def _note_peak(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            label = "fleet" if name.startswith("fleet") else name
            v = peak_rss_mb(proc.pid)
            if v is not None:
                self.samples.peak_rss_mb[label] = max(v, self.samples.peak_rss_mb.get(label, 0.0))

    def kill(self, name: str) -> None:
        """kill -9 (drills): nothing is flushed, nothing given back."""
        proc = self.procs[name]
        self._expected_exit.add(name)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)

    async def terminate(self, name: str, timeout: float) -> int | None:
        """SIGTERM and wait (a clean stop); kill -9 after ``timeout``."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        self._note_peak(name)
        self._expected_exit.add(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return await asyncio.to_thread(proc.wait, 30)

    def failed(self) -> list[str]:
        """Processes that ended on their own (not stopped or killed by us)."""
        return [n for n, p in self.procs.items() if p.poll() is not None and n not in self._expected_exit]

    def start_ledger(self) -> None:
        self._spawn("ledger", ["-m", "swarmcli", "ledger", "--nats", self.server.url, "--db", str(self.db)])

    def start_fleet(self) -> None:
        """The runners, split over ``fleet_procs`` processes (ids ``sim<i>-<class>-<n>``)."""
        from runner.fleet import scaled_classes

        cfg = self.cfg
        procs = max(1, min(cfg.fleet_procs, cfg.runners))
        for i in range(procs):
            share = cfg.runners // procs + (1 if i < cfg.runners % procs else 0)
            mix = scaled_classes(share, cfg.classes) if procs > 1 else cfg.classes
            self._spawn(f"fleet{i}", [
                "-m", "runner.fleet", "--nats", self.server.url, "--run", cfg.run,
                "--classes", ",".join(f"{c}:{n}" for c, n in mix), "--state-dir", str(cfg.run_dir / f"fleet{i}"),
                "--time-scale", str(cfg.time_scale), "--budget", str(cfg.budget), "--ack-wait", str(cfg.ack_wait),
                "--max-deliver", str(cfg.max_deliver), "--per-connection", str(cfg.per_connection),
                "--id-prefix", f"sim{i}", *(["-v"] if cfg.verbose_fleet else []),
            ])  # fmt: skip

    def start_agents(self) -> None:
        cfg = self.cfg
        args = ["-m", "swarmcli.simulate", "agents", "--nats", self.server.url, "--run", cfg.run,
                "--hw-class", cfg.agent_class, "--seed", str(cfg.seed), "--max-wave", str(cfg.max_wave or cfg.runners),
                "--baseline-repeats", str(cfg.baseline_repeats)]  # fmt: skip
        for spec in cfg.agents:
            args += ["--spec", spec]
        if cfg.experiments is not None:
            args += ["--max-experiments", str(cfg.experiments)]
        if cfg.wave_quorum is not None:
            args += ["--wave-quorum", str(cfg.wave_quorum)]
        self._spawn("agents", args)
        self.t_agents = time.time()

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Server, ledger and fleet; returns once every runner has joined."""
        from bus import connect, setup

        await asyncio.to_thread(self.server.start)
        self.nc = await connect(self.server.url, name="simulate")
        self.js = self.nc.jetstream()
        await setup(self.js)
        joined: set[str] = set()

        async def on_runner(msg: Any) -> None:
            from bus.events import RunnerJoined, decode

            with contextlib.suppress(Exception):
                ev = decode(msg.data)
                if isinstance(ev, RunnerJoined):
                    joined.add(ev.runner)

        sub = await self.nc.subscribe(f"swarm.{self.cfg.run}.evt.runner", cb=on_runner)
        self.start_ledger()
        self.start_fleet()
        self._probes = [asyncio.create_task(p()) for p in (self._probe_ledger, self._probe_context, self._probe_memory)]
        deadline = time.monotonic() + 60 + 0.2 * self.cfg.runners
        while len(joined) < self.cfg.runners:
            if self.failed():
                raise click.ClickException(self._why_failed())
            if time.monotonic() > deadline:
                raise click.ClickException(f"only {len(joined)} of {self.cfg.runners} runners joined; see {self.cfg.run_dir}")
            await asyncio.sleep(0.2)
        await sub.unsubscribe()

    def _why_failed(self) -> str:
        out = []
        for name in self.failed():
            log = self.cfg.run_dir / f"{name}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            out.append(f"{name} exited with {self.procs[name].returncode}:\n{tail}")
        return "\n".join(out)

    async def queue_empty(self) -> bool:
        """Every work item of the run acked (finished) or dead-lettered: nothing pending, nothing held."""
        from nats.js.errors import NotFoundError

        from bus import subjects

        for cls in sorted({c for c, _ in self.cfg.classes} | {"any"}):
            try:
                info = await self.js.consumer_info(subjects.STREAM, subjects.work_consumer(self.cfg.run, cls))
            except NotFoundError:
                continue  # nobody ever served that class: nothing waits there
            except Exception:  # the server is restarting, or too busy to say: not known to be empty
                return False
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def ledger_caught_up(self) -> bool:
        from bus import subjects

        try:
            info = await self.js.stream_info(subjects.STREAM)
            ci = await self.js.consumer_info(subjects.STREAM, subjects.LEDGER_CONSUMER)
        except Exception:
            return False
        return (ci.ack_floor.stream_seq or 0) >= (info.state.last_seq or 0)

    async def wait_for(self, what: str, check: Any, timeout: float, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if self.failed():
                raise click.ClickException(f"while waiting for {what}: {self._why_failed()}")
            if time.monotonic() > deadline:
                for name, proc in self.procs.items():  # each fleet logs where its tasks wait (diagnosis)
                    if name.startswith("fleet") and proc.poll() is None:
                        proc.send_signal(signal.SIGUSR1)
                raise click.ClickException(f"{what}: not within {timeout:.0f} s (see {self.cfg.run_dir})")
            await asyncio.sleep(every)

    def sim_elapsed(self) -> float:
        """Simulated seconds since the first hypothesis was published (the run's clock starts there)."""
        return 0.0 if self.t_first is None else (time.time() - self.t_first) / self.cfg.time_scale

    async def proposed_count(self) -> int:
        """Hypotheses of the run in the stream (every class's work subject)."""
        from bus import subjects

        info = await self.js.stream_info(subjects.STREAM, subjects_filter=f"swarm.{self.cfg.run}.work.*")
        return sum((info.state.subjects or {}).values())

    async def run_agents(self, stop: asyncio.Event, progress: Any = None) -> None:
        """Start the agents and run until ``--experiments`` are done (the agents exit), ``--sim-hours`` pass,
        or ``stop``; then stop the agents."""
        cfg = self.cfg
        self.start_agents()
        limit = None if cfg.sim_hours is None else cfg.sim_hours * 3600
        last_print = 0.0
        while not stop.is_set():
            if self.t_first is None:
                with contextlib.suppress(Exception):
                    if await self.proposed_count() > 0:
                        self.t_first = time.time()
            if self.procs["agents"].poll() is not None:
                self._expected_exit.add("agents")
                if self.procs["agents"].returncode != 0:
                    raise click.ClickException(self._why_failed_agents())
                break
            if self.failed():
                raise click.ClickException(self._why_failed())
            if limit is not None and self.sim_elapsed() >= limit:
                break
            if progress is not None and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                await progress(self)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2 if self.t_first is None else 0.5)
        await self.stop_agents()

    async def stop_agents(self) -> None:
        """The agents stop proposing (SIGTERM): the end of the measured window."""
        self.t_stop = time.time()
        await self.terminate("agents", 120)

    async def restart_server(self) -> None:
        """Stop the nats-server (SIGTERM) and start it again on the same port and store (drills)."""
        await asyncio.to_thread(self.server.restart)

    async def finished_count(self) -> int:
        """ExperimentFinished events of the run in the stream (every disposition)."""
        from bus import subjects

        subject = f"swarm.{self.cfg.run}.evt.finished"
        info = await self.js.stream_info(subjects.STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def held(self) -> int:
        """Work items claimed and not yet acked, over the run's work consumers."""
        from bus import subjects

        total = 0
        for cls in sorted({c for c, _ in self.cfg.classes} | {"any"}):
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(subjects.STREAM, subjects.work_consumer(self.cfg.run, cls))
                total += info.num_ack_pending
        return total

    def _why_failed_agents(self) -> str:
        log = self.cfg.run_dir / "agents.log"
        return f"the agents exited with {self.procs['agents'].returncode}:\n" + (
            log.read_text(errors="replace")[-2000:] if log.exists() else ""
        )

    async def drain(self) -> None:
        """Everything proposed finishes, the fleet stops, the ledger projects the whole stream and stops."""
        cfg = self.cfg
        wall = (cfg.budget + 120) * cfg.time_scale + cfg.ack_wait * cfg.max_deliver + 60
        await self.wait_for("the runners finish what was proposed", self.queue_empty, wall)
        for name in [n for n in self.procs if n.startswith("fleet")]:
            await self.terminate(name, 60 + cfg.budget * cfg.time_scale)
        await self.wait_for("the ledger reaches the end of the stream", self.ledger_caught_up, 300)
        await self.stop_probes()
        await self.terminate("ledger", 60)

    async def stop_probes(self) -> None:
        for t in self._probes:
            t.cancel()
        for t in self._probes:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._probes = []

    async def close(self) -> None:
        """Stop whatever still runs (children by their pid, then the server; the store is kept)."""
        await self.stop_probes()
        for name, proc in self.procs.items():
            if proc.poll() is None:
                await self.terminate(name, 30)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await asyncio.to_thread(self.server.stop)

    # -- probes ---------------------------------------------------------------------------------------------

    async def _probe_ledger(self) -> None:
        """The ledger's durable consumer's ack floor every 50 ms (projected = committed and acked)."""
        from bus import subjects

        while True:
            with contextlib.suppress(Exception):
                ci = await self.js.consumer_info(subjects.STREAM, subjects.LEDGER_CONSUMER, timeout=2)
                self.samples.ledger_position.append((time.time(), ci.ack_floor.stream_seq or 0))
            await asyncio.sleep(0.05)

    async def _probe_context(self) -> None:
        """An agent's context query, once a second, as an agent sends it."""
        from bus.readapi import LedgerClient

        client = LedgerClient(self.nc, self.cfg.run, timeout=10)
        while True:
            t = time.perf_counter()
            try:
                await client.context("simulate-probe")
                self.samples.context_ms.append(round(1000 * (time.perf_counter() - t), 2))
            except Exception:
                self.samples.context_errors += 1
            await asyncio.sleep(1.0)

    async def _probe_memory(self) -> None:
        while True:
            for name in list(self.procs):
                self._note_peak(name)
            await asyncio.sleep(1.0)

    # -- figures --------------------------------------------------------------------------------------------

    async def figures(self) -> dict[str, Any]:
        """Every figure of the run (call after :meth:`drain`; the ledger file must be closed)."""
        from bus import subjects
        from ledger.schema import connect_db
        from runner.executors.landscape import Landscape
        from swarmcli.simfigures import replay_equal, summarize

        cfg = self.cfg
        info = await self.js.stream_info(subjects.STREAM)
        db_bytes = sum(p.stat().st_size for p in (self.db, self.db.with_name(self.db.name + ".wal")) if p.exists())
        con = connect_db(str(self.db), read_only=True)
        try:
            (t0,) = con.execute("SELECT min(ts) FROM hypotheses WHERE run = $1", [cfg.run]).fetchone() or (None,)
            (t_last,) = con.execute("SELECT max(ts) FROM results WHERE run = $1", [cfg.run]).fetchone() or (None,)
            start = t0 or self.t_agents or time.time()
            end = self.t_stop if cfg.sim_hours is not None and self.t_stop else (t_last or time.time())
            out = summarize(con, cfg.run, self.samples, Landscape((REPO_ROOT / "train.py").read_text()),
                            window=(start, max(end, start + 1e-6)), runners=cfg.runners, time_scale=cfg.time_scale,
                            budget=cfg.budget, stream_bytes=int(info.state.bytes or 0), db_bytes=db_bytes,
                            seed=cfg.seed)  # fmt: skip
        finally:
            con.close()
        if cfg.verify_replay:
            out["exactly_once"]["ledger_equals_replay"] = await replay_equal(
                self.js, self.db, cfg.run_dir / "replay-check.duckdb"
            )
        out["config"] = {
            "runners": cfg.runners, "classes": dict(cfg.classes), "agents": cfg.agents, "time_scale": cfg.time_scale,
            "sim_hours": cfg.sim_hours, "experiments": cfg.experiments, "budget": cfg.budget, "seed": cfg.seed,
            "fleet_procs": cfg.fleet_procs, "max_wave": cfg.max_wave or cfg.runners,
        }  # fmt: skip
        out["stream_dir"] = str(cfg.state_dir / "nats")
        out["ledger"] = str(self.db)
        return out


async def run_simulation(cfg: SimConfig, stop: asyncio.Event) -> dict[str, Any]:
    """The body of ``swarm simulate``: the whole run, then its figures (also written to simulate.json)."""
    swarm = SimulatedSwarm(cfg)
    say = (lambda *_: None) if cfg.quiet else (lambda m: click.echo(m, err=True))
    t0 = time.monotonic()

    async def progress(s: SimulatedSwarm) -> None:
        pos = s.samples.ledger_position[-1][1] if s.samples.ledger_position else 0
        say(f"  [{time.monotonic() - t0:6.0f} s wall | {s.sim_elapsed() / 3600:5.2f} sim h] ledger at seq {pos}")

    try:
        say(f"swarm simulate: run {cfg.run}, {cfg.runners} runners {dict(cfg.classes)}, agents {','.join(cfg.agents)}, "
            f"time scale {cfg.time_scale} (a {cfg.budget:.0f} s budget lasts {cfg.budget * cfg.time_scale:.1f} s)")  # fmt: skip
        await swarm.start()
        say(f"  {cfg.runners} runners joined in {time.monotonic() - t0:.1f} s; agents start")
        await swarm.run_agents(stop, progress)
        say("  agents stopped; draining (runners finish what was proposed)")
        await swarm.drain()
        figures = await swarm.figures()
    finally:
        await swarm.close()
    figures["wall_seconds"] = round(time.monotonic() - t0, 1)
    # the machine's load over the last 15 minutes: the figures are measured on shared cores
    figures["load_avg_15min"] = round(os.getloadavg()[2], 2)
    (cfg.run_dir / "simulate.json").write_text(json.dumps(figures, indent=1))
    _write_report(swarm.db, cfg.run_dir / "report.html", cfg.run, say)
    return figures


def _write_report(db: Path, out: Path, run: str, say: Any) -> None:
    from ledger.analysis import open_ledger, write_report

    try:
        con = open_ledger(db)
        try:
            write_report(con, out, run=run)
        finally:
            con.close()
        say(f"report: {out}")
    except Exception as e:  # the figures and the ledger are safe; say how to retry
        say(f"could not write the report ({e!r}); retry: swarm report --db {db} --run {run}")
