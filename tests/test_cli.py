"""The `swarm` CLI end to end: `swarm up` on the embedded default (simulated and real CPU training),
the people's commands against a running ledger, export -> replay round trip."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from bus import EmbeddedServer
from swarmcli.main import cli

REPO = Path(__file__).resolve().parents[1]
SWARM = [sys.executable, "-m", "swarmcli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def swarm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    io = {"input": input_text} if input_text is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(
        [*SWARM, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout, **io,  # type: ignore[call-overload]
    )  # fmt: skip


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_help_teaches_every_subcommand() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0, r.output
    for sub in ("up", "runner", "agent", "ledger", "submit", "status", "logs", "replay", "report", "compare",
                "notebook", "export", "creds"):  # fmt: skip
        assert sub in r.output
        sub_help = CliRunner().invoke(cli, [sub, "--help"]) if sub != "runner" else None
        assert sub_help is None or sub_help.exit_code == 0, (sub, sub_help.output)


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["up", "--agents", "gpt", "--state-dir", str(tmp_path)])
    assert r.exit_code != 0 and "bad agent spec 'gpt'" in r.output
    r = CliRunner().invoke(cli, ["up", "--run", "a.b", "--state-dir", str(tmp_path)])
    assert r.exit_code != 0 and "invalid run" in r.output
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "nope.duckdb")])
    assert r.exit_code != 0 and "no ledger file" in r.output
    r = CliRunner().invoke(cli, ["status", "--nats", f"nats://127.0.0.1:{free_port()}"])
    assert r.exit_code != 0 and "Is a swarm running?" in r.output


def test_up_simulated_then_export_replay_report(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = swarm(
        "up", "--executor", "simulated", "--time-scale", "0.002", "--max-experiments", "8", "--no-live",
        "--run", "sim", "--state-dir", str(state), "--port", str(free_port()), "--baseline-repeats", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    db = state / "ledger.duckdb"
    ((proposed, finished, ok),) = query(
        db,
        "SELECT count(*), count(status), count(*) FILTER (WHERE status = 'ok') FROM experiments WHERE run = 'sim'",
    )
    assert proposed >= 8 + 2 and finished == proposed and ok >= 8, (proposed, finished, ok)
    assert query(db, "SELECT count(*) FROM agents WHERE run = 'sim' AND action = 'joined'")[0][0] == 2
    assert query(db, "SELECT count(*) FROM decisions WHERE run = 'sim'")[0][0] >= 1
    report = state / "sim" / "report.html"
    assert report.exists() and "<svg" in report.read_text()

    archive, fresh = tmp_path / "archive", tmp_path / "replayed.duckdb"
    r = swarm("export", "--db", str(db), "--parquet", str(archive), "--git", str(tmp_path / "git"), "--run", "sim")
    assert r.returncode == 0, r.stderr
    r = swarm("replay", "--db", str(fresh), "--archive", str(archive))
    assert r.returncode == 0, r.stderr
    cols = "hypothesis_id, agent, status, val_bpb, attempts, decision"
    sql = f"SELECT {cols} FROM experiments ORDER BY hypothesis_id"
    assert query(fresh, sql) == query(db, sql)
    r = swarm("compare", "--db", str(db), "--json")
    assert r.returncode == 0 and '"optuna-tpe"' in r.stdout, r.stderr


def test_up_trains_for_real_on_cpu(tmp_path: Path) -> None:
    """The main job's code path with real training: tiny budget, one agent, one baseline."""
    state = tmp_path / "state"
    env = {"SWARM_CACHE_DIR": str(tmp_path / "cache"), "SWARM_CORPUS_MAX_BYTES": "400000",
           "SWARM_MAX_SEQ_LEN": "128", "SWARM_EVAL_TOKENS": "4096"}  # fmt: skip
    r = swarm(
        "up", "--agents", "random", "--max-experiments", "1", "--budget-seconds", "3", "--baseline-repeats", "1",
        "--no-calibrate", "--no-live", "--run", "cpu", "--state-dir", str(state), "--port", str(free_port()),
        env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rows = query(state / "ledger.duckdb", "SELECT status, val_bpb, ran_on FROM experiments WHERE run = 'cpu'")
    assert len(rows) == 2
    assert all(s in ("ok", "crash", "nan") for s, _, _ in rows), rows
    assert any(s == "ok" and v is not None and 0 < v < 20 and on == "cpu" for s, v, on in rows), rows


@pytest.fixture
def ledger_service(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    server = EmbeddedServer(tmp_path / "js").start()
    db = tmp_path / "ledger.duckdb"
    log = (tmp_path / "ledger.log").open("w")
    proc = subprocess.Popen([*SWARM, "ledger", "--nats", server.url, "--db", str(db)], cwd=REPO, text=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield server.url, db, proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        server.stop()


def test_people_commands_against_a_running_ledger(
    tmp_path: Path, ledger_service: tuple[str, Path, subprocess.Popen[str]]
) -> None:
    url, db, ledger_proc = ledger_service
    edited = tmp_path / "train.py"
    edited.write_text((REPO / "train.py").read_text().replace("MATRIX_LR = ", "MATRIX_LR = 1.1 * ", 1))
    base = ["--nats", url, "--run", "people"]
    r = swarm("submit", str(edited), "-m", "bigger matrix lr", *base, "--hw-class", "cpu")
    assert r.returncode == 0, r.stderr
    hid = r.stdout.split()[1]
    r = swarm("runner", *base, "--executor", "simulated", "--time-scale", "0.001", "--burst", "--no-calibrate",
              "--hw-class", "cpu", "--state-dir", str(tmp_path / "runner"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    # the ledger answers once it has projected the result
    for _ in range(100):
        r = swarm("logs", hid, *base)
        if r.returncode == 0 and "[ok]" in r.stdout:
            break
    assert "[ok]" in r.stdout and "bigger matrix lr" in r.stdout, r.stdout + r.stderr
    r = swarm("notebook", *base, "--write", "a finding", input_text="wider helps")
    assert r.returncode == 0, r.stderr
    for _ in range(100):
        r = swarm("notebook", *base)
        if "a finding" in r.stdout:
            break
    assert "## a finding" in r.stdout and "wider helps" in r.stdout
    r = swarm("status", *base)
    assert r.returncode == 0 and "recent results" in r.stdout, r.stderr
    ledger_proc.terminate()
    assert ledger_proc.wait(30) == 0
    ((n,),) = query(db, "SELECT count(*) FROM results WHERE run = 'people'")
    assert n == 1


def test_up_fair_share_and_isolated_agents(tmp_path: Path) -> None:
    """Fair share: each agent stops at the same GPU-seconds, measured within 10 %; isolated agents
    build only on their own hypotheses (or the baseline)."""
    state = tmp_path / "state"
    r = swarm(
        "up", "--executor", "simulated", "--time-scale", "0.002", "--max-experiments", "1000", "--no-live",
        "--run", "fair", "--state-dir", str(state), "--port", str(free_port()), "--baseline-repeats", "2",
        "--runners", "4", "--gpu-seconds-per-agent", "16", "--isolated",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    r = swarm("compare", "--db", str(state / "ledger.duckdb"), "--json")
    assert r.returncode == 0, r.stderr
    import json

    groups = {g["name"]: g for g in json.loads(r.stdout)["groups"]}
    secs = [groups["optuna-tpe"]["gpu_seconds"], groups["random-random"]["gpu_seconds"]]
    assert min(secs) > 0 and abs(secs[0] - secs[1]) / (sum(secs) / 2) < 0.10, secs
    assert all(g["experiments"] < 500 for g in groups.values())  # the GPU-seconds budget stopped them
    rows = query(
        state / "ledger.duckdb",
        "SELECT h.agent, p.agent FROM hypotheses h JOIN hypotheses p ON p.hypothesis_id = h.parent "
        "WHERE h.run = 'fair' AND h.agent <> 'baseline'",
    )
    assert rows and all(child == parent for child, parent in rows), [r for r in rows if r[0] != r[1]]


def test_up_secure_writes_per_role_users_and_runs_under_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = swarm(
        "up", "--executor", "simulated", "--time-scale", "0.002", "--max-experiments", "2", "--no-live",
        "--run", "sec", "--state-dir", str(state), "--port", str(free_port()), "--baseline-repeats", "1",
        "--agents", "random", "--secure",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    creds = state / "creds"
    assert {p.name for p in creds.iterdir()} == {"auth.conf", "admin.env", "agent.env", "runner.env", "ledger.env"}
    assert "authorization" in (state / "nats" / "nats-server.conf").read_text()
    password = (creds / "runner.env").read_text().split("SWARM_NATS_PASSWORD=")[1].strip()
    assert password not in r.stdout + r.stderr  # never logged
    ((n,),) = query(state / "ledger.duckdb", "SELECT count(status) FROM experiments WHERE run = 'sec'")
    assert n == 3


async def test_up_stops_and_says_why_when_a_service_dies(tmp_path: Path) -> None:
    """A runner (or the ledger) that ends while the agents work stops `swarm up` with its reason, and the run
    fails (exit non-zero) instead of ending as if the agents were done."""
    import asyncio

    from swarmcli.up import UpConfig, _watch

    cfg = UpConfig(run="r", state_dir=tmp_path, agents=["optuna"], runners=1, threads=None, gpus=[],
                   executor="simulated", max_experiments=10, budget=None, baseline_repeats=1, time_scale=1.0,
                   duration=None, host="127.0.0.1", port=None, live=False, report=tmp_path / "r.html",
                   calibrate=False)  # fmt: skip

    async def dies() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("lost the bus")

    agent = asyncio.create_task(asyncio.sleep(60))
    tasks = {"agent:optuna": agent, "runner0": asyncio.create_task(dies())}

    class View:  # no ledger in this test: _watch shows nothing
        async def snapshot(self) -> None:
            return None

    try:
        why = await asyncio.wait_for(_watch(cfg, asyncio.Event(), tasks, View(), None, 0.0), 30)
    finally:
        agent.cancel()
    assert why == "runner0 ended unexpectedly (RuntimeError: lost the bus)"
