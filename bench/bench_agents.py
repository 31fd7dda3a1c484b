"""Agents benchmark on the simulated executor (by hand; prints its figures).

1. Optuna TPE vs random search at an equal budget of experiments over several seeds: best-so-far curves
   (observed val_bpb, and the noise-free value of the landscape at the same points).
2. 1 runner vs 16 runners (same agent): wall time until the best reaches the 1-runner run's final best;
   the seed article's anchor is 9×, our goal ≥ 12×.

Every run is the real stack on one machine: an embedded nats-server, the ledger service, N runners with the
simulated executor, one agent. Usage::

    .venv/bin/python bench/bench_agents.py                 # both parts, defaults below
    .venv/bin/python bench/bench_agents.py --part compare --seeds 5 --budget 40
    .venv/bin/python bench/bench_agents.py --part scale --budget 32 --seeds 2
    .venv/bin/python bench/bench_agents.py --smoke                 # seconds: tiny sizes (CI)

The speed-up with the Optuna agent and an LLM stand-in over 5 seeds is bench/bench_speedup.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.loop import AgentConfig, run_agent  # noqa: E402
from agents.proposers.base import Proposer  # noqa: E402
from agents.proposers.optuna_tpe import OptunaProposer  # noqa: E402
from agents.proposers.random_search import RandomProposer  # noqa: E402
from agents.tail import RunTail  # noqa: E402
from bus import EmbeddedServer, connect, setup  # noqa: E402

RUN = "bench"
BUDGET = 60.0  # simulated seconds of training per experiment


@dataclass
class RunOutcome:
    points: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds since start, val, true)
    wall: float = 0.0
    reached_at: float | None = None


def base_train_py() -> str:
    return (ROOT / "train.py").read_text()


async def one_run(
    method: str, seed: int, runners: int, budget: int, *, time_scale: float, target: float | None = None,
    quorum: float = 0.5,
) -> RunOutcome:
    from ledger.service import run_ledger
    from runner import Runner, RunnerConfig
    from runner.executors.landscape import Landscape

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        base = tmp / "train.py"
        base.write_text(base_train_py())
        server = EmbeddedServer(tmp / "js").start()
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        stop_infra = asyncio.Event()
        ready = asyncio.Event()
        tasks = [asyncio.create_task(run_ledger(nc, tmp / "ledger.duckdb", stop=stop_infra, ready=ready))]
        await ready.wait()
        for i in range(runners):
            cfg = RunnerConfig(
                nats_urls=(server.url,), run=RUN, runner_id=f"r{i}", hw_class="cpu", executor="simulated",
                state_dir=tmp / f"state-{i}", cache_dir=tmp / "cache", baseline_train_py=base, calibrate=False,
                max_budget=BUDGET, startup_seconds=1.0, eval_seconds=1.0, time_scale=time_scale,
                fetch_timeout=0.2, ack_wait=60.0, seed=None,
            )  # fmt: skip
            tasks.append(asyncio.create_task(Runner(nc, cfg).run(stop_infra)))
        tail = RunTail(js, RUN)
        await tail.start()
        await tail.wait_until(lambda: len(tail.runners) >= runners, 60)

        source = base.read_text()
        proposer: Proposer = (
            OptunaProposer(source, seed=seed, device="cpu") if method == "optuna" else RandomProposer(source, seed=seed, device="cpu")
        )
        agent_cfg = AgentConfig(run=RUN, agent=method, base_train_py=source, hw_class="cpu",
                                max_experiments=budget, max_wave=16, wave_timeout=600.0, seed=seed,
                                wave_quorum=quorum)  # fmt: skip
        stop = asyncio.Event()
        out = RunOutcome()
        t0 = time.time()
        agent = asyncio.create_task(run_agent(nc, agent_cfg, proposer, stop=stop))
        if target is not None:

            def reached() -> bool:
                return agent.done() or any(
                    f.status == "ok" and f.val_bpb is not None and f.val_bpb <= target
                    for h, f in tail.finished.items()
                    if tail.proposals.get(h) is not None and tail.proposals[h].agent == method
                )

            await tail.wait_until(reached, 3600)
            if not agent.done():
                out.reached_at = time.time() - t0
                stop.set()
        await agent
        out.wall = time.time() - t0
        landscape = Landscape(source)
        for hid in tail.finish_order:
            p, f = tail.proposals[hid], tail.finished[hid]
            if p.agent != method or f.status != "ok" or f.val_bpb is None:
                continue
            true = landscape.run(p.train_py, "cpu", BUDGET).val_bpb  # the noise-free value
            out.points.append((f.ts - t0, f.val_bpb, true if true is not None else float("nan")))
        await tail.stop()
        stop_infra.set()
        for r in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(r, BaseException):
                logging.getLogger("bench").error("infrastructure task ended with %r", r)
        await nc.close()
        server.stop()
        return out


def best_so_far(points: list[tuple[float, float, float]], checkpoints: list[int]) -> list[tuple[float, float]]:
    out = []
    for n in checkpoints:
        head = points[:n]
        if not head:
            out.append((float("nan"), float("nan")))
            continue
        i = min(range(len(head)), key=lambda j: head[j][1])
        out.append((head[i][1], head[i][2]))
    return out


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.4f}±{sd:.4f}"


async def compare(seeds: int, budget: int, runners: int, time_scale: float) -> None:
    checkpoints = sorted({c for c in (5, 10, 20, 30, 40, 60, 80, budget) if c <= budget})
    print(f"\n== Optuna TPE vs random: {budget} experiments each, {runners} runners, {seeds} seeds ==")
    print("best-so-far val_bpb (observed; noise-free value of that same train.py in brackets), mean±sd over seeds")
    print(f"{'n':>5} | {'optuna':>28} | {'random':>28}")
    table: dict[str, list[list[tuple[float, float]]]] = {"optuna": [], "random": []}
    for method in ("optuna", "random"):
        for seed in range(seeds):
            t = time.time()
            out = await one_run(method, seed, runners, budget, time_scale=time_scale)
            table[method].append(best_so_far(out.points, checkpoints))
            print(f"   {method} seed {seed}: {len(out.points)} ok results in {time.time() - t:.1f}s", flush=True)
    for ci, n in enumerate(checkpoints):
        cells = []
        for method in ("optuna", "random"):
            obs = [r[ci][0] for r in table[method]]
            true = [r[ci][1] for r in table[method]]
            cells.append(f"{_ms(obs)} [{_ms(true)}]")
        print(f"{n:>5} | {cells[0]:>28} | {cells[1]:>28}")


async def scale(seeds: int, budget: int, time_scale: float, method: str) -> None:
    print(f"\n== 1 runner vs 16 runners ({method}): time to reach the 1-runner run's best after {budget} experiments ==")
    speedups = []
    for seed in range(seeds):
        one = await one_run(method, seed, 1, budget, time_scale=time_scale)
        target = min(v for _, v, _ in one.points)
        t_one = next(t for t, v, _ in one.points if v <= target)
        many = await one_run(method, seed, 16, budget * 8, time_scale=time_scale, target=target)
        t_many = many.reached_at if many.reached_at is not None else float("inf")
        n_many = len(many.points)
        sp = t_one / t_many
        speedups.append(sp)
        print(f"   seed {seed}: target {target:.4f}; 1 runner {t_one:.1f}s ({len(one.points)} results), "
              f"16 runners {t_many:.1f}s ({n_many} results) -> {sp:.1f}×", flush=True)  # fmt: skip
    print(f"speed-up: mean {statistics.fmean(speedups):.1f}×, min {min(speedups):.1f}×, max {max(speedups):.1f}× "
          "(anchor 9×, goal ≥ 12×)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "compare", "scale"), default="all")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40, help="experiments per agent (compare) / 1-runner run (scale)")
    ap.add_argument("--runners", type=int, default=4, help="runners in the compare part")
    ap.add_argument("--time-scale", type=float, default=0.005, help="wall seconds per simulated second")
    ap.add_argument("--scale-seeds", type=int, default=2)
    ap.add_argument("--scale-method", default="optuna", choices=("optuna", "random"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: one seed, a few experiments, both parts")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.smoke:
        args.seeds, args.budget, args.runners, args.time_scale, args.scale_seeds = 1, 4, 2, 0.002, 1
    if args.part in ("all", "compare"):
        asyncio.run(compare(args.seeds, args.budget, args.runners, args.time_scale))
    if args.part in ("all", "scale"):
        asyncio.run(scale(args.scale_seeds, args.budget, args.time_scale, args.scale_method))


if __name__ == "__main__":
    main()
