"""The scale table: one ``swarm simulate`` run per fleet size, its figures in one row each (by hand; the
README's table is its output).

Each run is the real stack on this machine (embedded nats-server, a ``swarm ledger`` process, one agents
process, one fleet process of simulated runners) for a fixed number of simulated hours. Usage::

    .venv/bin/python bench/bench_simulate.py                         # N = 1, 16, 64, 256, 1000
    .venv/bin/python bench/bench_simulate.py --sizes 16,64 --agents optuna,random
    .venv/bin/python bench/bench_simulate.py --smoke                 # two tiny runs, seconds (CI)

Columns: results per runner-hour and their share of the budget-limited maximum; where the fleet's time went
(holding work / idle with work queued / idle with nothing queued); dispatch publish→claim p50/p99; ledger lag
publish→projected p99; the agents' context query p99; peak memory of the agents and ledger processes (and
the fleet's); stream and DuckDB size per 1,000 experiments; the exactly-once check (every hypothesis one
result, the ledger equal to a fresh replay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.fleet import scaled_classes  # noqa: E402
from swarmcli.simswarm import DEFAULT_MIX, SimConfig, run_simulation  # noqa: E402
from swarmcli.simulate import default_time_scale  # noqa: E402

HEADER = (
    "| runners | sim h | time scale | results / runner-h (% of max) | busy / idle queued / idle empty "
    "| dispatch p50 / p99 | ledger lag p99 | context p99 | peak MB agents / ledger / fleet "
    "| stream / DuckDB MB per 1k | exactly once |"
)


def sim_hours_for(n: int) -> float:
    """Enough simulated time for ~5 experiments per runner at 1,000 and ~10 below."""
    return 0.5 if n >= 1000 else 1.0


def row(f: dict[str, Any]) -> str:
    c, t, rt, once, mem, s = (f["config"], f["throughput"], f["runner_time"], f["exactly_once"], f["peak_rss_mb"],
                              f["sizes"])  # fmt: skip
    pct = lambda x: f"{100 * (x or 0):.1f}"  # noqa: E731
    ok = "yes" if once["ok"] and once.get("ledger_equals_replay", True) else "NO"
    return (
        f"| {c['runners']} | {t['window_sim_hours']:.2f} | {c['time_scale']} | {t['per_runner_hour']} "
        f"({pct(t['share_of_max'])} %) | {pct(rt['busy'])} / {pct(rt['idle_queued'])} / {pct(rt['idle_empty'])} % "
        f"| {f['dispatch_ms']['p50']} / {f['dispatch_ms']['p99']} ms | {f['ledger_lag_ms']['p99']} ms "
        f"| {f['context_query_ms']['p99']} ms | {mem.get('agents', 0):.0f} / {mem.get('ledger', 0):.0f} / "
        f"{mem.get('fleet', 0):.0f} | {s['stream_mb_per_1k']} / {s['duckdb_mb_per_1k']} "
        f"| {ok} ({once['hypotheses']} hyp., {once['duplicates']} dup., {once['late']} late) |"
    )


async def one(n: int, args: argparse.Namespace, state: Path) -> dict[str, Any]:
    cfg = SimConfig(
        run=f"bench{n}", state_dir=state / f"n{n}", classes=scaled_classes(n, DEFAULT_MIX),
        agents=[s for s in args.agents.split(",") if s], sim_hours=args.sim_hours or sim_hours_for(n),
        time_scale=args.time_scale or default_time_scale(n), seed=args.seed, fleet_procs=args.fleet_procs,
        quiet=True,
    )  # fmt: skip
    return await run_simulation(cfg, asyncio.Event())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,16,64,256,1000")
    ap.add_argument("--agents", default="optuna,random")
    ap.add_argument("--sim-hours", type=float, default=None, help="default: 1 (0.5 at 1,000 runners)")
    ap.add_argument("--time-scale", type=float, default=None, help="default: max(0.02, 0.0003 × runners)")
    ap.add_argument("--fleet-procs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="also print every run's figures as JSON")
    ap.add_argument("--smoke", action="store_true", help="two tiny runs (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.sim_hours, args.time_scale, args.agents = "1,4", 1.0, 0.005, "random"
    sizes = [int(x) for x in args.sizes.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        state = args.state_dir or Path(tmp)
        print(f"swarm simulate, one run per size; agents {args.agents}; load average {os.getloadavg()[0]:.1f} at start")
        print(HEADER)
        print("|" + "---|" * HEADER.count(" | ") + "---|")
        for n in sizes:
            t = time.monotonic()
            figures = asyncio.run(one(n, args, state))
            print(row(figures), flush=True)
            if args.json:
                print(json.dumps(figures), flush=True)
            print(f"<!-- {n} runners: {time.monotonic() - t:.0f} s wall, load average {figures['load_avg_15min']} -->",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
