"""The speed-up a swarm gives a search: the same agent on the same landscape with 1 runner and with 16 runners,
time until each has found a train.py as good as the best the 1-runner run found (run by hand; prints a table).

Per agent kind and seed:

1. one runner, the agent proposes ``--experiments`` hypotheses; the target is the best noise-free val_bpb
   (the landscape's value, not one noisy run) among its results, and ``t1`` when it first had it;
2. sixteen runners, the same agent and seed, until one of its results is at least as good (noise-free),
   ``t16``; the speed-up is ``t1 / t16``. Times are simulated hours since the agent started (baselines
   included: a swarm runs them in parallel too).

Agents: ``optuna`` (TPE with its batch mechanism) and ``researcher`` — a scripted policy standing in for an
LLM (tests/researcher_policy.py), served by the loopback API server the LLM tests use
(tests/fake_llm_server.py) and reached through the real anthropic SDK path: prompt with the shared memory,
tool calls, validation, publishing. Everything else is real: an embedded nats-server, the ledger, the
agent loop, and the runners of ``python -m runner.fleet`` on the simulated executor's calibrated landscape
(class h100, 300 simulated seconds per experiment).

    .venv/bin/python bench/bench_speedup.py                       # 5 seeds, both agents (~1 h on 2 cores)
    .venv/bin/python bench/bench_speedup.py --agents optuna --seeds 2 --experiments 30
    .venv/bin/python bench/bench_speedup.py --smoke               # seconds: tiny sizes, one seed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.spec import run_agent_spec  # noqa: E402
from agents.tail import RunTail  # noqa: E402
from bus import EmbeddedServer, connect, setup  # noqa: E402
from bus.events import BASELINE_TAG  # noqa: E402
from runner.executors.landscape import Landscape  # noqa: E402

RUN = "speedup"
CLASS = "h100"
BUDGET = 300.0  # simulated seconds of training per experiment
SIM_HOUR = 3600.0


@dataclass
class Outcome:
    """One run: (simulated seconds since the agent started, noise-free val_bpb, round) of each ok result. A
    round is one experiment's duration: with one runner a result's place in the runner's queue (baselines
    included), with many the agent's wave that proposed it (its first wave runs beside the baselines)."""

    points: list[tuple[float, float, int]] = field(default_factory=list)
    reached: float | None = None  # simulated seconds at which the target was reached
    reached_round: int | None = None
    experiments: int = 0
    wall: float = 0.0
    llm_calls: int = 0


def start_fleet(url: str, runners: int, tmp: Path, time_scale: float) -> subprocess.Popen[bytes]:
    """``runners`` simulated h100 runners in a process of their own (python -m runner.fleet)."""
    with (tmp / "fleet.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "runner.fleet", "--nats", url, "--run", RUN, "--classes", f"{CLASS}:{runners}",
             "--state-dir", str(tmp / "fleet"), "--time-scale", str(time_scale), "--budget", str(BUDGET),
             "--ack-wait", "60", "--baseline-train-py", str(ROOT / "train.py")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=log,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip


async def one_run(agent: str, seed: int, runners: int, experiments: int, *, time_scale: float,
                  target: float | None = None, cap_sim_hours: float = 48.0) -> Outcome:  # fmt: skip
    """One agent on ``runners`` simulated h100 runners, until ``experiments`` are proposed (or, with a
    target, until a result reaches it)."""
    base = (ROOT / "train.py").read_text()
    landscape = Landscape(base)
    with tempfile.TemporaryDirectory(prefix="speedup-") as tmp_s, contextlib.ExitStack() as stack:
        tmp = Path(tmp_s)
        server = EmbeddedServer(tmp / "js").start()
        stack.callback(server.stop)
        nc = await connect(server.url, name="bench-speedup")
        js = nc.jetstream()
        await setup(js)
        from ledger.service import run_ledger

        stop_ledger, ready = asyncio.Event(), asyncio.Event()
        ledger = asyncio.create_task(run_ledger(nc, tmp / "ledger.duckdb", stop=stop_ledger, ready=ready))
        await asyncio.wait_for(ready.wait(), 60)
        fleet = start_fleet(server.url, runners, tmp, time_scale)
        tail = RunTail(js, RUN)
        await tail.start()
        out = Outcome()
        try:
            if not await tail.wait_until(lambda: len(tail.runners) >= runners or fleet.poll() is not None, 120):
                raise RuntimeError(f"only {len(tail.runners)} of {runners} runners joined")
            if fleet.poll() is not None:
                raise RuntimeError(f"the fleet exited: {(tmp / 'fleet.log').read_text()[-2000:]}")
            stop = asyncio.Event()
            llm: Any = None
            spec = "optuna"
            kw: dict[str, Any] = {}
            if agent == "researcher":
                from tests.fake_llm_server import FakeLlmServer
                from tests.researcher_policy import respond

                llm = stack.enter_context(FakeLlmServer(responder=respond, keep_requests=False))
                spec = f"claude:researcher@{llm.url}"
                kw["api_key"] = "loopback"
            waves: list[float] = []  # when each of the agent's waves was published

            def on_wave(r: Any) -> None:
                if r.proposed or r.repeats:
                    waves.append(time.time())

            kw["report"] = on_wave
            t0 = time.time()
            name = f"{agent}-s{seed}"  # the researcher's taste (its exploration order) follows its name
            task = asyncio.create_task(run_agent_spec(
                nc, spec, run=RUN, train_py=ROOT / "train.py", stop=stop, agent=name, seed=seed,
                max_experiments=experiments, hw_class=CLASS, max_wave=runners, validate_class="",
                wave_timeout=3600.0, audit_every=None, **kw,
            ))  # fmt: skip
            task.add_done_callback(lambda _: asyncio.ensure_future(tail.poke()))  # done() looks again

            def sim(ts: float) -> float:
                return (ts - t0) / time_scale

            def ok_points() -> list[tuple[float, float, int]]:
                pts = []
                for i, h in enumerate(tail.finish_order):
                    p, f = tail.proposals.get(h), tail.finished[h]
                    if p is None or p.agent != name or f.status != "ok" or BASELINE_TAG in p.tags:
                        continue
                    true = landscape.run(p.train_py, CLASS, BUDGET).val_bpb
                    if true is not None:
                        rnd = i + 1 if runners == 1 else 1 + sum(1 for w in waves if w < p.ts)
                        pts.append((sim(f.ts), true, rnd))
                return pts

            def done() -> bool:
                if task.done():
                    return True
                if target is not None and any(v <= target + 1e-12 for _, v, _ in ok_points()):
                    return True
                return sim(time.time()) > cap_sim_hours * SIM_HOUR

            await tail.wait_until(done, cap_sim_hours * SIM_HOUR * time_scale + 60)
            stop.set()
            stats = await task
            out.points = ok_points()
            out.wall = time.time() - t0
            out.experiments = stats.proposed
            out.llm_calls = stats.llm_calls
            if target is not None:
                first = next(((t, r) for t, v, r in out.points if v <= target + 1e-12), None)
                out.reached, out.reached_round = first if first else (None, None)
        finally:
            await tail.stop()
            fleet.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(fleet.wait, 120)
            except subprocess.TimeoutExpired:
                fleet.kill()
            stop_ledger.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ledger, 60)
            await nc.close()
        return out


def spread(xs: list[float]) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.1f}× ± {sd:.1f} (min {min(xs):.1f}, max {max(xs):.1f})"


async def bench(agents: list[str], seeds: int, experiments: int, many: int, time_scale: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"{'agent':<11} {'seed':>4} | {'target':>7} | {'t1 (sim h)':>10} {'n1':>4} | {'t16 (sim h)':>11} {'n16':>4} | "
          f"speed-up | rounds 1 vs many | in rounds")  # fmt: skip
    for agent in agents:
        ratios: list[float] = []
        by_rounds: list[float] = []
        rows = []
        for seed in range(seeds):
            one = await one_run(agent, seed, 1, experiments, time_scale=time_scale)
            if not one.points:
                print(f"{agent:<11} {seed:>4} | the 1-runner run had no ok result")
                continue
            target = min(v for _, v, _ in one.points)
            t1, r1 = next((t, r) for t, v, r in one.points if v <= target)
            par = await one_run(agent, seed, many, experiments * 4, time_scale=time_scale, target=target)
            t16, r16 = par.reached, par.reached_round
            ratio = t1 / t16 if t16 else 0.0
            rratio = r1 / r16 if r16 else 0.0
            if t16:
                ratios.append(ratio)
                by_rounds.append(rratio)
            rows.append({"seed": seed, "target": target, "t1": t1, "t16": t16, "n1": one.experiments,
                         "n16": par.experiments, "speedup": ratio, "rounds1": r1, "rounds16": r16,
                         "speedup_rounds": rratio})  # fmt: skip
            print(f"{agent:<11} {seed:>4} | {target:.4f} | {t1 / SIM_HOUR:>10.2f} {one.experiments:>4} | "
                  f"{(t16 or float('nan')) / SIM_HOUR:>11.2f} {par.experiments:>4} | "
                  + (f"{ratio:>7.1f}× | {r1:>6} vs {r16:<6} | {rratio:.1f}×" if t16 else "not reached"), flush=True)  # fmt: skip
        print(f"{agent}: speed-up at {many} runners {spread(ratios)} over {len(ratios)} seeds (goal ≥ 12×); "
              f"in rounds (agent time not counted) {spread(by_rounds)}")  # fmt: skip
        results[agent] = {"runs": rows, "mean": statistics.fmean(ratios) if ratios else None,
                          "mean_rounds": statistics.fmean(by_rounds) if by_rounds else None}
    return results


def warm_imports() -> None:
    """Import what the agents import lazily (the anthropic SDK alone takes seconds on a busy machine): a
    process that runs an agent pays it once at start, never per wave, so no run's clock may include it."""
    import agents.proposers.claude
    import agents.proposers.optuna_tpe  # noqa: F401
    import ledger.service  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="optuna,researcher")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--experiments", type=int, default=40, help="hypotheses of the 1-runner run")
    ap.add_argument("--runners", type=int, default=16, help="runners of the parallel run")
    ap.add_argument("--time-scale", type=float, default=0.01, help="wall seconds per simulated second")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: one seed, 4 experiments, 4 runners")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if a.smoke:
        a.seeds, a.experiments, a.runners, a.time_scale = 1, 4, 4, 0.002
    agents = [s.strip() for s in a.agents.split(",") if s.strip()]
    bad = [x for x in agents if x not in ("optuna", "researcher")]
    if bad:
        sys.exit(f"unknown agent {bad[0]!r}: use optuna and/or researcher")
    warm_imports()
    res = asyncio.run(bench(agents, a.seeds, a.experiments, a.runners, a.time_scale))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    for agent in agents:
        print(f"speedup_{agent}: {res.get(agent, {}).get('mean')}")


if __name__ == "__main__":
    main()
