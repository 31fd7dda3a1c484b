"""What a user sees on the terminal, and the exit status, from the real ``swarm agent`` process pointed at
the loopback model server (official SDKs inside), a real nats-server and a fake runner: a text-only model,
a server that refuses ``tool_choice``, a wrong base URL, a dead server, a stop during a slow call, Ctrl-C
twice. Then ``swarm status`` listing rejections and LLM errors from the ledger, ``swarm runner --help``,
bad agent options, and ``swarm up`` when no agent can propose."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.loop import AgentConfig, run_agent
from agents.proposers.llm import LlmSettings
from agents.proposers.openai_compat import OpenAIProposer
from agents.tail import RunTail
from bus import EmbeddedServer
from bus.events import AgentLeft, decode
from ledger.projector import Projector
from ledger.service import run_ledger
from swarmcli.main import cli
from tests.agents_support import STANDIN_TRAIN_PY, fake_runner
from tests.fake_llm_server import (
    FakeLlmServer,
    Reply,
    dead_url,
    html_page,
    openai_completion,
)

REPO = Path(__file__).resolve().parents[1]
RUN = "cli"

ONE_DIFF = """Tools are not available to me, so:

### Six blocks instead of four
```diff
--- a/train.py
+++ b/train.py
@@ -9,1 +9,1 @@
-DEPTH = 4                 # transformer blocks
+DEPTH = 6                 # transformer blocks
```
"""
TOOL_CALL = openai_completion([("propose_experiments", '{"experiments": [{"description": "lr 0.03", "edits": '
                                                     '[{"search": "MATRIX_LR = 0.04", "replace": "MATRIX_LR = 0.03"}]}]}')])  # fmt: skip
FAST_FAIL = "[defaults]\nmax_empty_waves = 2\nattempts = 1\nbreaker_failures = 0\n"


class Agent:
    """A running ``swarm agent`` process (stderr is read as it comes)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.err: list[str] = []

    async def line_with(self, text: str, timeout: float = 30.0) -> str:
        """Read stderr until a line containing ``text`` (bounded)."""
        assert self.proc.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stderr.readline(), timeout)
            if not raw:
                raise AssertionError(f"no line with {text!r} before exit:\n" + "".join(self.err))
            self.err.append(raw.decode())
            if text in self.err[-1]:
                return self.err[-1]

    async def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        _, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        return int(self.proc.returncode or 0), "".join(self.err) + err.decode()


@pytest.fixture
def train_py(tmp_path: Path) -> Path:
    p = tmp_path / "train.py"
    p.write_text(STANDIN_TRAIN_PY)
    return p


async def start_agent(url: str, train_py: Path, *args: str) -> Agent:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmcli", "agent", "--nats", url, "--run", RUN, "--train-py", str(train_py),
        "--hw-class", "cpu", *args, cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )  # fmt: skip
    return Agent(proc)


async def left(js: JetStreamContext, agent: str) -> str:
    sub = await js.subscribe(f"swarm.{RUN}.evt.agent", ordered_consumer=True)
    try:
        while True:
            ev = decode((await sub.next_msg(timeout=10)).data)
            if isinstance(ev, AgentLeft) and ev.agent == agent:
                return ev.reason
    finally:
        await sub.unsubscribe()


async def proposals_of(js: JetStreamContext, agent: str) -> list[str]:
    tail = RunTail(js, RUN)
    await tail.start()
    await asyncio.wait_for(tail.caught_up.wait(), 10)
    await tail.stop()
    return [p.description for p in tail.proposals.values() if p.agent == agent]


async def test_a_text_only_model_gets_its_diff_used(
    nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext, train_py: Path
) -> None:
    with FakeLlmServer(default=openai_completion(content=ONE_DIFF)) as srv:
        async with fake_runner(nc, RUN):
            a = await start_agent(nats_server.url, train_py, "--spec", f"openai:qwen@{srv.url}/v1",
                                  "--max-experiments", "1")  # fmt: skip
            rc, err = await a.finish()
    assert rc == 0, err
    assert "openai-qwen: wave 1: proposed 1\n" in err
    assert "openai-qwen: 1 waves, proposed 1, rejected 0, kept " in err and "cost $0.0000" in err
    assert await proposals_of(js, "openai-qwen") == ["Six blocks instead of four"]


async def test_a_server_refusing_tool_choice_gets_auto_and_it_is_said(
    nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext, train_py: Path
) -> None:
    with FakeLlmServer(default=TOOL_CALL, refuse_tool_choice=True) as srv:
        async with fake_runner(nc, RUN):
            a = await start_agent(nats_server.url, train_py, "--spec", f"openai:m@{srv.url}/v1", "--name", "local",
                                  "--max-experiments", "1")  # fmt: skip
            rc, err = await a.finish()
        choices = [r.body["tool_choice"] for r in srv.requests]
    assert rc == 0, err
    assert "refused tool_choice=required (HTTP 400 from" in err and "using tool_choice=auto from now on" in err
    assert "local: wave 1: proposed 1\n" in err
    assert choices == ["required", "auto"]


async def test_a_wrong_base_url_ends_non_zero_naming_it(
    nats_server: EmbeddedServer, js: JetStreamContext, train_py: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agents.toml"
    cfg.write_text(FAST_FAIL)
    with FakeLlmServer(default=html_page()) as srv:
        a = await start_agent(nats_server.url, train_py, "--spec", f"openai:m@{srv.url}", "--config", str(cfg))
        rc, err = await a.finish()
    wrong = f"{srv.url}/chat/completions answered HTTP 200 with text/html; charset=utf-8, not JSON"
    assert rc == 1, err
    assert f"openai-m: wave 1: proposed 0; LLM error: {wrong}" in err
    assert f"Error: openai-m published nothing: 2 waves in a row published nothing; last problem: LLM error: {wrong}" in err
    assert "Traceback" not in err
    assert (await left(js, "openai-m")).startswith("2 waves in a row published nothing; last problem: LLM error:")


async def test_a_dead_server_is_named_and_ends_non_zero(
    nats_server: EmbeddedServer, js: JetStreamContext, train_py: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agents.toml"
    cfg.write_text(FAST_FAIL)
    url = dead_url() + "/v1"
    a = await start_agent(nats_server.url, train_py, "--spec", f"openai:m@{url}", "--config", str(cfg))
    rc, err = await a.finish()
    assert rc == 1, err
    assert f"openai-m: wave 1: proposed 0; LLM error: cannot connect to {url}/chat/completions" in err
    assert "published nothing" in err and "Traceback" not in err


async def test_sigterm_during_a_slow_call_stops_at_once_and_publishes_nothing(
    nats_server: EmbeddedServer, js: JetStreamContext, train_py: Path
) -> None:
    late = Reply(TOOL_CALL.status, TOOL_CALL.body, delay=600.0)  # a valid proposal, ten minutes later
    with FakeLlmServer(default=late) as srv:
        a = await start_agent(nats_server.url, train_py, "--spec", f"openai:m@{srv.url}/v1")
        assert await asyncio.to_thread(srv.wait_requests, 1)
        a.proc.send_signal(signal.SIGTERM)
        rc, err = await a.finish(timeout=30)  # the net; a waiting agent would take 600 s
    assert rc == 0, err
    assert "stopping cleanly" in err and "openai-m: wave 1: proposed 0; stopped during the wave: nothing published" in err
    assert "openai-m: 1 waves, proposed 0" in err and "; stopped" in err and "Traceback" not in err
    assert await proposals_of(js, "openai-m") == []
    assert await left(js, "openai-m") == "stopped"


async def test_ctrl_c_twice_exits_at_once_quietly(nats_server: EmbeddedServer, js: JetStreamContext, train_py: Path) -> None:
    with FakeLlmServer(default=Reply(200, {}, delay=600.0)) as srv:
        a = await start_agent(nats_server.url, train_py, "--spec", f"openai:m@{srv.url}/v1")
        assert await asyncio.to_thread(srv.wait_requests, 1)
        nats_server.pause()  # the goodbye (AgentLeft) now hangs: only a second Ctrl-C ends it at once
        try:
            a.proc.send_signal(signal.SIGINT)
            await a.line_with("stopping cleanly")
            a.proc.send_signal(signal.SIGINT)
            rc, err = await a.finish(timeout=30)
        finally:
            nats_server.resume()
    assert rc == 128 + signal.SIGINT, err
    assert "aborting" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 4, err


@pytest.fixture
async def ledger(nc: NATS, js: JetStreamContext, tmp_path: Path) -> AsyncIterator[Projector]:
    stop, ready, out = asyncio.Event(), asyncio.Event(), list[Projector]()
    task = asyncio.create_task(run_ledger(nc, tmp_path / "l.duckdb", stop=stop, ready=ready, projector_out=out))
    await asyncio.wait_for(ready.wait(), 30)
    yield out[0]
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_swarm_status_lists_rejections_and_llm_errors_per_agent(
    nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext, ledger: Projector
) -> None:
    bad_diff = openai_completion(content="```diff\n@@ -1 +1 @@\n-DEPTH = 99\n+DEPTH = 6\n```")
    with FakeLlmServer() as srv:
        srv.push(bad_diff, html_page())
        p = OpenAIProposer(LlmSettings(model="m", base_url=srv.url + "/v1", api_key="k", attempts=1))
        cfg = AgentConfig(run=RUN, agent="qwen", base_train_py=STANDIN_TRAIN_PY, hw_class="cpu",
                          max_empty_waves=2, breaker_failures=0, request_timeout=2.0)  # fmt: skip
        await run_agent(nc, cfg, p, stop=asyncio.Event())
        await p.aclose()
    info = await js.stream_info("SWARM_EVENTS")
    await ledger.wait_for_seq(info.state.last_seq, timeout=30)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmcli", "status", "--nats", nats_server.url, "--run", RUN, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "agents" in text and "recent problems (rejected proposals and failed LLM calls" in text
    (row,) = [line for line in text.splitlines() if line.startswith("│ qwen ") and "left:" in line]
    assert "│ left: 2 waves in a row published nothing │ 0 " in row  # proposed 0
    problems = text[text.index("recent problems"):]
    assert "│ rejected  │ (from a diff in the text answer): edit 1: search text not found in train.py" in problems
    assert f"│ llm_error │ {srv.url}/v1/chat/completions answered HTTP 200 with text/html" in problems


def test_swarm_runner_help_documents_the_runner_options() -> None:
    r = CliRunner().invoke(cli, ["runner", "--help"], prog_name="swarm")
    assert r.exit_code == 0, r.output
    assert "Usage: swarm runner" in r.output and "usage: swarm runner" in r.output
    for opt in ("--budget", "--executor", "--gpu", "--hw-class", "--burst", "--max-experiments", "--isolation"):
        assert opt in r.output, opt


def test_bad_agent_options_get_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agents.toml"
    cfg.write_text('[[agent]]\nspec = "optuna"\ntimout = 3\n')
    r = CliRunner().invoke(cli, ["agent", "--config", str(cfg)])
    assert r.exit_code != 0 and "unknown field `timout`" in r.output and "an agent takes: spec, name, timeout" in r.output
    r = CliRunner().invoke(cli, ["agent", "--spec", "optuna", "--price", "gpt-4o=2.5"])
    assert r.exit_code != 0 and "bad price 'gpt-4o=2.5': use MODEL=IN,OUT" in r.output
    r = CliRunner().invoke(cli, ["agent", "--spec", "optuna", "--header", "no-separator"])
    assert r.exit_code != 0 and "bad header 'no-separator'" in r.output
    r = CliRunner().invoke(cli, ["agent"])
    assert r.exit_code != 0 and "no agent to run" in r.output
    cfg.write_text('[[agent]]\nspec = "openai:m@http://127.0.0.1:9/v1"\napi_key_env = "NOT_SET_ANYWHERE_42"\n')
    r = CliRunner().invoke(cli, ["agent", "--config", str(cfg), "--nats", "nats://127.0.0.1:1"])
    assert r.exit_code != 0


def test_swarm_up_exits_non_zero_when_no_agent_can_propose(tmp_path: Path) -> None:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp_path / "agents.toml"
    cfg.write_text(FAST_FAIL.replace("max_empty_waves = 2", "max_empty_waves = 1"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    r = subprocess.run(
        [sys.executable, "-m", "swarmcli", "up", "--executor", "simulated", "--time-scale", "0.002", "--no-live",
         "--agents", f"openai:m@{dead_url()}/v1", "--agent-config", str(cfg), "--run", "dead",
         "--state-dir", str(tmp_path / "state"), "--port", str(port), "--baseline-repeats", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "] openai-m: wave 1: proposed 0; LLM error: cannot connect to" in r.stdout
    assert "Error: no agent could propose:" in r.stderr and "openai-m: 1 waves in a row published nothing" in r.stderr
