"""``swarm simulate``: the command line of :mod:`swarmcli.simswarm` (a whole swarm in compressed time on this
machine), the lines it prints, and the agents' process it starts (``python -m swarmcli.simulate agents``).

It prints the figures (:mod:`swarmcli.simfigures`), writes them to ``<state>/<run>/simulate.json`` with
the HTML report beside them, and keeps the stream in ``<state>/nats``: replay or analyse the run like a
real one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from swarmcli.common import REPO_ROOT, _check_agent_specs, _fail, _run_async
from swarmcli.simswarm import DEFAULT_MIX, SimConfig, run_simulation


def render(figures: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    c, t, once = figures["config"], figures["throughput"], figures["exactly_once"]
    mem = ", ".join(f"{k} {v:.0f} MB" for k, v in figures["peak_rss_mb"].items())
    s = figures["sizes"]
    lines = [
        f"{c['runners']} runners {c['classes']}, agents {','.join(c['agents'])}, time scale {c['time_scale']}, "
        f"{figures['wall_seconds']} s wall (load average {figures['load_avg_15min']})",
        f"throughput: {t['per_runner_hour']} results per runner-hour over {t['window_sim_hours']} sim h "
        f"= {100 * (t['share_of_max'] or 0):.1f} % of the budget-limited max ({t['budget_limited_max_per_runner_hour']})",
        f"runner time: {100 * (figures['runner_time']['busy'] or 0):.1f} % holding work, "
        f"{100 * (figures['runner_time']['idle_queued'] or 0):.1f} % idle with work queued, "
        f"{100 * (figures['runner_time']['idle_empty'] or 0):.1f} % idle with nothing queued (waiting for agents)",
        f"dispatch ready→claim: p50 {figures['dispatch_ms']['p50']} ms, p99 {figures['dispatch_ms']['p99']} ms "
        f"(publish→claim with queueing: p50 {figures['publish_to_claim_ms']['p50']} ms, "
        f"p99 {figures['publish_to_claim_ms']['p99']} ms)",
        f"ledger lag publish→projected: p50 {figures['ledger_lag_ms']['p50']} ms, p99 {figures['ledger_lag_ms']['p99']} ms",
        f"context query: p50 {figures['context_query_ms']['p50']} ms, p99 {figures['context_query_ms']['p99']} ms",
        f"peak memory: {mem}",
        f"stream {s['stream_mb_per_1k']} MB and DuckDB {s['duckdb_mb_per_1k']} MB per 1k experiments",
        f"exactly once: {'yes' if once['ok'] else 'NO'} ({once['hypotheses']} hypotheses, {once['with_one_result']} "
        f"with one result; {once['duplicates']} duplicate, {once['late']} late, {once['unclaimed']} unclaimed kept apart"
        + (f"; ledger = fresh replay: {once['ledger_equals_replay']}" if "ledger_equals_replay" in once else "") + ")",
        "best: " + ", ".join(f"{k} {v['val_bpb']}" for k, v in figures["best_per_class"].items()),
        f"stream kept in {figures['stream_dir']}: replay with `nats-server -js -sd {figures['stream_dir']} -p 4333` "
        "and `swarm replay --nats nats://127.0.0.1:4333 --db NEW.duckdb`",
    ]  # fmt: skip
    return "\n".join(lines)


def default_time_scale(runners: int) -> float:
    """Compressed enough to be quick, slow enough that the per-experiment work of the fleet, the agents and
    the ledger (tens of ms each) stays small beside an experiment, on 2 cores: ≥ 0.02, and ~0.3 at 1,000."""
    return round(max(0.02, 0.0003 * runners), 4)


@click.command()
@click.option("--runners", type=int, default=None, help="Simulated runners (default: the --classes total, or 16).")
@click.option("--classes", "classes_spec", default=None,
              help="Hardware classes and counts, e.g. h100:13,h200:3; with --runners, the mix is scaled to it "
                   "[default: the seed's 13:3].")  # fmt: skip
@click.option("--agents", "agent_specs", default="optuna,random", show_default=True,
              help="Comma-separated agent specs (optuna, random, claude:<model>, openai:<model>[@<url>]).")
@click.option("--experiments", type=int, default=None, help="Hypotheses the agents propose in all (then drain).")
@click.option("--sim-hours", type=float, default=None, help="Simulated hours to run (default 1 without --experiments).")
@click.option("--time-scale", type=float, default=None,
              help="Wall seconds per simulated second [default: max(0.02, 0.0003 × runners)].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--budget", type=float, default=300.0, show_default=True, help="Simulated training seconds.")
@click.option("--fleet-procs", type=int, default=1, show_default=True, help="Processes hosting the runners.")
@click.option("--max-wave", type=int, default=None, help="Most hypotheses per agent wave [default: the runners].")
@click.option("--wave-quorum", type=float, default=None, help="Share of a wave that must finish before the next.")
@click.option("--ack-wait", type=float, default=30.0, show_default=True, help="Lease, wall seconds.")
@click.option("--agent-class", default="any", show_default=True, help="Hardware class the agents address.")
@click.option("--run", default=None, help="Run name (default: sim-YYYYmmdd-HHMMSS).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".swarm/sim"),
              show_default=True)  # fmt: skip
@click.option("--port", type=int, default=None, help="nats-server client port (default: a free one).")
@click.option("--no-verify-replay", is_flag=True, help="Skip comparing the ledger with a fresh replay.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def simulate(
    runners: int | None, classes_spec: str | None, agent_specs: str, experiments: int | None,
    sim_hours: float | None, time_scale: float | None, seed: int, budget: float, fleet_procs: int,
    max_wave: int | None, wave_quorum: float | None, ack_wait: float, agent_class: str, run: str | None,
    state_dir: Path, port: int | None, no_verify_replay: bool, as_json: bool,
) -> None:  # fmt: skip
    """Run a whole swarm in compressed time on this machine: the real nats-server, ledger and agents, and
    simulated runners on a landscape calibrated on the seed runs. Prints throughput, dispatch and ledger
    latencies, memory, sizes and the exactly-once check; keeps the stream for replay."""
    from bus.events import check_token
    from runner.fleet import parse_classes, scaled_classes

    run = run or time.strftime("sim-%Y%m%d-%H%M%S")
    try:
        check_token("run", run)
        mix = parse_classes(classes_spec) if classes_spec else DEFAULT_MIX
    except ValueError as e:
        _fail(str(e))
        return
    total = runners if runners is not None else (sum(n for _, n in mix) if classes_spec else 16)
    if total < 1 or total > 5000:
        _fail(f"--runners {total}: give 1 to 5000")
    classes = mix if sum(n for _, n in mix) == total else scaled_classes(total, mix)
    specs = [s.strip() for s in agent_specs.split(",") if s.strip()]
    _check_agent_specs(specs)
    if experiments is None and sim_hours is None:
        sim_hours = 1.0
    if (experiments is not None and experiments < 1) or (sim_hours is not None and sim_hours <= 0):
        _fail("--experiments must be ≥ 1 and --sim-hours > 0")
    cfg = SimConfig(
        run=run, state_dir=state_dir.resolve(), classes=classes, agents=specs, experiments=experiments,
        sim_hours=sim_hours, time_scale=time_scale or default_time_scale(total), seed=seed, budget=budget,
        fleet_procs=fleet_procs, max_wave=max_wave, wave_quorum=wave_quorum, ack_wait=ack_wait,
        agent_class=agent_class, port=port, verify_replay=not no_verify_replay,
    )  # fmt: skip
    figures = _run_async(lambda stop: run_simulation(cfg, stop))
    click.echo(json.dumps(figures, indent=1) if as_json else render(figures))
    if not figures["exactly_once"]["ok"] or figures["exactly_once"].get("ledger_equals_replay") is False:
        raise click.ClickException("the exactly-once check failed: see exactly_once in the figures")


# --------------------------------------------------------------------------------------------------
# the agents' process (python -m swarmcli.simulate agents ...)


def agents_main(argv: list[str] | None = None) -> None:
    """Every agent spec in one process on one connection, through agents.spec.run_agent_spec (what
    ``swarm agent`` runs), with the wave size a fleet needs."""
    p = argparse.ArgumentParser(prog="python -m swarmcli.simulate agents")
    p.add_argument("--nats", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--spec", action="append", required=True)
    p.add_argument("--hw-class", default="any")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-wave", type=int, required=True)
    p.add_argument("--max-experiments", type=int, default=None)
    p.add_argument("--wave-quorum", type=float, default=None)
    p.add_argument("--baseline-repeats", type=int, default=3)
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("swarm.agents").setLevel(logging.INFO)  # one line per wave: runners, pending, k
    shares = None
    if a.max_experiments is not None:
        n = len(a.spec)
        shares = [a.max_experiments // n + (1 if i < a.max_experiments % n else 0) for i in range(n)]

    async def main(stop: asyncio.Event) -> None:
        from agents.spec import run_agent_spec
        from bus import connect

        nc = await connect(a.nats, name="simulate-agents")
        extra: dict[str, Any] = {"max_wave": a.max_wave, "baseline_repeats": a.baseline_repeats}
        if a.wave_quorum is not None:
            extra["wave_quorum"] = a.wave_quorum
        try:
            results = await asyncio.gather(*(
                run_agent_spec(nc, spec, run=a.run, train_py=REPO_ROOT / "train.py", stop=stop, seed=a.seed + i,
                               hw_class=a.hw_class, max_experiments=shares[i] if shares else None, **extra)
                for i, spec in enumerate(a.spec)
            ), return_exceptions=True)  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
        failed = [r for r in results if isinstance(r, BaseException)]
        for spec, r in zip(a.spec, results, strict=True):
            print(f"{spec}: {r!r}", file=sys.stderr, flush=True)
        if failed:
            raise SystemExit(1)

    _run_async(main)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "agents":
        agents_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m swarmcli.simulate agents ... (the CLI is `swarm simulate`)")
