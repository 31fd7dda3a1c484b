"""Ledger benchmarks: ours next to the raw engines, measured in the same run.

    .venv/bin/python bench/bench_ledger.py                # everything at the goal sizes (~4 min)
    .venv/bin/python bench/bench_ledger.py --smoke        # tiny sizes, seconds (CI runs this)
    .venv/bin/python bench/bench_ledger.py --only replay  # one part: publish, e2e, fetch, duckdb, replay, queries

Prints one ``key: value`` line per figure, each "ours" line next to the raw engine's:

* publish: raw nats-py ``js.publish_async`` vs :func:`bus.publish_many` (events/s into the stream).
* e2e: a publisher process sends events with ``publish_many`` while the ledger service (this process,
  :func:`ledger.service.run_ledger`) projects them: events/s from the first publish to the last row
  committed, then publish -> projected latency one event at a time.
* fetch: raw nats-py pull ``fetch`` vs :class:`ledger.fetch.PullFeed` (messages/s off a stream).
* duckdb: a raw Arrow-table INSERT of the ``events`` rows vs the whole projection (decode, validate,
  every table, ``experiment_state``) with :func:`ledger.projection.apply` (rows/s, no NATS).
* replay: 1M events from the stream into a new DuckDB file (:func:`ledger.replay.replay_stream`).
* queries: the agent-context queries at 100k experiments, in process and over the bus.

Goals on this 2-core box: >= 20,000 events/s publish -> projected, replay of 1M events <= 30 s, each
agent-context query <= 50 ms at 100k experiments. The machine is shared, so the load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
from nats.aio.client import Client as NATS
from nats.js import api as jsapi

from bus import EmbeddedServer, connect, publish, publish_many, setup, subjects
from bus import events as ev
from ledger import queries as q
from ledger.api import LedgerApi, LedgerClient
from ledger.fetch import PullFeed
from ledger.projection import Rows, apply, project_columns
from ledger.projector import Projector
from ledger.replay import replay_stream
from ledger.schema import TABLES, connect_db
from ledger.service import run_ledger

HW = ev.Hardware(hw_class="cpu", cpu_count=2)
GOALS: dict[str, tuple[float, str, float]] = {}  # figure -> (value, ">=" or "<=", goal), at the goal sizes


def synthetic(n_events: int, run: str = "bench") -> list[ev.Event]:
    """Proposal, claim, finish per hypothesis (plus a decision every 10 and a note every 50)."""
    c: dict[str, Any] = {"run": run, "source": "bench"}
    out: list[ev.Event] = []
    i = 0
    while len(out) < n_events:
        hid, agent = f"h{i}", f"a{i % 8}"
        src = f"# hypothesis {i}\nLR = {i}\n"
        out.append(ev.HypothesisProposed(
            **c, hypothesis_id=hid, agent=agent, train_py=src, train_py_sha256=hashlib.sha256(src.encode()).hexdigest(),
            ast_sha256=f"ast{i}", hw_class="cpu", knobs={"LR": i}, tags=["baseline"] if i % 100 == 0 else []))  # fmt: skip
        out.append(ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=1, runner=f"w{i % 4}", hardware=HW))
        ok = i % 9 != 0
        out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner=f"w{i % 4}", status="ok" if ok else "crash",
                                         val_bpb=1.0 + (i * 7919 % 1000) / 1000 if ok else None, hw_class="cpu"))  # fmt: skip
        if i % 10 == 0:
            out.append(ev.HypothesisDecided(**c, hypothesis_id=hid, decision="keep", by=agent))
        if i % 50 == 0:
            out.append(ev.NoteWritten(**c, note_id=f"n{i}", agent=agent, title="t", body="b" * 200, refs=[hid]))
        i += 1
    return out[:n_events]


def say(key: str, value: str) -> None:
    print(f"{key}: {value}", flush=True)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "inf"


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 where /proc cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


class Server:
    """A fresh embedded nats-server with the swarm's stream, and a connection to it."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.server = EmbeddedServer(tmp / f"js-{name}")
        self.nc: NATS | None = None

    async def __aenter__(self) -> Server:
        await asyncio.to_thread(self.server.start)
        self.nc = await connect(self.server.url, name="bench")
        await setup(self.nc.jetstream())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.close()
        await asyncio.to_thread(self.server.stop)

    @property
    def js(self) -> Any:
        assert self.nc is not None
        return self.nc.jetstream()


async def fill(js: Any, n: int, chunk: int = 100_000) -> float:
    """Publish ``n`` synthetic events (``chunk`` per run name); returns the seconds spent publishing."""
    spent = 0.0
    for start in range(0, n, chunk):
        events = synthetic(min(chunk, n - start), run=f"r{start // chunk}")
        t = time.perf_counter()
        await publish_many(js, events)
        spent += time.perf_counter() - t
    return spent


# --------------------------------------------------------------------------------------------------
# publish


async def bench_publish(tmp: Path, n: int) -> None:
    events = synthetic(n)
    async with Server(tmp, "pub-raw") as s:
        js = s.nc.jetstream(publish_async_max_pending=4000) if s.nc else None
        assert js is not None
        t = time.perf_counter()
        for e in events:
            await js.publish_async(subjects.event_subject(e), ev.encode(e), stream=subjects.STREAM,
                                   headers={"Nats-Msg-Id": e.event_id})  # fmt: skip
        await asyncio.wait_for(js.publish_async_completed(), 120)
        raw = time.perf_counter() - t
    async with Server(tmp, "pub-ours") as s:
        t = time.perf_counter()
        acks = await publish_many(s.js, events)
        ours = time.perf_counter() - t
        assert len(acks) == n and acks[-1].seq == n
    say("publish_raw_publish_async", f"{rate(n, raw)}  (nats-py js.publish_async, {n} events, 4000 in flight)")
    say("publish_ours_publish_many", f"{rate(n, ours)}  (bus.publish_many, every ack checked; {load()})")


# --------------------------------------------------------------------------------------------------
# end to end: a publisher process, the ledger service here


def publisher_main(url: str, n: int) -> None:
    """The publisher process of the e2e figure: build the events, say ready, publish on "go"."""

    async def main() -> None:
        nc = await connect(url, name="bench-publisher")
        events = synthetic(n, run="e2e")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        t = time.perf_counter()
        await publish_many(nc.jetstream(), events)
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
        await nc.close()

    asyncio.run(main())


async def bench_e2e(tmp: Path, n: int, latency_samples: int) -> None:
    async with Server(tmp, "e2e") as s:
        assert s.nc is not None
        stop, ready = asyncio.Event(), asyncio.Event()
        box: list[Projector] = []
        service = asyncio.create_task(
            run_ledger(s.nc, tmp / "e2e.duckdb", stop=stop, ready=ready, projector_out=box)
        )
        await asyncio.wait_for(ready.wait(), 30)
        projector = box[0]
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publisher", s.server.url, str(n),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 300)
            if line.strip() != b"ready":
                raise RuntimeError(f"publisher process did not start: {line!r}")
            t0, cpu0, srv0 = time.perf_counter(), time.process_time(), proc_cpu(s.server.pid)
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            await projector.wait_for_seq(n, timeout=600)
            dt = time.perf_counter() - t0
            cpu, srv = time.process_time() - cpu0, proc_cpu(s.server.pid) - srv0
            pub = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))["seconds"]
        finally:
            child.stdin.close()
            await asyncio.wait_for(child.wait(), 30)
        say("e2e_events", f"{n} (publisher process -> nats-server -> ledger service, {load()})")
        say("e2e_publish_alone", f"{rate(n, pub)}  (the publisher's own rate while the ledger ran)")
        say("e2e_publish_to_projected", f"{rate(n, dt)}  ({dt:.2f} s from the first publish to the last row committed)")
        say("e2e_cpu_per_event", f"ledger {cpu / n * 1e6:.1f} us, nats-server {srv / n * 1e6:.1f} us (CPU time, all threads)")
        if n >= 100_000:
            GOALS["e2e_publish_to_projected"] = (n / dt, ">=", 20_000.0)
        lat = []
        for e in synthetic(latency_samples, run="lat"):
            t = time.perf_counter()
            ack = await publish(s.js, e)
            await projector.wait_for_seq(ack.seq)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        say("latency_ms_p50", f"{lat[len(lat) // 2]:.2f}")
        say("latency_ms_p99", f"{lat[max(0, int(len(lat) * 0.99) - 1)]:.2f}  (one awaited publish at a time, "
            f"{len(lat)} samples)")  # fmt: skip
        stop.set()
        await asyncio.wait_for(service, 60)


# --------------------------------------------------------------------------------------------------
# fetch


async def bench_fetch(tmp: Path, n: int) -> None:
    async with Server(tmp, "fetch") as s:
        assert s.nc is not None
        await fill(s.js, n)
        def cfg() -> jsapi.ConsumerConfig:  # a fresh one each time: nats-py fills in the name it made
            return jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True)

        sub = await s.js.pull_subscribe(">", stream=subjects.STREAM, config=cfg(), pending_msgs_limit=50_000)
        got, t = 0, time.perf_counter()
        while got < n:
            got += len(await sub.fetch(1000, timeout=5))
        raw = time.perf_counter() - t
        await sub.unsubscribe()
        info = await s.js.add_consumer(subjects.STREAM, cfg())
        feed = PullFeed(s.nc, subjects.STREAM, info.name, request=10_000, window=40_000)
        got, t = 0, time.perf_counter()
        while got < n:
            batch = await feed.fetch(10_000, 5.0)
            if not batch:
                raise RuntimeError(f"PullFeed stalled at {got} of {n}")
            got += len(batch)
        ours = time.perf_counter() - t
        await feed.close()
    say("fetch_raw_nats_py", f"{rate(n, raw)}  (js.pull_subscribe + fetch(1000), {n} messages)")
    say("fetch_ours_pullfeed", f"{rate(n, ours)}  (ledger.fetch.PullFeed: raw frames, requests kept in flight; {load()})")


# --------------------------------------------------------------------------------------------------
# DuckDB


def _messages(n: int, run: str = "") -> tuple[list[int], list[str], list[bytes], list[float]]:
    """``n`` synthetic events as stream columns (run ``run``, or one run name per 100k events)."""
    seqs: list[int] = []
    subs: list[str] = []
    datas: list[bytes] = []
    tss: list[float] = []
    runs = [(n, run)] if run else [(min(100_000, n - c), f"d{c // 100_000}") for c in range(0, n, 100_000)]
    for size, name in runs:
        for e in synthetic(size, run=name):
            seqs.append(len(seqs) + 1)
            subs.append(subjects.event_subject(e))
            datas.append(ev.encode(e))
            tss.append(e.ts)
    return seqs, subs, datas, tss


def bench_duckdb(tmp: Path, n: int, batch: int) -> None:
    seqs, subs, datas, tss = _messages(n)
    # raw: the events rows as ready Arrow tables, INSERTed into a table like ``events`` (its primary key
    # included), one commit per batch
    raw_db = connect_db(str(tmp / "raw-arrow.duckdb"))
    raw_db.execute(f"CREATE TABLE raw_events ({TABLES['events']})")
    tables = []
    for i in range(0, n, batch):
        rows: Rows = project_columns(seqs[i : i + batch], subs[i : i + batch], datas[i : i + batch], tss[i : i + batch])
        tables.append(pa.table(rows.events))
    t = time.perf_counter()
    for tbl in tables:
        raw_db.execute("BEGIN TRANSACTION")
        raw_db.register("_raw", tbl)
        raw_db.execute("INSERT INTO raw_events SELECT * FROM _raw")
        raw_db.unregister("_raw")
        raw_db.execute("COMMIT")
    raw = time.perf_counter() - t
    raw_db.close()
    del tables
    ours_db = connect_db(str(tmp / "ours.duckdb"))
    t = time.perf_counter()
    for i in range(0, n, batch):
        rows = project_columns(seqs[i : i + batch], subs[i : i + batch], datas[i : i + batch], tss[i : i + batch])
        apply(ours_db, rows, consumer="bench")
    ours = time.perf_counter() - t
    ours_db.close()
    say("duckdb_raw_arrow_insert", f"{rate(n, raw)}  (INSERT of ready Arrow tables into events, {batch} rows a commit)")
    say("duckdb_ours_project_apply", f"{rate(n, ours)}  (decode, validate, every table and experiment_state; "
        f"no NATS, one thread; {load()})")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# replay


async def bench_replay(tmp: Path, n: int) -> None:
    async with Server(tmp, "replay") as s:
        filled = await fill(s.js, n)
        say("replay_fill", f"{n} events published in {filled:.1f} s ({rate(n, filled)}, bus.publish_many)")
        con = connect_db(str(tmp / "replay.duckdb"))
        t = time.perf_counter()
        last = await replay_stream(s.js, con)
        dt = time.perf_counter() - t
        got = con.execute("SELECT count(*) FROM events").fetchone()
        t = time.perf_counter()
        con.close()
        closing = time.perf_counter() - t
    if not got or got[0] != n or last != n:
        raise RuntimeError(f"replay projected {got} events up to seq {last}, expected {n}")
    say("replay_events", f"{n} (last seq {last})")
    say("replay_seconds", f"{dt:.1f}  ({rate(n, dt)}; then {closing:.1f} s to checkpoint on close; {load()})")
    if n >= 1_000_000:
        GOALS["replay_seconds"] = (dt, "<=", 30.0)


# --------------------------------------------------------------------------------------------------
# agent-context queries


def _timed(fn: Callable[[], Any], reps: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


async def bench_queries(tmp: Path, n_exp: int) -> None:
    con = connect_db(str(tmp / "queries.duckdb"))
    n_events = int(n_exp * 3.12)
    t0 = time.perf_counter()
    seqs, subs, datas, tss = _messages(n_events, run="bench")
    for i in range(0, n_events, 20_000):
        apply(con, project_columns(seqs[i : i + 20_000], subs[i : i + 20_000], datas[i : i + 20_000],
                                   tss[i : i + 20_000]), consumer="bench")  # fmt: skip
    n_h = con.execute("SELECT count(*) FROM experiments").fetchone()
    say("query_db", f"{n_h[0] if n_h else 0} experiments from {n_events} events, built in {time.perf_counter() - t0:.1f} s")
    cur = con.cursor()
    ctx = ev.ContextRequest(run="bench", agent="a3")
    shas = [hashlib.sha256(f"# hypothesis {i}\nLR = {i}\n".encode()).hexdigest() for i in range(0, 2000, 7)] + ["x" * 64]
    keeps = con.execute("SELECT count(*) FROM experiments WHERE run = 'bench' AND agent = 'a0' AND decision = 'keep'").fetchone()
    ctx_keeps = ev.ContextRequest(run="bench", agent="a0")
    for name, fn in [
        ("context", lambda: q.context(cur, ctx)),
        ("context_long_lineage", lambda: q.context(cur, ctx_keeps)),
        ("best", lambda: q.best(cur, "bench")),
        ("recent", lambda: q.recent(cur, "bench", 30)),
        ("seen", lambda: q.seen(cur, "bench", shas)),
    ]:
        med, worst = _timed(fn)
        note = f"; agent a0's lineage: {keeps[0] if keeps else 0} keeps" if name == "context_long_lineage" else ""
        say(f"query_ms_{name}", f"{med:.1f} median, {worst:.1f} max (in process, 20 runs; {load()}{note})")
        if n_exp >= 100_000 and name != "context_long_lineage":
            GOALS[f"query_ms_{name}"] = (med, "<=", 50.0)
    async with Server(tmp, "queries") as s:
        assert s.nc is not None
        api = LedgerApi(s.nc, con)
        await api.start()
        client = LedgerClient(s.nc, "bench")
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("context", lambda: client.context("a3")), ("best", client.best),
            ("recent", lambda: client.recent(30)), ("seen", lambda: client.seen(shas)),
        ]  # fmt: skip
        for name, call in calls:
            times = []
            for _ in range(20):
                t = time.perf_counter()
                await call()
                times.append((time.perf_counter() - t) * 1000)
            say(f"api_ms_{name}", f"{statistics.median(times):.1f} median, {max(times):.1f} max (over NATS, 20 runs)")
        await api.stop()
    con.close()


# --------------------------------------------------------------------------------------------------


PARTS = ["publish", "e2e", "fetch", "duckdb", "replay", "queries"]


async def main(args: argparse.Namespace) -> int:
    small = args.smoke
    events = args.events or (2_000 if small else 200_000)
    replay_events = args.replay_events or (5_000 if small else 1_000_000)
    experiments = args.experiments or (1_000 if small else 100_000)
    side = 2_000 if small else 100_000  # the raw-engine comparisons
    say("machine", f"{os.cpu_count()} cores, {load()}")
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as d:
        tmp = Path(d)
        parts = [args.only] if args.only else PARTS
        if "publish" in parts:
            await bench_publish(tmp, side)
        if "e2e" in parts:
            await bench_e2e(tmp, events, 30 if small else 300)
        if "fetch" in parts:
            await bench_fetch(tmp, side)
        if "duckdb" in parts:
            bench_duckdb(tmp, side * 2, 50_000)
        if "replay" in parts:
            await bench_replay(tmp, replay_events)
        if "queries" in parts:
            await bench_queries(tmp, experiments)
    for key, (value, cmp, goal) in GOALS.items():
        met = value >= goal if cmp == ">=" else value <= goal
        say(f"goal_{key}", f"{value:,.1f} {cmp} {goal:,.0f}: {'met' if met else 'MISSED'}")
    return 0


def cli() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks every part runs, in seconds")
    ap.add_argument("--only", choices=PARTS, default=None, help="run one part")
    ap.add_argument("--events", type=int, default=0, help="events for the end-to-end figure (200,000)")
    ap.add_argument("--replay-events", type=int, default=0, help="events to replay (1,000,000)")
    ap.add_argument("--experiments", type=int, default=0, help="experiments for the queries (100,000)")
    ap.add_argument("--publisher", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        publisher_main(args.publisher[0], int(args.publisher[1]))
        return
    sys.exit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
