"""Runner processes killed or stopped mid-experiment: the item comes back and exactly one result exists."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from bus import EmbeddedServer
from bus.events import ExperimentClaimed, ExperimentFinished, RunnerLeft
from runner.daemon import Runner
from tests.support.bus import RUN, all_events, propose, wait_for
from tests.support.sim import sim_config

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
SOURCE = "X = 1\ndef build_model(c): ...\n"


def spawn_runner(tmp: Path, url: str, rid: str, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "runner", "--nats", url, "--run", RUN, "--id", rid, "--hw-class", "cpu",
        "--executor", "simulated", "--state-dir", str(tmp / f"state-{rid}"), "--no-calibrate",
        "--ack-wait", "2", "--fetch-timeout", "0.3", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    with (tmp / f"{rid}.log").open("wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def claimed_by(rid: str, hid: str) -> object:
    return lambda evs: any(
        isinstance(e, ExperimentClaimed) and e.runner == rid and e.hypothesis_id == hid for e in evs
    )


async def test_kill9_mid_experiment_is_redelivered_and_finished_once(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    h = await propose(js, SOURCE, budget=60.0, budget_unit="seconds")
    # a long experiment: 60 s budget at time_scale 1 (killed long before it ends)
    proc = spawn_runner(tmp_path, nats_server.url, "doomed", "--budget", "60")
    try:
        await wait_for(js, claimed_by("doomed", h.hypothesis_id), timeout=60)
    finally:
        proc.kill()
        proc.wait()
    cfg = sim_config(
        tmp_path,
        nats_server.url,
        runner_id="survivor",
        executor="simulated",
        ack_wait=2.0,
        max_budget=60.0,  # the class's budget in this run (the doomed runner's): scaled down to 1.2 s
        time_scale=0.02,
    )
    await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 60)  # type: ignore[arg-type]
    evs = await all_events(js)
    results = [e for e in evs if isinstance(e, ExperimentFinished) and e.hypothesis_id == h.hypothesis_id]
    assert [(r.status, r.attempt, r.runner, r.late) for r in results] == [("ok", 2, "survivor", False)]


async def test_sigterm_gives_the_item_back_and_another_runner_finishes_it(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    h = await propose(js, SOURCE, budget=60.0, budget_unit="seconds")
    proc = spawn_runner(
        tmp_path, nats_server.url, "leaver", "--budget", "60", "--stop-grace", "0.5", "--ack-wait", "30"
    )
    try:
        await wait_for(js, claimed_by("leaver", h.hypothesis_id), timeout=60)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 30)
        assert rc == 0, (tmp_path / "leaver.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    evs = await all_events(js)
    assert any(isinstance(e, RunnerLeft) and e.runner == "leaver" for e in evs)
    assert not [e for e in evs if isinstance(e, ExperimentFinished)]
    cfg = sim_config(
        tmp_path,
        nats_server.url,
        runner_id="taker",
        executor="simulated",
        ack_wait=30.0,
        max_budget=60.0,  # the class's budget in this run (the doomed runner's): scaled down to 1.2 s
        time_scale=0.02,
    )
    # the nak makes it available at once: no ack_wait to sit out
    await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 20)  # type: ignore[arg-type]
    results = [e for e in await all_events(js) if isinstance(e, ExperimentFinished)]
    assert [(r.status, r.attempt, r.runner) for r in results] == [("ok", 2, "taker")]
