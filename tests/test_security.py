"""Per-role bus users: the real nats-server refuses what a role does not own."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from bus import BusConfig, BusError, EmbeddedServer, PublishError, connect, publish, security, setup
from bus import events as ev
from bus.client import ensure_consumer, work_consumer_config


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, dict[str, str]]]:
    passwords = security.generate(tmp_path / "creds")
    server = EmbeddedServer(tmp_path / "js", config=(tmp_path / "creds" / "auth.conf").read_text()).start()
    try:
        yield server, passwords
    finally:
        server.stop()


def proposal() -> ev.HypothesisProposed:
    src = "X = 1\n"
    return ev.HypothesisProposed(
        run="r", source="a", hypothesis_id="h", agent="a", train_py=src,
        train_py_sha256=hashlib.sha256(src.encode()).hexdigest(), hw_class="cpu",
    )  # fmt: skip


def finished() -> ev.ExperimentFinished:
    return ev.ExperimentFinished(
        run="r", source="x", hypothesis_id="h", attempt=1, runner="x", status="ok", val_bpb=0.1
    )


async def as_role(server: EmbeddedServer, passwords: dict[str, str], role: str) -> nats.NATS:
    cfg = BusConfig(servers=(server.url,), user=role, password=passwords[role])
    return await connect(cfg, name=role, max_reconnect_attempts=0)


def test_generate_is_private_and_stable(tmp_path: Path) -> None:
    first = security.generate(tmp_path / "c")
    assert security.generate(tmp_path / "c") == first
    for f in (tmp_path / "c").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert set(first) == set(security.ROLES) and len(set(first.values())) == 4


async def test_roles_are_enforced_by_the_server(secured: tuple[EmbeddedServer, dict[str, str]]) -> None:
    server, passwords = secured
    admin = await as_role(server, passwords, "admin")
    js_admin = admin.jetstream()
    await setup(js_admin)
    await ensure_consumer(js_admin, work_consumer_config("r", "cpu"))

    agent = await as_role(server, passwords, "agent")
    runner = await as_role(server, passwords, "runner")
    try:
        # an agent may propose, but not claim or finish
        ack = await publish(agent.jetstream(), proposal(), timeout=2, retries=0)
        assert ack.seq == 1
        with pytest.raises(PublishError):
            await publish(agent.jetstream(), finished(), timeout=1, retries=0)
        # a runner may finish, but not propose
        await publish(runner.jetstream(), finished(), timeout=2, retries=0)
        with pytest.raises(PublishError):
            await publish(runner.jetstream(), proposal(), timeout=1, retries=0)
        # a runner may pull work; an agent may not
        sub = await runner.jetstream().pull_subscribe_bind("work_r_cpu", stream="SWARM_EVENTS")
        (msg,) = await sub.fetch(1, timeout=2)
        got = ev.decode(msg.data)
        assert isinstance(got, ev.HypothesisProposed) and got.hypothesis_id == "h"
        agent_sub = await agent.jetstream().pull_subscribe_bind("work_r_cpu", stream="SWARM_EVENTS")
        with pytest.raises(nats.errors.TimeoutError):
            await agent_sub.fetch(1, timeout=1)
        info = await js_admin.stream_info("SWARM_EVENTS")
        assert info.state.messages == 2  # the refused publishes left nothing
    finally:
        for c in (agent, runner, admin):
            await c.close()


async def test_wrong_password_is_refused(secured: tuple[EmbeddedServer, dict[str, str]]) -> None:
    server, _ = secured
    with pytest.raises(BusError, match="refused the login as agent"):
        await connect(
            BusConfig(servers=(server.url,), user="agent", password="wrong"), max_reconnect_attempts=0
        )


async def test_a_result_smuggled_onto_the_notes_subject_counts_nowhere(
    secured: tuple[EmbeddedServer, dict[str, str]], tmp_path: Path
) -> None:
    """An agent may publish notes, not results. It puts an ExperimentFinished payload on the notes subject:
    the server accepts the publish (it is the agent's subject), but neither the ledger nor any agent's view
    of the run takes it as a result."""
    import asyncio

    from agents.tail import RunTail
    from bus import subjects
    from ledger.projection import RawMessage, apply, project
    from ledger.schema import connect_db

    server, passwords = secured
    admin = await as_role(server, passwords, "admin")
    await setup(admin.jetstream())
    agent = await as_role(server, passwords, "agent")
    try:
        js = agent.jetstream()
        fake = finished()
        notes_subject = subjects.event_subject(ev.NoteWritten(run="r", source="a", note_id="n", agent="a", title="t",
                                                              body="b"))
        with pytest.raises(PublishError):  # its own subject for results is closed to the agent role
            await publish(js, fake)
        ack = await js.publish(notes_subject, ev.encode(fake), stream="SWARM_EVENTS")  # ...but not the notes
        assert ack.seq > 0
        tail = RunTail(admin.jetstream(), "r")
        await tail.start()
        await asyncio.wait_for(tail.caught_up.wait(), 10)
        await tail.stop()
        assert tail.finished == {}  # the agents' view: no result
        raw = await admin.jetstream().get_msg("SWARM_EVENTS", ack.seq)
        con = connect_db(str(tmp_path / "l.duckdb"))
        apply(con, project([RawMessage(ack.seq, raw.subject or notes_subject, raw.data or b"", 0.0)]), consumer="t")
        assert con.execute("SELECT count(*) FROM results").fetchone() == (0,)
        [(reason,)] = con.execute("SELECT reason FROM rejects").fetchall()
        assert "belongs on 'swarm.r.evt.finished'" in reason
        con.close()
    finally:
        await agent.close()
        await admin.close()
