"""The ledger: projection round trip, idempotence, restarts, rejects, dispositions, replay and export."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from nats.js import JetStreamContext
from test_bus import sample_events

from bus import events as ev
from bus import publish, publish_many, subjects
from ledger.export import export_parquet
from ledger.projector import Projector
from ledger.replay import replay_archive, replay_stream
from ledger.schema import DATA_TABLES, connect_db

RUN = "r"
HW = ev.Hardware(hw_class="cpu", cpu_count=2)


def db(tmp_path: Path, name: str = "ledger.duckdb") -> duckdb.DuckDBPyConnection:
    return connect_db(str(tmp_path / name))


def dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    """Every data table's full contents, in stream order."""
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall() for t in DATA_TABLES}


def scenario(n: int, run: str = RUN) -> list[ev.Event]:
    """n hypotheses from 3 agents: claims, finishes (some crash), a duplicate, a late and an unclaimed
    finish, decisions and notes, interleaved roughly as a live swarm would publish them."""
    c: dict[str, Any] = {"run": run, "source": "t"}
    out: list[ev.Event] = [ev.RunnerJoined(**c, runner="w1", hardware=HW)]
    for i in range(n):
        hid, agent = f"h{i}", f"a{i % 3}"
        src = f"# {i}\n"
        out.append(ev.HypothesisProposed(
            **c, hypothesis_id=hid, agent=agent, train_py=src, train_py_sha256=hashlib.sha256(src.encode()).hexdigest(),
            hw_class="cpu", tags=["baseline"] if i % 10 == 0 else [], knobs={"LR": i}))  # fmt: skip
        out.append(ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=1, runner="w1", hardware=HW))
        status = "crash" if i % 7 == 3 else "ok"
        val = None if status != "ok" else 1.5 - (i % 13) * 0.01
        out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner="w1", status=status, val_bpb=val))
        if i % 5 == 1:
            out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner="w1", status="ok", val_bpb=0.1))
        if i % 11 == 2:
            out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=9, runner="zz", status="ok", val_bpb=0.01))
        if i % 4 == 0:
            out.append(ev.HypothesisDecided(**c, hypothesis_id=hid, decision="keep" if i % 8 == 0 else "discard", by=agent))
        if i % 9 == 0:
            out.append(ev.NoteWritten(**c, note_id=f"n{i}", agent=agent, title=f"note {i}", body="b", refs=[hid]))
    return out


async def project_all(js: JetStreamContext, con: duckdb.DuckDBPyConnection, **kw: Any) -> Projector:
    p = Projector(js, con, fetch_timeout=0.2, **kw)
    await p.run_until_idle()
    await p.close()
    return p


async def test_every_event_type_lands_in_its_table(js: JetStreamContext, tmp_path: Path) -> None:
    sent = sample_events(RUN)
    await publish_many(js, sent)
    con = db(tmp_path)
    p = await project_all(js, con)
    assert p.events_projected == len(sent) and p.last_seq == len(sent)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DATA_TABLES}  # type: ignore[index]
    assert counts == {
        "events": 13, "hypotheses": 1, "claims": 1, "results": 1, "decisions": 2, "notes": 1, "agents": 2,
        "runners": 2, "llm_usage": 1, "proposal_rejects": 1, "programs": 1, "rejects": 0,
    }  # fmt: skip
    # the raw bytes decode back to exactly what was sent
    raw = con.execute("SELECT data FROM events ORDER BY seq").fetchall()
    assert [ev.decode(r[0]) for r in raw] == sent
    h = con.execute("SELECT hypothesis_id, agent, tags, knobs, hw_class FROM hypotheses").fetchone()
    assert h == ("h1", "a1", ["x"], '{"DEPTH":4,"LR":0.01}', "cpu")
    assert con.execute("SELECT hw_class, steps_per_second, classes FROM runners WHERE action='joined'").fetchone() == (
        "cpu", 3.5, ["cpu", "any"])  # fmt: skip
    assert con.execute("SELECT status, val_bpb, disposition FROM results").fetchone() == ("ok", 1.23, "result")
    assert con.execute("SELECT last_seq FROM projector_state").fetchone() == (len(sent),)


async def test_republished_event_id_and_redelivery_change_nothing(js: JetStreamContext, tmp_path: Path) -> None:
    sent = sample_events(RUN)
    await publish_many(js, sent)
    con = db(tmp_path)
    await project_all(js, con)
    before = dump(con)
    # the same event_id again past the server's dedup (another msg id): a new stream seq, same event
    for e in sent[:3]:
        ack = await js.publish(subjects.event_subject(e), ev.encode(e), stream=subjects.STREAM)
        assert not ack.duplicate
    p = await project_all(js, con)
    assert p.events_projected == 0 and p.last_seq == len(sent) + 3
    assert dump(con) == before
    # a redelivered batch (consumer replays from the start) is skipped by sequence
    await js.delete_consumer(subjects.STREAM, subjects.LEDGER_CONSUMER)
    p = await project_all(js, con)
    assert p.events_projected == 0 and dump(con) == before


async def test_killed_projector_resumes_to_identical_tables(js: JetStreamContext, tmp_path: Path) -> None:
    events = scenario(300)
    await publish_many(js, events)
    con = db(tmp_path, "crashy.duckdb")

    # 1. crash after the DuckDB commit of the 3rd batch, before its ack
    calls = 0

    async def crash() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("simulated crash before ack")

    p1 = Projector(js, con, batch_size=100, fetch_timeout=0.2, before_ack=crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await p1.run_until_idle()
    await p1.close()
    assert 0 < p1.last_seq < len(events)

    # 2. cancel a running projector between/within batches
    p2 = Projector(js, con, batch_size=100, fetch_timeout=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(p2.run(stop))
    await p2.wait_for_seq(p1.last_seq + 150)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await p2.close()

    # 3. restart and finish; compare with an uninterrupted projection on its own consumer
    p3 = await project_all(js, con, batch_size=100)
    assert p3.last_seq == len(events)
    clean = db(tmp_path, "clean.duckdb")
    await project_all(js, clean, consumer="clean")
    assert dump(con) == dump(clean)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (len(events),)


async def test_bad_messages_land_in_rejects_and_projection_goes_on(js: JetStreamContext, tmp_path: Path) -> None:
    good = sample_events(RUN)[:3]
    await publish(js, good[0])
    await js.publish("swarm.r.evt.x", b"\xc1 not msgpack", stream=subjects.STREAM)
    await js.publish("swarm.r.evt.x", msgspec.msgpack.encode({"type": "Nope", "run": "r"}), stream=subjects.STREAM)
    await js.publish("swarm.r.evt.x", msgspec.msgpack.encode({"type": "AgentLeft", "run": "r"}), stream=subjects.STREAM)
    # a valid event on the wrong run's subject
    other = ev.AgentLeft(run="other", source="t", agent="a")
    await js.publish("swarm.r.evt.agent", ev.encode(other), stream=subjects.STREAM)
    await publish_many(js, good[1:])
    con = db(tmp_path)
    p = await project_all(js, con)
    assert p.rejected == 4 and p.events_projected == 3 and p.last_seq == 7
    rejects = con.execute("SELECT seq, subject, reason, data FROM rejects ORDER BY seq").fetchall()
    assert [r[0] for r in rejects] == [2, 3, 4, 5]
    assert rejects[0][3] == b"\xc1 not msgpack" and rejects[0][2].startswith("decode:")
    assert "unknown event type 'Nope'" in rejects[1][2]
    assert "AgentLeft" in rejects[2][2]
    assert rejects[3][2].startswith("validate:") and "swarm.other.evt.agent" in rejects[3][2]
    assert con.execute("SELECT count(*) FROM results").fetchone() == (1,)


async def test_dispositions(js: JetStreamContext, tmp_path: Path) -> None:
    c: dict[str, Any] = {"run": RUN, "source": "t"}

    def fin(hid: str, attempt: int, runner: str, **kw: Any) -> ev.ExperimentFinished:
        kw.setdefault("status", "ok")
        return ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=attempt, runner=runner, **kw)

    def claim(hid: str, attempt: int, runner: str) -> ev.ExperimentClaimed:
        return ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=attempt, runner=runner, hardware=HW)

    def prop(hid: str) -> ev.HypothesisProposed:
        return ev.HypothesisProposed(**c, hypothesis_id=hid, agent="a", train_py="x", train_py_sha256="s", hw_class="cpu")

    events: list[ev.Event] = [
        prop("dup"), claim("dup", 1, "w1"), fin("dup", 1, "w1", val_bpb=1.0), fin("dup", 1, "w1", val_bpb=0.5),
        # attempt 1's lease expired and attempt 2 was claimed: attempt 1's finish is late
        prop("sup"), claim("sup", 1, "w1"), claim("sup", 2, "w2"), fin("sup", 1, "w1", val_bpb=0.1),
        fin("sup", 2, "w2", val_bpb=1.1),
        # the runner itself says it lost its lease
        prop("self"), claim("self", 1, "w1"), fin("self", 1, "w1", val_bpb=0.2, late=True),
        # no claim for this attempt/runner: refused
        prop("unc"), claim("unc", 1, "w1"), fin("unc", 1, "w9", val_bpb=0.3), fin("unc", 2, "w1", val_bpb=0.3),
        # dead-letter: lost needs no claim
        prop("lost"), fin("lost", 5, "dead-letter", status="lost"),
        prop("pending"), claim("pending", 1, "w1"),
    ]  # fmt: skip
    await publish_many(js, events)
    con = db(tmp_path)
    await project_all(js, con, batch_size=3)  # small batches: dispositions cross batch boundaries
    got = con.execute("SELECT hypothesis_id, attempt, runner, disposition FROM results ORDER BY seq").fetchall()
    assert got == [
        ("dup", 1, "w1", "result"), ("dup", 1, "w1", "duplicate"),
        ("sup", 1, "w1", "late"), ("sup", 2, "w2", "result"),
        ("self", 1, "w1", "late"),
        ("unc", 1, "w9", "unclaimed"), ("unc", 2, "w1", "unclaimed"),
        ("lost", 5, "dead-letter", "result"),
    ]  # fmt: skip
    exp = {r[0]: r[1:] for r in con.execute(
        "SELECT hypothesis_id, status, val_bpb, attempt, attempts FROM experiments").fetchall()}  # fmt: skip
    assert exp == {
        "dup": ("ok", 1.0, 1, 1), "sup": ("ok", 1.1, 2, 2), "self": (None, None, None, 1),
        "unc": (None, None, None, 1), "lost": ("lost", None, 5, 0), "pending": (None, None, None, 1),
    }  # fmt: skip
    # the same stream in one batch gives the same dispositions
    one = db(tmp_path, "one.duckdb")
    await project_all(js, one, consumer="one", batch_size=1000)
    assert dump(one) == dump(con)


async def test_replay_from_stream_and_archive_equal_live(js: JetStreamContext, tmp_path: Path) -> None:
    await publish_many(js, scenario(200))
    await js.publish("swarm.r.evt.x", b"junk", stream=subjects.STREAM)
    await publish_many(js, sample_events(RUN))
    live = db(tmp_path, "live.duckdb")
    await project_all(js, live, batch_size=250)
    want = dump(live)
    assert want["rejects"] and want["results"]

    from_stream = db(tmp_path, "stream.duckdb")
    last = await replay_stream(js, from_stream, batch_size=300)
    assert last == live.execute("SELECT max(seq) FROM events").fetchone()[0]  # type: ignore[index]
    assert dump(from_stream) == want

    counts = export_parquet(live, tmp_path / "archive")
    assert counts["events"] == len(want["events"]) and counts["experiments"] == 200
    check = duckdb.connect()  # a plain reader (as the DuckDB CLI would) sees the same rows and bytes
    assert check.execute(f"SELECT count(*), sum(octet_length(data)) FROM '{tmp_path}/archive/events.parquet'").fetchone() == (
        live.execute("SELECT count(*), sum(octet_length(data)) FROM events").fetchone())  # fmt: skip
    from_archive = db(tmp_path, "archive.duckdb")
    replay_archive(tmp_path / "archive", from_archive)
    assert dump(from_archive) == want

    # from a time: only events stored at or after it
    cut = want["events"][150][5]  # ts of the envelope is close to the stream time on one machine
    partial = db(tmp_path, "partial.duckdb")
    await replay_stream(js, partial, start_time=cut + 3600)
    assert partial.execute("SELECT count(*) FROM events").fetchone() == (0,)


def _state(con: duckdb.DuckDBPyConnection) -> list[Any]:
    return con.execute("SELECT * FROM experiment_state ORDER BY run, hypothesis_id").fetchall()


def test_incremental_experiments_equal_a_full_recompute(tmp_path: Path) -> None:
    """The projector keeps ``experiment_state`` up to date from each batch alone; whatever the batch size
    and however odd the stream's order, it must equal the state recomputed from the data tables in SQL,
    and ``experiments`` must equal the original (recompute-everything) view."""
    import random

    from ledger.projection import RawMessage, apply, project
    from ledger.schema import ALL_KEYS_SQL, EXPERIMENT_STATE_SQL

    c: dict[str, Any] = {"run": RUN, "source": "t"}
    rng = random.Random(7)
    events: list[ev.Event] = list(scenario(120))
    # odd orders: claims/finishes/decisions before (or without) the proposal, a second proposal, a claim
    # after the result, a decision before the result, a second run
    for i in range(40):
        hid = f"o{i % 13}"
        kind = rng.randrange(5)
        if kind == 0:
            events.append(ev.HypothesisProposed(**c, hypothesis_id=hid, agent="z", train_py="x", train_py_sha256=f"s{i}",
                                                hw_class="cpu"))  # fmt: skip
        elif kind == 1:
            events.append(ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=rng.randrange(1, 3), runner="w1",
                                               hardware=HW))  # fmt: skip
        elif kind == 2:
            events.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=rng.randrange(1, 3), runner="w1",
                                                status=rng.choice(["ok", "crash", "lost"]), val_bpb=rng.random()))  # fmt: skip
        elif kind == 3:
            events.append(ev.HypothesisDecided(**c, hypothesis_id=hid, decision=rng.choice(["keep", "discard"]), by="z"))
        else:
            events.append(ev.ExperimentClaimed(**c, hypothesis_id=f"h{rng.randrange(120)}", attempt=1, runner="w1",
                                               hardware=ev.Hardware(hw_class="h100")))  # fmt: skip
    events += scenario(20, run="r2")
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e)) for i, e in enumerate(events)]
    reference = """
        WITH h AS (
            SELECT * FROM hypotheses QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq) = 1
        ), r AS (SELECT * FROM results WHERE disposition = 'result'
        ), a AS (SELECT run, hypothesis_id, count(DISTINCT attempt) AS attempts FROM claims GROUP BY run, hypothesis_id
        ), d AS (SELECT run, hypothesis_id, decision FROM decisions
            QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq DESC) = 1
        ), c AS (SELECT run, hypothesis_id, attempt, runner, arg_min(hw_class, seq) AS hw_class FROM claims
            GROUP BY run, hypothesis_id, attempt, runner)
        SELECT h.run, h.hypothesis_id, h.agent, h.model, h.parent, h.description, h.tier, h.hw_class,
            h.ts AS proposed_ts, h.seq AS proposed_seq, r.status, r.val_bpb, r.ts AS finished_ts, r.seq AS finished_seq,
            r.runner, coalesce(nullif(r.hw_class, ''), c.hw_class, CASE WHEN r.status IS NOT NULL THEN h.hw_class END),
            r.attempt, coalesce(a.attempts, 0), r.training_seconds, r.total_seconds, coalesce(r.reason, ''),
            coalesce(r.log_tail, ''), d.decision, h.train_py_sha256, h.ast_sha256, h.tags, h.knobs, h.seed,
            coalesce(r.log_ref, '')
        FROM h LEFT JOIN r USING (run, hypothesis_id) LEFT JOIN a USING (run, hypothesis_id)
        LEFT JOIN d USING (run, hypothesis_id)
        LEFT JOIN c ON c.run = r.run AND c.hypothesis_id = r.hypothesis_id AND c.attempt = r.attempt AND c.runner = r.runner
        ORDER BY 1, 2"""  # fmt: skip
    dumps = []
    for size in (3, 50, len(msgs)):
        con = db(tmp_path, f"inc{size}.duckdb")
        for i in range(0, len(msgs), size):
            apply(con, project(msgs[i : i + size]), consumer="c")
        # redelivery of a stretch of the stream (new seqs, same event_ids) changes nothing
        again = [RawMessage(len(msgs) + 1 + j, m.subject, m.data) for j, m in enumerate(msgs[100:160])]
        assert apply(con, project(again), consumer="c") == 0
        state = _state(con)
        con.close()
        # recompute from the data tables in SQL, and compare with the original view's definition
        plain = duckdb.connect(str(tmp_path / f"inc{size}.duckdb"))
        plain.execute("BEGIN")
        plain.execute("DELETE FROM experiment_state")
        plain.execute("INSERT INTO experiment_state " + EXPERIMENT_STATE_SQL.format(keys=ALL_KEYS_SQL))
        assert _state(plain) == state, f"batch size {size}"
        got = plain.execute("SELECT * EXCLUDE (ran_on), ran_on FROM experiments ORDER BY run, hypothesis_id").fetchall()
        ref = plain.execute(f"SELECT * FROM ({reference})").fetchall()
        cols = [d[0] for d in plain.execute("SELECT * FROM experiments LIMIT 0").description or []]
        i_ran = cols.index("ran_on")
        assert [tuple(r[:i_ran]) + tuple(r[i_ran + 1 :]) for r in ref] == [tuple(g[:-1]) for g in got]
        assert [r[i_ran] for r in ref] == [g[-1] for g in got]
        plain.execute("ROLLBACK")
        dumps.append(dump(plain))
        plain.close()
    assert all(d == dumps[0] for d in dumps)


def test_experiments_fast_path_and_rebuild_of_an_old_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream in the usual order is kept up to date from each batch alone (no recompute from the data
    tables), and a database made before ``experiment_state`` existed gets it filled on open."""
    import ledger.projection as projection
    from ledger.projection import RawMessage, apply, project

    def no_recompute(con: duckdb.DuckDBPyConnection, keys: str) -> None:
        raise AssertionError("recomputed in SQL")

    events = scenario(60)
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e)) for i, e in enumerate(events)]
    con = db(tmp_path, "fast.duckdb")
    with monkeypatch.context() as m:
        m.setattr(projection, "refresh_experiments", no_recompute)
        for i in range(0, len(msgs), 17):
            apply(con, project(msgs[i : i + 17]), consumer="c")
    want = _state(con)
    exp = con.execute("SELECT * FROM experiments ORDER BY hypothesis_id").fetchall()
    assert len(exp) == 60 and len(want) == 60
    con.execute("DROP VIEW class_stats")
    con.execute("DROP VIEW leaderboard")
    con.execute("DROP VIEW frontier")
    con.execute("DROP VIEW experiments")
    con.execute("DROP TABLE experiment_state")
    con.close()
    again = db(tmp_path, "fast.duckdb")
    assert _state(again) == want
    assert again.execute("SELECT * FROM experiments ORDER BY hypothesis_id").fetchall() == exp
