"""``swarm simulate`` end to end (the real nats-server, ledger process, agents process and a fleet process of
simulated runners), the fleet's pieces, and the figures it computes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bus import EmbeddedServer, connect
from ledger.replay import replay_stream
from ledger.schema import connect_db
from runner.fleet import FleetConfig, parse_classes, scaled_classes
from swarmcli.simfigures import percentile, table_fingerprints
from swarmcli.simulate import default_time_scale
from tests.fault_helpers import child_env

REPO = Path(__file__).resolve().parents[1]


def test_classes_and_scaling() -> None:
    assert parse_classes("h100:13,h200:3") == [("h100", 13), ("h200", 3)]
    assert parse_classes("h100") == [("h100", 1)]
    for bad in ("h100:x", "h1 00:2", "h100:-1", "", "h100:0"):
        with pytest.raises(ValueError, match="--classes"):
            parse_classes(bad)
    assert scaled_classes(1000, [("h100", 13), ("h200", 3)]) == [("h100", 813), ("h200", 187)]
    assert scaled_classes(1, [("h100", 13), ("h200", 3)]) == [("h100", 1)]
    assert sum(n for _, n in scaled_classes(64, [("h100", 13), ("h200", 3)])) == 64
    cfg = FleetConfig(nats_urls=("nats://x",), run="r", classes=[("h100", 2), ("h200", 1)], state_dir=Path("/tmp/x"))
    assert cfg.runner_ids() == [("sim-h100-0000", "h100"), ("sim-h100-0001", "h100"), ("sim-h200-0000", "h200")]
    rc = cfg.runner_config("sim-h200-0000", "h200")
    assert (rc.hw_class, rc.profile, rc.executor, rc.calibrate) == ("h200", "gpu", "simulated", False)
    assert default_time_scale(1) == 0.02 and default_time_scale(1000) == 0.3
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([], 0.99) is None


def test_bad_input_says_what_to_do(tmp_path: Path) -> None:
    for args, text in (
        (["--classes", "h100:x"], "use class:count"),
        (["--runners", "0"], "give 1 to 5000"),
        (["--agents", "gpt"], "bad agent spec"),
        (["--sim-hours", "-1"], "--sim-hours > 0"),
    ):
        r = subprocess.run([sys.executable, "-m", "swarmcli", "simulate", *args, "--state-dir", str(tmp_path)],
                           cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode != 0 and text in r.stderr, (args, r.stderr[-2000:])


@pytest.mark.slow
async def test_simulate_runs_a_whole_swarm_and_keeps_its_stream(tmp_path: Path) -> None:
    state = tmp_path / "sim"
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "swarmcli", "simulate", "--classes", "h100:4,h200:2", "--agents", "random,optuna",
         "--experiments", "14", "--time-scale", "0.005", "--seed", "3", "--run", "t", "--state-dir", str(state),
         "--json"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fig = json.loads(r.stdout)
    once = fig["exactly_once"]
    # 14 proposals plus 3 baselines per class; every one has exactly one result; the ledger = a fresh replay
    assert once["ok"] and once["hypotheses"] >= 14 + 6 and once["with_one_result"] == once["hypotheses"], once
    assert once["ledger_equals_replay"] is True and once["without_result"] == once["with_several_results"] == 0
    assert set(fig["best_per_class"]) == {"h100", "h200"}
    assert all(0.95 < v["val_bpb"] < 1.02 for v in fig["best_per_class"].values()), fig["best_per_class"]
    assert set(fig["peak_rss_mb"]) == {"agents", "fleet", "ledger"} and all(v > 10 for v in fig["peak_rss_mb"].values())
    t = fig["throughput"]
    assert t["results_in_window"] > 0 and 0 < t["share_of_max"] <= 1.0 and t["ideal_seconds_exact"]
    # ~343 simulated seconds an experiment that succeeds, less for one that fails early (OOM, crash)
    assert 10 < t["budget_limited_max_per_runner_hour"] < 60
    rt = fig["runner_time"]
    assert abs(rt["busy"] + rt["idle_queued"] + rt["idle_empty"] - 1) < 1e-3
    for key in ("dispatch_ms", "ledger_lag_ms", "context_query_ms"):
        assert fig[key]["n"] > 0 and fig[key]["p99"] >= fig[key]["p50"] >= 0, (key, fig[key])
    assert fig["sizes"]["stream_mb_per_1k"] > 0 and fig["sizes"]["duckdb_mb_per_1k"] > 0
    run_dir = state / "t"
    assert json.loads((run_dir / "simulate.json").read_text())["exactly_once"] == once
    assert "<svg" in (run_dir / "report.html").read_text()
    # the stream is kept: a server on the store replays it into a ledger equal to the run's
    server = EmbeddedServer(state / "nats").start()
    try:
        nc = await connect(server.url, name="replay")
        con = connect_db(str(tmp_path / "again.duckdb"))
        try:
            await replay_stream(nc.jetstream(), con)
            again = table_fingerprints(con)
        finally:
            con.close()
            await nc.close()
    finally:
        server.stop()
    live = connect_db(str(state / "ledger.duckdb"), read_only=True)
    try:
        assert table_fingerprints(live) == again
    finally:
        live.close()
