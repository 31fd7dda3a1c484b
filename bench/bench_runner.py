"""Runner benchmarks (by hand; ``--smoke`` for CI): dispatch latency, and the per-experiment overhead and
budget enforcement of a real runner on the real harness. Prints its figures.

    .venv/bin/python bench/bench_runner.py latency [--n 200]
    .venv/bin/python bench/bench_runner.py duty [--n 6 --budget 65536 --threads 2]
    .venv/bin/python bench/bench_runner.py baselines [--n 20 --load 2]   # false positives under CPU load
    .venv/bin/python bench/bench_runner.py --smoke

* latency: publish -> claim on an idle queue (one item at a time, the runner long-polling), measured from
  the HypothesisProposed publish to receiving the runner's ExperimentClaimed. Simulated executor.
* duty: one runner (process executor, namespace sandbox), a queue of ``n`` unmodified train.py runs on the
  cpu profile. Per experiment: overhead = total - training (the runner's own clocks: process start, data,
  saving, the trusted evaluation with its two model processes), the evaluation's seconds and the share of
  it spent on causality twins; duty cycle = training / wall. σ of val_bpb over the seeds.
* baselines: ``n`` unmodified runs with ``load`` busy processes competing for the CPUs: how many end
  ``over_budget`` or ``noncausal`` (the goal is none: the runner's budget clock must not punish load).

No GPU here: GPU figures come from bench/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from bus import EmbeddedServer, connect, publish, setup
from bus.events import (
    ExperimentClaimed,
    ExperimentFinished,
    HypothesisProposed,
    RunnerJoined,
    decode,
    new_event_id,
)
from bus.trainpy import sha256
from runner.config import REPO_ROOT, RunnerConfig
from runner.daemon import Runner

RUN = "bench"


def hyp(source: str, seed: int = 0) -> HypothesisProposed:
    return HypothesisProposed(run=RUN, source="bench", hypothesis_id=new_event_id(), agent="bench", train_py=source,
                              train_py_sha256=sha256(source), hw_class="cpu", seed=seed)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def bench_latency(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        cfg = RunnerConfig(nats_urls=(server.url,), run=RUN, runner_id="lat", hw_class="cpu", executor="simulated",
                           state_dir=Path(tmp) / "state", calibrate=False, max_budget=0.01, time_scale=0.01,
                           fetch_timeout=5.0)
        stop = asyncio.Event()
        task = asyncio.create_task(Runner(nc, cfg).run(stop))
        claimed: dict[str, float] = {}
        got = asyncio.Event()

        async def on_claim(msg: Any) -> None:
            ev = decode(msg.data)
            if isinstance(ev, ExperimentClaimed):
                claimed[ev.hypothesis_id] = time.perf_counter()
                got.set()

        sub = await nc.subscribe(f"swarm.{RUN}.evt.claimed", cb=on_claim)
        await asyncio.sleep(1.0)  # the runner joins and starts long-polling
        lat: list[float] = []
        for i in range(n):
            got.clear()
            h = hyp("X = 1\ndef build_model(c): ...\n" + f"# {i}\n")
            t0 = time.perf_counter()
            await publish(js, h)
            await asyncio.wait_for(got.wait(), 30)
            lat.append((claimed[h.hypothesis_id] - t0) * 1000)
            await asyncio.sleep(0.05)  # let the (tiny) experiment finish: the queue is idle at each publish
        await sub.unsubscribe()
        stop.set()
        await task
        await nc.close()
    print(f"dispatch publish -> claim, idle queue, n={n}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


async def bench_real(n: int, budget: int, threads: int, load: int, cache: Path | None, label: str) -> dict[str, Any]:
    """``n`` unmodified train.py through a real runner (calibrated), optionally with ``load`` busy processes."""
    source = (REPO_ROOT / "train.py").read_text()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        for i in range(n):
            await publish(js, hyp(source, seed=i % 3))
        cfg = RunnerConfig(nats_urls=(server.url,), run=RUN, runner_id="duty", hw_class="cpu", executor="process",
                           state_dir=Path(tmp) / "state", cache_dir=cache, calibrate=True, burst=True,
                           max_budget=budget, threads=threads, fetch_timeout=0.5)
        burners: list[multiprocessing.Process] = []
        if load:
            stop_at = time.time() + 24 * 3600
            burners = [multiprocessing.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(load)]
            for b in burners:
                b.start()
        t0 = time.monotonic()
        try:
            await Runner(nc, cfg).run(asyncio.Event())
        finally:
            for b in burners:
                b.terminate()
                b.join()
        wall = time.monotonic() - t0
        evs = []
        info = await js.stream_info("SWARM_EVENTS")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            evs.append(decode((await js.get_msg("SWARM_EVENTS", seq)).data or b""))
        await nc.close()
    fins = [e for e in evs if isinstance(e, ExperimentFinished)]
    cal = next(e.calibration for e in evs if isinstance(e, RunnerJoined))
    ok = [f for f in fins if f.status == "ok"]
    statuses = {s: sum(f.status == s for f in fins) for s in sorted({f.status for f in fins})}
    over = [f.total_seconds - f.training_seconds for f in ok]
    evals = [f.eval_seconds for f in ok]
    train = sum(f.training_seconds for f in ok)
    vals = [f.val_bpb for f in ok if f.val_bpb is not None]
    out = {
        "label": label, "n": n, "budget_tokens": budget, "threads": threads, "load": load, "statuses": statuses,
        "calibration_training_s": cal.training_seconds if cal else None,
        "overhead_s_mean": statistics.mean(over) if over else None,
        "overhead_s_stdev": statistics.stdev(over) if len(over) > 1 else 0.0,
        "eval_s_mean": statistics.mean(evals) if evals else None,
        "training_s_mean": train / len(ok) if ok else None,
        "duty_cycle": train / wall if wall else 0.0,
        "val_bpb_mean": statistics.mean(vals) if vals else None,
        "val_bpb_sigma_across_3_seeds": statistics.stdev(vals) if len(vals) > 1 else None,
    }  # fmt: skip
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["latency", "duty", "baselines", "all"], default="all")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--budget", type=int, default=65536, help="tokens per experiment (the cpu profile's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", type=int, default=2, help="busy processes during `baselines`")
    ap.add_argument("--cache-dir", type=Path, default=None, help="prepared data (default: ~/.cache/swarm)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    a = ap.parse_args()
    if a.smoke:
        asyncio.run(bench_latency(5))
        res = asyncio.run(bench_real(2, 2048, 1, 1, a.cache_dir, "smoke"))
        assert res["statuses"] == {"ok": 2}, res
        return
    if a.what in ("latency", "all"):
        asyncio.run(bench_latency(a.n or 200))
    if a.what in ("duty", "all"):
        asyncio.run(bench_real(a.n or 6, a.budget, a.threads, 0, a.cache_dir, "duty"))
    if a.what in ("baselines", "all"):
        asyncio.run(bench_real(a.n or 20, a.budget, a.threads, a.load, a.cache_dir, "baselines under load"))


if __name__ == "__main__":
    main()
