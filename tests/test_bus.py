"""The wire: schemas round-trip, dedup by event id, idempotent setup, the embedded server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

from bus import (
    EmbeddedServer,
    ServerStartError,
    StreamConfigConflict,
    StreamSpec,
    ensure_stream,
    publish,
    publish_many,
    subjects,
)
from bus import events as ev
from bus.client import ensure_consumer, work_consumer_config

SRC = "print('hello')\n"


def sample_events(run: str = "r1") -> list[ev.Event]:
    hw = ev.Hardware(hw_class="cpu", cpu_count=2, host="box")
    sha = hashlib.sha256(SRC.encode()).hexdigest()
    common: dict[str, Any] = {"run": run, "source": "test"}
    return [
        ev.HypothesisProposed(
            **common, hypothesis_id="h1", agent="a1", train_py=SRC, train_py_sha256=sha, hw_class="cpu",
            knobs={"DEPTH": 4, "LR": 0.01}, tags=["x"],
        ),
        ev.ExperimentClaimed(**common, hypothesis_id="h1", attempt=1, runner="r-1", hardware=hw, stream_seq=1),
        ev.ExperimentFinished(**common, hypothesis_id="h1", attempt=1, runner="r-1", status="ok", val_bpb=1.23),
        ev.HypothesisDecided(**common, hypothesis_id="h1", decision="keep", by="a1", sigma=0.01),
        ev.NoteWritten(**common, note_id="n1", agent="a1", title="t", body="**b**", refs=["h1"]),
        ev.AgentJoined(**common, agent="a1", provider="optuna", config={"k": 1}),
        ev.AgentLeft(**common, agent="a1", reason="done"),
        ev.RunnerJoined(
            **common, runner="r-1", hardware=hw, classes=["cpu", "any"],
            calibration=ev.Calibration(steps_per_second=3.5),
        ),
        ev.RunnerLeft(**common, runner="r-1"),
        ev.LlmUsage(**common, agent="a1", provider="anthropic", model="m", input_tokens=10, cost_usd=0.1),
        ev.ProposalRejected(**common, agent="a1", reason="does not compile"),
        ev.ProgramChanged(**common, program_md="# go deeper"),
        ev.HypothesisDemoted(**common, hypothesis_id="h1", by="a1", reason="audit", delta=-0.001, audit=["h2"]),
    ]  # fmt: skip


def test_every_event_type_is_sampled() -> None:
    assert {type(e).__name__ for e in sample_events()} == set(ev.EVENT_TYPES)


def test_round_trip_every_event_type_in_memory() -> None:
    for e in sample_events():
        assert ev.decode(ev.encode(e)) == e


async def test_round_trip_every_event_type_through_jetstream(js: JetStreamContext) -> None:
    sent = sample_events()
    for e in sent:
        ack = await publish(js, e)
        assert not ack.duplicate
    sub = await js.pull_subscribe(">", durable="check", stream=subjects.STREAM)
    msgs = await sub.fetch(len(sent), timeout=5)
    got = [ev.decode(m.data) for m in msgs]
    assert got == sent
    assert msgs[0].subject == "swarm.r1.work.cpu"
    assert {m.subject for m in msgs[1:]} <= {f"swarm.r1.evt.{k}" for k in subjects._KINDS.values()}


async def test_republished_event_id_is_dropped(js: JetStreamContext) -> None:
    e = sample_events()[4]
    first = await publish(js, e)
    again = await publish(js, e)
    assert again.duplicate and again.seq == first.seq
    info = await js.stream_info(subjects.STREAM)
    assert info.state.messages == 1


async def test_publish_many_acks_in_order_and_dedups(js: JetStreamContext) -> None:
    batch = [
        ev.NoteWritten(run="r1", source="t", note_id=f"n{i}", agent="a", title=str(i), body="")
        for i in range(500)
    ]
    acks = await publish_many(js, batch + batch[:50], window=128)
    assert [a.seq for a in acks[:500]] == list(range(1, 501))
    assert all(a.duplicate for a in acks[500:])
    assert (await js.stream_info(subjects.STREAM)).state.messages == 500


async def test_setup_is_idempotent(js: JetStreamContext) -> None:
    before = await js.stream_info(subjects.STREAM)
    await ensure_stream(js)
    await ensure_stream(js)
    after = await js.stream_info(subjects.STREAM)
    assert before.config == after.config
    cfg = work_consumer_config("r1", "cpu", ack_wait=30)
    await ensure_consumer(js, cfg)
    await ensure_consumer(js, cfg)
    with pytest.raises(StreamConfigConflict, match="ack_wait"):
        await ensure_consumer(js, work_consumer_config("r1", "cpu", ack_wait=99))


async def test_conflicting_stream_config_is_a_clear_error(js: JetStreamContext) -> None:
    with pytest.raises(StreamConfigConflict, match=r"num_replicas: have 1, need 3.*Nothing was changed"):
        await ensure_stream(js, StreamSpec(replicas=3))
    with pytest.raises(StreamConfigConflict, match="max_msg_size"):
        await ensure_stream(js, StreamSpec(max_msg_size=1234))
    info = await js.stream_info(subjects.STREAM)
    assert info.config.num_replicas == 1 and info.config.max_msg_size == 1 << 20


def test_unknown_fields_types_and_versions_are_refused() -> None:
    good = ev.to_builtins(sample_events()[4])
    enc = msgspec.msgpack.encode
    with pytest.raises(ev.EventDecodeError, match="unknown event type 'Nope'"):
        ev.decode(enc({**good, "type": "Nope"}))
    with pytest.raises(ev.EventDecodeError, match="unknown field"):
        ev.decode(enc({**good, "sneaky": 1}))
    with pytest.raises(ev.EventDecodeError, match="newer than this code"):
        ev.decode(enc({**good, "schema_version": 7}))
    with pytest.raises(ev.EventDecodeError, match="Expected `str`"):
        ev.decode(enc({**good, "title": 5}))
    with pytest.raises(ev.EventDecodeError, match="not a msgpack map"):
        ev.decode(b"\xc1garbage")
    with pytest.raises(ev.EventDecodeError, match="exceeds"):
        ev.decode(b"\x00" * (ev.MAX_EVENT_BYTES + 1))


def test_upcaster_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A v1 NoteWritten read by code whose current version is 2 (v2 renamed title -> heading, say)."""
    old = ev.to_builtins(sample_events()[4])
    monkeypatch.setitem(ev.SCHEMA_VERSIONS, "NoteWritten", 2)
    with pytest.raises(ev.EventDecodeError, match="no upcaster from schema_version 1 to 2"):
        ev.decode(msgspec.msgpack.encode(old))
    monkeypatch.setitem(ev._UPCASTERS, ("NoteWritten", 1), lambda d: {**d, "title": d["title"].upper() + "!"})
    got = ev.decode(msgspec.msgpack.encode(old))
    assert isinstance(got, ev.NoteWritten) and got.title == "T!" and got.schema_version == 2


def test_event_ids_are_time_ordered_and_unique() -> None:
    ids = [ev.new_event_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs(ev.event_id_time(ids[0]) - ev.event_id_time(ids[-1])) < 5


def test_subject_tokens_are_validated() -> None:
    with pytest.raises(ValueError, match=r"invalid run 'a\.b'"):
        subjects.work("a.b", "cpu")
    with pytest.raises(ValueError, match="hardware class"):
        subjects.work("r", "h 100")


def test_embedded_server_picks_a_port_and_restarts_on_it(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "s") as s:
        port = s.port
        assert port and s.url == f"nats://127.0.0.1:{port}"
        s.restart()
        assert s.port == port


def test_embedded_server_fatal_line_becomes_the_error(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "a") as a, pytest.raises(ServerStartError, match="address already in use"):
        EmbeddedServer(tmp_path / "b", port=a.port).start(timeout=10)
    with pytest.raises(ServerStartError, match=r"nats-server exited"):
        EmbeddedServer(tmp_path / "c", config="this is { not valid").start(timeout=10)
