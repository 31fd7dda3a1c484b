"""Kill drills at scale: 256 simulated runners (one fleet process), the ledger process and the agents against a
real nats-server, while the agents keep proposing: kill -9 of the fleet mid-run and its restart (the same
runner ids), kill -9 of the ledger and its restart, a restart of the nats-server. Afterwards every hypothesis
has exactly one result and the ledger equals a fresh replay of the stream. Progress is awaited on state (the
stream's count of finishes, the work consumers' held items), never on a sleep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from runner.fleet import scaled_classes
from swarmcli.simswarm import DEFAULT_MIX, SimConfig, SimulatedSwarm
from tests.fault_helpers import poll

pytestmark = [pytest.mark.faults, pytest.mark.slow]


async def _count(swarm: SimulatedSwarm, fn: Any) -> int:
    try:
        return int(await fn())
    except Exception:  # the server is restarting: not yet
        return -1


async def test_fleet_ledger_and_server_faults_at_256_runners(tmp_path: Path) -> None:
    cfg = SimConfig(
        run="drill", state_dir=tmp_path / "sim", classes=scaled_classes(256, DEFAULT_MIX), agents=["random"],
        sim_hours=100.0, time_scale=0.02, ack_wait=10.0, max_deliver=30, baseline_repeats=1, quiet=True,
        verbose_fleet=True,
    )  # fmt: skip
    swarm = SimulatedSwarm(cfg)
    log: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        await swarm.start()
        swarm.start_agents()

        async def finished_at_least(n: int) -> bool:
            return await _count(swarm, swarm.finished_count) >= n

        # 1. kill -9 the fleet while it holds work, and bring the same 256 runners back
        async def busy() -> bool:
            return await _count(swarm, swarm.held) >= 100 and await finished_at_least(1)

        await poll("the fleet holds 100 items", busy, timeout=180, every=0.2)
        log["held_at_fleet_kill"] = await swarm.held()
        swarm.kill("fleet0")
        swarm.start_fleet()
        f1 = await swarm.finished_count()
        await poll("results after the fleet's restart", lambda: finished_at_least(f1 + 128), timeout=180, every=0.5)

        # 2. kill -9 the ledger mid-projection, restart it
        swarm.kill("ledger")
        swarm.start_ledger()
        f2 = await swarm.finished_count()
        await poll("results after the ledger's restart", lambda: finished_at_least(f2 + 64), timeout=180, every=0.5)

        # 3. restart the nats-server under load
        log["held_at_server_restart"] = await swarm.held()
        await swarm.restart_server()
        f3 = await _count(swarm, swarm.finished_count)
        await poll("results after the server's restart", lambda: finished_at_least(f3 + 64), timeout=180, every=0.5)

        await swarm.stop_agents()
        await swarm.drain()
        fig = await swarm.figures()
    finally:
        await swarm.close()
    once = fig["exactly_once"]
    print(f"\n[drills] 256 runners, {time.monotonic() - t0:.0f} s: {log}, {once}, statuses {fig['statuses']}")
    assert once["ok"], once
    assert once["with_one_result"] == once["hypotheses"] > 256
    assert once["without_result"] == 0 and once["with_several_results"] == 0 and once["unclaimed"] == 0
    assert once["ledger_equals_replay"] is True
    # the killed fleet's items came back: redelivered (a second attempt), not lost
    assert log["held_at_fleet_kill"] >= 100 and fig["statuses"].get("lost", 0) == 0
