"""The README's "Across machines" section, each piece its own process as on separate machines: a
nats-server, `swarm ledger`, two `swarm runner`, `swarm agent --spec optuna`; then the read commands, the
analysis commands on the ledger file, a replay that must equal the live ledger, and `swarm submit` of an
edited train.py followed to its result with `swarm logs`."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.acceptance.newcomer import Newcomer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

RUN = "fleet"
BUDGET = "4096"  # tokens: two optimizer steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@pytest.fixture
def swarm(newcomer: Newcomer) -> Iterator[tuple[Newcomer, str, dict[str, subprocess.Popen[bytes]]]]:
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["nats"] = newcomer.start("nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                                       "machines/nats", log="nats.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        procs["ledger"] = newcomer.start("swarm", "ledger", "--nats", url, "--db", "machines/ledger/ledger.duckdb",
                                         log="ledger.log")
        for i in (1, 2):
            procs[f"runner{i}"] = newcomer.start(
                "swarm", "runner", "--nats", url, "--run", RUN, "--id", f"m{i}-cpu", "--state-dir",
                f"machines/runner{i}", "--budget", BUDGET, "--threads", "1", log=f"runner{i}.log")
        yield newcomer, url, procs
    finally:
        for name in ("runner1", "runner2", "ledger", "nats"):
            if name in procs:
                _stop(procs[name])


def _logs(n: Newcomer) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(n.clone.glob("*.log")))


def test_a_swarm_across_processes_then_read_analyse_replay(swarm: tuple[Newcomer, str, dict]) -> None:
    n, url, procs = swarm
    agent = n.swarm("agent", "--nats", url, "--run", RUN, "--spec", "optuna", "--max-experiments", "3",
                    "--hw-class", "cpu", timeout=1500, check=False)
    assert agent.returncode == 0, agent.stdout[-3000:] + agent.stderr[-3000:] + _logs(n)
    status = json.loads(n.swarm("status", "--nats", url, "--run", RUN, "--json").stdout)
    assert status["schema"] == "swarm.status/1"
    assert status["runners_online"] == 2, status["runners"]
    [cls] = status["baselines"]
    assert cls["hw_class"] == "cpu" and cls["baseline_runs"] == 3 and cls["sigma"] is not None
    assert status["counts"]["finished"] >= 6 and status["counts"]["proposed"] == status["counts"]["finished"]
    ran_on = {r["runner"] for r in status["runners"] if r["results"]}
    assert ran_on == {"m1-cpu", "m2-cpu"}, status["runners"]  # both machines worked
    best = status["best"][0]
    assert best["hw_class"] == "cpu" and 2.0 < best["val_bpb"] < 9.0

    # a person submits an edited train.py and follows it to its result
    edited = n.clone / "my_train.py"
    edited.write_text((n.clone / "train.py").read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.03"))
    sub = json.loads(n.swarm("submit", str(edited), "-m", "MATRIX_LR 0.04 -> 0.03", "--nats", url, "--run", RUN,
                             "--hw-class", "cpu", "--json").stdout)
    hid = sub["hypothesis_id"]
    logs = json.loads(n.swarm("logs", hid, "--nats", url, "--run", RUN, "--wait", "600", "--full", "--json",
                              timeout=700).stdout)
    assert logs["hypothesis"]["status"] == "ok", logs["hypothesis"]
    assert 2.0 < logs["hypothesis"]["val_bpb"] < 9.0 and "MATRIX_LR = 0.03" in logs["diff"]
    assert logs["log"]["full"] and "step 2 | progress 1.0000" in logs["log"]["text"]
    text = n.swarm("logs", hid, "--nats", url, "--run", RUN).stdout
    assert hid in text and "ok" in text

    # stop the machines in order, then analyse the ledger file like a user would
    for name in ("runner1", "runner2"):
        assert _stop(procs[name]) == 0, _logs(n)
    assert _stop(procs["ledger"]) == 0, _logs(n)
    db = "machines/ledger/ledger.duckdb"
    report = json.loads(n.swarm("report", "--db", db, "--run", RUN, "--out", "out/report.html", "--json").stdout)
    counts = report["counts"]
    assert counts["hypotheses"] == counts["finished"] == 7, counts  # 3 baselines, 3 of optuna's, 1 submitted
    assert counts["ok"] >= 4 and (n.clone / "out" / "report.html").stat().st_size > 10_000, counts
    compare = json.loads(n.swarm("compare", "--db", db, "--json").stdout)
    groups = {g["name"]: g for g in compare["groups"]}
    assert groups["human"]["experiments"] == 1 and groups["human"]["ok"] == 1, groups
    optuna = [g for name, g in groups.items() if name.startswith("optuna")]
    assert len(optuna) == 1 and optuna[0]["experiments"] == 3 and optuna[0]["finished"] == 3, groups
    n.swarm("export", "--db", db, "--parquet", "out/parquet")
    parquet = list((n.clone / "out" / "parquet").glob("*.parquet"))
    assert any(p.name.startswith("results") for p in parquet), parquet
    n.swarm("replay", "--nats", url, "--db", "out/replayed.duckdb", timeout=300)
    live = duckdb.connect(str(n.clone / db), read_only=True)
    again = duckdb.connect(str(n.clone / "out" / "replayed.duckdb"), read_only=True)
    for table, key in (("hypotheses", "event_id"), ("claims", "event_id"), ("results", "event_id"),
                       ("decisions", "event_id"), ("runners", "event_id")):
        q = f"SELECT * EXCLUDE (seq) FROM {table} ORDER BY {key}"
        assert live.execute(q).fetchall() == again.execute(q).fetchall(), table
    live.close()
    again.close()
    assert Path(n.clone / "machines" / "runner1" / "logs" / "calibration.log").exists()
