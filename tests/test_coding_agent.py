"""A coding agent as a swarm member: the scripted agent of docs/examples/scripted_agent.py drives only the
`swarm` CLI (status, notebook, submit, logs, notes) against a real nats-server, a `swarm ledger` process and a
`swarm runner --executor simulated` process, through submit -> result -> note, twice; its results are
attributed to its name and model. Also: `swarm logs H --full` from a machine that is not the runner's."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.server import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]
SWARM = [sys.executable, "-m", "swarmcli"]
AGENT = REPO / "docs" / "examples" / "scripted_agent.py"


def swarm_json(*args: str, cwd: Path, timeout: float = 120) -> Any:
    r = subprocess.run(
        [*SWARM, *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextlib.contextmanager
def processes(server: EmbeddedServer, tmp: Path, run: str, *, runner: bool = True) -> Iterator[Path]:
    """`swarm ledger` (state in tmp/ledger) and a simulated `swarm runner` (state in tmp/runner-machine)."""
    (tmp / "ledger").mkdir(exist_ok=True)
    logs = [(tmp / "ledger.log").open("a"), (tmp / "runner.log").open("a")]
    procs = [
        subprocess.Popen([*SWARM, "ledger", "--nats", server.url, "--db", str(tmp / "ledger" / "ledger.duckdb")],
                         cwd=tmp, stdout=logs[0], stderr=subprocess.STDOUT),
    ]  # fmt: skip
    if runner:
        procs.append(subprocess.Popen(
            [*SWARM, "runner", "--nats", server.url, "--run", run, "--executor", "simulated", "--time-scale", "0.002",
             "--no-calibrate", "--hw-class", "cpu", "--id", "sim-1", "--state-dir", str(tmp / "runner-machine")],
            cwd=tmp, stdout=logs[1], stderr=subprocess.STDOUT,
        ))  # fmt: skip
    try:
        yield tmp / "ledger" / "ledger.duckdb"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()


def wait_for_runner(server: EmbeddedServer, run: str, cwd: Path) -> None:
    """Until the ledger answers and reports the runner online (bounded)."""
    for _ in range(240):
        r = subprocess.run([*SWARM, "status", "--nats", server.url, "--run", run, "--json"], cwd=cwd,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if r.returncode == 0 and json.loads(r.stdout)["runners_online"] >= 1:
            return
        time.sleep(0.5)
    raise AssertionError(f"the runner never came online: {r.stderr}")


def test_scripted_coding_agent_loops_through_the_cli(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    run = "coding"
    elsewhere = tmp_path / "agent-machine"
    elsewhere.mkdir()
    with processes(nats_server, tmp_path, run) as db:
        wait_for_runner(nats_server, run, elsewhere)
        r = subprocess.run([sys.executable, str(AGENT), "--nats", nats_server.url, "--run", run, "--rounds", "2",
                            "--wait", "300"], cwd=elsewhere, capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert [x["step"] for x in lines] == ["read", "round", "round", "done"]
        done = lines[-1]
        assert len(done["rounds"]) == 2
        for rnd in done["rounds"]:
            assert rnd["status"] == "ok" and isinstance(rnd["val_bpb"], float)
            assert rnd["log_source"].startswith("log store"), rnd  # the full log came over the bus
            assert rnd["note_id"].startswith("n-")
        # the second round built on the first when the first improved on nothing yet (best was None)
        assert done["rounds"][0]["improved"] and done["best"] is not None

        common = ["--nats", nats_server.url, "--run", run]
        status = swarm_json("status", *common, cwd=elsewhere)
        mine = [e for e in status["recent"] if e["agent"] == "claude-code"]
        assert len(mine) == 2 and {e["model"] for e in mine} == {"claude-sonnet-4-5"}
        second = swarm_json("logs", done["rounds"][1]["hypothesis_id"], *common, cwd=elsewhere)
        assert second["hypothesis"]["parent"] == done["rounds"][0]["hypothesis_id"]
        assert (
            second["rationale"] == "round 1: probe EMBEDDING_LR"
            and second["diff_base"] == second["hypothesis"]["parent"]
        )
        # it built on the first round's train.py, fetched back from the ledger: the diff is only its own edit
        assert "+EMBEDDING_LR" in second["diff"] and "+MATRIX_LR" not in second["diff"]
        assert "MATRIX_LR = 0.05" in second["train_py"]
        notes = swarm_json("notebook", *common, cwd=elsewhere)["notes"]
        assert {n["refs"][0] for n in notes if n["agent"] == "claude-code"} == {
            x["hypothesis_id"] for x in done["rounds"]
        }
        # head to head by model: the coding agent's model is a group of its own
        by_model = swarm_json("compare", "--db", str(db), "--by", "model", cwd=elsewhere)
        assert by_model["schema"] == "swarm.compare/1"
        group = next(g for g in by_model["groups"] if g["name"] == "claude-sonnet-4-5")
        assert group["agents"] == ["claude-code"] and group["experiments"] == 2


def test_logs_full_from_a_machine_that_is_not_the_runners(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Two state dirs: the runner's (deleted once the result is in) and the reader's."""
    run = "travel"
    reader = tmp_path / "reader-machine"
    reader.mkdir()
    edited = reader / "train.py"
    edited.write_text((REPO / "train.py").read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.045", 1))
    common = ["--nats", nats_server.url, "--run", run]
    with processes(nats_server, tmp_path, run):
        wait_for_runner(nats_server, run, reader)
        hid = swarm_json(
            "submit", str(edited), *common, "-m", "travelling log", "--hw-class", "cpu", cwd=reader
        )["hypothesis_id"]
        done = swarm_json("logs", hid, *common, "--wait", "300", cwd=reader)
        assert done["hypothesis"]["status"] == "ok", done
        finish = next(a for a in done["attempts"] if a["kind"] == "finish")
        assert finish["log_ref"] == f"{run}/{hid}/{finish['attempt']}.log"  # the runner stored it
    shutil.rmtree(tmp_path / "runner-machine")  # the runner's disk is gone: only the bus has the log
    with processes(nats_server, tmp_path, run, runner=False):  # the ledger again (it resumes), no runner
        full = retry_json("logs", hid, *common, "--full", cwd=reader)["log"]
        tail = swarm_json("logs", hid, *common, cwd=reader)["log"]
    assert full["full"] and full["source"] == f"log store SWARM_LOGS/{run}/{hid}/{finish['attempt']}.log"
    assert "step" in full["text"] and "val_bpb" in full["text"]
    assert not tail["full"] and len(tail["text"]) <= len(full["text"]) and tail["text"] in full["text"]


def retry_json(*args: str, cwd: Path) -> Any:
    """A read command, asked again while the ledger process is still starting (bounded)."""
    for _ in range(120):
        r = subprocess.run(
            [*SWARM, *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
        if r.returncode == 0:
            return json.loads(r.stdout)
        time.sleep(0.5)
    raise AssertionError(r.stderr)
