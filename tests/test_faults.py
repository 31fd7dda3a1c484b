"""Fault suite (``pytest -m faults``): kill -9 of runners, of nats-server, of the projector and of an
agent, and a paused (SIGSTOP) server. Bounded and loopback only: every loop has a count and a deadline,
state is polled with a deadline, never waited for with a sleep. Each test prints its figures."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus import EmbeddedServer, connect, publish, publish_many, subjects
from bus.errors import PublishError
from bus.events import (
    AgentJoined,
    ExperimentClaimed,
    ExperimentFinished,
    Hardware,
    HypothesisProposed,
    NoteWritten,
    RunnerJoined,
)
from ledger.projector import Projector
from ledger.schema import connect_db
from ledger.service import run_ledger
from runner.daemon import Runner
from tests.fault_helpers import (
    REPO,
    dispositions,
    dump,
    fresh_replay,
    kill9,
    poll,
    project,
    raw_stream,
    spawn,
    spawn_runner,
    stream_event_ids,
    stream_events,
    tail,
)
from tests.support.bus import RUN, propose
from tests.support.sim import sim_config
from tests.test_ledger import scenario

pytestmark = pytest.mark.faults

SOURCE = "X = 1\ndef build_model(c): ...\n"


def figures(name: str, **kw: object) -> None:
    print(f"\n[faults] {name}: " + ", ".join(f"{k}={v}" for k, v in kw.items()))


async def result_counts(js: JetStreamContext, tmp: Path, run: str = RUN) -> tuple[dict[str, list[str]], int]:
    """Project the stream into a fresh ledger and return (dispositions per hypothesis, events projected)."""
    db = tmp / f"check-{time.monotonic_ns()}.duckdb"
    con = connect_db(str(db))
    try:
        p = await project(js, con, consumer=f"check{time.monotonic_ns()}")
        return dispositions(con, run), p.events_projected
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# 1. runners killed -9 at random points of experiments


async def test_twenty_runner_kills_leave_exactly_one_result_each(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    rng = random.Random(7)
    n_hyp, kills_wanted, width = 30, 20, 3
    hids = [(await propose(js, SOURCE + f"# {i}\n", budget=200.0, budget_unit="seconds")).hypothesis_id
            for i in range(n_hyp)]
    # 2 s of simulated training each (budget 200 s at 0.01), a 2 s lease, generous redelivery
    args = ("--budget", "200", "--time-scale", "0.01", "--ack-wait", "2", "--max-deliver", "40")
    spawned = 0

    def start() -> tuple[str, subprocess.Popen[bytes]]:
        nonlocal spawned
        spawned += 1
        rid = f"k{spawned}"
        return rid, spawn_runner(tmp_path, nats_server.url, RUN, rid, *args)

    live = [start() for _ in range(width)]
    kills = mid_experiment = 0
    deadline = time.monotonic() + 150
    try:
        while kills < kills_wanted and time.monotonic() < deadline:
            i = rng.randrange(len(live))
            rid, proc = live[i]

            async def claimed(rid: str = rid) -> bool:
                evs = await stream_events(js)
                return any(isinstance(e, ExperimentClaimed) and e.runner == rid for e in evs)

            try:
                await poll(f"a claim by {rid}", claimed, timeout=10, every=0.1)
                mid_experiment += 1
                # a random point of the (2 s) experiment, or of the next one
                await asyncio.sleep(rng.uniform(0.0, 2.5))  # the fault's timing, not a wait for state
            except AssertionError:
                pass  # no work left for it: killed idle
            kill9(proc)
            kills += 1
            live[i] = start()
        assert kills == kills_wanted, f"only {kills} kills before the deadline"

        async def all_done() -> tuple[dict[str, list[str]], int] | None:
            got = await result_counts(js, tmp_path)
            return got if all("result" in got[0].get(h, []) for h in hids) else None

        per_hyp, projected = await poll("a result for every hypothesis", all_done, timeout=120, every=1.0)
    finally:
        for _rid, proc in live:
            kill9(proc)
    msgs = await raw_stream(js)
    evs = await stream_events(js)
    finishes = [e for e in evs if isinstance(e, ExperimentFinished)]
    results = sum(d.count("result") for d in per_hyp.values())
    dups = sum(d.count("duplicate") for d in per_hyp.values())
    lates = sum(d.count("late") for d in per_hyp.values())
    figures(
        "runner kill -9", hypotheses=n_hyp, kills=kills, kills_mid_experiment=mid_experiment,
        runners_spawned=spawned, events_in_stream=len(msgs), events_projected=projected,
        claims=sum(isinstance(e, ExperimentClaimed) for e in evs), finishes=len(finishes),
        results=results, duplicates=dups, lates=lates,
        unclaimed=sum(d.count("unclaimed") for d in per_hyp.values()),
    )  # fmt: skip
    assert sorted(per_hyp) == sorted(hids)
    for h in hids:
        assert per_hyp[h].count("result") == 1, (h, per_hyp[h])
    assert results == n_hyp
    ok = [e for e in finishes if not e.late and e.status == "ok"]
    assert len({e.hypothesis_id for e in ok}) == n_hyp


# --------------------------------------------------------------------------------------------------
# 2. nats-server kill -9 and restart under a steady publish load


async def test_server_kill9_under_publish_load_loses_no_acked_event(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    total, kill_after = 1500, 400
    acked: list[str] = []
    failed = 0
    ledger_nc = await connect(nats_server.url, name="projector")
    con = connect_db(str(tmp_path / "ledger.duckdb"))
    projector = Projector(ledger_nc.jetstream(), con, batch_size=200, fetch_timeout=0.2)
    stop = asyncio.Event()
    ptask = asyncio.create_task(projector.run(stop))

    async def publisher() -> None:
        nonlocal failed
        deadline = time.monotonic() + 90
        i = 0
        while len(acked) < total and time.monotonic() < deadline:
            i += 1
            e = NoteWritten(run=RUN, source="pub", note_id=f"n{i}", agent="pub", title=f"{i}", body="x" * 200)
            try:
                await publish(js, e, timeout=0.5, retries=1)
            except (PublishError, nats.errors.Error, TimeoutError):
                failed += 1  # not acked: may or may not be stored; either is allowed
                await asyncio.sleep(0.05)  # back off while the server is down
                continue
            acked.append(e.event_id)

    pub = asyncio.create_task(publisher())
    try:
        await poll("acks before the kill", lambda: _true(len(acked) >= kill_after), timeout=60)
        acked_at_kill = len(acked)
        await asyncio.to_thread(nats_server.kill)
        await asyncio.to_thread(nats_server.start)  # same port, same store dir
        await asyncio.wait_for(pub, 120)
        assert len(acked) == total, f"only {len(acked)} acked before the publisher's deadline"
        msgs = await raw_stream(js)
        in_stream = set(stream_event_ids(msgs))
        missing = [e for e in acked if e not in in_stream]
        await poll(
            "the projector catches up",
            lambda: _true(projector.last_seq >= (msgs[-1][0] if msgs else 0)),
            timeout=60,
        )
        assert not ptask.done(), ptask
    finally:
        stop.set()
        await asyncio.wait_for(ptask, 30)
        await projector.close()
        await ledger_nc.close()
    projected = [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY seq").fetchall()]
    tables = dump(con)
    con.close()
    figures(
        "server kill -9 under load", publishes=len(acked) + failed, acked=len(acked), acked_at_kill=acked_at_kill,
        not_acked=failed, in_stream=len(msgs), acked_missing=len(missing), projected=len(projected),
        projector_recreated=projector.recreated,
    )  # fmt: skip
    assert missing == []
    assert projected == stream_event_ids(msgs)
    assert tables == await fresh_replay(js, tmp_path / "replay.duckdb")


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------------------------------
# 3. the projector (`swarm ledger`) killed -9 mid-batch


async def test_projector_killed_mid_batch_resumes_to_the_stream(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    db = tmp_path / "ledger.duckdb"
    cmd = [sys.executable, "-m", "swarmcli", "ledger", "--nats", nats_server.url, "--db", str(db)]
    published = kills = mid_batch = 0
    for cycle in range(3):
        published += len(await publish_many(js, scenario(1500, run=f"r{cycle}")))
        proc = spawn(cmd, tmp_path / "ledger.log")
        try:

            async def batch_in_hand() -> bool:
                try:
                    info = await js.consumer_info(subjects.STREAM, subjects.LEDGER_CONSUMER)
                except nats.js.errors.NotFoundError:
                    return False
                delivered = info.delivered.stream_seq or 0
                floor = info.ack_floor.stream_seq or 0
                return delivered > floor and delivered > 0

            try:
                await poll("a batch delivered and not yet acked", batch_in_hand, timeout=30, every=0.005)
                mid_batch += 1
            except AssertionError:
                assert proc.poll() is None, tail(tmp_path / "ledger.log")
        finally:
            kill9(proc)
            kills += 1
    # a last run to the end of the stream, then a clean stop
    last = (await js.stream_info(subjects.STREAM)).state.last_seq
    proc = spawn(cmd, tmp_path / "ledger.log")
    try:

        async def caught_up() -> bool:
            try:
                info = await js.consumer_info(subjects.STREAM, subjects.LEDGER_CONSUMER)
            except nats.js.errors.NotFoundError:  # the restart recreates a consumer that is ahead of the db
                return False
            return (info.ack_floor.stream_seq or 0) >= last

        await poll("the restarted ledger catches up", caught_up, timeout=90, every=0.1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, tail(tmp_path / "ledger.log")
    finally:
        kill9(proc)
    msgs = await raw_stream(js)
    con = connect_db(str(db))
    ids = [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY seq").fetchall()]
    tables = dump(con)
    con.close()
    fresh = await fresh_replay(js, tmp_path / "replay.duckdb")
    figures(
        "projector kill -9", published=published, kills=kills, kills_mid_batch=mid_batch, stream=len(msgs),
        projected=len(ids), results=len(tables["results"]),
    )  # fmt: skip
    assert ids == stream_event_ids(msgs)
    assert tables == fresh


# --------------------------------------------------------------------------------------------------
# 4. an agent killed mid-wave


async def test_killed_agent_in_flight_hypotheses_complete_and_stay_attributed(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    run = "ag"
    # six runners of class cpu look online to the agent, so its first wave holds several items; none
    # takes work, so the wave is in flight when the agent dies
    for i in range(6):
        rid = f"idle{i}"
        await publish(js, RunnerJoined(run=run, source=rid, runner=rid, hardware=Hardware(hw_class="cpu")))
    ledger_nc = await connect(nats_server.url, name="ledger")
    stop, ready = asyncio.Event(), asyncio.Event()
    ltask = asyncio.create_task(run_ledger(ledger_nc, tmp_path / "ledger.duckdb", stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        cmd = [
            sys.executable, "-m", "swarmcli", "agent", "--nats", nats_server.url, "--run", run, "--spec",
            "random", "--max-experiments", "30", "--hw-class", "cpu", "--train-py", str(REPO / "train.py"),
        ]  # fmt: skip
        agent = spawn(cmd, tmp_path / "agent.log")
        try:

            async def own_wave() -> bool:
                hs = [
                    e for e in await stream_events(js) if isinstance(e, HypothesisProposed) and e.run == run
                ]
                return sum(h.agent != "baseline" for h in hs) >= 2

            await poll("the agent's first wave", own_wave, timeout=60, every=0.1)
        finally:
            kill9(agent)
        assert agent.returncode == -signal.SIGKILL, tail(tmp_path / "agent.log")
        before = [e for e in await stream_events(js) if isinstance(e, HypothesisProposed) and e.run == run]
        cfg = sim_config(tmp_path, nats_server.url, run=run, runner_id="after", executor="simulated",
                     max_budget=10.0, time_scale=0.01)  # fmt: skip
        await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 120)
        rows = await _experiments(nc, run, [h.hypothesis_id for h in before])
    finally:
        stop.set()
        await asyncio.wait_for(ltask, 30)
        await ledger_nc.close()
    evs = await stream_events(js)
    joined = {e.agent for e in evs if isinstance(e, AgentJoined) and e.run == run}
    own = [h for h in before if h.agent != "baseline"]  # baselines are the swarm's, not the agent's
    finished = {e.hypothesis_id for e in evs if isinstance(e, ExperimentFinished) and e.run == run}
    figures("agent kill -9", proposed_before_kill=len(before), by_the_agent=len(own),
            baselines=len(before) - len(own), finished=len(finished), ledger_rows=len(rows))  # fmt: skip
    assert len(joined) == 1 and {h.agent for h in own} == joined
    assert {h.hypothesis_id for h in before} <= finished
    for h in before:
        assert rows[h.hypothesis_id] == (h.agent, "ok"), (h.hypothesis_id, rows[h.hypothesis_id])


async def _experiments(nc: NATS, run: str, hids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Ask the running ledger (read API) for each hypothesis, polling until it has a finished row."""
    from bus.events import ExperimentReply
    from ledger.api import LedgerClient

    client = LedgerClient(nc, run, timeout=5)
    out: dict[str, tuple[str, str | None]] = {}
    for hid in hids:

        async def row(hid: str = hid) -> ExperimentReply | None:
            reply = await client.experiment(hid)
            return reply if reply.item is not None and reply.item.status else None

        reply = await poll(f"ledger row of {hid}", row, timeout=30, every=0.1)
        assert reply.item is not None
        out[hid] = (reply.item.agent, reply.item.status)
    return out


# --------------------------------------------------------------------------------------------------
# 5. the server paused (SIGSTOP) for longer than ack_wait while runners hold items


async def test_setup_requests_wait_out_a_server_pause(nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext) -> None:
    """A process connected just before the server stops (a runner, an agent, the ledger starting) asks
    for its stream and consumer while no answer can come; it must wait for the server, not die (a runner
    died so in CI: ``nats: timeout`` from ``ensure_stream``)."""
    from bus.client import ensure_consumer, ensure_stream, work_consumer_config

    nats_server.pause()
    try:
        setup = asyncio.ensure_future(ensure_stream(js))
        consumer = asyncio.ensure_future(ensure_consumer(js, work_consumer_config(RUN, "cpu")))
        await asyncio.sleep(7.0)  # past the 5 s request timeout: one try has failed by now
        assert not setup.done() and not consumer.done()
    finally:
        nats_server.resume()
    info = await asyncio.wait_for(setup, 60)
    assert info.config.name == subjects.STREAM
    assert (await asyncio.wait_for(consumer, 60)).name == subjects.work_consumer(RUN, "cpu")


async def started_through_a_pause(nats_server: EmbeddedServer, starting: Awaitable[object]) -> None:
    """Run ``starting`` (a process's start-up) while the server is stopped for 7 s, past the 5 s request
    timeout: it must still be waiting when the server resumes, and then finish."""
    nats_server.pause()
    try:
        start = asyncio.ensure_future(starting)
        await asyncio.sleep(7.0)  # one try has failed by now
        assert not start.done(), start.exception()
    finally:
        nats_server.resume()
    await asyncio.wait_for(start, 60)


async def test_the_ledger_starting_during_a_server_pause_waits_for_it(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    """The projector binds its durable consumer while the server is stopped (the ledger restarted during an
    overload): it must wait for the server and then project, not exit 1 on ``nats: timeout`` (the ledger
    died so in CI, in the 256-runner drill, from its start-up ``consumer_info``)."""
    from bus.client import ensure_stream

    await ensure_stream(js)
    con = connect_db(str(tmp_path / "ledger.duckdb"))
    projector = Projector(js, con)
    await started_through_a_pause(nats_server, projector.start())
    hid = (await propose(js, SOURCE)).hypothesis_id
    stop = asyncio.Event()
    running = asyncio.ensure_future(projector.run(stop))
    try:
        await projector.wait_for_stream(timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await projector.close()
    assert con.execute("select count(*) from hypotheses where hypothesis_id = ?", [hid]).fetchone() == (1,)
    con.close()


async def test_an_agent_starting_during_a_server_pause_waits_for_it(js: JetStreamContext, nats_server: EmbeddedServer) -> None:
    """An agent reads its run's backlog as it starts (agents.tail.RunTail.start: the stream's size, then an
    ordered consumer): started while the server is stopped, it must wait for the server and then read what
    was there, not die on ``nats: timeout``."""
    from agents.tail import RunTail
    from bus.client import ensure_stream

    await ensure_stream(js)
    hid = (await propose(js, SOURCE)).hypothesis_id
    tail = RunTail(js, RUN)
    await started_through_a_pause(nats_server, tail.start())
    try:
        await asyncio.wait_for(tail.caught_up.wait(), 30)
        assert hid in tail.proposals
    finally:
        await tail.stop()


async def test_server_paused_past_ack_wait_keeps_one_result_per_hypothesis(
    tmp_path: Path, nats_server: EmbeddedServer, nc: NATS, js: JetStreamContext
) -> None:
    args = ("--budget", "150", "--time-scale", "0.01", "--ack-wait", "2", "--max-deliver", "20")
    hids = [(await propose(js, SOURCE + f"# {i}\n", budget=150.0, budget_unit="seconds")).hypothesis_id
            for i in range(4)]
    runners = [spawn_runner(tmp_path, nats_server.url, RUN, f"p{i}", *args) for i in range(2)]
    pause_s = 5.0  # > 2 s ack_wait
    try:

        async def holding() -> bool:
            return any(isinstance(e, ExperimentClaimed) for e in await stream_events(js))

        await poll("a runner holds an item", holding, timeout=60, every=0.05)
        nats_server.pause()
        t0 = time.monotonic()
        try:
            # a runner that starts while the server is away must wait for it, not die on its setup requests
            runners.append(spawn_runner(tmp_path, nats_server.url, RUN, "p2", *args))
            await asyncio.to_thread(time.sleep, pause_s)  # the fault itself: the server stays stopped
        finally:
            nats_server.resume()
        paused_for = time.monotonic() - t0
        # after the resume, more work: the same runner processes must take it
        hids += [(await propose(js, SOURCE + f"# after {i}\n")).hypothesis_id for i in range(4)]

        async def all_done() -> tuple[dict[str, list[str]], int] | None:
            got = await result_counts(js, tmp_path)
            return got if all("result" in got[0].get(h, []) for h in hids) else None

        per_hyp, projected = await poll("a result for every hypothesis", all_done, timeout=90, every=1.0)
        alive = [r.poll() is None for r in runners]
    finally:
        for r in runners:
            kill9(r)
    evs = await stream_events(js)
    finishes = [e for e in evs if isinstance(e, ExperimentFinished)]
    figures(
        "server SIGSTOP", paused_s=round(paused_for, 1), hypotheses=len(hids), events=len(evs),
        projected=projected, claims=sum(isinstance(e, ExperimentClaimed) for e in evs), finishes=len(finishes),
        results=sum(d.count("result") for d in per_hyp.values()),
        duplicates=sum(d.count("duplicate") for d in per_hyp.values()),
        lates=sum(d.count("late") for d in per_hyp.values()), runner_published_late=sum(e.late for e in finishes),
    )  # fmt: skip
    assert alive == [True, True, True], [tail(tmp_path / f"p{i}.log") for i in range(3)]
    assert any(isinstance(e, RunnerJoined) and e.runner == "p2" for e in evs), tail(tmp_path / "p2.log")
    for h in hids:
        assert per_hyp[h].count("result") == 1, (h, per_hyp[h])
        assert set(per_hyp[h]) <= {"result", "late", "duplicate"}, per_hyp[h]
    after = {e.runner for e in finishes if e.hypothesis_id in hids[4:]}
    assert after <= {"p0", "p1", "p2"} and after
