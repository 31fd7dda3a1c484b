"""Every bench script runs in its --smoke mode (tiny sizes, seconds) and prints its figures: CI keeps the
benchmarks working. One test per script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def smoke(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], capture_output=True, text=True,
                       timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_bench_dashboard() -> None:
    out = smoke("bench_dashboard.py")
    for key in ("query_ms_timeline_first_page", "query_ms_overview", "api_ms_timeline_nothing_new",
                "api_ms_compare", "state_json_bytes"):  # fmt: skip
        assert f"{key}:" in out, out


def test_gpu_check_cpu_dry_run(tmp_path: Path, prepared_cache: Path) -> None:
    """bench/gpu_check.sh end to end on the CPU: a real runner, two baselines, the figures in one JSON file
    (MFU from a given peak, since a CPU has none)."""
    import json
    import math
    import os

    out = tmp_path / "gpu_check.json"
    r = subprocess.run([str(BENCH / "gpu_check.sh"), "--cpu-dry-run", "--work-dir", str(tmp_path / "work"),
                        "--cache-dir", str(prepared_cache), "--out", str(out), "--peak-flops", "1e12", "--threads", "1"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    s, runs = doc["summary"], doc["runs"]
    assert doc["mode"] == "cpu-dry-run" and s["runs_ok"] == 2 and [x["seed"] for x in runs] == [0, 1]
    for run in runs:
        assert run["status"] == "ok" and math.isfinite(run["val_bpb"]) and run["steps"] >= 1
        assert run["tok_per_s"] > 0 and run["eval_s"] > 0 and run["first_step_s"] > 0
        assert run["overhead_s"] >= 0 and run["mfu_percent"] > 0 and run["mfu_from"].startswith("gpu_check")
        assert Path(run["log"]).is_file()
    assert s["val_bpb_sigma"] is not None and s["compile_s_cold"] is not None and s["overhead_s_warm"] is not None
    assert "val_bpb mean" in r.stdout and "compile s cold" in r.stdout


def test_bench_ledger() -> None:
    """The ledger bench prints ours next to the raw engines (publish, fetch, DuckDB insert) and every part
    runs end to end: a publisher process into the ledger service, replay, the agent-context queries."""
    out = smoke("bench_ledger.py")
    figures = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    for key in ("publish_raw_publish_async", "publish_ours_publish_many", "e2e_publish_to_projected",
                "fetch_raw_nats_py", "fetch_ours_pullfeed", "duckdb_raw_arrow_insert", "duckdb_ours_project_apply",
                "replay_seconds", "query_ms_context", "api_ms_context"):  # fmt: skip
        assert key in figures, out
    # every rate is a positive number of events per second
    for key in ("publish_raw_publish_async", "e2e_publish_to_projected", "fetch_ours_pullfeed", "duckdb_ours_project_apply"):
        assert float(figures[key].split("/s")[0].replace(",", "")) > 0, figures[key]
    assert figures["replay_events"].startswith("5000 (last seq 5000)"), out


def test_bench_runner(prepared_cache: Path) -> None:
    """Dispatch latency, then two real experiments under load through a calibrated runner."""
    out = smoke("bench_runner.py", "--cache-dir", str(prepared_cache))
    assert "dispatch publish -> claim" in out and "statuses: {'ok': 2}" in out and "overhead_s_mean:" in out, out


def test_bench_harness(prepared_cache: Path, monkeypatch: object) -> None:
    import os

    r = subprocess.run([sys.executable, str(BENCH / "bench_harness.py"), "--smoke"], capture_output=True, text=True,
                       timeout=600, check=False, env={**os.environ, "SWARM_CACHE_DIR": str(prepared_cache)})
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("tokens_per_s:", "overhead_s:", "causality_check_share_of_eval:", "val_bpb:"):
        assert key in r.stdout, r.stdout


def test_bench_simulate() -> None:
    """Two tiny swarm simulate runs: the table's header and one row per size, each passing exactly once."""
    out = smoke("bench_simulate.py")
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| runners")]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "4"], out
    assert all("| yes (" in r for r in rows), out


def test_bench_agents() -> None:
    out = smoke("bench_agents.py")
    assert "== Optuna TPE vs random" in out and "speed-up: mean" in out, out


def test_bench_speedup() -> None:
    """1 vs 4 simulated runners, the Optuna agent and the scripted researcher through the anthropic SDK."""
    out = smoke("bench_speedup.py")
    for agent in ("optuna", "researcher"):
        assert f"{agent}: speed-up at 4 runners" in out and f"speedup_{agent}:" in out, out
