"""The ledger's fast path: raw-frame fetching on a shared connection, pull requests kept in flight under a
byte cap, replay's bulk mode and its recovery from lost messages, the pipelined projector, the GC pause."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as jsapi
from test_bus import sample_events
from test_ledger import scenario

from bus import events as ev
from bus import publish_many, subjects
from ledger.fetch import FrameParser, PullFeed, install
from ledger.gcpause import gc_paused
from ledger.projection import RawMessage, apply, project, project_columns
from ledger.projector import Projector
from ledger.replay import replay_stream
from ledger.schema import DATA_TABLES, DERIVED_TABLES, connect_db

RUN = "r"


def dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    """Every data table in stream order and every derived table (``experiment_state``) sorted."""
    out: dict[str, list[Any]] = {t: con.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall() for t in DATA_TABLES}
    for t in DERIVED_TABLES:
        out[t] = sorted(repr(r) for r in con.execute(f"SELECT * FROM {t}").fetchall())
    out["experiments"] = sorted(repr(r) for r in con.execute("SELECT * FROM experiments").fetchall())
    return out


def odd_stream() -> list[ev.Event]:
    """A live-like scenario, a second run, and hypotheses whose claims, finishes and decisions come before
    (or without) their proposal: the orders that send the projector's incremental path to SQL."""
    c: dict[str, Any] = {"run": RUN, "source": "t"}
    hw = ev.Hardware(hw_class="cpu", cpu_count=2)
    out: list[ev.Event] = list(scenario(150))
    for i in range(12):
        hid = f"odd{i}"
        out.append(ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=1, runner="w1", hardware=hw))
        out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner="w1", status="ok", val_bpb=1.0 + i))
        if i % 2:
            out.append(ev.HypothesisDecided(**c, hypothesis_id=hid, decision="keep", by="a"))
        out.append(ev.HypothesisProposed(**c, hypothesis_id=hid, agent="a", train_py="x", train_py_sha256="s",
                                         hw_class="cpu"))  # fmt: skip
    return out + scenario(30, run="r2") + sample_events(RUN)


async def live(js: JetStreamContext, con: duckdb.DuckDBPyConnection, **kw: Any) -> Projector:
    p = Projector(js, con, fetch_timeout=0.2, **kw)
    await p.run_until_idle()
    await p.close()
    return p


async def test_replay_bulk_mode_equals_the_live_projection(js: JetStreamContext, tmp_path: Path) -> None:
    """Replay writes results with SQL dispositions and derives experiment_state once at the end; its tables
    (experiment_state and the experiments view included) equal the live projector's, batch by batch."""
    await publish_many(js, odd_stream())
    await js.publish("swarm.r.evt.x", b"junk", stream=subjects.STREAM)
    await publish_many(js, scenario(20, run="r3"))
    live_db = connect_db(str(tmp_path / "live.duckdb"))
    await live(js, live_db, batch_size=37)
    want = dump(live_db)
    assert want["rejects"] and want["results"] and want["experiment_state"]
    for batch in (50, 100_000):
        replayed = connect_db(str(tmp_path / f"replay{batch}.duckdb"))
        await replay_stream(js, replayed, batch_size=batch)
        assert dump(replayed) == want, f"replay with batch_size {batch}"


async def test_replay_reads_again_after_losing_messages(
    js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer without acks never redelivers: messages lost on the way (a reconnect) are read again from
    the last sequence projected, never skipped."""
    await publish_many(js, scenario(120))
    clean = connect_db(str(tmp_path / "clean.duckdb"))
    await replay_stream(js, clean, batch_size=64)
    take = PullFeed._take
    dropped: list[int] = []

    def lossy(self: PullFeed, out: Any, max_msgs: int) -> None:
        # the first time frames are in hand, lose the first half of them, as a dropped connection would
        if not dropped and len(self.sink.frames) > 10:
            lost = self.sink.take(len(self.sink.frames) // 2)
            dropped.append(len(lost))
        take(self, out, max_msgs)

    monkeypatch.setattr(PullFeed, "_take", lossy)
    lossy_db = connect_db(str(tmp_path / "lossy.duckdb"))
    last = await replay_stream(js, lossy_db, batch_size=64, fetch_timeout=0.5)
    assert dropped and dropped[0] > 0
    info = await js.stream_info(subjects.STREAM)
    assert last == info.state.last_seq
    assert dump(lossy_db) == dump(clean)


async def test_frames_for_the_feed_and_everything_else_share_one_connection(
    nc: NATS, js: JetStreamContext
) -> None:
    """The frame parser takes only the pull feed's frames; a plain subscription, request/reply and
    JetStream's own API keep working on the same connection, before and after it is installed."""
    events = scenario(40)
    await publish_many(js, events)
    got: list[bytes] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        got.append(msg.data)
        if len(got) == 3:
            done.set()

    await nc.subscribe("plain.subject", cb=on_msg)

    async def echo(msg: Any) -> None:
        await msg.respond(b"echo:" + msg.data)

    await nc.subscribe("svc", cb=echo)
    parser = await install(nc)
    assert isinstance(nc._ps, FrameParser) and await install(nc) is parser
    info = await js.add_consumer(
        subjects.STREAM, jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0)
    )
    feed = PullFeed(nc, subjects.STREAM, info.name, request=7, window=21)
    seqs: list[int] = []
    for i in range(3):
        await nc.publish("plain.subject", f"m{i}".encode())
        batch = await feed.fetch(10, 5.0)
        seqs += batch.seqs
        assert (await nc.request("svc", b"x", timeout=5)).data == b"echo:x"
    while len(seqs) < len(events):
        batch = await feed.fetch(10, 5.0)
        assert batch, f"the feed stalled after {len(seqs)} messages"
        assert len(batch) <= 10 and len(batch.tss) == len(batch)
        seqs += batch.seqs
    await asyncio.wait_for(done.wait(), 5)
    assert seqs == list(range(1, len(events) + 1))
    assert got == [b"m0", b"m1", b"m2"]
    assert (await js.stream_info(subjects.STREAM)).state.messages == len(events)
    await feed.close()


async def test_big_events_arrive_under_the_byte_cap(js: JetStreamContext, nc: NATS) -> None:
    """Requests carry at most request_bytes each (the server holds no more than the window for a busy
    reader); events of hundreds of KB still all arrive, in order, and a later empty fetch times out."""
    c: dict[str, Any] = {"run": RUN, "source": "t"}
    big = [ev.NoteWritten(**c, note_id=f"n{i}", agent="a", title="big", body=("x" * 300_000) + str(i))
           for i in range(12)]  # fmt: skip
    await publish_many(js, big)
    info = await js.add_consumer(
        subjects.STREAM, jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0)
    )
    feed = PullFeed(nc, subjects.STREAM, info.name, request=100, window=400, request_bytes=1)
    assert feed.request_bytes == 2 << 20  # never below two of the largest message the stream takes
    datas: list[bytes] = []
    while len(datas) < len(big):
        batch = await feed.fetch(100, 5.0)
        assert batch, f"stalled after {len(datas)} events"
        datas += batch.datas
    assert [ev.decode(d) for d in datas] == big
    assert not await feed.fetch(100, 0.3)
    await feed.close()


async def test_pipelined_projector_equals_a_replay_while_events_keep_coming(
    js: JetStreamContext, tmp_path: Path
) -> None:
    """run() overlaps fetching and projecting with the previous batch's write; with events published
    while it runs, in small batches, the result equals a fresh replay."""
    con = connect_db(str(tmp_path / "live.duckdb"))
    p = Projector(js, con, batch_size=50, fetch_timeout=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    events = odd_stream()
    for i in range(0, len(events), 97):
        await publish_many(js, events[i : i + 97])
    target = (await js.stream_info(subjects.STREAM)).state.last_seq
    await p.wait_for_seq(target, timeout=60)
    stop.set()
    await asyncio.wait_for(task, 30)
    await p.close()
    assert p.events_projected == len(events)
    fresh = connect_db(str(tmp_path / "fresh.duckdb"))
    await replay_stream(js, fresh)
    assert dump(con) == dump(fresh)


def test_project_columns_equals_project_and_dedupes_within_a_batch(tmp_path: Path) -> None:
    events = odd_stream()
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e), 1000.0 + i) for i, e in enumerate(events)]
    msgs.append(RawMessage(len(msgs) + 1, msgs[5].subject, msgs[5].data, 5.0))  # a redelivered event_id
    msgs.append(RawMessage(len(msgs) + 1, "swarm.r.evt.note", b"\xc1", 7.0))
    a = project(msgs, after_seq=3)
    b = project_columns([m.seq for m in msgs], [m.subject for m in msgs], [m.data for m in msgs],
                        [m.ts for m in msgs], after_seq=3)  # fmt: skip
    assert a == b
    assert len(b.events["event_id"]) == len(events) - 3 and b.last_seq == len(msgs)
    assert b.rejects["seq"] == [len(msgs)] and b.rejects["ts"] == [7.0]
    con = connect_db(str(tmp_path / "p.duckdb"))
    assert apply(con, b, consumer="c") == len(events) - 3
    sha = hashlib.sha256(b"# 0\n").hexdigest()
    assert con.execute("SELECT count(*) FROM hypotheses WHERE train_py_sha256 = $1", [sha]).fetchone() == (1,)


def test_gc_pause_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
