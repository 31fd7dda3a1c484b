"""End to end: Optuna and random agents against a real nats-server, the ledger service and runners on the
simulated executor. Proposals, results, decisions and notes all land in the ledger; dedup refuses a repeat.

Skips until ``ledger.service`` and ``runner`` exist (they are written alongside the agents)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.loop import AgentConfig, run_agent
from agents.proposers.base import ProposalDraft
from agents.proposers.optuna_tpe import OptunaProposer
from agents.proposers.random_search import RandomProposer
from bus import EmbeddedServer, subjects
from bus.events import SqlReply, SqlRequest, encode_msg, reply_decoder
from tests.agents_support import STANDIN_TRAIN_PY, Scripted, depth

ledger_service = pytest.importorskip("ledger.service")
runner_pkg = pytest.importorskip("runner")

RUN = "e2e"


@contextlib.asynccontextmanager
async def swarm(tmp: Path, nc: NATS, url: str, runners: int) -> AsyncIterator[Any]:
    """The ledger service and ``runners`` simulated runners, stopped (drained) on exit."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    projectors: list[Any] = []
    base = tmp / "train.py"
    base.write_text(STANDIN_TRAIN_PY)
    ledger_task = asyncio.create_task(
        ledger_service.run_ledger(nc, tmp / "ledger.duckdb", stop=stop, ready=ready, projector_out=projectors)
    )
    await asyncio.wait_for(ready.wait(), 30)
    tasks = []
    for i in range(runners):
        cfg = runner_pkg.RunnerConfig(
            nats_urls=(url,), run=RUN, runner_id=f"r{i}", hw_class="cpu", executor="simulated",
            state_dir=tmp / f"state-{i}", cache_dir=tmp / "cache", baseline_train_py=base, calibrate=False,
            max_budget=60.0, startup_seconds=1.0, eval_seconds=1.0, time_scale=0.004, fetch_timeout=0.3,
            ack_wait=30.0,
        )  # fmt: skip
        tasks.append(asyncio.create_task(runner_pkg.Runner(nc, cfg).run(stop)))
    try:
        yield projectors[0]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(ledger_task, *tasks), 60)


async def sql(nc: NATS, query: str) -> list[list[Any]]:
    msg = await nc.request(subjects.api(RUN, "sql"), encode_msg(SqlRequest(run=RUN, sql=query)), timeout=10)
    reply = reply_decoder.decode(msg.data)
    assert isinstance(reply, SqlReply), reply
    return reply.rows


def cfg(agent: str, **kw: Any) -> AgentConfig:
    return AgentConfig(run=RUN, agent=agent, base_train_py=STANDIN_TRAIN_PY, hw_class="cpu",
                       wave_timeout=60.0, request_timeout=5.0, **kw)  # fmt: skip


async def test_optuna_and_random_agents_end_to_end(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    async with swarm(tmp_path, nc, nats_server.url, runners=3) as projector:
        # the runners announce themselves (RunnerJoined) before the agents look for hardware classes
        await asyncio.wait_for(_runners_online(nc, 3), 30)
        optuna_p = OptunaProposer(STANDIN_TRAIN_PY, seed=1, n_startup_trials=3)
        random_p = RandomProposer(STANDIN_TRAIN_PY, seed=2)
        stop = asyncio.Event()
        s1, s2 = await asyncio.gather(
            run_agent(nc, cfg("optuna-1", max_experiments=8), optuna_p, stop=stop),
            run_agent(nc, cfg("random-1", max_experiments=8), random_p, stop=stop),
        )
        # dedup: the first random proposal again (exact), and a fresh one that goes through
        first = (await sql(nc, f"SELECT train_py FROM hypotheses WHERE run = '{RUN}' AND agent = 'random-1' "
                               "ORDER BY ts LIMIT 1"))[0][0]  # fmt: skip
        # (the fresh one builds on the baseline, with a depth outside the searched range: no agent made it)
        again = Scripted([[ProposalDraft(description="a repeat", source=first), depth(37)]])
        s3 = await run_agent(
            nc, cfg("scripted-1", max_waves=1, baselines=False, follow_global_best=False), again, stop=stop
        )
        info = await js.stream_info(subjects.STREAM)
        await projector.wait_for_seq(info.state.last_seq, timeout=30)

        assert s1.proposed == 8 and s2.proposed == 8 and s3.proposed == 1 and s3.rejected == 1
        rows = await sql(nc, f"SELECT agent, count(*) FROM hypotheses WHERE run = '{RUN}' GROUP BY agent ORDER BY agent")
        assert dict((a, n) for a, n in rows) == {"baseline": 3, "optuna-1": 8, "random-1": 8, "scripted-1": 1}
        rows = await sql(nc, f"SELECT count(*) FROM experiments WHERE run = '{RUN}' AND status IS NOT NULL")
        assert rows[0][0] == 20  # every proposal got a result
        rows = await sql(nc, f"SELECT \"by\", count(*) FROM decisions WHERE run = '{RUN}' GROUP BY 1 ORDER BY 1")
        decided = dict((a, n) for a, n in rows)
        assert decided["optuna-1"] >= 8 and decided["random-1"] >= 8
        rows = await sql(nc, f"SELECT agent, count(*) FROM notes WHERE run = '{RUN}' GROUP BY agent")
        assert {a for a, _ in rows} >= {"optuna-1", "random-1"}
        rows = await sql(nc, f"SELECT reason FROM proposal_rejects WHERE run = '{RUN}' AND agent = 'scripted-1'")
        assert len(rows) == 1 and "duplicate" in rows[0][0]
        rows = await sql(nc, f"SELECT hw_class, baseline_runs, sigma FROM class_stats WHERE run = '{RUN}'")
        assert rows and rows[0][0] == "cpu" and rows[0][1] == 3


async def _runners_online(nc: NATS, n: int) -> None:
    while True:
        try:
            rows = await sql(nc, f"SELECT count(*) FROM runners_online WHERE run = '{RUN}'")
            if rows and rows[0][0] >= n:
                return
        except AssertionError:
            pass
        await asyncio.sleep(0.05)
