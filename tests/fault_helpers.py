"""Helpers of the fault and hostile-input suites (no tests here): subprocesses of the swarm's own entry
points, reading the raw stream, projecting it, and comparing a ledger with a fresh replay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.events import AnyEvent, EventDecodeError, decode
from ledger.projector import Projector
from ledger.replay import replay_stream
from ledger.schema import DATA_TABLES, DERIVED_TABLES, connect_db
from tests.support.bus import poll  # noqa: F401 (the fault tests import it from here)

REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child process, without CI (children never skip-or-fail)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def spawn(cmd: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (from the repo root) with stdout/stderr to ``log``."""
    with log.open("ab") as f:  # the child keeps its own copy of the fd
        return subprocess.Popen(cmd, cwd=REPO, env=child_env(**env), stdout=f, stderr=subprocess.STDOUT)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def spawn_runner(tmp: Path, url: str, run: str, rid: str, *extra: str) -> subprocess.Popen[bytes]:
    """``python -m runner`` on the simulated executor (class cpu), logging to ``tmp/<rid>.log``."""
    cmd = [
        sys.executable, "-m", "runner", "--nats", url, "--run", run, "--id", rid, "--hw-class", "cpu",
        "--executor", "simulated", "--state-dir", str(tmp / f"state-{rid}"), "--no-calibrate",
        "--fetch-timeout", "0.3", *extra,
    ]  # fmt: skip
    return spawn(cmd, tmp / f"{rid}.log")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


async def raw_stream(js: JetStreamContext) -> list[tuple[int, str, bytes]]:
    """Every message of the events stream as (seq, subject, data), decodable or not."""
    info = await js.stream_info(subjects.STREAM)
    out: list[tuple[int, str, bytes]] = []
    for seq in range(max(info.state.first_seq or 1, 1), (info.state.last_seq or 0) + 1):
        try:
            raw = await js.get_msg(subjects.STREAM, seq)
        except NotFoundError:
            continue
        out.append((seq, raw.subject or "", raw.data or b""))
    return out


async def stream_events(js: JetStreamContext) -> list[AnyEvent]:
    """The decodable events of the stream, in order (garbage is skipped: the ledger rejects it)."""
    out: list[AnyEvent] = []
    for _, _, data in await raw_stream(js):
        try:
            out.append(decode(data))
        except EventDecodeError:
            continue
    return out


def stream_event_ids(msgs: list[tuple[int, str, bytes]]) -> list[str]:
    ids = []
    for _, _, data in msgs:
        try:
            ids.append(decode(data).event_id)
        except EventDecodeError:
            continue
    return ids


async def project(
    js: JetStreamContext, con: duckdb.DuckDBPyConnection, consumer: str = "ledger"
) -> Projector:
    """Project the stream into ``con`` until idle (burst mode)."""
    p = Projector(js, con, consumer=consumer, batch_size=5000, fetch_timeout=0.2)
    try:
        await p.run_until_idle(timeout=60)
    finally:
        await p.close()
    return p


def dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    """Every data and derived table's full contents, in a stable order."""
    out: dict[str, list[Any]] = {
        t: con.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall() for t in DATA_TABLES
    }
    for t in DERIVED_TABLES:
        out[t] = sorted(repr(row) for row in con.execute(f"SELECT * FROM {t}").fetchall())
    return out


async def fresh_replay(js: JetStreamContext, path: Path) -> dict[str, list[Any]]:
    """The tables a fresh replay of the whole stream gives."""
    con = connect_db(str(path))
    try:
        await replay_stream(js, con)
        return dump(con)
    finally:
        con.close()


def dispositions(con: duckdb.DuckDBPyConnection, run: str) -> dict[str, list[str]]:
    """hypothesis_id -> dispositions of its finishes, in stream order."""
    out: dict[str, list[str]] = {}
    rows = con.execute(
        "SELECT hypothesis_id, disposition FROM results WHERE run = $1 ORDER BY seq", [run]
    ).fetchall()
    for hid, disp in rows:
        out.setdefault(hid, []).append(disp)
    return out
