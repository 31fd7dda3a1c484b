"""The read API's requests for live views (timeline, overview, hypothesis, compare) against a real
nats-server and a real ledger process loop, through the one client in bus/readapi.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ledger_fixtures import BASE_TRAIN_PY, build_ledger, diff, sha256, simulate_run
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import events as ev
from bus import publish, publish_many
from bus.readapi import LedgerClient, LedgerError
from ledger.analysis import compare, open_ledger
from ledger.service import run_ledger

RUN = "run-a"


@contextlib.asynccontextmanager
async def ledger(nc: NATS, db: Path) -> AsyncIterator[Any]:
    stop, ready = asyncio.Event(), asyncio.Event()
    projectors: list[Any] = []
    task = asyncio.create_task(run_ledger(nc, db, stop=stop, ready=ready, projector_out=projectors))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield projectors[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def send(js: JetStreamContext, projector: Any, *events: ev.Event) -> None:
    acks = [await publish(js, e) for e in events]
    await projector.wait_for_seq(acks[-1].seq)


def proposal(
    hid: str, src: str, parent: str = ev.BASELINE, parent_src: str = BASE_TRAIN_PY, **kw: Any
) -> ev.HypothesisProposed:
    return ev.HypothesisProposed(run=RUN, source="a", hypothesis_id=hid, agent="a", train_py=src,
                                 train_py_sha256=sha256(src), parent=parent, diff=diff(parent_src, src),
                                 hw_class="cpu", **kw)  # fmt: skip


@pytest.fixture
async def swarm(nc: NATS, js: JetStreamContext, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    fx = simulate_run(RUN, seed=3, per_agent=4)
    async with ledger(nc, tmp_path / "ledger.duckdb") as projector:
        acks = await publish_many(js, fx.events)
        await projector.wait_for_seq(acks[-1].seq)
        yield projector, fx


async def test_timeline_is_incremental(nc: NATS, js: JetStreamContext, swarm: tuple[Any, Any]) -> None:
    projector, fx = swarm
    client = LedgerClient(nc, RUN)
    hyps = {e.hypothesis_id for e in fx.of(ev.HypothesisProposed)}
    first = await client.timeline()
    assert {r.hypothesis_id for r in first.items} == hyps and not first.more
    assert first.last_seq == max(r.seq for r in first.items) and first.run_seq >= first.last_seq
    done = [r for r in first.items if r.status is not None]
    assert len(done) == len(hyps) and all(r.gpu_seconds > 0 for r in done)

    quiet = await client.timeline(after_seq=first.last_seq)
    assert quiet.items == [] and quiet.last_seq == first.last_seq

    # a later decision changes one hypothesis: only that one comes back, with its new decision
    target = done[0].hypothesis_id
    await send(
        js,
        projector,
        ev.HypothesisDecided(run=RUN, source="a", hypothesis_id=target, decision="keep", by="a"),
    )
    step = await client.timeline(after_seq=first.last_seq)
    assert [r.hypothesis_id for r in step.items] == [target] and step.items[0].decision == "keep"

    # paging: limit 5 walks the whole run in order, no hypothesis twice
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        page = await client.timeline(after_seq=cursor, limit=5)
        seen += [r.hypothesis_id for r in page.items]
        cursor, pages = page.last_seq, pages + 1
        if not page.more:
            break
    assert sorted(seen) == sorted(hyps) and pages >= len(hyps) // 5


async def test_overview_runners_queue_and_counts(
    nc: NATS, js: JetStreamContext, swarm: tuple[Any, Any]
) -> None:
    projector, fx = swarm
    client = LedgerClient(nc, RUN)
    before = await client.overview()
    n = len(fx.of(ev.HypothesisProposed))
    assert before.counts["proposed"] == n and before.counts["finished"] == n and before.counts["queued"] == 0
    assert {r.runner for r in before.runners} == {"runner-cpu-1", "runner-h100-1"}
    assert all(not r.online and r.left_reason == "stopped" for r in before.runners)
    h100 = next(r for r in before.runners if r.runner == "runner-h100-1")
    assert h100.gpu_name == "H100 80GB" and h100.results > 0 and h100.training_seconds > 0
    assert {b.agent for b in before.leaderboard} >= {"optuna", "random", "claude-some-model"}

    hw = ev.Hardware(hw_class="cpu")
    src = BASE_TRAIN_PY.replace("LR = 0.001", "LR = 0.002")
    await send(js, projector,
               ev.RunnerJoined(run=RUN, source="w9", runner="w9", hardware=hw, executor="simulated"),
               proposal("q-1", src, description="queued and claimed"), proposal("q-2", src + "\n", description="waiting"),
               ev.ExperimentClaimed(run=RUN, source="w9", hypothesis_id="q-1", attempt=1, runner="w9", hardware=hw))  # fmt: skip
    o = await client.overview()
    w9 = next(r for r in o.runners if r.runner == "w9")
    assert (
        w9.online
        and w9.current_hypothesis == "q-1"
        and w9.current_attempt == 1
        and w9.executor == "simulated"
    )
    assert [(q.hypothesis_id, q.runner) for q in o.queue] == [("q-1", "w9"), ("q-2", "")]
    assert o.counts["queued"] == 2 and o.run_seq > before.run_seq
    await send(js, projector, ev.ExperimentFinished(run=RUN, source="w9", hypothesis_id="q-1", attempt=1,
                                                    runner="w9", status="ok", val_bpb=3.3, total_seconds=5.0))  # fmt: skip
    o = await client.overview()
    assert next(r for r in o.runners if r.runner == "w9").current_hypothesis == ""
    assert [q.hypothesis_id for q in o.queue] == ["q-2"]


async def test_hypothesis_in_full(nc: NATS, js: JetStreamContext, swarm: tuple[Any, Any]) -> None:
    projector, _ = swarm
    client = LedgerClient(nc, RUN)
    a = BASE_TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")
    b = a.replace("WIDTH = 128", "WIDTH = 256")
    hw = ev.Hardware(hw_class="cpu")
    await send(js, projector,
               proposal("p-1", a, description="deeper", rationale="depth helps"),
               # the child's proposed diff is wrong on purpose: the page must show the diff against the parent
               ev.HypothesisProposed(run=RUN, source="a", hypothesis_id="p-2", agent="a", train_py=b,
                                     train_py_sha256=sha256(b), parent="p-1", diff="bogus", hw_class="cpu"),
               ev.ExperimentClaimed(run=RUN, source="w", hypothesis_id="p-1", attempt=1, runner="w", hardware=hw),
               ev.ExperimentFinished(run=RUN, source="w", hypothesis_id="p-1", attempt=1, runner="w", status="crash",
                                     reason="train.py exited with 1", log_tail="Traceback ... boom", log_ref="r/p-1/1.log"),
               ev.ExperimentClaimed(run=RUN, source="w", hypothesis_id="p-1", attempt=2, runner="w", hardware=hw),
               ev.HypothesisDecided(run=RUN, source="a", hypothesis_id="p-1", decision="discard", by="a",
                                    reason="crashed"))  # fmt: skip
    h = await client.hypothesis("p-1")
    assert h.item is not None and h.item.status == "crash" and h.item.reason == "train.py exited with 1"
    assert h.rationale == "depth helps" and h.train_py == a and h.children == ["p-2"]
    assert h.diff_base == ev.BASELINE and "-DEPTH = 4" in h.diff and "+DEPTH = 6" in h.diff
    assert [(x.kind, x.attempt) for x in h.attempts] == [("claim", 1), ("finish", 1), ("claim", 2)]
    fin = h.attempts[1]
    assert (
        fin.log_tail == "Traceback ... boom" and fin.log_ref == "r/p-1/1.log" and fin.disposition == "result"
    )
    assert [(d.decision, d.reason) for d in h.decisions] == [("discard", "crashed")]

    child = await client.hypothesis("p-2")
    assert (
        child.diff_base == "p-1"
        and "+WIDTH = 256" in child.diff
        and "DEPTH" not in child.diff.replace(" DEPTH = 6", "")
    )
    assert (await client.hypothesis("nope")).item is None


async def test_compare_over_the_bus_equals_swarm_compare(
    nc: NATS, swarm: tuple[Any, Any], tmp_path: Path
) -> None:
    _, fx = swarm
    client = LedgerClient(nc, RUN)
    got = await client.compare()
    build_ledger(tmp_path / "same.duckdb", fx.events)  # the same events, projected without the bus
    con = open_ledger(tmp_path / "same.duckdb")
    try:
        want = compare(con, runs=[RUN]).to_dict()
    finally:
        con.close()
    assert got == want and {g["name"] for g in got["groups"]} == {"optuna", "random", "claude-some-model"}
    by_model = await client.compare(by="model")
    assert {g["name"] for g in by_model["groups"]} == {"optuna", "random", "some-model"}


async def test_no_ledger_and_refused_requests(nc: NATS, js: JetStreamContext, tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        await LedgerClient(nc, RUN, timeout=0.5).overview()
    async with ledger(nc, tmp_path / "l.duckdb"):
        with pytest.raises(LedgerError, match="by"):
            await LedgerClient(nc, RUN).call(ev.CompareRequest(run=RUN, by="nobody"), ev.CompareReply)  # type: ignore[arg-type]


async def test_timeline_replies_stay_small(
    nc: NATS, js: JetStreamContext, swarm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long texts are clipped in the timeline (whole in the hypothesis request), and a reply stops at its
    byte budget with `more`, so it always fits in one NATS message."""
    from ledger import watch

    projector, fx = swarm
    client = LedgerClient(nc, RUN)
    long = "x" * 5000
    await send(js, projector, proposal("long-1", BASE_TRAIN_PY + "\n# long\n", description=long))
    item = next(r for r in (await client.timeline()).items if r.hypothesis_id == "long-1")
    assert len(item.description) == watch.TEXT_CLIP and item.description.endswith("…")
    whole = await client.hypothesis("long-1")
    assert whole.item is not None and whole.item.description == long

    monkeypatch.setattr(watch, "TIMELINE_REPLY_BYTES", 3000)  # the ledger runs in this process
    seen: list[str] = []
    cursor, pages = 0, 0
    for _ in range(1000):
        page = await client.timeline(after_seq=cursor, limit=10_000)
        assert page.items and len(ev.encode_msg(page)) < 3000 + 2000
        seen += [r.hypothesis_id for r in page.items]
        cursor, pages = page.last_seq, pages + 1
        if not page.more:
            break
    n = len(fx.of(ev.HypothesisProposed)) + 1
    assert sorted(seen) == sorted({*seen}) and len(seen) == n and pages > 3
