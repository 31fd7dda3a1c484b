"""Runner benchmarks (by hand): dispatch latency and duty cycle. Prints its figures.

    .venv/bin/python bench/bench_runner.py latency [--n 200]
    .venv/bin/python bench/bench_runner.py duty [--n 10 --budget 60]   # real harness, process executor
    .venv/bin/python bench/bench_runner.py all

* latency: publish -> claim on an idle queue (one item at a time, the runner long-polling), measured as
  the time from the HypothesisProposed publish to receiving the runner's ExperimentClaimed on a core
  subscription (so it includes the claim's own publish). Simulated executor, tiny time_scale.
* duty: one runner, a queue of ``n`` baseline train.py experiments (the repo's harness, CPU profile,
  ``budget`` s each); duty cycle = sum of training_seconds / wall seconds from the first claim to the last
  result; overhead per experiment = (wall - training) / n.

No GPU here: GPU figures are not measured by this script on a CPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from bus import EmbeddedServer, connect, publish, setup
from bus.events import ExperimentClaimed, ExperimentFinished, HypothesisProposed, decode, new_event_id
from runner.config import REPO_ROOT, RunnerConfig
from runner.contract import sha256
from runner.daemon import Runner

RUN = "bench"


def hyp(source: str, seed: int = 0) -> HypothesisProposed:
    return HypothesisProposed(
        run=RUN,
        source="bench",
        hypothesis_id=new_event_id(),
        agent="bench",
        train_py=source,
        train_py_sha256=sha256(source),
        hw_class="cpu",
        seed=seed,
    )


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def bench_latency(n: int, prefetch: bool = True) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        cfg = RunnerConfig(
            nats_urls=(server.url,),
            run=RUN,
            runner_id="bench",
            hw_class="cpu",
            executor="simulated",
            state_dir=Path(tmp) / "state",
            calibrate=False,
            time_scale=0.0005,
            max_budget=1.0,
            fetch_timeout=5.0,
            prefetch=prefetch,
        )
        stop = asyncio.Event()
        runner_nc = await connect(server.url, name="bench-runner")
        runner = Runner(runner_nc, cfg)
        task = asyncio.create_task(runner.run(stop))
        claimed: asyncio.Queue[float] = asyncio.Queue()
        finished: asyncio.Queue[float] = asyncio.Queue()

        async def on_evt(msg: object) -> None:
            ev = decode(msg.data)  # type: ignore[attr-defined]
            if isinstance(ev, ExperimentClaimed):
                claimed.put_nowait(time.perf_counter())
            elif isinstance(ev, ExperimentFinished):
                finished.put_nowait(time.perf_counter())

        await nc.subscribe(f"swarm.{RUN}.evt.>", cb=on_evt)
        src = (
            (REPO_ROOT / "train.py").read_text()
            if (REPO_ROOT / "train.py").exists()
            else "X = 1\ndef build_model(c): ...\n"
        )
        lat: list[float] = []
        for i in range(n + 5):
            await asyncio.sleep(0.05)  # idle: the runner is long-polling
            t0 = time.perf_counter()
            await publish(js, hyp(src, seed=i))
            t1 = await asyncio.wait_for(claimed.get(), 30)
            await asyncio.wait_for(finished.get(), 30)
            if i >= 5:  # warm-up
                lat.append((t1 - t0) * 1000)
        stop.set()
        await task
        await runner_nc.close()
        await nc.close()
    print(
        f"dispatch latency publish->claim, idle queue, prefetch={prefetch}, n={len(lat)}: "
        f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms"
    )


async def bench_duty(n: int, budget: float, threads: int | None) -> None:
    source = (REPO_ROOT / "train.py").read_text()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        cfg = RunnerConfig(
            nats_urls=(server.url,),
            run=RUN,
            runner_id="bench",
            hw_class="cpu",
            profile="cpu",
            executor="process",
            state_dir=Path(tmp) / "state",
            calibrate=False,
            budget_seconds=budget,
            burst=True,
            fetch_timeout=1.0,
            threads=threads,
            ack_wait=120.0,
        )
        runner_nc = await connect(server.url, name="bench-runner")
        runner = Runner(runner_nc, cfg)
        t_setup = time.perf_counter()
        await runner.start()  # node preparation (cached data) happens here, outside the measured window
        setup_s = time.perf_counter() - t_setup
        for i in range(n):
            await publish(js, hyp(source, seed=i))
        t0 = time.perf_counter()
        runner.start = _noop  # type: ignore[method-assign]
        await runner.run(asyncio.Event())
        wall = time.perf_counter() - t0
        await runner_nc.close()
        await nc.close()
    results = [e for e in runner.published if isinstance(e, ExperimentFinished)]
    train = sum(e.training_seconds for e in results)
    statuses = [e.status for e in results]
    vals = [e.val_bpb for e in results if e.val_bpb is not None]
    print(
        f"duty cycle, {len(results)} CPU experiments x {budget:g} s budget, 1 runner: "
        f"{100 * train / wall:.1f} % (training {train:.1f} s / wall {wall:.1f} s); "
        f"overhead {(wall - train) / max(1, len(results)):.2f} s per experiment; node setup {setup_s:.1f} s"
    )
    print(f"  statuses {statuses}; val_bpb {[round(v, 4) for v in vals]}")
    if len(vals) > 1:
        print(f"  val_bpb mean {statistics.mean(vals):.4f} sigma {statistics.stdev(vals):.4f}")
    print("  (GPU: not measured, no GPU on this machine)")


async def _noop() -> None:
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["latency", "duty", "all"], nargs="?", default="all")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-prefetch", action="store_true")
    a = p.parse_args()
    if a.what in ("latency", "all"):
        asyncio.run(bench_latency(a.n or 200, prefetch=not a.no_prefetch))
    if a.what in ("duty", "all"):
        asyncio.run(bench_duty(a.n or 10, a.budget, a.threads))


if __name__ == "__main__":
    main()
