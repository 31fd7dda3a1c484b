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
