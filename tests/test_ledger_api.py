"""The ledger's read API over NATS, its SQL guard rails, and the views on a hand-made scenario."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from test_ledger import HW, RUN, scenario

from bus import events as ev
from bus import publish_many, subjects
from ledger.api import LedgerClient
from ledger.projector import Projector
from ledger.service import run_ledger


@pytest.fixture
async def ledger(nc: NATS, js: JetStreamContext, tmp_path: Path) -> AsyncIterator[Projector]:
    stop, ready, out = asyncio.Event(), asyncio.Event(), list[Projector]()
    task = asyncio.create_task(run_ledger(nc, tmp_path / "l.duckdb", stop=stop, ready=ready, projector_out=out))
    await asyncio.wait_for(ready.wait(), 10)
    yield out[0]
    stop.set()
    await asyncio.wait_for(task, 10)


def hand_made() -> list[ev.Event]:
    c: dict[str, Any] = {"run": RUN, "source": "t"}
    h100 = ev.Hardware(hw_class="h100")

    def prop(hid: str, agent: str, tags: list[str] | None = None, sha: str = "") -> ev.HypothesisProposed:
        return ev.HypothesisProposed(**c, hypothesis_id=hid, agent=agent, train_py=hid, train_py_sha256=sha or f"sha-{hid}",
                                     ast_sha256=f"ast-{hid}", tags=tags or [], description=f"d-{hid}")  # fmt: skip

    def run(hid: str, hw: ev.Hardware, status: str, val: float | None) -> list[ev.Event]:
        return [ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=1, runner=f"w-{hw.hw_class}", hardware=hw),
                ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner=f"w-{hw.hw_class}", status=status,
                                      val_bpb=val, hw_class=hw.hw_class)]  # fmt: skip

    return [
        ev.RunnerJoined(**c, runner="w-cpu", hardware=HW), ev.RunnerJoined(**c, runner="w-h100", hardware=h100),
        ev.RunnerJoined(**c, runner="w-old", hardware=HW), ev.RunnerLeft(**c, runner="w-old"),
        prop("b1", "human", ["baseline"]), *run("b1", HW, "ok", 2.0),
        prop("b2", "human", ["baseline"]), *run("b2", HW, "ok", 2.2),
        prop("x1", "alice"), *run("x1", HW, "ok", 1.9),
        prop("x2", "alice"), *run("x2", HW, "ok", 1.95),  # not an improvement for alice
        prop("x3", "alice"), *run("x3", HW, "ok", 1.8),
        prop("y1", "bob"), *run("y1", HW, "crash", None),
        prop("y2", "bob"), *run("y2", h100, "ok", 1.5),
        prop("y3", "bob"),  # pending
        ev.HypothesisDecided(**c, hypothesis_id="x1", decision="keep", by="alice"),
        ev.HypothesisDecided(**c, hypothesis_id="x3", decision="keep", by="alice"),
        ev.NoteWritten(**c, note_id="n1", agent="alice", title="deeper helps", body="**yes**", refs=["x3"]),
        ev.ProgramChanged(**c, program_md="# try wider"),
    ]  # fmt: skip


async def test_views_and_api_on_a_hand_made_scenario(nc: NATS, js: JetStreamContext, ledger: Projector) -> None:
    acks = await publish_many(js, hand_made())
    await ledger.wait_for_seq(acks[-1].seq)
    client = LedgerClient(nc, RUN)

    best = await client.best()
    assert [(b.hw_class, b.val_bpb, b.hypothesis_id, b.agent) for b in best] == [
        ("cpu", 1.8, "x3", "alice"), ("h100", 1.5, "y2", "bob")]  # fmt: skip
    assert [b.hypothesis_id for b in await client.best("h100")] == ["y2"]

    sql = await client.sql("SELECT agent, hw_class, hypothesis_id, val_bpb FROM frontier WHERE run='r' ORDER BY finished_seq")
    assert sql.rows == [["human", "cpu", "b1", 2.0], ["alice", "cpu", "x1", 1.9], ["alice", "cpu", "x3", 1.8],
                        ["bob", "h100", "y2", 1.5]]  # fmt: skip
    lb = await client.sql("SELECT hw_class, agent, rank, best_val_bpb, experiments, keeps, crashes FROM leaderboard ORDER BY hw_class, rank")
    assert lb.rows == [["cpu", "alice", 1, 1.8, 3, 2, 0], ["cpu", "human", 2, 2.0, 2, 0, 0],
                       ["cpu", "bob", 3, None, 1, 0, 1], ["h100", "bob", 1, 1.5, 1, 0, 0]]  # fmt: skip
    cs = await client.sql("SELECT hw_class, baseline_runs, round(baseline_mean, 6), round(sigma, 6), runners_online FROM class_stats ORDER BY 1")
    assert cs.rows == [["cpu", 2, 2.1, round(0.2 / 2**0.5, 6), 1], ["h100", 0, None, None, 1]]

    recent = await client.recent(limit=3)
    assert [r.hypothesis_id for r in recent] == ["y2", "y1", "x3"]
    assert recent[1].status == "crash" and recent[0].ran_on == "h100"
    assert [r.hypothesis_id for r in await client.recent(agent="alice")] == ["x3", "x2", "x1"]

    one = await client.experiment("x3")
    assert one.item is not None and one.item.val_bpb == 1.8 and one.item.decision == "keep"
    assert [a["kind"] for a in one.attempts] == ["claim", "finish"]
    assert (await client.experiment("nope")).item is None
    pending = await client.experiment("y3")
    assert pending.item is not None and pending.item.status is None and pending.item.attempts == 0

    ctx = await client.context("alice")
    assert [r.hypothesis_id for r in ctx.lineage] == ["x1", "x3"]
    assert [n.title for n in ctx.notes] == ["deeper helps"]
    assert ctx.program_md == "# try wider" and ctx.pending == 1 and ctx.runners_online == 2
    assert {s.hw_class: s.baseline_runs for s in ctx.stats} == {"cpu": 2, "h100": 0}
    assert len(ctx.recent) == 7 and len(ctx.best) == 2

    assert await client.seen(["sha-x1", "nope", "ast-y3"]) == ["sha-x1", "ast-y3"]
    notes = await client.notes(since_ts=0)
    assert notes[0].refs == ["x3"] and await client.notes(since_ts=notes[0].ts) == []


async def test_sql_guard_rails(nc: NATS, js: JetStreamContext, ledger: Projector) -> None:
    acks = await publish_many(js, scenario(30))
    await ledger.wait_for_seq(acks[-1].seq)
    client = LedgerClient(nc, RUN)
    capped = await client.sql("SELECT * FROM range(100)", limit=10)
    assert len(capped.rows) == 10 and capped.truncated and capped.columns == ["range"]
    with pytest.raises(RuntimeError, match="timeout"):
        await client.sql("SELECT count(*) FROM range(1000000000) a, range(1000000) b WHERE a.range + b.range = 7",
                         timeout_seconds=0.3)  # fmt: skip
    for bad, why in [
        ("DELETE FROM events", "only SELECT"),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("CREATE TABLE t AS SELECT 1", "only SELECT"),
        ("COPY events TO '/tmp/x.csv'", "only SELECT"),
        ("ATTACH '/tmp/x.db' AS x", "only SELECT"),
        ("INSTALL httpfs", "only SELECT"),
        ("LOAD httpfs", "only SELECT"),
        ("SET enable_external_access = true", "only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
        ("SELECT * FROM read_text('/etc/passwd')", "disabled"),
        ("SELECT * FROM 'tests/conftest.py'", "does not exist|disabled"),
        ("SELEKT nonsense", "parse"),
    ]:
        with pytest.raises(RuntimeError, match=why):
            await client.sql(bad)
    # after all that the service still answers, and the tables are intact
    ok = await client.sql("SELECT count(*) FROM events")
    assert ok.rows == [[len(acks)]]
    # a request that is not even a request
    reply = ev.reply_decoder.decode((await nc.request(subjects.api(RUN, "best"), b"\x00\x01", timeout=5)).data)
    assert isinstance(reply, ev.ErrorReply) and "bad request" in reply.error
    reply = ev.reply_decoder.decode((await nc.request(
        subjects.api(RUN, "recent"), ev.encode_msg(ev.BestRequest(run=RUN)), timeout=5)).data)  # fmt: skip
    assert isinstance(reply, ev.ErrorReply) and "send it on" in reply.error


async def test_api_answers_while_ingesting(nc: NATS, js: JetStreamContext, ledger: Projector) -> None:
    events = scenario(2500)  # ~10k events
    publishing = asyncio.create_task(publish_many(js, events))
    client = LedgerClient(nc, RUN)
    seen_progress: list[int] = []
    answered = 0
    while not publishing.done() or ledger.last_seq < len(events):
        ctx = await client.context("a0", recent_limit=5)
        n = (await client.sql("SELECT count(*) FROM events")).rows[0][0]
        seen_progress.append(n)
        answered += 1 + (ctx is not None)
        if ledger.last_seq >= len(events) and publishing.done():
            break
    acks = await publishing
    await ledger.wait_for_seq(acks[-1].seq, timeout=30)
    assert answered >= 4
    # answers came from consistent snapshots taken while the projector was still behind
    assert seen_progress == sorted(seen_progress)
    assert any(0 < n < len(events) for n in seen_progress)
    assert (await client.sql("SELECT count(*) FROM events")).rows == [[len(events)]]
